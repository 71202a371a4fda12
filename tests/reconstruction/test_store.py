import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from reconstruction.errors import SceneFormatError, SceneLockedError, SceneStoreError
from reconstruction.store import SceneStore, parse_scene_ref


def tree_digest(root):
    """sha256 of every file under root (path and content), to prove nothing changed."""
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(root)):
        dirnames.sort()
        for f in sorted(files):
            if f == ".lock":
                continue
            p = os.path.join(dirpath, f)
            h.update(os.path.relpath(p, root).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def add_copy(scene, **kw):
    v = scene.version()
    with scene.writer() as w:
        return w.add_version(
            v.load_splats(),
            v.load_model(),
            [i.entry for i in v.images()],
            {i.entry.name: scene.root / i.file for i in v.images() if i.file},
            reason=kw.pop("reason", "copy"),
            **kw,
        )


def test_parse_scene_ref():
    assert parse_scene_ref("/data/store/plaza") == (parse_scene_ref("/data/store/plaza/")[0], "plaza")
    with pytest.raises(SceneStoreError):
        parse_scene_ref("/data/store/bad name")


def test_import_creates_a_complete_version(store_with_scene, sample_dataset):
    scene = store_with_scene
    assert scene.current_version() == 1 and scene.version_numbers() == [1]
    v = scene.version()
    meta = v.meta
    assert meta["parent"] is None and meta["reason"].startswith("import colmap")
    assert meta["lineage"]["source"]["format"] == "colmap"
    assert v.load_splats().equal(
        __import__("reconstruction.ply", fromlist=["read_ply"]).read_ply(sample_dataset / "splats.ply")
    )
    images = v.images()
    assert len(images) == 4 and all(i.sha256 and (scene.root / i.file).is_file() for i in images)
    # photos are stored by content
    for i in images:
        assert hashlib.sha256((sample_dataset / "images" / i.entry.name).read_bytes()).hexdigest() == i.sha256
    info = v.info()
    assert info["num_gaussians"] == len(v.load_splats()) and len(info["images"]) == 4
    # the model's 3D points, as the person branch measures the ground on them
    rec, points = v.load_model(), v.load_points()
    assert points.shape == (rec.num_points3D(), 3) and points.dtype == np.float64
    assert np.allclose(np.sort(points[:, 0]), np.sort([p.xyz[0] for p in rec.points3D.values()]))
    assert not (scene.root / ".staging").exists() or not any((scene.root / ".staging").iterdir())


def test_versions_are_immutable_and_rollback_moves_only_the_pointer(store_with_scene):
    scene = store_with_scene
    d1 = tree_digest(scene.root / "v1")
    assert add_copy(scene) == 2
    assert scene.version(2).meta["parent"] == 1
    assert scene.rollback(1) == 1
    assert scene.current_version() == 1
    assert scene.version_numbers() == [1, 2]
    # a new version after a rollback gets a fresh number and the current version as parent
    assert add_copy(scene) == 3
    assert scene.version(3).meta["parent"] == 1
    assert tree_digest(scene.root / "v1") == d1
    assert all(oct(p.stat().st_mode)[-3:] == "444" for p in (scene.root / "v1").rglob("*") if p.is_file())
    events = [e["event"] for e in scene.log()]
    assert events == ["new_version", "new_version", "rollback", "new_version"]
    with pytest.raises(SceneStoreError, match="version 9 does not exist"):
        scene.rollback(9)
    assert scene.current_version() == 3


def test_copy_to_keeps_versions_and_optionally_caches_never_a_writers_files(store_with_scene, tmp_path):
    scene = store_with_scene
    (scene.root / ".cache" / "registration").mkdir(parents=True)
    (scene.root / ".cache" / "registration" / "index.npz").write_bytes(b"derived")
    (scene.root / ".work").mkdir(exist_ok=True)
    (scene.root / ".work" / "run.log").write_text("a run's scratch")
    with scene.writer():  # the lock file exists while the copy is made
        copy = scene.copy_to(tmp_path / "other")
    bare = scene.copy_to(tmp_path / "other", "bare", caches=False)
    assert copy.ref == f"{tmp_path / 'other'}/{scene.name}" and copy.current_version() == 1
    for c in (copy, bare):
        assert tree_digest(c.root / "v1") == tree_digest(scene.root / "v1")
        assert not (c.root / ".work").exists() and not (c.root / ".lock").exists()
    assert (copy.root / ".cache" / "registration" / "index.npz").read_bytes() == b"derived"
    assert not (bare.root / ".cache").exists()
    assert add_copy(copy) == 2 and scene.version_numbers() == [1]  # the copy is independent
    with pytest.raises(SceneStoreError, match="already exists"):
        scene.copy_to(tmp_path / "other", "bare")
    with pytest.raises(SceneStoreError, match="no such scene"):
        SceneStore(tmp_path / "none").scene("x").copy_to(tmp_path / "other")


def test_second_writer_is_refused_in_process(store_with_scene):
    scene = store_with_scene
    with scene.writer():
        with pytest.raises(SceneLockedError, match="another writer holds the scene lock"):
            with scene.writer():
                pass
    with scene.writer():  # released
        pass


def test_second_writer_is_refused_across_processes(store_with_scene):
    scene = store_with_scene
    code = (
        "import sys, time; from reconstruction.store import SceneStore\n"
        f"s = SceneStore({str(scene.store.root)!r}).scene('s')\n"
        "with s.writer():\n    print('locked', flush=True); time.sleep(30)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(SceneLockedError, match=f"pid {p.pid}"):
            scene.rollback(1)
    finally:
        p.kill()
        p.wait()
    t0 = time.time()
    scene.rollback(1)  # the lock died with its holder
    assert time.time() - t0 < 5


def test_failed_write_leaves_the_store_untouched(store_with_scene):
    scene = store_with_scene
    before = tree_digest(scene.root)
    v = scene.version()
    bad = v.load_splats()
    bad.means[3, 1] = np.nan
    with pytest.raises(SceneFormatError, match="NaN"):
        with scene.writer() as w:
            w.add_version(bad, v.load_model(), [i.entry for i in v.images()], reason="bad")
    # a model that does not match the image list fails validation after everything was staged
    with pytest.raises(SceneFormatError, match="registered images"):
        with scene.writer() as w:
            w.add_version(v.load_splats(), v.load_model(), [i.entry for i in v.images()][:2], reason="bad")
    assert tree_digest(scene.root) == before
    assert scene.current_version() == 1 and scene.version_numbers() == [1]


def test_stale_base_is_refused(store_with_scene):
    scene = store_with_scene
    add_copy(scene)
    with pytest.raises(SceneStoreError, match="current version is 2, not 1"):
        add_copy(scene, expected_base=1)
    assert add_copy(scene, expected_base=2) == 3


def test_leftover_staging_and_partial_versions_are_ignored(store_with_scene):
    """A crash before the rename leaves only staging debris: it is never seen as a version."""
    scene = store_with_scene
    (scene.root / ".staging" / "v2-deadbeef").mkdir(parents=True)
    (scene.root / "v7").mkdir()  # no meta.json: not a version
    assert scene.version_numbers() == [1]
    assert add_copy(scene) == 2


def test_current_pointer_is_replaced_atomically(store_with_scene):
    scene = store_with_scene
    ino = (scene.root / "current").stat().st_ino
    add_copy(scene)
    assert (scene.root / "current").stat().st_ino != ino  # a new file renamed over the old one
    assert json.loads((scene.root / "current").read_text()) == {"version": 2}
    assert not list(scene.root.glob(".current.*.tmp"))


def test_unknown_scene_and_version(tmp_path):
    store = SceneStore(tmp_path)
    with pytest.raises(SceneStoreError, match="no such scene"):
        store.scene("nope").version()
    with pytest.raises(SceneStoreError, match="scene names"):
        store.scene("../evil")
    assert store.scenes() == []
