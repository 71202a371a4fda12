"""SfM stage: pycolmap on photos rendered from the sample place with known cameras, and the Sim3 alignment."""

import shutil

import numpy as np
import pycolmap
import pytest
import torch

from bench.bench_bootstrap import cached_capture
from reconstruction.bootstrap import read_reference_centres
from reconstruction.cameras import Camera, ImageEntry, Pose, build_model, model_images
from reconstruction.errors import SfMError
from reconstruction.render import render
from reconstruction.sfm import (
    SfMConfig,
    Sim3,
    align_to_reference,
    alignment_residuals,
    choose_matcher,
    explained_observations,
    prune_view_graph,
    read_sfm_stats,
    run_sfm,
    umeyama,
)

CAPTURE = {"views": 10, "width": 160, "height": 120, "arc_deg": (170.0, 280.0)}


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """10 photos (160x120) of the sample place on an arc, with gt.json, and their SfM (shared, cached)."""
    root = cached_capture(tmp_path_factory.getbasetemp() / "bootstrap_capture", **CAPTURE)
    run_sfm(root / "images", root / "sfm")
    return root


def _rot_angle_deg(Ra, Rb):
    c = (np.trace(Ra @ Rb.T) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


def test_sfm_registers_every_photo_and_aligns_to_the_true_cameras(capture):
    rec = run_sfm(capture / "images", capture / "sfm")  # the finished run is reused
    assert rec.num_reg_images() == 10
    assert rec.num_points3D() > 100
    for f in ("database.db", "sparse/0/images.bin", "colmap.log", "sfm.json"):
        assert (capture / "sfm" / f).exists(), f
    assert "Elapsed time" in (capture / "sfm" / "colmap.log").read_text()  # COLMAP's chatter went there
    stats = read_sfm_stats(capture / "sfm")
    assert stats["matcher"] == "exhaustive" and stats["num_registered"] == 10 and stats["single_camera"]
    assert stats["unregistered"] == []

    ref = read_reference_centres(capture / "gt.json")
    sim3, aligned, none = align_to_reference(rec, None, ref)
    assert none is None
    res = alignment_residuals(aligned, ref)
    assert res["n"] == 10 and res["rms"] < 0.1  # metres, cameras 4.2 m from the middle
    # the original model is left alone
    assert alignment_residuals(rec, ref)["rms"] > 0.5
    # rotations follow the centres
    gt = {e.name: e for e in (ImageEntry.from_json(v) for v in __import__("json").loads(
        (capture / "gt.json").read_text())["views"])}  # fmt: skip
    for e in model_images(aligned):
        assert _rot_angle_deg(e.cam_from_world.R, gt[e.name].cam_from_world.R) < 2.0


def test_sfm_resumes_and_reuses_a_finished_run(capture, tmp_path):
    out = tmp_path / "sfm"
    shutil.copytree(capture / "sfm", out)
    log_size = (out / "colmap.log").stat().st_size
    rec = run_sfm(capture / "images", out)
    assert rec.num_reg_images() == 10
    assert (out / "colmap.log").stat().st_size == log_size  # nothing ran
    # an interrupted run (no model yet) resumes from the database: features are not extracted again
    shutil.rmtree(out / "sparse")
    (out / "sfm.json").unlink()
    rec = run_sfm(capture / "images", out)
    assert rec.num_reg_images() == 10
    new_log = (out / "colmap.log").read_text()[log_size:]
    assert new_log.count("Features for image were already extracted") == 10  # COLMAP skipped them


def test_sfm_maps_pruned_view_graphs_and_keeps_the_model_that_explains_most(capture, tmp_path):
    stats = read_sfm_stats(capture / "sfm")
    trials = stats["graph_trials"]
    assert trials[0]["top_k"] is None and sum(t["chosen"] for t in trials) == 1
    assert not list((capture / "sfm" / "mapping").glob("trial*/database.db"))  # the copies are gone
    chosen = next(t for t in trials if t["chosen"])
    best = max(trials, key=lambda t: (t["registered"], t["explained_observations"]))
    assert (chosen["registered"], chosen["explained_observations"]) == (
        best["registered"], best["explained_observations"],
    )  # fmt: skip

    # pruning: each photo keeps its best pairs, strong pairs stay, the source database is left alone
    db = pycolmap.Database.open(str(capture / "sfm" / "database.db"))
    ids, geoms = db.read_two_view_geometries()
    db.close()
    inliers = {pid: g.inlier_matches.shape[0] for pid, g in zip(ids, geoms, strict=True)}
    kept, dropped = prune_view_graph(capture / "sfm" / "database.db", tmp_path / "pruned.db", 2, 10**6)
    assert kept + dropped == len(inliers) and dropped > 0
    db = pycolmap.Database.open(str(tmp_path / "pruned.db"))
    left = {pid: g.inlier_matches.shape[0] for pid, g in zip(*db.read_two_view_geometries(), strict=True)}
    db.close()
    assert len(left) == kept
    for image in range(1, 11):
        mine = sorted((n for pid, n in inliers.items() if image in pycolmap.pair_id_to_image_pair(pid)))
        theirs = sorted(n for pid, n in left.items() if image in pycolmap.pair_id_to_image_pair(pid))
        assert theirs[-2:] == mine[-2:]
    db = pycolmap.Database.open(str(capture / "sfm" / "database.db"))
    assert len(db.read_two_view_geometries()[0]) == len(inliers)
    db.close()

    # the score: a camera tilted by 2 degrees explains fewer of the matches than the mapped one
    rec = pycolmap.Reconstruction(str(capture / "sfm" / "sparse" / "0"))
    db_path, cfg = capture / "sfm" / "database.db", SfMConfig()
    good = explained_observations(rec, db_path, capture / "images", tmp_path / "w", cfg)
    assert good >= 0.9 * sum(p.track.length() for p in rec.points3D.values())
    bent = pycolmap.Reconstruction(rec)
    image = bent.image(next(iter(bent.reg_image_ids())))
    pose = image.cam_from_world()
    half = np.radians(2.0) / 2
    tilt = pycolmap.Rotation3d(np.array([np.sin(half), 0.0, 0.0, np.cos(half)]))  # xyzw, about the camera's x
    bent.frame(image.frame_id).rig_from_world = pycolmap.Rigid3d(tilt * pose.rotation, pose.translation)
    assert explained_observations(bent, db_path, capture / "images", tmp_path / "w", cfg) < 0.97 * good


def test_sfm_vocabulary_tree_matching_and_incremental_mapping(capture, tmp_path):
    cfg = SfMConfig(matcher="vocabtree", vocabtree_num_images=6, mapper="incremental")
    rec = run_sfm(capture / "images", tmp_path / "sfm", cfg)
    assert (tmp_path / "sfm" / "vocab_tree.bin").is_file()
    assert read_sfm_stats(tmp_path / "sfm")["matcher"] == "vocabtree"
    assert rec.num_reg_images() >= 9
    ref = read_reference_centres(capture / "gt.json")
    assert alignment_residuals(align_to_reference(rec, None, ref)[1], ref)["median"] < 0.1


def test_sfm_reports_how_many_photos_registered(capture, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(capture / "images", images)
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(8):  # unrelated photos: noise with structure SIFT finds but nothing matches
        noise = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(noise).resize((160, 120), Image.Resampling.NEAREST).save(images / f"z_noise_{i}.png")
    with pytest.raises(SfMError, match=r"only 1\d of 18 photos registered .*need 14"):
        run_sfm(images, tmp_path / "sfm", SfMConfig(min_registered_fraction=0.75))


def test_sfm_input_errors(tmp_path):
    with pytest.raises(SfMError, match="does not exist"):
        run_sfm(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "one").mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "one" / "a.png")
    with pytest.raises(SfMError, match="at least 2 photos, found 1"):
        run_sfm(tmp_path / "one", tmp_path / "out")
    (tmp_path / "one" / "b.png").write_bytes(b"not an image")
    with pytest.raises(SfMError, match="b.png: cannot be read"):
        run_sfm(tmp_path / "one", tmp_path / "out")
    with pytest.raises(SfMError, match="matcher 'magic'"):
        choose_matcher(5, SfMConfig(matcher="magic"))
    (tmp_path / "one" / "b.png").unlink()
    Image.new("RGB", (32, 32)).save(tmp_path / "one" / "c.png")
    with pytest.raises(SfMError, match="mapper 'magic'"):
        run_sfm(tmp_path / "one", tmp_path / "out", SfMConfig(mapper="magic", min_registered=2))


def test_choose_matcher_by_image_count():
    cfg = SfMConfig()
    assert choose_matcher(10, cfg) == "exhaustive"
    assert choose_matcher(40, cfg) == "exhaustive"
    assert choose_matcher(41, cfg) == "vocabtree"
    assert choose_matcher(300, SfMConfig(ordered=True)) == "sequential"
    assert choose_matcher(10, SfMConfig(matcher="sequential")) == "sequential"


# -- alignment ---------------------------------------------------------------------------------------
def _random_sim3(seed=0) -> Sim3:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    from reconstruction.cameras import quat_to_matrix

    return Sim3(float(rng.uniform(0.3, 3.0)), quat_to_matrix(q / np.linalg.norm(q)), rng.normal(size=3) * 5)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(20, 3))
    true = _random_sim3(1)
    est = umeyama(src, true.apply(src))
    assert est.scale == pytest.approx(true.scale, rel=1e-9)
    np.testing.assert_allclose(est.R, true.R, atol=1e-9)
    np.testing.assert_allclose(est.t, true.t, atol=1e-8)
    with pytest.raises(SfMError, match="at least 3"):
        umeyama(src[:2], src[:2])
    line = np.outer(np.arange(5.0), [1.0, 2.0, 3.0])
    with pytest.raises(SfMError, match="collinear"):
        umeyama(line, line + 1)


def test_alignment_maps_model_and_splats_consistently():
    """Rendering the aligned splats from the aligned cameras gives the same photo as before alignment."""
    from bench.sample_scene import look_at, sample_splats

    splats = sample_splats(2, density=0.15)
    cam = Camera.pinhole(70.0, 70.0, 40.0, 30.0, 80, 60)
    poses = [
        look_at(np.array([4 * np.cos(a), 4 * np.sin(a), 1.5]), [0, 0, 0.4]) for a in np.linspace(3, 4.5, 5)
    ]
    entries = [ImageEntry(f"v{i}.png", cam, p) for i, p in enumerate(poses)]
    rec = build_model(entries, splats.means[:50].astype(float))
    true = _random_sim3(3)  # reference frame = true(model frame)
    ref = {e.name: true.apply(e.cam_from_world.center()) for e in entries}

    sim3, aligned, moved = align_to_reference(rec, splats, ref)
    assert sim3.scale == pytest.approx(true.scale, rel=1e-6)
    np.testing.assert_allclose(moved.means, true.apply(splats.means), atol=1e-4)
    assert alignment_residuals(aligned, ref)["rms"] < 1e-6
    # points move too
    p_old = np.stack([rec.point3D(i).xyz for i in sorted(rec.point3D_ids())])
    p_new = np.stack([aligned.point3D(i).xyz for i in sorted(aligned.point3D_ids())])
    np.testing.assert_allclose(p_new, true.apply(p_old), atol=1e-6)
    # appearance is unchanged: same image from the moved camera (SH rotated, log-scales shifted)
    new_poses = {e.name: e.cam_from_world for e in model_images(aligned)}
    with torch.no_grad():
        for e in entries[:2]:
            a = render(splats, cam, e.cam_from_world).rgb
            b = render(moved, cam, new_poses[e.name]).rgb
            assert float((a - b).abs().max()) < 2e-3


def test_alignment_needs_three_named_cameras():
    cam = Camera.pinhole(50.0, 50.0, 20.0, 15.0, 40, 30)
    entries = [
        ImageEntry(f"v{i}.png", cam, Pose(np.array([1.0, 0, 0, 0]), np.array([i, 0.0, 0]))) for i in range(4)
    ]
    rec = build_model(entries)
    with pytest.raises(SfMError, match="only 2 registered image"):
        align_to_reference(rec, None, {"v0.png": [0, 0, 0], "v1.png": [1, 0, 0], "other.png": [0, 1, 0]})
    assert isinstance(Sim3(1.0, np.eye(3), np.zeros(3)).to_pycolmap(), pycolmap.Sim3d)


def test_sfm_with_known_poses_triangulates_in_their_frame(capture, tmp_path):
    """Known cameras are kept exactly; the points land where the photos say (reprojection < 1 px) and on
    the sample place's surfaces."""
    from reconstruction.bootstrap import read_reference_poses

    known = read_reference_poses(capture / "gt.json")
    shutil.copytree(capture / "sfm", tmp_path / "sfm", ignore=shutil.ignore_patterns("sparse", "sfm.json"))
    rec = run_sfm(capture / "images", tmp_path / "sfm", known=known)
    assert rec.num_reg_images() == 10 and rec.num_points3D() > 100
    assert rec.compute_mean_reprojection_error() < 1.0
    assert read_sfm_stats(tmp_path / "sfm")["mapper"] == "known-poses"
    for e in model_images(rec):
        pose, cam = known[e.name]
        np.testing.assert_allclose(e.cam_from_world.matrix(), pose.matrix(), atol=1e-9)
        assert e.camera == cam
    # on the photographed surfaces: next to the Gaussians the photos were rendered from
    from bench.sample_scene import sample_splats

    xyz = torch.as_tensor(np.stack([p.xyz for p in rec.points3D.values()]), dtype=torch.float32)
    means = torch.as_tensor(sample_splats(0, 1.0).means)
    dist = torch.cat([torch.cdist(c, means).min(1).values for c in xyz.split(256)]).numpy()
    assert np.median(dist) < 0.15 and np.percentile(dist, 80) < 0.3  # the Gaussians are ~7 cm apart
    # a photo without a pose is refused before anything runs
    known.pop("view_000.png")
    with pytest.raises(SfMError, match="no known pose, e.g. view_000.png"):
        run_sfm(capture / "images", tmp_path / "sfm2", known=known)


def test_robust_alignment_ignores_a_misregistered_camera():
    from reconstruction.sfm import robust_umeyama

    rng = np.random.default_rng(4)
    src = rng.normal(size=(12, 3)) * 3
    true = _random_sim3(5)
    dst = true.apply(src) + rng.normal(0, 1e-3, (12, 3))
    dst[3] += [4.0, -2.0, 1.0]  # one camera far off
    est, inl = robust_umeyama(src, dst)
    assert not inl[3] and inl.sum() == 11
    np.testing.assert_allclose(est.R, true.R, atol=1e-3)
    assert est.scale == pytest.approx(true.scale, rel=1e-3)
    assert umeyama(src, dst).scale != pytest.approx(true.scale, rel=1e-3)  # the plain fit is pulled away
