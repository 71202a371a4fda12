"""Registration of new photos against the fixture world's scene: accuracy, camera inputs, gates, bad files."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.fixtures import FIXTURE_SEED, render_world_view
from reconstruction.cameras import Camera, Pose, project_points
from reconstruction.errors import IDUError, SceneFormatError
from reconstruction.pose_check import turned
from reconstruction.registration import (
    RegistrationConfig,
    _read_index,
    build_vocabulary,
    extract,
    guided_correspondences,
    load_photo,
    match_descriptors,
    pairs_within,
    register_photos,
    rotation_std_deg,
    scene_index,
)


def _rot_deg(a: Pose, b: Pose) -> float:
    R = a.matrix()[:3, :3] @ b.matrix()[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


@pytest.fixture(scope="module")
def new_view(bench_world, tmp_path_factory):
    """A photo of the unchanged place from a pose between two before-views, 30 cm higher, one stop
    brighter, rendered by the world's own renderer; and its true pose."""
    world, _ = bench_world
    gt = json.loads((world / "gt.json").read_text())
    cam = Camera.from_json(gt["cameras"]["before"])
    a, b = (Pose.from_json(gt["before"]["images"][i]["cam_from_world"]) for i in (5, 6))
    c = 0.5 * (a.center() + b.center()) + np.array([0.0, 0.0, 0.3])
    R = a.matrix()[:3, :3]
    pose = Pose.from_matrix(np.block([[R, (-R @ c)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))
    img = render_world_view(FIXTURE_SEED, pose, cam, exposure_stops=1.0)
    folder = tmp_path_factory.mktemp("new_view")
    Image.fromarray(img).save(folder / "new.png")
    return folder / "new.png", pose, cam


def _snapshot(scene):
    return sorted((p.relative_to(scene.root).as_posix(), p.stat().st_mtime_ns)
                  for p in scene.root.rglob("*") if ".cache" not in p.parts)  # fmt: skip


def test_a_new_view_registers_in_the_scene_frame(bench_world, new_view, tmp_path):
    world, scene = bench_world
    path, truth, cam = new_view
    before = _snapshot(scene)
    doc = register_photos(scene.version(), path.parent)
    assert doc["scene"] == scene.ref and doc["version"] == 1
    (r,) = doc["images"]
    assert r["status"] == "registered" and r["reason"] is None, r
    pose = Pose.from_json(r["cam_from_world"])
    assert _rot_deg(pose, truth) < 0.2
    assert np.linalg.norm(pose.center() - truth.center()) < 0.05  # metres; the place is ~30 m across
    assert r["camera"] == cam.to_json() and r["camera_source"] == "scene"
    assert r["num_inliers"] >= 30 and r["inlier_ratio"] > 0.2 and r["reprojection_error"] < 2.0
    assert _snapshot(scene) == before  # the store is not changed (the cache aside)
    # the index is built once per version and reused
    index = scene_index(scene.version())
    mtime = index.path.stat().st_mtime_ns
    assert scene_index(scene.version()).path.stat().st_mtime_ns == mtime


def test_camera_inputs_orientation_grey_rgba_16bit_and_unknown_focal(new_view, bench_world, tmp_path):
    _, scene = bench_world
    path, truth, cam = new_view
    rgb = Image.open(path).convert("RGB")
    d = tmp_path / "variants"
    d.mkdir()
    rgb.convert("L").save(d / "grey.png")
    rgb.convert("RGBA").save(d / "rgba.png")
    # 16-bit grey (a darker exposure, so that it is not a duplicate of grey.png once in 8 bits)
    Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 200).astype(np.uint16)).save(d / "deep.png")
    # stored on its side with an EXIF orientation tag: viewers (and we) turn it upright
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    rgb.transpose(Image.Transpose.ROTATE_90).save(d / "rotated.jpg", quality=95, exif=exif)
    doc = register_photos(scene.version(), d)
    by = {r["name"]: r for r in doc["images"]}
    for name in ("grey.png", "rgba.png", "deep.png", "rotated.jpg"):
        r = by[name]
        assert r["status"] == "registered", (name, r["reason"])
        assert _rot_deg(Pose.from_json(r["cam_from_world"]), truth) < 0.3, name
        assert r["camera"]["width"] == 320 and r["camera"]["height"] == 240, name
    # focal length unknown: estimated from the photo
    doc = register_photos(scene.version(), [path], RegistrationConfig(camera="unknown"))
    (r,) = doc["images"]
    assert r["status"] == "registered" and r["camera_source"] == "unknown", r["reason"]
    assert r["camera"]["params"][0] == pytest.approx(cam.params[0], rel=0.05)
    assert _rot_deg(Pose.from_json(r["cam_from_world"]), truth) < 1.0
    with pytest.raises(IDUError, match="no EXIF focal length"):
        register_photos(scene.version(), [path], RegistrationConfig(camera="exif"))


def test_foreign_photos_and_bad_files_are_rejected_with_reasons(bench_world, new_view, tmp_path):
    from bench.sample_scene import look_at, render_photo, sample_splats

    _, scene = bench_world
    path, _, _ = new_view
    d = tmp_path / "bad"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(d / "noise.png")
    blocks = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
    Image.fromarray(blocks).save(d / "blocks.png")
    other = render_photo(sample_splats(3), Camera.pinhole(270, 270, 160, 120, 320, 240),
                         look_at(np.array([4.0, -1.0, 1.5]), [0, 0, 0.4]))  # fmt: skip
    Image.fromarray(other).save(d / "other_place.png")
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("not a photo\n")
    shutil.copy(path, d / "a.png")
    shutil.copy(path, d / "b_copy.png")
    data = (d / "a.png").read_bytes()
    Image.open(path).save(d / "cut.jpg", quality=90)
    (d / "cut.jpg").write_bytes((d / "cut.jpg").read_bytes()[:2000])
    # a 20000 x 20000 PNG header: refused before anything is decoded
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (d / "huge.png").write_bytes(png + data[33:200])
    doc = register_photos(scene.version(), d)
    by = {r["name"]: r for r in doc["images"]}
    assert by["a.png"]["status"] == "registered"
    assert by["b_copy.png"]["reason"] == "duplicate of a.png"
    assert by["empty.jpg"]["reason"] == "empty file (0 bytes)"
    assert by["notes.jpg"]["reason"].startswith("not an image file")
    assert by["cut.jpg"]["reason"].startswith("corrupt or truncated image")
    assert "20000x20000 pixels (400 MP) is more than the 150 MP limit" in by["huge.png"]["reason"]
    for name in ("noise.png", "blocks.png", "other_place.png"):  # never registered
        assert by[name]["status"] == "rejected" and by[name]["reason"], name
    assert doc["summary"] == doc["summary"] | {"registered": 1, "rejected": len(by) - 1}
    with pytest.raises(SceneFormatError, match="empty file"):
        load_photo(d / "empty.jpg")
    (tmp_path / "none").mkdir()
    with pytest.raises(IDUError, match="no photos in the folder"):
        register_photos(scene.version(), tmp_path / "none")


def test_after_views_register_near_their_true_poses_by_the_render_check(bench_world):
    """The after-capture (another sun, changed objects, viewpoints far from every scene photo): most photos
    keep too few SIFT inliers for the count gates, and the render check registers them, near the truth."""
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    truth = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
    doc = register_photos(scene.version(), world / "after" / "images")
    assert len(doc["images"]) == len(truth)
    reg = [r for r in doc["images"] if r["status"] == "registered"]
    assert len(reg) >= 5, [r["reason"] for r in doc["images"]]
    for r in reg:
        p = Pose.from_json(r["cam_from_world"])
        assert _rot_deg(p, truth[r["name"]]) < 1.0
        assert np.linalg.norm(p.center() - truth[r["name"]].center()) < 0.3
    checked = [r for r in reg if r.get("registered_by") == "pose check"]
    assert len(checked) >= 3
    for r in checked:
        pc = r["pose_check"]
        m = r.get("before_refinement", r)  # the figures the gates judged
        assert m["num_inliers"] < 30 or m["inlier_ratio"] < 0.15 or m["reprojection_error"] > 2.0
        assert pc["passed"] and pc["agreement"] >= 2 * pc["decoy_agreement"] and pc["agreement"] >= 0.05
    # poses whose rotation was uncertain were refined by guided matching: more certain, and no less right
    refined = [r for r in reg if r.get("refined_by") == "guided matching"]
    assert refined
    for r in refined:
        assert r["rotation_std_deg"] < r["before_refinement"]["rotation_std_deg"]
        assert r["num_inliers"] > r["before_refinement"]["num_inliers"]
    unrefined = register_photos(
        scene.version(), world / "after" / "images", RegistrationConfig(refine_above_deg=0)
    )

    def median_error(d: dict) -> float:
        return float(np.median([_rot_deg(Pose.from_json(r["cam_from_world"]), truth[r["name"]])
                                for r in d["images"] if r["status"] == "registered"]))  # fmt: skip

    assert not any("refined_by" in r for r in unrefined["images"])
    assert median_error(doc) <= median_error(unrefined) + 0.02
    # without the render check the count gates alone reject those photos, with their reason
    plain = RegistrationConfig(min_checked_inliers=0)
    alone = register_photos(scene.version(), world / "after" / "images", plain)
    by = {r["name"]: r for r in alone["images"]}
    for r in checked:
        assert by[r["name"]]["status"] == "rejected"
        assert re.search(r"need 30\)|is below|is above", by[r["name"]]["reason"]), by[r["name"]]["reason"]


def test_guided_matching_started_along_the_uncertain_directions_leaves_a_wrong_basin(bench_world):
    """The fixture's after_004 (another sun, 9 degrees from the nearest scene photo): its SIFT pose is
    0.7 degrees off and guided matching from it alone confirms it (0.6 degrees off with a claimed rotation
    certainty of 0.04 degrees); started also from the pose moved along its least certain directions, the
    run that explains the photo's keypoints best is right."""
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    truth = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
    photo = [world / "after" / "images" / "after_004.png"]
    errors = {}
    for directions in (0, 2):
        doc = register_photos(scene.version(), photo, RegistrationConfig(guided_directions=directions))
        (r,) = doc["images"]
        assert r["status"] == "registered" and r["refined_by"] == "guided matching", r
        errors[directions] = _rot_deg(Pose.from_json(r["cam_from_world"]), truth["after_004.png"])
    assert errors[0] > 0.4 and errors[2] < 0.15, errors


def test_rotation_uncertainty_follows_the_geometry_of_the_points():
    """The rotation's standard deviation from the inliers' Jacobian matches the spread of poses solved from
    noisy projections, and is large for points at one depth in one corner of the photo."""
    import pycolmap

    rng = np.random.default_rng(0)
    cam = Camera.pinhole(300, 300, 160, 120, 320, 240)
    truth = Pose.from_matrix(np.eye(4))
    X = np.c_[rng.uniform(-3, 3, 60), rng.uniform(-2, 2, 60), rng.uniform(4, 12, 60)]
    uv = X[:, :2] / X[:, 2:] * 300 + [160, 120]
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ref.loss_function_scale = 100.0  # least squares: the covariance's own assumption
    errs = []
    for _ in range(100):
        noisy = uv + rng.normal(0, 1.0, uv.shape)
        out = pycolmap.estimate_and_refine_absolute_pose(noisy, X, cam.to_pycolmap(), refinement_options=ref)
        errs.append(_rot_deg(Pose.from_pycolmap(out["cam_from_world"]), truth))
    spread = float(np.sqrt(np.mean(np.square(errs))))
    std = rotation_std_deg(cam, truth, X, np.full(len(X), np.sqrt(2.0)))  # 1 px per axis
    assert 0.75 * spread < std < 1.33 * spread, (std, spread)
    # the same number of points on a distant patch: rotation and translation trade off
    flat = np.c_[rng.uniform(2, 3, 60), rng.uniform(1, 2, 60), np.full(60, 20.0)]
    assert rotation_std_deg(cam, truth, flat, np.full(60, np.sqrt(2.0))) > 5 * std
    assert rotation_std_deg(cam, truth, X[:3], np.ones(3)) == float("inf")


def test_guided_matching_finds_the_points_near_where_a_rough_pose_projects_them(bench_world, new_view):
    world, scene = bench_world
    path, truth, cam = new_view
    a, b = np.random.default_rng(1).uniform(0, 100, (2, 500, 2))
    i, j = pairs_within(a, b, 7.5)
    brute = np.argwhere(np.linalg.norm(a[:, None] - b[None], axis=2) <= 7.5)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(map(tuple, brute.tolist()))
    assert len(brute) > 100
    config = RegistrationConfig()
    index = scene_index(scene.version(), config)
    photo = load_photo(path, config)
    xy, desc = extract(photo, config)
    rough = turned(truth, np.array([0.0, 1.0, 0.0]), 0.5)  # 0.5 deg off: ~2.4 px here
    q, p = guided_correspondences(index, xy, desc, cam, rough, radius=8.0)
    assert len(q) >= 100 and len(np.unique(p)) == len(p) and len(np.unique(q)) == len(q)
    uv, _ = project_points(cam, truth, index.points[p])
    err = np.linalg.norm(uv - xy[q], axis=1)
    # about half lie where the true pose puts them (RANSAC's job to pick them): more than matching the
    # whole photo against its retrieved scene photos finds in all
    (plain,) = register_photos(scene.version(), path.parent, RegistrationConfig(refine_above_deg=0))["images"]
    assert int((err < 2.0).sum()) >= max(100, plain["num_inliers"] + 1), (len(q), plain["num_inliers"])
    # the radius bounds the search: nothing farther than it from the rough pose's projections
    uv_rough, _ = project_points(cam, rough, index.points[p])
    assert np.linalg.norm(uv_rough - xy[q], axis=1).max() <= 8.0 + 1e-6


def test_matching_and_retrieval_primitives():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 128)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    perm = rng.permutation(200)
    b = a[perm] + rng.normal(0, 0.01, (200, 128)).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    m = match_descriptors(a, b)
    assert len(m) == 200 and np.array_equal(perm[m[:, 1]], m[:, 0])
    # ambiguous descriptors (two near-identical candidates) fail the ratio test
    b2 = np.concatenate([b, b[:50] + 1e-4])
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    assert len(match_descriptors(a, b2)) == 150
    vocab = build_vocabulary([a, b], size=16, seed=0)
    assert vocab.shape == (16, 128) and np.allclose(np.linalg.norm(vocab, axis=1), 1, atol=1e-5)
    with pytest.raises(IDUError, match="too few to index"):
        build_vocabulary([a[:3]])


def test_blocked_matching_equals_the_whole_similarity_matrix():
    """Rows taken a block at a time (several blocks, a ragged last one) give exactly the matches of one
    [N, M] similarity matrix: best two per row, ratio test, mutual best per column."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(700, 128)).astype(np.float32)
    b = np.concatenate([a[rng.permutation(700)[:500]] + rng.normal(0, 1.3, (500, 128)),
                        rng.normal(size=(150, 128))]).astype(np.float32)  # fmt: skip
    a = np.concatenate([a, a[:100] + rng.normal(0, 0.3, (100, 128))]).astype(np.float32)  # near twins
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    sim = a.astype(np.float64) @ b.T.astype(np.float64)
    top2 = np.sort(sim, 1)[:, -2:]
    dist = np.sqrt(np.clip(2 - 2 * top2, 0, None))
    rows = np.flatnonzero(dist[:, 1] < 0.8 * dist[:, 0])
    cols = sim.argmax(1)[rows]
    mutual = sim.argmax(0)[cols] == rows
    want = np.stack([rows, cols], 1)[mutual]
    assert 100 < len(rows) < 700 and 10 < (~mutual).sum()  # the ratio test and the mutual check both decide
    for block in (256, 64, 800):
        got = match_descriptors(a, b, block=block)
        assert np.array_equal(got, want)


def test_cli_register_json(bench_world, new_view):
    from flows.cli import app

    _, scene = bench_world
    path, _, _ = new_view
    res = CliRunner().invoke(app, ["register", scene.ref, "--images", str(path.parent), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (r,) = doc["images"]
    assert set(r) >= {"name", "status", "reason", "cam_from_world", "camera", "num_inliers", "seconds"}
    assert r["status"] == "registered"
    res = CliRunner().invoke(app, ["register", scene.ref, "--images", "/nonexistent", "--json"])
    assert res.exit_code == 1 and "photo folder does not exist" in res.output


@pytest.mark.parametrize("tracks", ["model", "triangulate"])
def test_index_tracks_from_the_scene_model_or_by_triangulation(bench_world, new_view, tracks):
    _, scene = bench_world
    path, truth, _ = new_view
    cfg = RegistrationConfig(tracks=tracks)
    index = scene_index(scene.version(), cfg)
    assert sum(int((p >= 0).sum()) for p in index.point_ids) > 1000
    again = _read_index(index.path)  # what later runs use: the very descriptors this run matched with
    assert again.names == index.names
    for a, b in zip(again.desc, index.desc, strict=True):
        np.testing.assert_array_equal(a, b)
    (r,) = register_photos(scene.version(), [path], cfg)["images"]
    assert r["status"] == "registered" and _rot_deg(Pose.from_json(r["cam_from_world"]), truth) < 0.2


def test_index_needs_model_observations_when_asked(store_with_scene):
    """The sample dataset's model has points but no tracks: 'model' refuses, 'auto' triangulates."""
    version = store_with_scene.version()
    model = version.load_model()
    assert all(len(model.image(i).points2D) == 0 for i in model.reg_image_ids())
    with pytest.raises(IDUError, match="observations for only 0 of 4 photos"):
        scene_index(version, RegistrationConfig(tracks="model"))


def test_feature_cache_is_keyed_by_the_extraction_settings(new_view, tmp_path):
    import dataclasses

    from reconstruction.registration import extract

    path, _, _ = new_view
    cfg = RegistrationConfig()
    photo = load_photo(path, cfg)
    plain = extract(photo, cfg, tmp_path)
    affine = extract(photo, dataclasses.replace(cfg, affine_sift=True), tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2
    assert len(plain[0]) != len(affine[0])
    again = extract(photo, cfg, tmp_path)  # from the cache: exactly the fresh features
    np.testing.assert_array_equal(again[0], plain[0])
    np.testing.assert_array_equal(again[1], plain[1])


def test_an_index_reuses_the_scene_photos_cached_features(bench_world, tmp_path):
    """A version's index leaves each scene photo's features in the scene's feature cache; the index of a
    later version (here: the same version's, rebuilt) reads them from there and is exactly the same."""
    from reconstruction.registration import feature_cache

    _, scene = bench_world
    version = scene.copy_to(tmp_path / "store", caches=False).version()
    first = scene_index(version)
    cached = {p.name: p.stat().st_mtime_ns for p in feature_cache(version).glob("*.npz")}
    assert len(cached) == len(version.images()) == len(first.names)
    shutil.rmtree(first.path.parent)  # the index goes, the features stay
    second = scene_index(version)
    assert {p.name: p.stat().st_mtime_ns for p in feature_cache(version).glob("*.npz")} == cached
    assert second.names == first.names
    np.testing.assert_array_equal(second.vocabulary, first.vocabulary)
    np.testing.assert_array_equal(second.bow, first.bow)
    for a, b, pa, pb in zip(first.desc, second.desc, first.point_ids, second.point_ids, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(pa, pb)
