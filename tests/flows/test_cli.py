"""The `idu scene` command line, through typer's runner and (once) the installed console script."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from reconstruction.ply import read_ply, write_ply

runner = CliRunner()
BG = "0.62,0.72,0.85"  # the sample photos' background


def idu(*args, ok=True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.stderr + res.stdout
    return res


def import_colmap(dataset, store, ply, ok=True):
    return idu(
        "scene", "import", dataset, "--store", store, "--name", "s", "--format", "colmap", "--ply", ply, ok=ok
    )


def idu_json(*args):
    return json.loads(idu(*args, "--json").stdout)


@pytest.fixture
def scene_ref(tmp_path, sample_dataset):
    ref = f"{tmp_path}/store/s"
    import_colmap(sample_dataset, tmp_path / "store", sample_dataset / "splats.ply")
    return ref


def test_info_versions_rollback_contract(scene_ref, sample_dataset):
    info = idu_json("scene", "info", scene_ref)
    assert info["version"] == 1 and info["current"] is True
    assert info["num_gaussians"] == len(read_ply(sample_dataset / "splats.ply"))
    im = info["images"][0]
    assert set(im) >= {"name", "cam_from_world", "camera"}
    assert set(im["cam_from_world"]) == {"rotation_wxyz", "translation"}
    assert set(im["camera"]) == {"model", "width", "height", "params"}
    # import onto an existing name adds a version
    idu(
        "scene",
        "import",
        sample_dataset,
        "--store",
        scene_ref.rsplit("/", 1)[0],
        "--name",
        "s",
        "--ply",
        sample_dataset / "splats.ply",
    )  # --format auto finds colmap
    vs = idu_json("scene", "versions", scene_ref)
    assert vs["current"] == 2
    assert [v["version"] for v in vs["versions"]] == [1, 2]
    assert vs["versions"][1]["parent"] == 1 and vs["versions"][0]["parent"] is None
    assert all({"version", "parent", "created_at", "reason"} <= set(v) for v in vs["versions"])
    rb = idu_json("scene", "rollback", scene_ref, "--to", 1)
    assert rb == {"scene": scene_ref, "previous": 2, "current": 1}
    assert idu_json("scene", "info", scene_ref, "--version", 2)["current"] is False
    human = idu("scene", "versions", scene_ref).stdout
    assert "* v1" in human and "  v2" in human


def test_render_at_a_photo_pose_reproduces_the_photo(scene_ref, sample_dataset, tmp_path):
    info = idu_json("scene", "info", scene_ref)
    name = info["images"][2]["name"]
    out = tmp_path / "r.png"
    r = idu_json("scene", "render", scene_ref, "--image", name, "--out", out, "--background", BG)
    got = np.asarray(Image.open(out).convert("RGB"), float)
    photo = np.asarray(Image.open(sample_dataset / "images" / name).convert("RGB"), float)
    assert got.shape == photo.shape == (60, 80, 3) and (r["width"], r["height"]) == (80, 60)
    assert np.abs(got - photo).max() <= 1.0  # same splats, same pose, same renderer
    # a pose given as JSON (an info entry, moved sideways) renders a different view
    entry = dict(info["images"][2])
    entry["cam_from_world"] = {
        **entry["cam_from_world"],
        "translation": list(np.add(entry["cam_from_world"]["translation"], [0.4, 0, 0])),
    }
    pose = tmp_path / "pose.json"
    pose.write_text(json.dumps(entry))
    idu("scene", "render", scene_ref, "--pose-json", pose, "--out", tmp_path / "r2.png", "--background", BG)
    moved = np.asarray(Image.open(tmp_path / "r2.png").convert("RGB"), float)
    assert np.abs(moved - photo).mean() > 5


def test_render_argument_errors(scene_ref, tmp_path):
    res = idu("scene", "render", scene_ref, "--out", tmp_path / "x.png", ok=False)
    assert res.exit_code == 1 and "exactly one of --image" in res.stderr
    res = idu("scene", "render", scene_ref, "--image", "nope.png", "--out", tmp_path / "x.png", ok=False)
    assert res.exit_code == 1 and "no image named 'nope.png'" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = idu("scene", "render", scene_ref, "--pose-json", bad, "--out", tmp_path / "x.png", ok=False)
    assert res.exit_code == 1 and "bad.json: not valid JSON" in res.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz"])
def test_export_formats(scene_ref, tmp_path, fmt):
    out = tmp_path / f"e.{fmt}"
    r = idu_json("scene", "export", scene_ref, "--format", fmt, "--out", out)
    n = idu_json("scene", "info", scene_ref)["num_gaussians"]
    assert r["num_gaussians"] == n and out.stat().st_size == r["bytes"] > 0
    if fmt == "splat":
        assert r["bytes"] == 32 * n
    if fmt == "ply":
        assert read_ply(out).equal(read_ply(f"{scene_ref}/v1/splats.ply"))


def test_export_crop_box(scene_ref, tmp_path):
    out = tmp_path / "crop.ply"
    box = json.dumps({"center": [0, 0, 0.5], "size": [2, 2, 1], "rotation_wxyz": [1, 0, 0, 0]})
    r = idu_json("scene", "export", scene_ref, "--format", "ply", "--out", out, "--crop-box", box)
    m = read_ply(out).means
    full = idu_json("scene", "info", scene_ref)["num_gaussians"]
    assert 0 < r["num_gaussians"] == len(m) < full
    assert np.all(np.abs(m - [0, 0, 0.5]) <= np.array([1, 1, 0.5]) + 1e-6)


# -- bad input: exit code != 0, one line naming the file and the problem, store untouched --------------
def _ply_bytes(path):
    return bytearray(path.read_bytes())


def _header_end(b):
    return b.index(b"end_header\n") + len(b"end_header\n")


def _truncated(good, out):
    b = _ply_bytes(good)
    out.write_bytes(b[: len(b) - 100])
    return "truncated"


def _garbage(good, out):
    out.write_bytes(b"this is not a ply file at all\n" * 10)
    return "PLY"


def _nan(good, out):
    s = read_ply(good)
    s.opacities[5] = np.nan
    write_ply_unchecked(out, s)
    return "NaN"


def _count_mismatch(good, out):
    b = _ply_bytes(good)
    n = len(read_ply(good))
    out.write_bytes(
        bytes(b).replace(f"element vertex {n}\n".encode(), f"element vertex {n - 3}\n".encode(), 1)
    )
    return "vertices"


def _f_rest_count(good, out):
    b = bytes(_ply_bytes(good))
    head, body = b[: _header_end(b)], b[_header_end(b) :]
    # drop the last f_rest property from the header and its column from the body
    lines = head.decode().splitlines(keepends=True)
    props = [ln.split()[-1] for ln in lines if ln.startswith("property")]
    last = max(i for i, p in enumerate(props) if p.startswith("f_rest_"))
    drop = next(i for i, ln in enumerate(lines) if ln.strip() == f"property float {props[last]}")
    lines.pop(drop)
    rec = np.frombuffer(body, dtype=np.dtype([(p, "<f4") for p in props]))
    keep = [p for i, p in enumerate(props) if i != last]
    out.write_bytes(
        "".join(lines).encode()
        + np.ascontiguousarray(np.stack([rec[p] for p in keep], 1)).astype("<f4").tobytes()
    )
    return "f_rest"


def _unknown_property(good, out):
    b = bytes(_ply_bytes(good))
    out.write_bytes(b.replace(b"property float opacity\n", b"property float opacityz\n", 1))
    return "opacity"


def write_ply_unchecked(path, s):
    """write_ply refuses NaN; write the bytes of a NaN file ourselves to test the reader."""
    clean = s.to_numpy()
    bad_idx = np.argwhere(~np.isfinite(clean.opacities)).ravel()
    clean.opacities[bad_idx] = 0.0
    write_ply(path, clean)
    b = bytearray(path.read_bytes())
    h = _header_end(b)
    props = [ln.split()[-1] for ln in b[:h].decode().splitlines() if ln.startswith("property")]
    col = props.index("opacity")
    for i in bad_idx:
        off = h + (i * len(props) + col) * 4
        b[off : off + 4] = np.float32(np.nan).tobytes()
    path.write_bytes(bytes(b))


BAD_PLY = [_truncated, _garbage, _nan, _count_mismatch, _f_rest_count, _unknown_property]


@pytest.mark.parametrize("corrupt", BAD_PLY, ids=lambda f: f.__name__.strip("_"))
def test_bad_ply_is_refused_and_store_untouched(scene_ref, sample_dataset, tmp_path, corrupt):
    from tests.reconstruction.test_store import tree_digest

    bad = tmp_path / "bad.ply"
    word = corrupt(sample_dataset / "splats.ply", bad)
    store_dir = scene_ref.rsplit("/", 1)[0]
    before = tree_digest(store_dir)
    res = import_colmap(sample_dataset, store_dir, bad, ok=False)
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.ply" in lines[0], res.stderr
    assert word.lower() in lines[0].lower(), lines[0]
    assert tree_digest(store_dir) == before


@pytest.mark.parametrize("missing", ["images.bin", "cameras.bin", "points3D.bin"])
def test_missing_colmap_file_is_refused(sample_dataset, tmp_path, missing):
    ds = tmp_path / "ds"
    shutil.copytree(sample_dataset, ds)
    (ds / "sparse" / "0" / missing).unlink()
    res = import_colmap(ds, tmp_path / "store", ds / "splats.ply", ok=False)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and missing in lines[0] and "sparse" in lines[0]
    assert not (tmp_path / "store" / "s" / "current").exists()


def test_unknown_format_and_missing_source(tmp_path):
    res = idu("scene", "import", tmp_path, "--store", tmp_path / "st", "--name", "s", ok=False)
    assert res.exit_code == 1 and "cannot tell the scene format" in res.stderr
    res = idu("scene", "info", f"{tmp_path}/st/none", "--json", ok=False)
    assert res.exit_code == 1 and "no such scene" in res.stderr and res.stdout == ""


def test_console_script_entry_point(scene_ref):
    exe = shutil.which("idu", path=os.path.dirname(sys.executable)) or shutil.which("idu")
    assert exe, "the idu console script is installed with the package"
    p = subprocess.run([exe, "scene", "versions", scene_ref, "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["current"] == 1
    p = subprocess.run([exe, "scene", "rollback", scene_ref, "--to", "5"], capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr.strip().splitlines()[-1].startswith("error: ")


def test_scene_merge_contract(scene_ref, tmp_path):
    """``idu scene merge --decisions``: the next version; a stale base or a bad decision is one line."""
    decisions = tmp_path / "decisions.json"
    box = {"center": [0, 0, 0.5], "size": [3, 3, 2]}
    c1 = {"change_id": "c1", "action": "approve", "kind": "removed", "box": box, "reviewer": "ana"}
    decisions.write_text(json.dumps({"base_version": 1, "decisions": [c1]}))
    out = idu_json("scene", "merge", scene_ref, "--decisions", decisions)
    assert out["version"] == 2 and out["parent"] == 1 and out["diff"]["c1"]["removed"] > 0
    assert idu_json("scene", "versions", scene_ref)["current"] == 2
    r = idu("scene", "merge", scene_ref, "--decisions", decisions, ok=False)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "current version is 2, not 1" in r.stderr
    decisions.write_text(json.dumps({"base_version": 2, "decisions": [{"change_id": "c2", "action": "nod"}]}))
    r = idu("scene", "merge", scene_ref, "--decisions", decisions, ok=False)
    assert r.exit_code == 1 and "c2" in r.stderr and "action 'nod'" in r.stderr


def test_detect_contract(bench_world, tmp_path):
    """`idu detect --json` (DESIGN.md): one JSON document, masks as photo-sized 8-bit PNGs under --out; the
    store is not changed; a bad registration document is one line naming the file."""
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    photos = tmp_path / "photos"
    photos.mkdir()
    views = [
        im
        for im in gt["after"]["images"]
        if im["name"] in ("after_001.png", "after_002.png", "after_005.png")
    ]
    for im in views:
        shutil.copyfile(world / im["path"], photos / im["name"])
    reg = tmp_path / "reg.json"
    cam = gt["cameras"]["after"]
    entries = [{"name": im["name"], "status": "registered", "camera": cam,
                "cam_from_world": im["cam_from_world"]} for im in views]  # fmt: skip
    reg.write_text(json.dumps({"images": entries}))
    before = sorted(p.name for p in scene.root.iterdir())
    doc = idu_json("detect", scene.ref, "--images", photos, "--registration", reg, "--out", tmp_path / "out")
    assert sorted(p.name for p in scene.root.iterdir()) == before
    assert doc["scene"] == scene.ref and doc["version"] == scene.current_version()
    assert set(doc["photos"].values()) == {"compared"} and doc["candidates"]
    for c in doc["candidates"]:
        assert set(c) >= {"id", "kind", "label", "confidence", "box", "masks"}
        assert set(c["box"]) == {"center", "size", "rotation_wxyz"}
        for name, rel in c["masks"].items():
            m = Image.open(tmp_path / "out" / rel)
            assert m.mode == "L" and m.size == Image.open(photos / name).size
    reg.write_text("[1, 2")
    res = idu(
        "detect", scene.ref, "--images", photos, "--registration", reg, "--out", tmp_path / "o2", ok=False
    )
    assert res.exit_code != 0 and "reg.json: not an idu register --json document" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
