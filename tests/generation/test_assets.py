"""Assets for added objects on the small benchmark world (its true masks and poses, its before-scene):
the multi-view optimisation, the layered composite it relies on, placement of a generated asset, and the
files one candidate gets (PLY, JSON with transform and metrics, previews)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from bench.bench_assets import carve_hull, true_views
from bench.runner import split_after, true_registration
from generation.assets import AssetConfig, AssetError, asset_for_candidate, build_asset
from generation.image_to_3d import to_object_frame
from generation.multiview import (
    MultiViewConfig,
    _joint,
    composite,
    multiview_asset,
    prepare_windows,
    scene_near,
)
from generation.placement import place_asset
from generation.surface import load_mesh, mesh_to_splats
from reconstruction.cameras import quat_to_matrix
from reconstruction.ply import read_ply
from reconstruction.render import render
from reconstruction.splat_ops import in_box, transform
from reconstruction.splats import FIELDS, Splats


@pytest.fixture(scope="module")
def world(bench_world):
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    update, heldout = split_after(gt)
    changes = {c["id"]: c for c in gt["changes"]}
    return world, gt, scene.version().load_splats(), update, heldout, changes


def _crate(world):
    w, gt, splats, update, heldout, changes = world
    c = changes["added_crate"]
    views = true_views(w, gt, "added_crate", update)
    assert len(views) == 2, [v.name for v in views]  # the world's layout: the crate shows in 2 update photos
    return c, views


def test_the_layered_composite_is_the_joint_render(world):
    """The scene is split by depth around the box once; per step only the middle layer is rendered with
    the asset. That must be the render of everything together (the rasterizer composites in the order of
    the centres' depths)."""
    _, _, splats, *_ = world
    c, views = _crate(world)
    win = prepare_windows(splats, views, MultiViewConfig(), c["box"])[0]
    rng = np.random.default_rng(0)
    centre, size = np.asarray(c["box"]["center"]), np.asarray(c["box"]["size"])
    asset = Splats.empty(300)
    asset.means = (centre + (rng.random((300, 3)) - 0.5) * size).astype(np.float32)
    asset.scales[:] = np.log(0.05)
    asset.opacities[:] = 1.0
    asset.sh0 = rng.normal(0, 1, (300, 3)).astype(np.float32)
    a = asset.to_torch()
    near = scene_near(splats, win.camera, win.pose)
    sub = Splats(**{f: torch.from_numpy(np.ascontiguousarray(getattr(splats, f)[near])) for f in FIELDS})
    with torch.no_grad():
        rgb, cover = composite(win, a)
        ref = render(_joint(sub, a), win.camera, win.pose, backend="torch")
        scene_only = render(sub, win.camera, win.pose, backend="torch")
    # equal up to where the joint render stops early (transmittance below 1e-4) and the layers do not
    diff = (rgb - ref.rgb).abs()
    assert float(diff.max()) < 1 / 255 and float(diff.mean()) < 1e-5, (float(diff.max()), float(diff.mean()))
    assert len(win.middle.means) < len(near)  # the layers did take Gaussians out of the per-step render
    # coverage is where the asset changed the picture
    changed = (ref.rgb - scene_only.rgb).abs().amax(-1) > 0.05
    assert float(cover[changed].mean()) > 0.5 and float(cover[~changed].mean()) < 0.1


def test_the_multiview_asset_fits_its_photos_and_stays_in_its_box(world):
    _, _, splats, *_ = world
    c, views = _crate(world)
    points = carve_hull(c["box"], views)
    config = MultiViewConfig(steps=60, refine_start=20, refine_every=20)
    asset, placement, stats = multiview_asset(splats, points, c["box"], views, config, name="crate")
    before, after = stats["before"]["mean"], stats["after"]["mean"]
    assert after["silhouette_iou"] >= 0.88 and after["silhouette_iou"] > before["silhouette_iou"], stats
    assert after["psnr_mask"] > before["psnr_mask"] + 0.5, stats
    assert stats["loss_last"] < stats["loss_first"]
    assert stats["refinements"] and stats["num_gaussians"] > 0
    placed = transform(asset, placement["rotation_wxyz"], placement["translation"], placement["scale"])
    box = c["box"]
    grown = np.asarray(box["size"]) * (1 + config.box_margin) + 1e-4
    assert in_box(placed.means, box["center"], grown, box["rotation_wxyz"]).all()
    assert np.isfinite(np.asarray(placed.means)).all()


def test_a_generated_asset_is_placed_by_its_silhouettes(world):
    """A perfect generator's output — the crate's own mesh, in the object frame, turned and of unit size —
    is scaled, turned and moved onto the crate: silhouettes match, it stands on the ground, not in it."""
    w, gt, splats, *_ = world
    c, views = _crate(world)
    th = 1.0
    turn = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    mesh = load_mesh(w / c["mesh"])
    asset = mesh_to_splats(to_object_frame(mesh, turn), num=3000)
    windows = prepare_windows(splats, views, MultiViewConfig(), c["box"])
    placement, res = place_asset(asset, c["box"], windows, np.array([0.0, 0.0, 1.0]), splats)
    assert res["silhouette_iou_mean"] >= 0.85, res
    assert res["silhouette_iou_fit"] >= res["silhouette_iou_search"] - 0.02
    true_extent = float(np.ptp(mesh.vertices @ turn.T, axis=0).max())  # what the object frame divided by
    assert placement["scale"] == pytest.approx(true_extent, rel=0.1)
    diag = float(np.linalg.norm(c["box"]["size"]))
    assert np.linalg.norm(np.subtract(placement["translation"], c["box"]["center"])) < 0.1 * diag
    R = quat_to_matrix(np.asarray(placement["rotation_wxyz"]))
    assert R[:, 2] @ np.array([0.0, 0.0, 1.0]) > 0.999  # upright: the asset's up is the scene's
    # the ground under it was found; resting on it may not cost the photos' agreement
    assert res["ground_gap"] is not None and np.isfinite(res["ground_gap"])
    assert res["silhouette_iou_mean"] >= res["silhouette_iou_fit"] - 0.01
    assert max(res["penetration"].values()) < 0.05


def _candidate_folder(world, tmp_path, cid="c1", obj="added_crate", names=None):
    """A detect output folder for one true object (its masks, its carved hull, its box)."""
    w, gt, *_ = world
    update = names or split_after(gt)[0]
    views = true_views(w, gt, obj, update)
    (tmp_path / "masks" / cid).mkdir(parents=True)
    (tmp_path / "support").mkdir()
    masks = {}
    for v in views:
        Image.fromarray((v.mask > 0).astype(np.uint8) * 255).save(tmp_path / "masks" / cid / f"{v.name}.png")
        masks[v.name] = f"masks/{cid}/{v.name}.png"
    box = next(c for c in gt["changes"] if c["id"] == obj)["box"]
    np.save(tmp_path / "support" / f"{cid}_points.npy", carve_hull(box, views).astype(np.float32))
    cand = {"id": cid, "kind": "added", "box": box, "masks": masks, "points": f"support/{cid}_points.npy"}
    photos = tmp_path / "photos"
    photos.mkdir()
    for im in gt["after"]["images"]:
        if im["name"] in masks:
            (photos / im["name"]).write_bytes((w / im["path"]).read_bytes())
    return cand, true_registration(gt, list(masks)), photos


def test_one_candidate_gets_its_ply_transform_metrics_and_previews(world, tmp_path):
    cand, reg, photos = _candidate_folder(world, tmp_path / "detect")
    config = AssetConfig(multiview=MultiViewConfig(steps=20))
    doc = asset_for_candidate(tmp_path / "detect", cand, reg, photos, tmp_path / "out", world[2], config)
    out = tmp_path / "out"
    assert json.loads((out / "c1.json").read_text()) == doc
    asset = read_ply(out / "c1.ply")
    assert len(asset) == doc["num_gaussians"] > 0
    assert doc["backend"] == "multiview" and set(doc["transform"]) == {
        "rotation_wxyz",
        "translation",
        "scale",
    }
    m = doc["metrics"]
    assert set(m["views"]) == set(cand["masks"]) and 0.8 < m["silhouette_iou"] <= 1 and m["psnr_mask"] > 10
    sides = Image.open(out / doc["previews"]["sides"])
    assert sides.size == (4 * 192, 192)
    tiles = np.asarray(sides).reshape(192, 4, 192, 3)
    assert all((np.abs(tiles[:, k].astype(int) - 128).max(-1) > 20).mean() > 0.02 for k in range(4))
    for name, rel in doc["previews"]["photos"].items():
        comp = np.asarray(Image.open(out / rel).convert("RGB"), np.float64)
        photo = np.asarray(Image.open(photos / name).convert("RGB"), np.float64)
        assert comp.shape == photo.shape
        near = Image.open(tmp_path / "detect" / cand["masks"][name]).filter(ImageFilter.MaxFilter(9))
        inside = np.asarray(near) > 0  # the mask grown by 4 pixels
        buf = io.BytesIO()
        Image.open(photos / name).convert("RGB").save(buf, "JPEG", quality=90)
        jpeg_noise = np.abs(np.asarray(Image.open(buf), np.float64) - photo).mean(-1)[~inside].mean()
        assert np.abs(comp - photo).mean(-1)[~inside].mean() < jpeg_noise + 0.5  # the photo away from it
        assert np.abs(comp - photo).mean(-1)[inside].mean() > jpeg_noise + 5  # the asset is drawn there
    # the hull backend and a seed give another asset in the same contract
    doc2 = asset_for_candidate(tmp_path / "detect", cand, reg, photos, tmp_path / "out2", world[2],
                               AssetConfig(backend="hull", previews=False))  # fmt: skip
    assert doc2["backend"] == "hull" and "previews" not in doc2 and doc2["metrics"]["silhouette_iou"] > 0.5


def test_a_single_view_candidate_uses_the_image_to_3d_generator(world, tmp_path, sphere_model):
    folder, _ = sphere_model
    w, gt, splats, update, *_ = world
    views = true_views(w, gt, "added_crate", update)
    cand, reg, photos = _candidate_folder(world, tmp_path / "detect", names=[views[-1].name])
    config = AssetConfig(single_view_backend="triplane", model=str(folder), gaussians=2000)
    doc = asset_for_candidate(tmp_path / "detect", cand, reg, photos, tmp_path / "out", splats, config)
    assert doc["backend"] == "triplane" and doc["crop_from"] == views[-1].name
    res = doc["placement_residuals"]
    assert res["silhouette_iou_mean"] > 0.5  # a ball on a crate's silhouette, scaled and moved onto it
    diag = float(np.linalg.norm(cand["box"]["size"]))
    assert np.linalg.norm(np.subtract(doc["transform"]["translation"], cand["box"]["center"])) < 0.3 * diag


def test_bad_candidates_are_refused_with_one_line_naming_them(world, tmp_path):
    _, _, splats, *_ = world
    cand, reg, photos = _candidate_folder(world, tmp_path / "detect")
    run = lambda c, **kw: asset_for_candidate(tmp_path / "detect", c, reg, photos, tmp_path / "o", splats,  # noqa: E731
                                              AssetConfig(**kw))  # fmt: skip
    with pytest.raises(AssetError, match="c1: only added objects"):
        run({**cand, "kind": "removed"})
    with pytest.raises(AssetError, match="unknown asset backend 'nerf'.*multiview, hull, person, triplane"):
        run(cand, backend="nerf")
    np.save(tmp_path / "detect" / "support" / "bad.npy", np.full((10, 3), np.nan, np.float32))
    with pytest.raises(AssetError, match="NaN"):
        run({**cand, "points": "support/bad.npy"}, backend="hull")
    with pytest.raises(AssetError, match="cannot read its supporting points"):
        run({**cand, "points": "support/missing.npy"})
    blank = tmp_path / "detect" / "masks" / "c1" / "blank.png"
    Image.fromarray(np.zeros((240, 320), np.uint8)).save(blank)
    only_blank = {n: "masks/c1/blank.png" for n in cand["masks"]}
    with pytest.raises(AssetError, match="c1: none of the 2 photo"):
        run({**cand, "masks": only_blank})
    small = tmp_path / "detect" / "masks" / "c1" / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    with pytest.raises(AssetError, match="small.png: mask is"):
        run({**cand, "masks": {next(iter(cand["masks"])): "masks/c1/small.png"}})


def test_build_asset_needs_photos_with_masks(world):
    _, _, splats, *_ = world
    c, views = _crate(world)
    with pytest.raises(AssetError, match="no photo|none of the 0"):
        build_asset(splats, {"id": "c9", "box": c["box"]}, [], carve_hull(c["box"], views))


def test_idu_assets_builds_the_added_objects_of_a_detect_folder(world, bench_world, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    _, scene = bench_world
    cand, reg, photos = _candidate_folder(world, tmp_path / "detect")
    (tmp_path / "detect" / "candidates.json").write_text(json.dumps({"candidates": [
        cand, {"id": "c2", "kind": "removed", "box": cand["box"], "masks": {}}]}))  # fmt: skip
    (tmp_path / "detect" / "registration.json").write_text(json.dumps(reg))
    args = ["assets", scene.ref, "--detect", tmp_path / "detect", "--images", photos,
            "--out", tmp_path / "out", "--backend", "hull"]  # fmt: skip
    res = CliRunner().invoke(app, [str(a) for a in [*args, "--json"]])
    assert res.exit_code == 0, res.stderr + res.stdout
    doc = json.loads(res.stdout)
    assert [a["id"] for a in doc["assets"]] == ["c1"] and doc["scene"] == scene.ref  # the removal gets none
    assert (tmp_path / "out" / "c1.ply").is_file() and (
        tmp_path / "out" / "c1_previews" / "sides.jpg"
    ).is_file()
    assert "c1: hull asset of" in res.stderr
    res = CliRunner().invoke(app, [str(a) for a in [*args, "--candidate", "c7"]])
    assert res.exit_code != 0 and "no added candidate c7" in res.stderr
    (tmp_path / "detect" / "registration.json").write_text("{")
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code != 0 and "registration.json: cannot read the registration" in res.stderr
    assert scene.current_version() == 1 and len(scene.versions()) == 1  # the store is not changed


def test_the_ground_is_the_top_of_the_layer_not_the_gaussians_buried_under_it():
    """A floor of flat Gaussians at height 0.3 over a layer of Gaussians buried down to 0.5 under it (as an
    optimised scene leaves them, hidden from its cameras): their median sinks into the layer, the ground
    found under a footprint stays on the floor; nothing there, no ground."""
    from generation.placement import PlacementConfig, _ground

    rng = np.random.default_rng(0)
    g = np.stack(np.meshgrid(np.arange(-3, 3, 0.05), np.arange(-3, 3, 0.05)), -1).reshape(-1, 2)
    floor = np.concatenate([g, np.full((len(g), 1), 0.3)], 1)
    buried = np.concatenate([rng.uniform(-3, 3, (2 * len(g), 2)), rng.uniform(-0.2, 0.3, (2 * len(g), 1))], 1)
    means = np.concatenate([floor, buried])
    n = len(means)
    scene = Splats(means=means.astype(np.float32), quats=np.tile([1.0, 0, 0, 0], (n, 1)).astype(np.float32),
                   scales=np.full((n, 3), np.log(0.03), np.float32), opacities=np.full(n, 4.0, np.float32),
                   sh0=np.zeros((n, 3), np.float32), shN=np.zeros((n, 0, 3), np.float32))  # fmt: skip
    R, centre = np.eye(3), np.array([0.2, -0.1, 1.2])  # a box 1.8 high standing on the floor
    ground = _ground(scene, centre, 0.5, R, -0.6, PlacementConfig())
    assert abs(ground - (-0.9)) < 0.02, ground
    near = np.hypot(*(means[:, :2] - centre[:2]).T) < 0.5
    assert np.median(means[near, 2]) - centre[2] < -0.9 - 0.08  # where the median would put it
    assert _ground(scene, centre + np.array([10.0, 0, 0]), 0.5, R, -0.6, PlacementConfig()) is None


def test_the_ground_from_the_scene_points_is_their_lowest_layer_under_the_footprint():
    """Triangulated points on a floor at 0.3 (a centimetre of noise) and on a planter standing in the
    footprint, up to 1.1: the median of the lowest layer is the floor within a centimetre, where the median
    of all the points under the footprint's top rises into the planter; sparse points under a small
    footprint reach out to twice its radius; too few anywhere: no ground."""
    from generation.placement import ground_from_points

    rng = np.random.default_rng(1)
    floor = np.concatenate([rng.uniform(-3, 3, (600, 2)), 0.3 + rng.normal(0, 0.01, (600, 1))], 1)
    planter = np.stack([rng.uniform(0.4, 0.8, 60), rng.uniform(-0.3, 0.3, 60), rng.uniform(0.3, 1.1, 60)], 1)
    points = np.concatenate([floor, planter])
    R, centre = np.eye(3), np.array([0.2, -0.1, 1.2])  # a box 1.8 high standing on the floor
    ground = ground_from_points(points, centre, 0.6, R, -0.6)
    assert abs(ground - (-0.9)) < 0.01, ground
    under = (np.hypot(*(points[:, :2] - centre[:2]).T) < 0.6) & (points[:, 2] - centre[2] < -0.6)
    assert np.median(points[under, 2]) - centre[2] > -0.9 + 0.03  # what a plain median finds
    few = floor[np.hypot(*(floor[:, :2] - centre[:2]).T) > 0.15]
    assert abs(ground_from_points(few, centre, 0.25, R, -0.6, min_points=5) - (-0.9)) < 0.01
    assert ground_from_points(floor[:4], centre, 0.6, R, -0.6) is None
    assert ground_from_points(np.zeros((0, 3)), centre, 0.6, R, -0.6) is None


def test_the_hypotheses_kept_for_the_reviewer_are_different_readings():
    from generation.human.body import BodyParams
    from generation.human.fit import _distinct

    ranked = [(0.9, BodyParams.standing(np.radians(d), np.zeros(3))) for d in (10, 20, 350, 190, 100)]
    assert _distinct(ranked, 2, 60.0) == [0, 3]  # 20 and 350 are the first one again
    assert _distinct(ranked, 3, 60.0) == [0, 3, 4]
    crouch = [ranked[0], (0.8, BodyParams.crouching(np.radians(15), np.zeros(3))), ranked[1]]
    assert _distinct(crouch, 2, 60.0) == [0, 1]  # another stance is another reading
    assert _distinct(ranked[:2], 2, 60.0) == [0, 1]  # too few differ: the best of the rest
