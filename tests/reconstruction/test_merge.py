"""The merge stage: approved decisions applied as pure splat edits, written as the next version."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.sample_scene import look_at, sample_splats
from reconstruction.cameras import Camera
from reconstruction.errors import SceneStoreError
from reconstruction.formats import write_splat
from reconstruction.merge import DecisionError, apply_decisions, merge, parse_decisions
from reconstruction.ply import write_ply
from reconstruction.render import render
from reconstruction.splat_ops import in_box, select, transform
from reconstruction.splats import FIELDS

BOX = {"center": [1.5, -1.0, 0.6], "size": [2.0, 2.0, 1.6], "rotation_wxyz": [1, 0, 0, 0]}
ROT = [0.9238795, 0.0, 0.0, 0.3826834]  # 45 degrees about z


def _asset(tmp_path: Path) -> Path:
    """A small prop in its own frame (a dense box of coloured Gaussians), as a .splat file."""
    a = sample_splats(seed=5, density=0.1)
    a = select(a, in_box(a.means, [0, 0, 1.0], [10, 10, 2.0]))
    a.means = (a.means - a.means.mean(0)) * 0.1
    path = tmp_path / "asset.ply"
    write_ply(path, a)
    return path


def _decisions(tmp_path: Path, base: int = 1) -> dict:
    ids = np.array([3, 4, 5, 6, 100], np.int64)
    np.save(tmp_path / "ids.npy", ids)
    return {
        "base_version": base,
        "decisions": [
            {"change_id": "c1", "action": "approve", "kind": "removed", "box": BOX, "reviewer": "ana"},
            {"change_id": "c2", "action": "approve", "kind": "added", "asset": str(_asset(tmp_path)),
             "transform": {"rotation_wxyz": ROT, "translation": [-2.0, 1.0, 0.5], "scale": 2.0},
             "reviewer": "ben", "comment": "a crate"},
            {"change_id": "c3", "action": "approve", "kind": "moved", "gaussian_ids": "ids.npy",
             "transform": {"translation": [0.0, 0.5, 0.0]}, "reviewer": "ana"},
            {"change_id": "c4", "action": "reject", "reviewer": "ben", "comment": "a shadow"},
        ],
    }  # fmt: skip


def test_merge_applies_approved_changes_and_keeps_the_rest_bit_identical(store_with_scene, tmp_path):
    scene = store_with_scene
    base = scene.version(1).load_splats()
    doc = _decisions(tmp_path)
    out = merge(scene, doc, tmp_path, flow_run_id="run-1")
    assert out["version"] == 2 and scene.current_version() == 2
    new = scene.version(2).load_splats()
    removed = in_box(base.means, BOX["center"], BOX["size"])
    removed[[3, 4, 5, 6, 100]] = True
    kept = int((~removed).sum())
    for f in FIELDS:  # carried over bit for bit, in order
        assert np.array_equal(getattr(new, f)[:kept], getattr(base, f)[~removed])
    asset = parse_decisions(doc, tmp_path, len(base))[1].asset
    placed = transform(asset, ROT, [-2.0, 1.0, 0.5], 2.0)
    np.testing.assert_allclose(new.means[kept : kept + len(asset)], placed.means, atol=1e-6)
    np.testing.assert_allclose(new.shN[kept : kept + len(asset)], placed.shN, atol=1e-6)
    moved = new.means[kept + len(asset) :]
    np.testing.assert_allclose(moved, base.means[[3, 4, 5, 6, 100]] + [0, 0.5, 0], atol=1e-6)
    assert len(new) == kept + len(asset) + 5
    meta = scene.version(2).meta
    assert meta["parent"] == 1 and meta["flow_run_id"] == "run-1"
    assert meta["reviewers"] == ["ana", "ben"]
    assert meta["diff"]["c1"] == {
        "removed": int(in_box(base.means, BOX["center"], BOX["size"]).sum()),
        "added": 0,
    }
    assert meta["diff"]["c2"] == {"removed": 0, "added": len(asset)}
    assert meta["diff"]["c3"]["added"] == 5
    assert [d["action"] for d in meta["decisions"]] == ["approve", "approve", "approve", "reject"]
    assert "c4" not in meta["diff"]
    # the model and the photos carry over
    assert len(scene.version(2).images()) == len(scene.version(1).images())


def test_renders_away_from_the_edits_are_identical(store_with_scene, tmp_path):
    scene = store_with_scene
    merge(scene, _decisions(tmp_path), tmp_path)
    base, new = scene.version(1).load_splats(), scene.version(2).load_splats()
    removed = in_box(base.means, BOX["center"], BOX["size"])
    removed[[3, 4, 5, 6, 100]] = True
    kept = int((~removed).sum())
    edited = select(base, removed), select(new, np.arange(kept, len(new)))
    cam = Camera.pinhole(150, 150, 80, 60, 160, 120)
    for eye in ([8, -6, 4], [-7, -7, 3], [0, -9, 6]):
        pose = look_at(np.array(eye, float), [0, 0, 0.5])
        a = render(base, cam, pose, backend="torch")
        b = render(new, cam, pose, backend="torch")
        touched = torch.zeros(120, 160, dtype=torch.bool)
        for part in edited:
            touched |= render(part, cam, pose, backend="torch").alpha > 0
        assert touched.any() and not touched.all()
        diff = (a.rgb - b.rgb).abs().amax(-1)
        assert float(diff[~touched].max()) == 0.0  # bit-identical where no edited Gaussian reaches
        assert float(diff[touched].max()) > 0.0  # and the edit shows


def test_rotated_asset_looks_like_the_unrotated_one_from_the_inversely_rotated_camera(tmp_path):
    from reconstruction.cameras import Pose, quat_to_matrix

    asset = sample_splats(seed=2, density=0.1)
    asset.means = asset.means - asset.means.mean(0)
    R = quat_to_matrix(np.array([0.8, 0.2, -0.3, 0.4]) / np.linalg.norm([0.8, 0.2, -0.3, 0.4]))
    moved = transform(asset, R)
    cam = Camera.pinhole(150, 150, 80, 60, 160, 120)
    for eye in ([14, -6, 4], [-9, -11, 5]):
        pose = look_at(np.array(eye, float), [0, 0, 0])
        m = pose.matrix()
        inv = np.eye(4)
        inv[:3, :3] = m[:3, :3] @ R  # the camera that sees the unrotated asset as this one sees the rotated
        inv[:3, 3] = m[:3, 3]
        a = render(moved, cam, pose, backend="torch").rgb
        b = render(asset, cam, Pose.from_matrix(inv), backend="torch").rgb
        assert float((a - b).abs().max()) < 2e-3


def test_stale_base_is_refused(store_with_scene, tmp_path):
    scene = store_with_scene
    merge(scene, _decisions(tmp_path, base=1), tmp_path)
    with pytest.raises(SceneStoreError, match="current version is 2, not 1; re-detect"):
        merge(scene, _decisions(tmp_path, base=1), tmp_path)
    assert scene.version_numbers() == [1, 2]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"action": "approve", "kind": "exploded"}, "kind 'exploded' is not one of"),
        ({"action": "maybe"}, "action 'maybe' is not one of"),
        ({"action": "approve", "kind": "removed", "gaussian_ids": [1, 10**9]}, "gaussian_ids out of range"),
        ({"action": "approve", "kind": "removed"}, "a removal needs gaussian_ids or a box"),
        ({"action": "approve", "kind": "added", "asset": "missing.ply"}, "asset .*missing.ply"),
        ({"action": "approve", "kind": "added", "asset": "nan.splat"}, "asset .*nan.splat"),
        ({"action": "approve", "kind": "moved", "gaussian_ids": [1], "transform": {"scale": -1}},
         "bad transform"),
        ({"action": "approve", "kind": "moved", "gaussian_ids": [1],
          "transform": {"rotation_wxyz": [0, 0, 0, 0]}}, "bad transform"),
    ],
)  # fmt: skip
def test_invalid_decisions_name_the_change_and_write_nothing(store_with_scene, tmp_path, change, message):
    write_splat(tmp_path / "nan.splat", sample_splats(seed=3, density=0.05))
    with open(tmp_path / "nan.splat", "r+b") as f:  # a NaN x in the first splat (.splat: 3 float32 first)
        f.write(np.float32(np.nan).tobytes())
    doc = {"base_version": 1, "decisions": [{"change_id": "c9", **change}]}
    with pytest.raises(DecisionError, match=f"c9.*{message}"):
        merge(store_with_scene, doc, tmp_path)
    assert store_with_scene.version_numbers() == [1]


def test_decisions_twice_for_one_change_are_refused(store_with_scene, tmp_path):
    doc = {"base_version": 1, "decisions": [{"change_id": "c1", "action": "reject"}] * 2}
    with pytest.raises(DecisionError, match="decided twice"):
        merge(store_with_scene, doc, tmp_path)


def test_apply_decisions_is_pure(store_with_scene, tmp_path):
    base = store_with_scene.version(1).load_splats()
    before = {f: getattr(base, f).copy() for f in FIELDS}
    decisions = parse_decisions(_decisions(tmp_path), tmp_path, len(base))
    apply_decisions(base, decisions)
    for f in FIELDS:
        assert np.array_equal(before[f], getattr(base, f))


# -- the model grows --------------------------------------------------------------------------------------
def test_merge_adds_the_new_photos_to_the_model(bench_world, tmp_path):
    """New photos of the place (registered for real) join the model with their poses and points; the
    existing cameras do not move; the next registration uses them."""

    from PIL import Image

    from bench.bench_registration import novel_views
    from reconstruction.registration import register_photos

    world, cached = bench_world
    scene = cached.copy_to(tmp_path / "store", "w", caches=False)
    gt = json.loads((world / "gt.json").read_text())
    novel_views(world, gt, 4, tmp_path / "new")
    reg = register_photos(scene.version(), tmp_path / "new")
    ok = [r for r in reg["images"] if r["status"] == "registered"]
    assert len(ok) >= 3
    doc = {
        "base_version": 1,
        "photos": {"registration": reg, "images": str(tmp_path / "new")},
        "decisions": [],
    }
    out = merge(scene, doc, tmp_path)
    assert out["model"]["new_images"] == len(ok)
    assert out["model"]["observations"] > 50 and out["model"]["new_points"] > 20
    v1, v2 = scene.version(1), scene.version(2)
    old = {e.entry.name: e.entry.cam_from_world for e in v1.images()}
    grown = {e.entry.name: e.entry for e in v2.images()}
    assert set(grown) == set(old) | {r["name"] for r in ok}
    for name, pose in old.items():
        assert np.array_equal(grown[name].cam_from_world.matrix(), pose.matrix())
    from reconstruction.cameras import Pose

    ba = out["model"]["local_ba"]
    assert ba["images"] == len(ok) and ba["usable"] and ba["error_after_px"] <= ba["error_before_px"] + 1e-9
    for r in ok:  # local BA of the new photos only: their poses move a little, towards their points
        reg_pose = Pose.from_json(r["cam_from_world"])
        assert np.linalg.norm(grown[r["name"]].cam_from_world.center() - reg_pose.center()) < 0.05
    rec = v2.load_model()
    new_ids = [i for i in rec.reg_image_ids() if rec.image(i).name in {r["name"] for r in ok}]
    assert all(rec.image(i).num_points3D > 10 for i in new_ids)
    assert np.array_equal(v2.load_splats().means, v1.load_splats().means)  # no decision: same splats
    # the grown version is a scene like any other: a further photo registers against it
    again = register_photos(v2, [tmp_path / "new" / ok[0]["name"]])
    assert again["images"][0]["status"] == "registered"
    Image.open(tmp_path / "new" / ok[0]["name"]).close()


# -- crash safety ---------------------------------------------------------------------------------------
def _merge_child(store: str, decisions: str, fsize: int | None, err: str) -> None:
    """A merge in a forked process; with ``fsize`` its files may not grow past that many bytes."""
    from reconstruction.store import SceneStore

    if fsize is not None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    try:
        merge(SceneStore(store).scene("s"), json.loads(Path(decisions).read_text()), Path(decisions).parent)
    except BaseException as e:
        Path(err).write_text(f"{type(e).__name__}: {e}")
        os._exit(1)
    os._exit(0)


def _start(store: Path, decisions: Path, fsize: int | None = None, err: Path | None = None):
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_merge_child, args=(str(store), str(decisions), fsize, str(err or os.devnull)))
    p.start()
    return p


def test_merge_survives_sigkill_at_any_moment(store_with_scene, tmp_path):
    """SIGKILL at 20 random moments of a merge, and one run out of file space: ``current`` always loads
    and is the old version or the complete new one; leftovers are cleaned by the next writer."""
    from reconstruction.store import SceneStore

    scene = store_with_scene
    store = scene.store.root
    decisions = tmp_path / "d" / "decisions.json"
    decisions.parent.mkdir()
    decisions.write_text(json.dumps(_decisions(decisions.parent)))
    n_old = len(scene.version(1).load_splats())
    t0 = time.perf_counter()
    p = _start(store, decisions)
    p.join(120)
    span = time.perf_counter() - t0
    assert p.exitcode == 0
    n_new = len(scene.version(2).load_splats())
    rng = random.Random(0)
    outcomes = []
    for _ in range(20):
        with SceneStore(store).scene("s").writer() as w:
            w.set_current(1)
        p = _start(store, decisions)
        time.sleep(rng.uniform(0, span))
        os.kill(p.pid, signal.SIGKILL)
        p.join(60)
        s = SceneStore(store).scene("s")
        cur = s.current_version()
        n = len(s.version().load_splats())
        assert (cur == 1 and n == n_old) or (cur > 1 and n == n_new)
        outcomes.append("old" if cur == 1 else "new")
    assert "old" in outcomes  # kills landed while the merge ran (later ones find it finished: "new")
    # out of space: the write fails, nothing becomes current
    with SceneStore(store).scene("s").writer() as w:
        w.set_current(1)
    p = _start(store, decisions, fsize=100_000, err=tmp_path / "err.txt")
    p.join(120)
    assert p.exitcode == 1 and "File too large" in (tmp_path / "err.txt").read_text()
    s = SceneStore(store).scene("s")
    assert s.current_version() == 1 and len(s.version().load_splats()) == n_old
    with s.writer():
        pass  # the next writer cleans what killed writers left
    staging = s.root / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
    assert not list(s.root.glob(".*.tmp")) and not list((s.root / "images").glob(".*.tmp"))
