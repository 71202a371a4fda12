"""Benchmark worlds (bench/worlds): determinism, geometric ground truth, image realism, photometry, CLI.

Ground truth is checked against the world folder's own files only (gt.json, PNGs, PLY meshes), with an
independent ray caster: masks must be where the object's mesh is the first surface along each pixel-centre
ray, and inside the projected box.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image
from typer.testing import CliRunner

from bench.worlds import WORLD_PRESETS, anny_available, generate_world
from bench.worlds.person import CLOTHES, make_person
from reconstruction.cameras import Camera, Pose

# A reduced world: few small views, one sample per pixel (the place itself is the full one).
REDUCED = dataclasses.replace(
    WORLD_PRESETS["small"],
    width=128,
    height=96,
    num_before=6,
    num_after=5,
    supersample=1,
    ao_rays=2,
    after_candidates=30,
    thumb_width=64,
    person=anny_available(),
)
TINY = dataclasses.replace(REDUCED, width=64, height=48, num_before=3, num_after=2, ao_rays=0, person=False)
SEED = 11


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(SEED, tmp_path_factory.mktemp("worlds") / "w", config=REDUCED)


@pytest.fixture(scope="module")
def gt(world) -> dict:
    return json.loads((world / "gt.json").read_text())


def _mesh_scene(path: Path):
    m = o3d.io.read_triangle_mesh(str(path))
    assert len(m.triangles) > 0, path
    s = o3d.t.geometry.RaycastingScene()
    s.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(m))
    return s


def _pixel_rays(camera: Camera, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """World rays [H, W, 6] through pixel centres (COLMAP: (x + 0.5, y + 0.5)) and the camera z of each
    unit direction [H, W]."""
    k = camera.K()
    u, v = np.meshgrid(np.arange(camera.width) + 0.5, np.arange(camera.height) + 0.5)
    dc = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    dw = dc @ pose.R
    dw /= np.linalg.norm(dw, axis=-1, keepdims=True)
    o = np.broadcast_to(pose.center(), dw.shape)
    return np.concatenate([o, dw], -1).astype(np.float32), (dw @ pose.R.T)[..., 2]


def _t_hit(scene, rays: np.ndarray) -> np.ndarray:
    return scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()


def _cross2(a, b) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def inside_hull(corners: np.ndarray, pts: np.ndarray, tol: float = 1.0) -> np.ndarray:
    """Whether points [N, 2] lie inside the convex hull of corners [K, 2] (within ``tol`` pixels)."""
    c = sorted(map(tuple, corners))

    def half(points):
        h = []
        for q in points:
            while len(h) >= 2 and _cross2(np.subtract(h[-1], h[-2]), np.subtract(q, h[-2])) <= 0:
                h.pop()
            h.append(q)
        return h

    hull = np.array(half(c)[:-1] + half(c[::-1])[:-1])  # counter-clockwise
    a, b = hull, np.roll(hull, -1, 0)
    edge = b - a
    n = np.stack([-edge[:, 1], edge[:, 0]], 1) / np.linalg.norm(edge, axis=1, keepdims=True)
    d = np.einsum("pkj,kj->pk", pts[:, None, :] - a[None], n)
    return (d >= -tol).all(1)


def _views(gt, which):
    cam = Camera.from_json(gt["cameras"][which])
    for im in gt[which]["images"]:
        yield im, cam, Pose.from_json(im["cam_from_world"])


def _mask(world: Path, rel: str, cam: Camera) -> np.ndarray:
    m = np.asarray(Image.open(world / rel))
    assert m.dtype == np.uint8 and m.shape == (cam.height, cam.width), rel
    return m > 0


# -- format ------------------------------------------------------------------------------------
def test_folder_and_gt_format(world, gt):
    assert gt["generator_version"] and gt["seed"] == SEED
    assert gt["cameras"]["before"]["model"] == "PINHOLE"
    assert len(gt["before"]["images"]) == REDUCED.num_before
    assert len(gt["after"]["images"]) == REDUCED.num_after
    kinds = {c["kind"] for c in gt["changes"]}
    cats = {c["category"] for c in gt["changes"] if c["kind"] == "added"}
    assert kinds == {"added", "removed", "moved"}
    assert {"crate", "vehicle"} <= cats
    ids = [c["id"] for c in gt["changes"]]
    assert len(set(ids)) == len(ids)
    for which in ("before", "after"):
        for im in gt[which]["images"]:
            assert not Path(im["path"]).is_absolute() and (world / im["path"]).is_file()
            assert Image.open(world / im["path"]).size == (REDUCED.width, REDUCED.height)
    for im in gt["after"]["images"]:
        assert set(im["objects"]) == set(ids)
        for e in im["objects"].values():
            for key in ("mask", "mask_before"):
                if key in e:
                    assert (world / e[key]).is_file()
    for c in gt["changes"]:
        assert (world / c["mesh"]).is_file()
        assert len(c["box"]["center"]) == 3 and len(c["box"]["rotation_wxyz"]) == 4
    assert (world / "contact_sheet.png").is_file()
    sheet = Image.open(world / "contact_sheet.png")
    assert sheet.size[0] > 4 * REDUCED.thumb_width
    assert any(im["novel_pose"] for im in gt["after"]["images"]), "no after view from a new pose"


def test_boxes_hold_their_meshes_on_the_ground(world, gt):
    plaza_z, street_y = gt["world"]["plaza_z"], gt["world"]["street_y"]
    for c in gt["changes"]:
        for box_key, mesh_key in (("box", "mesh"), ("box_before", "mesh_before")):
            if box_key not in c:
                continue
            b = c[box_key]
            v = np.asarray(o3d.io.read_triangle_mesh(str(world / c[mesh_key])).vertices)
            local = (v - b["center"]) @ Pose(b["rotation_wxyz"], [0, 0, 0]).R
            assert (np.abs(local) <= np.asarray(b["size"]) / 2 + 1e-4).all(), c["id"]
            bottom = b["center"][2] - b["size"][2] / 2
            ground = 0.0 if street_y[0] <= b["center"][1] <= street_y[1] else plaza_z
            assert abs(bottom - ground) < 0.05, (c["id"], bottom, ground)


# -- ground truth, geometrically ---------------------------------------------------------------
def _check_masks(world, gt, scene_key, mask_key, box_key, mesh_key, kinds):
    scene = _mesh_scene(world / gt["scene_meshes"][scene_key])
    checked = 0
    for c in gt["changes"]:
        if c["kind"] not in kinds:
            continue
        obj = _mesh_scene(world / c[mesh_key])
        box = c[box_key]
        R = Pose(box["rotation_wxyz"], [0, 0, 0]).R
        corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        corners = np.asarray(box["center"]) + (corners * box["size"]) @ R.T
        for im, cam, pose in _views(gt, "after"):
            e = im["objects"][c["id"]]
            mask = _mask(world, e[mask_key], cam)
            assert mask.sum() == e["pixels" if mask_key == "mask" else "pixels_before"]
            rays, _ = _pixel_rays(cam, pose)
            t_scene = _t_hit(scene, rays.reshape(-1, 6)).reshape(mask.shape)
            t_obj = _t_hit(obj, rays.reshape(-1, 6)).reshape(mask.shape)
            visible = np.isfinite(t_obj) & (t_obj <= t_scene * (1 + 1e-4) + 1e-4)
            # the mask is where the object is the first surface (a pixel or two may differ at edges)
            diff = int((visible != mask).sum())
            assert diff <= max(2, 0.03 * visible.sum()), (c["id"], im["name"], diff, int(visible.sum()))
            assert mask.any() == (visible.sum() > 2) or visible.sum() <= 2, (c["id"], im["name"])
            if not mask.any():
                continue
            # every mask pixel lies inside the hull of the projected box corners
            pc = (corners - pose.center()) @ pose.R.T
            if (pc[:, 2] <= 0.05).any():
                continue
            k = cam.K()
            uv = (pc[:, :2] / pc[:, 2:]) * [k[0, 0], k[1, 1]] + [k[0, 2], k[1, 2]]
            ys, xs = np.nonzero(mask)
            pts = np.stack([xs + 0.5, ys + 0.5], 1)
            assert inside_hull(uv, pts, tol=1.0).all(), (c["id"], im["name"])
            checked += 1
    return checked


def test_added_and_moved_masks_match_meshes_and_boxes(world, gt):
    n = _check_masks(world, gt, "after", "mask", "box", "mesh", ("added", "moved"))
    assert n >= 3


def test_removed_masks_are_where_the_before_scene_shows_the_object(world, gt):
    n = _check_masks(world, gt, "before", "mask", "box", "mesh", ("removed",))
    n += _check_masks(world, gt, "before", "mask_before", "box_before", "mesh_before", ("moved",))
    assert n >= 1


def test_every_change_is_seen_after(gt):
    for c in gt["changes"]:
        seen = c["visible_in_after"] if c["kind"] != "removed" else c["visible_in_after_before_scene"]
        assert seen, f"{c['id']} is visible in no after view"
        if c["kind"] != "added":
            assert c["visible_in_before"], f"{c['id']} is visible in no before view"


# -- images look like photographs --------------------------------------------------------------
def test_images_are_textured_not_flat(world, gt):
    for which in ("before", "after"):
        for im in gt[which]["images"]:
            g = np.asarray(Image.open(world / im["path"]).convert("L"), np.float32)
            lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
            assert g.std() > 15, (im["name"], g.std())
            assert lap.mean() > 6, (im["name"], lap.mean())
            assert (g > 250).mean() < 0.1 and (g < 5).mean() < 0.1, im["name"]


def test_before_views_see_mostly_scene(world, gt):
    scene = _mesh_scene(world / gt["scene_meshes"]["before"])
    for im, cam, pose in _views(gt, "before"):
        rays, _ = _pixel_rays(cam, pose)
        sky = float((~np.isfinite(_t_hit(scene, rays.reshape(-1, 6)))).mean())
        assert sky < 0.25, (im["name"], sky)
        assert abs(sky - im["sky_fraction"]) < 0.02


def test_before_views_are_not_blocked(world, gt):
    """Nothing but the ground comes within 1.5 m of a before camera over more than a few pixels."""
    scene = _mesh_scene(world / gt["scene_meshes"]["before"])
    plaza_z = gt["world"]["plaza_z"]
    for im, cam, pose in _views(gt, "before"):
        rays, _ = _pixel_rays(cam, pose)
        r = scene.cast_rays(o3d.core.Tensor(rays.reshape(-1, 6)))
        t = r["t_hit"].numpy()
        z = rays.reshape(-1, 6)[:, 2] + rays.reshape(-1, 6)[:, 5] * t
        ground = np.abs(z - plaza_z) < 2e-3
        assert float(((t < 1.5) & ~ground).mean()) < 0.05, im["name"]


def test_shadows_darken_the_same_material(world, gt):
    """On the plaza floor (one material), pixels whose sun ray is blocked are much darker."""
    scene = _mesh_scene(world / gt["scene_meshes"]["before"])
    sun = np.asarray(gt["lighting"]["before"]["sun"]["direction"], np.float32)
    plaza_z = gt["world"]["plaza_z"]
    lit_all, shade_all = [], []
    for im, cam, pose in _views(gt, "before"):
        rays, _ = _pixel_rays(cam, pose)
        r = scene.cast_rays(o3d.core.Tensor(rays.reshape(-1, 6)))
        t = r["t_hit"].numpy()
        n = r["primitive_normals"].numpy()
        p = rays.reshape(-1, 6)[:, :3] + rays.reshape(-1, 6)[:, 3:] * t[:, None]
        floor = np.isfinite(t) & (np.abs(n[:, 2]) > 0.99) & (np.abs(p[:, 2] - plaza_z) < 1e-3)
        shadow_rays = np.concatenate([p + np.float32([0, 0, 2e-3]), np.broadcast_to(sun, p.shape)], 1)
        occ = (
            scene.test_occlusions(o3d.core.Tensor(shadow_rays[floor].astype(np.float32))).numpy().astype(bool)
        )
        g = np.asarray(Image.open(world / im["path"]).convert("L"), np.float32).reshape(-1)[floor]
        lit_all.append(g[~occ])
        shade_all.append(g[occ])
    lit, shade = np.concatenate(lit_all), np.concatenate(shade_all)
    assert len(lit) > 500 and len(shade) > 100, (len(lit), len(shade))
    assert np.median(lit) > 1.6 * np.median(shade), (np.median(lit), np.median(shade))


def test_photometric_variation_is_applied_to_after_views(world, gt):
    from bench.worlds import build_world
    from bench.worlds.render import Geometry, Lighting, Photometric, develop, render_radiance

    b, a = gt["lighting"]["before"]["sun"], gt["lighting"]["after"]["sun"]
    angle = np.degrees(np.arccos(np.clip(np.dot(b["direction"], a["direction"]), -1, 1)))
    assert angle > 15, angle
    stops = [im["photometric"]["exposure_stops"] for im in gt["after"]["images"]]
    assert all(0.3 <= abs(s) <= 1.0 for s in stops), stops
    wbs = np.array([im["photometric"]["white_balance_rgb"] for im in gt["after"]["images"]])
    assert (np.abs(wbs - 1).max(1) > 0.01).all()
    # re-render one after view with a neutral camera: the saved image differs as its settings say
    w = build_world(SEED, with_person=REDUCED.person)
    geom = Geometry(w.objects("after"))
    im, cam, pose = next(_views(gt, "after"))
    rad = render_radiance(geom, cam, pose, Lighting(w.sun_after), REDUCED.supersample, REDUCED.ao_rays)
    ph = im["photometric"]
    rng = np.random.default_rng(0)
    same = develop(
        rad, Photometric(ph["exposure_stops"], tuple(ph["white_balance_rgb"]), ph["vignetting"], 0.0), rng
    )
    neutral = develop(rad, Photometric(0.0, (1.0, 1.0, 1.0), ph["vignetting"], 0.0), rng)
    saved = np.asarray(Image.open(world / im["path"]), np.float32)
    assert np.abs(saved - same).mean() < 2.0, "the saved after view is not this render (+ noise)"
    assert np.sign(saved.mean() - neutral.mean()) == np.sign(ph["exposure_stops"])
    ratio = lambda x: x[..., 0].mean() / x[..., 2].mean()  # noqa: E731
    wb = ph["white_balance_rgb"]
    assert np.sign(ratio(saved) - ratio(neutral.astype(np.float32))) == np.sign(wb[0] / wb[2] - 1)


# -- determinism -------------------------------------------------------------------------------
def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "timing.json"
    }


def test_same_seed_same_world_other_seed_other_world(world, tmp_path):
    again = generate_world(SEED, tmp_path / "again", config=REDUCED)
    a, b = _files(world), _files(again)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k]]
    assert not different, different[:5]
    other = generate_world(SEED + 1, tmp_path / "other", config=REDUCED)
    c = _files(other)
    assert c["gt.json"] != a["gt.json"]
    assert c["before/images/before_000.png"] != a["before/images/before_000.png"]


def test_worker_processes_render_the_same_images(tmp_path):
    one = generate_world(5, tmp_path / "one", config=dataclasses.replace(TINY, workers=1))
    two = generate_world(5, tmp_path / "two", config=dataclasses.replace(TINY, workers=2))
    assert json.loads((two / "timing.json").read_text())["render_workers"] == 2
    assert _files(one) == _files(two)


def test_regenerating_replaces_a_world_but_not_other_folders(tmp_path):
    from reconstruction.errors import IDUError

    out = tmp_path / "w"
    generate_world(3, out, config=TINY)
    (out / "stale.txt").write_text("x")
    generate_world(3, out, config=TINY)
    assert not (out / "stale.txt").exists() and (out / "gt.json").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(IDUError, match="not empty"):
        generate_world(3, other, config=TINY)
    assert (other / "keep.txt").exists()


# -- person ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not anny_available(), reason="anny is not installed")
def test_person_stands_on_the_ground_with_joints(world, gt):
    p = gt["person"]
    assert p is not None and p["model"].startswith("anny")
    change = next(c for c in gt["changes"] if c["id"] == p["object_id"])
    assert change["category"] == "person" and change["kind"] == "added"
    names = p["keypoints"]["names"]
    kp = dict(zip(names, np.asarray(p["keypoints"]["xyz"]), strict=True))
    assert {"nose", "left_ankle", "right_ankle", "left_wrist", "right_hip"} <= set(kp)
    ground = gt["world"]["plaza_z"]
    assert 1.4 < p["height_m"] < 2.05
    assert 1.2 < kp["nose"][2] - ground < 2.0
    for side in ("left", "right"):
        assert kp[f"{side}_ankle"][2] - ground < 0.25
        assert kp[f"{side}_hip"][2] - ground > 0.6
    b = change["box"]
    local = (np.asarray(p["keypoints"]["xyz"]) - b["center"]) @ Pose(b["rotation_wxyz"], [0, 0, 0]).R
    assert (np.abs(local) <= np.asarray(b["size"]) / 2 + 0.06).all()
    assert len(p["bones"]["names"]) == len(p["bones"]["xyz"]) > 20
    assert change["visible_in_after"]
    assert p["clothing"]["kind"] in {kind for kind, *_ in CLOTHES} and p["clothing"]["max_offset_m"] > 0.004


@pytest.mark.slow
@pytest.mark.skipif(not anny_available(), reason="anny is not installed")
def test_person_clothes_stand_off_the_body():
    from bench.worlds.meshes import vertex_normals

    kinds = set()
    for seed in range(3):
        p = make_person(np.random.default_rng(seed))
        kinds.add(p.clothing["kind"])
        n = vertex_normals(p.body_vertices, p.faces)
        moved = p.vertices - p.body_vertices
        along = (moved * n).sum(1)
        # straight out along the body's normals, never into it, within the garments' limits
        assert np.allclose(moved, along[:, None] * n, atol=1e-9) and along.min() >= 0
        bare = np.isin(p.vertex_parts, ["skin", "hair", "shoes"])
        assert np.abs(along[bare]).max() == 0.0  # faces, hands, hair and shoes are the body's
        garment = p.vertex_parts == "top"
        assert np.median(along[garment]) >= 0.004 and along.max() <= 0.095
        assert along.max() == pytest.approx(p.clothing["max_offset_m"], abs=1e-4)
        assert p.height == pytest.approx(float(np.ptp(p.body_vertices[:, 2])), abs=1e-9)  # the body's
    assert len(kinds) >= 2


def test_world_without_person_says_so(tmp_path, capfd):
    out = generate_world(4, tmp_path / "np", config=dataclasses.replace(TINY, person=False))
    assert json.loads((out / "gt.json").read_text())["person"] is None


# -- command line ------------------------------------------------------------------------------
def test_cli_bench_world_json(tmp_path, monkeypatch):
    from flows.cli import app

    monkeypatch.setitem(WORLD_PRESETS, "small", TINY)
    res = CliRunner().invoke(app, ["bench", "world", "--seed", "2", "--out", str(tmp_path / "w"), "--json"])
    assert res.exit_code == 0, res.stderr + res.stdout
    doc = json.loads(res.stdout)
    assert doc["num_before"] == TINY.num_before and doc["seconds"] > 0
    assert Path(doc["contact_sheet"]).is_file()
    res = CliRunner().invoke(
        app, ["bench", "world", "--seed", "2", "--out", str(tmp_path / "w"), "--size", "huge"]
    )
    assert res.exit_code == 1 and "unknown world size" in res.stderr
