"""Change detection: render and compare, lifted to 3D (reconstruction/changes.py).

Two kinds of new photos of the fixture scene (the small benchmark world, seed 0, and its bootstrapped
before-scene):

- controlled edits: the scene itself with an object inserted, removed or moved, rendered at the
  after-capture's poses with another exposure and white balance and sensor noise: the answer is exact
  (the inserted Gaussians, the removed ids), so kinds, boxes, masks and ids are checked tightly;
- the world generator's own photos (another renderer, another sun): the after-capture, whose changes are
  known from gt.json, and the unchanged place under the after light from new poses (no candidate allowed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.bench_detect import judge_detection
from bench.runner import true_registration
from reconstruction.cameras import Camera, Pose, matrix_to_quat, quat_to_matrix
from reconstruction.changes import (
    DetectConfig,
    Evidence,
    detect_changes,
    dissimilarity,
    fit_gains,
    novelty,
    refine_mask,
    score_evidence,
)
from reconstruction.errors import IDUError
from reconstruction.render import render
from reconstruction.splat_ops import concat, in_box, remove, transform
from reconstruction.splats import Splats

C0 = 0.28209479177387814


def box_splats(center, size, spacing: float = 0.06, seed: int = 0,
               colours=((0.85, 0.25, 0.1), (0.95, 0.8, 0.2))) -> Splats:  # fmt: skip
    """Opaque Gaussians on the faces of an axis-aligned box, painted with a coarse two-colour checker."""
    rng = np.random.default_rng(seed)
    c, s = np.asarray(center, np.float64), np.asarray(size, np.float64)
    pts = []
    for axis in range(3):
        for side in (-0.5, 0.5):
            u, v = [a for a in range(3) if a != axis]
            gu = np.arange(-0.5, 0.5 + 1e-9, spacing / s[u])
            gv = np.arange(-0.5, 0.5 + 1e-9, spacing / s[v])
            U, V = np.meshgrid(gu, gv, indexing="ij")
            p = np.zeros((U.size, 3))
            p[:, axis], p[:, u], p[:, v] = side, U.ravel(), V.ravel()
            pts.append(p)
    local = np.concatenate(pts)
    means = c + local * s
    checker = (np.floor((local[:, 0] + local[:, 1] + local[:, 2]) * 4) % 2)[:, None]
    rgb = np.where(checker > 0, colours[0], colours[1]) + rng.normal(0, 0.03, (len(local), 3))
    sp = Splats.empty(len(means))
    sp.means = means.astype(np.float32)
    sp.scales = np.full((len(means), 3), np.log(spacing * 0.6), np.float32)
    sp.opacities = np.full(len(means), 6.0, np.float32)
    sp.sh0 = ((np.clip(rgb, 0, 1) - 0.5) / C0).astype(np.float32)
    return sp


def photos_of(splats: Splats, gt: dict, folder, names=None, gains=(1.35, 1.0, 0.8), seed: int = 0) -> dict:
    """Render ``splats`` at the after-poses as photos (other exposure / white balance, sensor noise) into
    ``folder``; returns the registration document with the true poses."""
    rng = np.random.default_rng(seed)
    camera = Camera.from_json(gt["cameras"]["after"])
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for im in gt["after"]["images"]:
        if names is not None and im["name"] not in names:
            continue
        with torch.no_grad():
            rgb = render(splats, camera, Pose.from_json(im["cam_from_world"])).rgb  # over black, as trained
        x = rgb.clamp(0, 1).numpy() / np.asarray(gains) + rng.normal(0, 0.01, rgb.shape)
        Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8)).save(folder / im["name"])
        images.append({"name": im["name"], "status": "registered", "camera": gt["cameras"]["after"],
                       "cam_from_world": im["cam_from_world"]})  # fmt: skip
    return {"images": images}


@pytest.fixture(scope="module")
def fixture(bench_world):
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    return world, scene, gt, scene.version().load_splats()


def _change(gt: dict, kind: str) -> dict:
    return next(c for c in gt["changes"] if c["kind"] == kind)


def _standing_on(target: dict, size: np.ndarray) -> np.ndarray:
    """Centre of a box of ``size`` standing where the change box ``target`` stands (its bottom on it)."""
    return np.asarray(target["center"]) + [0, 0, size[2] / 2 - target["size"][2] / 2]


def _compared(reg: dict, folder, splats: Splats, config: DetectConfig) -> list[Evidence]:
    """Each photo of ``reg`` (written into ``folder`` by :func:`photos_of`) compared with ``splats``."""
    from reconstruction.changes import compare_photo

    out = []
    for r in reg["images"]:
        rgb = np.asarray(Image.open(folder / r["name"]))
        pose = Pose.from_json(r["cam_from_world"])
        out.append(compare_photo(r["name"], rgb, Camera.from_json(r["camera"]), pose, splats, config))
    return out


def _visible_mask(obj: Splats, rest: Splats, camera: Camera, pose: Pose) -> np.ndarray:
    """Where ``obj`` is what a render of obj + rest shows (opaque and in front of the rest)."""
    with torch.no_grad():
        a, b = render(obj, camera, pose), render(rest, camera, pose)
    return ((a.alpha > 0.5) & ((b.alpha < 0.5) | (a.depth <= b.depth))).numpy()


def test_an_inserted_object_is_found_added_with_its_box_and_masks(fixture, tmp_path):
    world, scene, gt, splats = fixture
    target = _change(gt, "added")["box"]  # empty ground in the before-scene
    size = np.array([1.0, 0.8, 0.9])
    center = _standing_on(target, size)
    box = box_splats(center, size)
    reg = photos_of(concat([splats, box]), gt, tmp_path / "photos")
    doc = detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", reg)
    assert [c["kind"] for c in doc["candidates"]] == ["added"], doc["candidates"]
    c = doc["candidates"][0]
    diag = float(np.linalg.norm(size))
    assert np.linalg.norm(np.subtract(c["box"]["center"], center)) <= 0.15 * diag
    # a visual hull from a few photos: it holds the object and is not much bigger
    assert np.all(np.asarray(c["box"]["size"]) >= 0.9 * size) and np.all(
        np.asarray(c["box"]["size"]) <= 2 * size.max()
    )
    camera = Camera.from_json(gt["cameras"]["after"])
    poses = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
    ious = []
    for name, rel in c["masks"].items():
        pred = np.asarray(Image.open(tmp_path / "out" / rel)) > 0
        truth = _visible_mask(box, splats, camera, poses[name])
        ious.append((pred & truth).sum() / (pred | truth).sum())
    assert len(ious) >= 3 and np.mean(ious) >= 0.6, ious


def test_a_change_one_photo_sees_and_the_others_contradict_is_not_a_change(fixture, tmp_path):
    world, scene, gt, splats = fixture
    target = _change(gt, "added")["box"]
    box = box_splats(np.asarray(target["center"]) + [0, 0, 0.2], [1.0, 0.8, 0.9])
    names = [im["name"] for im in gt["after"]["images"]]
    camera = Camera.from_json(gt["cameras"]["after"])
    poses = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
    sees = [n for n in names if _visible_mask(box, splats, camera, poses[n]).sum() > 50]
    assert len(sees) >= 3
    reg = photos_of(concat([splats, box]), gt, tmp_path / "photos", names=sees[:1])
    reg["images"] += photos_of(splats, gt, tmp_path / "photos", names=sees[1:], seed=1)["images"]
    doc = detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", reg)
    assert doc["candidates"] == []


@pytest.mark.parametrize("edit", ["removed", "moved"])
def test_removed_and_moved_objects_name_their_gaussians(fixture, tmp_path, edit):
    """The planter (well reconstructed in the fixture scene) taken away, or put 2-3 m further."""
    world, scene, gt, splats = fixture
    moved = _change(gt, "moved")
    box = moved["box_before"]
    old = in_box(splats.means, box["center"], np.asarray(box["size"]) * 1.1, box["rotation_wxyz"])
    assert old.sum() > 500
    edited = remove(splats, old)
    if edit == "moved":
        shift = np.subtract(moved["box"]["center"], box["center"])
        edited = concat([edited, transform(remove(splats, ~old), translation=shift)])
    reg = photos_of(edited, gt, tmp_path / "photos")
    doc = detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", reg)
    assert [c["kind"] for c in doc["candidates"]] == [edit], [
        (c["kind"], c["box"]) for c in doc["candidates"]
    ]
    c = doc["candidates"][0]
    ids = np.load(tmp_path / "out" / c["gaussian_ids"])
    truth = np.nonzero(old)[0]
    # the named Gaussians are the planter's (the photos see most of it, not its hidden underside)
    assert np.isin(ids, truth).mean() >= 0.9 and np.isin(truth, ids).mean() >= 0.5
    diag = float(np.linalg.norm(box["size"]))
    before = c["box_before"] if edit == "moved" else c["box"]
    assert np.linalg.norm(np.subtract(before["center"], box["center"])) <= 0.2 * diag
    if edit == "moved":
        assert np.linalg.norm(np.subtract(c["box"]["center"], moved["box"]["center"])) <= 0.2 * diag
        assert set(c["masks_before"]) and set(c["masks"])


def test_the_benchmark_worlds_after_capture(fixture, tmp_path):
    """The world generator's photos (its own renderer, the after sun): the moved planter."""
    world, scene, gt, _ = fixture
    reg = true_registration(gt)
    out = tmp_path / "out"
    doc = detect_changes(scene.version(), world / "after" / "images", out, reg)
    res = {e["id"]: e for e in judge_detection(doc, out, world, gt)["per_change"]}
    planter = res["moved_planter"]
    assert planter["found"] and planter["predicted_kind"] == "moved"
    assert planter["centre_error_over_diagonal"] <= 0.3
    # its old place (where its Gaussians were rendered) vs the truth, photo by photo
    assert np.median(planter["per_photo_iou"][1::2]) >= 0.55
    # the added crate: its masks grown from the hull's footprint (0.29 IoU before they were grown)
    crate = res["added_crate"]
    assert crate["found"] and crate["predicted_kind"] == "added" and crate["mask_iou"] >= 0.4, crate
    # (the van far in the background is found or missed depending on the bootstrap's random draws: the
    # benchmark records it, README)
    # the contract: masks are photo-sized 8-bit PNGs, ids and boxes well formed, an overview per photo
    for c in doc["candidates"]:
        assert c["kind"] in ("added", "removed", "moved") and 0 < c["confidence"] <= 1 and c["label"] is None
        assert np.isclose(np.linalg.norm(c["box"]["rotation_wxyz"]), 1, atol=1e-6)
        assert all(s > 0 for s in c["box"]["size"])
        for rel in c["masks"].values():
            m = Image.open(out / rel)
            assert m.mode == "L" and m.size == (
                gt["cameras"]["after"]["width"],
                gt["cameras"]["after"]["height"],
            )
            assert np.asarray(m).any()
    assert len(list((out / "overview").glob("*.png"))) == len(gt["after"]["images"])
    assert json.loads((out / "candidates.json").read_text())["candidates"] == doc["candidates"]


def test_an_unchanged_place_under_another_light_yields_no_candidate(fixture, tmp_path):
    """The before-place rendered by the world generator under the after-capture's sun, other exposures and
    white balances, from poses between the before-views (0.4 m and 4 degrees off), registered with a small
    error (0.1 degree): nothing changed, so nothing may be reported."""
    from bench.fixtures import FIXTURE_SEED, render_world_view

    world, scene, gt, _ = fixture
    camera = Camera.from_json(gt["cameras"]["before"])
    rng = np.random.default_rng(3)
    (tmp_path / "photos").mkdir()
    images = []
    for k, im in enumerate(gt["before"]["images"][1:24:4]):
        pose = Pose.from_json(im["cam_from_world"])
        yaw = np.radians(4.0)
        R = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]]) @ pose.R
        true = Pose.from_matrix(np.r_[np.c_[R, R @ -(pose.center() + rng.normal(0, 0.4, 3) * [1, 1, 0.2])],
                                      [[0, 0, 0, 1]]])  # fmt: skip
        rgb = render_world_view(FIXTURE_SEED, true, camera, "before", exposure_stops=(-0.7, 0.6)[k % 2],
                                noise_seed=k, light="after", white_balance=(1.1, 1.0, 0.88))  # fmt: skip
        Image.fromarray(rgb).save(tmp_path / "photos" / f"p{k}.png")
        err = quat_to_matrix(np.r_[1.0, rng.normal(0, np.radians(0.1) / 2, 3)])
        noisy = Pose.from_matrix(np.r_[np.c_[err @ true.R, err @ true.matrix()[:3, 3]], [[0, 0, 0, 1]]])
        images.append({"name": f"p{k}.png", "status": "registered", "camera": gt["cameras"]["before"],
                       "cam_from_world": noisy.to_json()})  # fmt: skip
    doc = detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", {"images": images})
    assert doc["candidates"] == [], [(c["kind"], c["box"]) for c in doc["candidates"]]


def test_a_mask_grows_from_the_hulls_footprint_to_the_whole_object():
    """The change maps catch an object's textured top, not its plain body (scores above the noise, below
    the threshold): GrabCut grows the footprint to the object (its colours against the background's) and
    stops at its outline."""
    rng = np.random.default_rng(0)
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    background = 0.45 + 0.25 * ((xx // 6 + yy // 6) % 2)[..., None] * np.array([1.0, 0.9, 0.7])
    background = background + rng.normal(0, 0.03, (h, w, 3))
    photo = background.copy()
    obj = (yy >= 40) & (yy < 100) & (xx >= 60) & (xx < 110)
    photo[obj] = np.array([0.75, 0.2, 0.15]) + rng.normal(0, 0.03, (int(obj.sum()), 3))
    photo[(yy >= 40) & (yy < 55) & (xx >= 60) & (xx < 110) & ((xx // 3) % 2 == 0)] = 0.95  # textured top
    footprint = torch.from_numpy((yy >= 40) & (yy < 58) & (xx >= 62) & (xx < 108))  # the top the hull found
    # scores: high on the textured top, above the noise on the plain body, noise (z 0-2) elsewhere
    score = np.where(obj, rng.uniform(1.5, 4, (h, w)), rng.uniform(0, 2, (h, w)))
    score = torch.from_numpy(np.where(footprint.numpy(), 8.0, score).astype(np.float32))
    rgb, render_rgb = (torch.from_numpy(np.clip(x, 0, 1).astype(np.float32)) for x in (photo, background))
    ones = torch.ones(h, w)
    camera = Camera.pinhole(100, 100, 80, 60, w, h)
    ev = Evidence("p.png", camera, Pose.identity(), (w, h), rgb, render_rgb, ones, ones, {}, ones > 0,
                  score=score, changed=footprint)  # fmt: skip
    truth = torch.from_numpy(obj)

    def iou(m):
        return float((m & truth).sum() / (m | truth).sum())

    grown = refine_mask(ev, footprint, DetectConfig())
    assert iou(footprint) < 0.35
    assert iou(grown) >= 0.9, iou(grown)


def test_colour_gains_are_recovered_when_a_change_fills_most_of_the_frame():
    rng = np.random.default_rng(0)
    render_rgb = torch.from_numpy(rng.uniform(0.1, 0.9, (60, 80, 3)).astype(np.float32))
    render_rgb = torch.nn.functional.avg_pool2d(render_rgb.permute(2, 0, 1)[None], 5, 1, 2)[0].permute(
        1, 2, 0
    )
    gains = torch.tensor([1.4, 1.0, 0.7])
    photo = (render_rgb / gains).clamp(0, 1)
    photo[:, :45] = torch.tensor([0.9, 0.1, 0.1])  # a red object over 56 % of the frame
    aligned = fit_gains(photo, render_rgb, torch.ones(60, 80))
    assert torch.allclose(aligned[:, 50:], render_rgb[:, 50:], atol=0.02)


def test_dinov2_backend_runs_through_the_model_registry(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=56, patch_size=14)  # fmt: skip
    Dinov2Model(cfg).save_pretrained(tmp_path / "tiny")
    config = DetectConfig(backend="dinov2", model=str(tmp_path / "tiny"))
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.uniform(0, 1, (56, 84, 3)).astype(np.float32))
    b = a.clone()
    b[:, 42:] = torch.from_numpy(rng.uniform(0, 1, (56, 42, 3)).astype(np.float32))
    same = dissimilarity(a, a, config)["dinov2"]
    diff = dissimilarity(a, b, config)["dinov2"]
    assert same.shape == (56, 84) and float(same.abs().max()) < 1e-4
    assert float(diff[:, 60:].mean()) > float(diff[:, :20].mean()) + 0.01
    with pytest.raises(IDUError, match="change backend 'nope'"):
        dissimilarity(a, b, DetectConfig(backend="nope"))


def test_bad_inputs_are_refused_with_the_file_named(fixture, tmp_path):
    world, scene, gt, _ = fixture
    (tmp_path / "photos").mkdir()
    bad = tmp_path / "reg.json"
    bad.write_text("{not json")
    with pytest.raises(IDUError, match="reg.json: not an idu register --json document"):
        detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", bad)
    reg = {"images": [{"name": "gone.png", "status": "registered", "camera": gt["cameras"]["after"],
                       "cam_from_world": gt["after"]["images"][0]["cam_from_world"]}]}  # fmt: skip
    with pytest.raises(IDUError, match="gone.png"):
        detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", reg)
    (tmp_path / "photos" / "trunc.png").write_bytes(
        (world / gt["after"]["images"][0]["path"]).read_bytes()[:300]
    )
    reg["images"][0]["name"] = "trunc.png"
    with pytest.raises(IDUError, match="trunc.png"):
        detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", reg)
    with pytest.raises(IDUError, match="no-such-folder"):
        detect_changes(scene.version(), tmp_path / "no-such-folder", tmp_path / "out", reg)
    rejected = {"images": [{"name": "x.png", "status": "rejected", "reason": "only 3 inlier 2D-3D matches"}]}
    doc = detect_changes(scene.version(), tmp_path / "photos", tmp_path / "out", rejected)
    assert doc["candidates"] == [] and doc["photos"] == {
        "x.png": "not registered: only 3 inlier 2D-3D matches"
    }


def _level_camera(heading_deg: float, pitch_deg: float, centre) -> Pose:
    """A camera without roll (z up is the world's up) facing ``heading_deg``, looking ``pitch_deg`` down."""
    h, p = np.radians(heading_deg), np.radians(pitch_deg)
    fwd = np.array([np.cos(h) * np.cos(p), np.sin(h) * np.cos(p), -np.sin(p)])
    x = np.cross(fwd, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(fwd, x), fwd])
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, -R @ np.asarray(centre, np.float64)
    return Pose.from_matrix(M)


def test_the_scene_up_is_perpendicular_to_level_cameras_whatever_their_pitch():
    """Cameras along a walk, all looking 15 degrees down and facing within 120 degrees: their mean up axis
    leans towards where they look; the up found from their x axes is the true one. One photo, or photos
    facing one way, fix only a plane: the mean up axis projected into it (their pitch stays in it)."""
    from reconstruction.changes import up_direction

    def tilt(u):
        return np.degrees(np.arccos(np.clip(u[2], -1, 1)))

    walk = [_level_camera(h, 15, (0.3 * i, 0, 1.6)) for i, h in enumerate(range(-60, 61, 20))]
    mean_up = np.mean([-p.R[1] for p in walk], 0)
    assert tilt(mean_up / np.linalg.norm(mean_up)) > 5  # what the mean of the up axes gives
    assert tilt(up_direction(walk)) < 1e-6
    one = _level_camera(30, 15, (0, 0, 1.6))
    assert np.allclose(up_direction([one]), -one.R[1])  # one photo cannot tell its pitch
    pair = [one, _level_camera(31, 10, (1, 0, 1.5))]
    u = up_direction(pair)
    assert all(abs(u @ p.R[0]) < 0.01 for p in pair) and tilt(u) < 13


def _looking_at(centre: np.ndarray, target: np.ndarray) -> Pose:
    """A camera at ``centre`` looking at ``target`` (x right, y down, world z roughly down the image)."""
    z = (target - centre) / np.linalg.norm(target - centre)
    x = np.cross(z, [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    R = np.stack([x, np.cross(z, x), z])
    return Pose.from_matrix(np.block([[R, (-R @ centre)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))


def test_novelty_is_the_angle_to_the_nearest_scene_photo_ray():
    """A wall 5 m in front of a new photo; scene photos look at its centre from 10 and 40 degrees aside:
    the centre pixel's novelty is 10 degrees, and 180 where no scene photo's frame holds the wall."""
    cam = Camera.pinhole(100, 100, 40, 30, 80, 60)
    pose = Pose.from_matrix(np.eye(4))
    depth = torch.full((60, 80), 5.0)
    target = np.array([0.0, 0.0, 5.0])
    views = [(cam, _looking_at(target + 5 * np.array([np.sin(a), 0, -np.cos(a)]), target))
             for a in np.radians([40.0, 10.0])]  # fmt: skip
    nov = novelty(cam, pose, depth, views)
    assert nov.shape == (60, 80)
    assert float(nov[30, 40]) == pytest.approx(10.0, abs=0.3)
    only_far = novelty(cam, pose, depth, views[:1])
    assert float(only_far[30, 40]) == pytest.approx(40.0, abs=0.3)
    # a scene photo turned away sees none of it
    away = [(cam, _looking_at(np.array([0.0, 0.0, -1.0]), np.array([0.0, 0.0, -10.0])))]
    assert torch.all(novelty(cam, pose, depth, away) == 180.0)


def test_pixels_seen_from_where_no_scene_photo_looked_are_scored_against_their_own_noise():
    """Two photos whose left parts are as novel as the scene photos' own views (dissimilarity 0.1 +- 0.01)
    and whose right parts lie 45 degrees from every scene photo (0.3 +- 0.1: the scene renders worse
    there): the same dissimilarity of 0.35 is a change on the left, noise on the right. Without novelty
    maps every pixel is scored against all pixels' noise."""
    gen = torch.Generator().manual_seed(0)
    cam, pose = Camera.pinhole(100, 100, 50, 50, 100, 100), Pose.from_matrix(np.eye(4))
    evidence = []
    for k in range(2):
        left = 0.1 + 0.01 * torch.randn(100, 80, generator=gen)
        right = 0.3 + 0.1 * torch.randn(100, 20, generator=gen)
        raw = torch.cat([left, right], 1)
        raw[50, 40] = raw[50, 90] = 0.35
        nov = torch.cat([torch.full((100, 80), 5.0), torch.full((100, 20), 45.0)], 1)
        ones, black = torch.ones(100, 100), torch.zeros(100, 100, 3)
        evidence.append(Evidence(f"p{k}", cam, pose, (100, 100), black, black, ones, ones, {"chroma": raw},
                                 ones.bool(), novelty=nov))  # fmt: skip
    config = DetectConfig(novelty_min_pixels=1000)
    score_evidence(evidence, config)
    s = evidence[0].score
    assert float(s[50, 40]) > config.k_mad and float(s[50, 90]) < config.k_low
    for ev in evidence:
        ev.novelty = None
    score_evidence(evidence, config)
    assert float(evidence[0].score[50, 90]) == pytest.approx(float(evidence[0].score[50, 40]))
    assert float(evidence[0].score[50, 90]) > config.k_mad


def _ground(height: float, R: np.ndarray, half: float = 3.0, spacing: float = 0.05) -> Splats:
    """Opaque flat Gaussians (discs) on the plane z = ``height`` over [-half, half]^2, turned by ``R``."""
    g = np.arange(-half, half + 1e-9, spacing)
    X, Y = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([X.ravel(), Y.ravel(), np.full(X.size, height)], 1) @ R.T
    sp = Splats.empty(len(pts))
    sp.means = pts.astype(np.float32)
    sp.scales = np.full((len(pts), 3), np.log(spacing * 0.6), np.float32)
    sp.scales[:, 2] = np.log(0.002)
    q = matrix_to_quat(R)
    sp.quats = np.tile(q, (len(pts), 1)).astype(np.float32)
    sp.opacities = np.full(len(pts), 6.0, np.float32)
    sp.sh0 = np.zeros((len(pts), 3), np.float32)
    return sp


@pytest.mark.parametrize("turned", [False, True])
def test_the_ground_under_a_floating_hull_is_found_by_looking_down(turned):
    """A flat ground 0.3 m above the origin (in a frame turned 40 degrees when ``turned``: COLMAP frames
    have any up): the surface 1.2 m below a point over it; nothing below a point beyond its edge."""
    from reconstruction.changes import ground_height

    R = quat_to_matrix(np.array([np.cos(0.35), np.sin(0.35), 0.0, 0.0])) if turned else np.eye(3)
    up = R @ [0.0, 0.0, 1.0]
    splats = _ground(0.3, R)
    point = R @ [0.4, -0.2, 1.5]
    assert ground_height(splats, point, up, radius=0.3) == pytest.approx(0.3, abs=0.02)
    assert ground_height(splats, R @ [9.0, 0.0, 1.5], up, radius=0.3) is None


def test_a_hull_is_extended_down_to_the_ground_column_by_column():
    """Two columns of a hull (one 1.0-1.4 m up, one 1.2-1.4 m up) filled down to the ground at 0.2 m."""
    from reconstruction.changes import _to_ground

    step = 0.1
    z = torch.arange(1.0 + step / 2, 1.4, step, dtype=torch.float64)
    a = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], 1)
    b = a[z > 1.2] + torch.tensor([step, 0.0, 0.0], dtype=torch.float64)
    fill = _to_ground(torch.cat([a, b]), np.array([0.0, 0.0, 1.0]), 0.2, step)
    under_a = fill[fill[:, 0].abs() < 1e-9]
    under_b = fill[(fill[:, 0] - step).abs() < 1e-9]
    assert len(under_a) + len(under_b) == len(fill)
    assert len(under_a) == 8 and len(under_b) == 10  # (1.0 - 0.2) / 0.1 and (1.2 - 0.2) / 0.1 voxels
    assert float(fill[:, 2].min()) == pytest.approx(0.25) and float(under_a[:, 2].max()) == pytest.approx(
        0.95
    )
    assert torch.all(fill[:, 1] == 0)


def test_a_removed_and_an_added_object_are_one_moved_object_only_when_they_look_alike():
    """A planter's old place and its new one (same colours; the new hull stretched 3x along the photos'
    rays) pair up as moved; a person that appeared near the old place of a crate (other colours) does not."""
    from reconstruction.changes import Candidate, _colour_hist, _pair_moved

    gen = torch.Generator().manual_seed(0)
    green = (torch.tensor([0.3, 0.6, 0.2]) + 0.05 * torch.randn(500, 3, generator=gen)).clamp(0, 1)
    brown = (torch.tensor([0.6, 0.45, 0.25]) + 0.05 * torch.randn(500, 3, generator=gen)).clamp(0, 1)

    def cand(kind, centre, size, pixels):
        box = {"center": list(centre), "size": list(size), "rotation_wxyz": [1.0, 0, 0, 0]}
        return Candidate("", kind, 0.9, box, {}, np.zeros((1, 3)), colour=_colour_hist(pixels))

    planter = [
        cand("removed", (0, 0, 0.7), (1.2, 1.2, 1.5), green),
        cand("added", (3, 1, 0.7), (1.2, 3.6, 1.5), green),
    ]
    out = _pair_moved(planter, DetectConfig())
    assert [c.kind for c in out] == ["moved"] and out[0].box_before == planter[0].box
    crate_and_person = [cand("removed", (0, 0, 0.5), (0.9, 1.7, 1.1), brown),
                        cand("added", (2, 1, 0.9), (0.6, 1.2, 1.7), green)]  # fmt: skip
    assert sorted(c.kind for c in _pair_moved(crate_and_person, DetectConfig())) == ["added", "removed"]


def test_the_ground_in_front_of_each_photo_is_where_its_bottom_rows_meet_the_scene():
    """A level camera 1.6 m above a ground at 0.3 m, looking 20 degrees down: its bottom rows show the
    ground 1.5-1.9 m ahead; the point found is on the ground, in front of the camera."""
    from reconstruction.changes import floor_points

    splats = _ground(0.3, np.eye(3), half=8.0, spacing=0.05)
    cam = Camera.pinhole(60, 60, 40, 30, 80, 60)
    pose = _level_camera(0, 20, (0.0, 0.0, 1.9))
    with torch.no_grad():
        out = render(splats, cam, pose)
    black = torch.zeros(60, 80, 3)
    ev = Evidence("p.png", cam, pose, (80, 60), black, out.rgb, out.depth, out.alpha, {}, out.alpha > 0.5)
    [(point, height)] = floor_points([ev], np.array([0.0, 0.0, 1.0]))
    # (a splat's depth is its centre's, and the nearer ones win at grazing angles: a few cm high)
    assert height == pytest.approx(0.3, abs=0.05) and point[2] == pytest.approx(0.3, abs=0.05)
    assert 1.4 < point[0] < 2.1 and abs(point[1]) < 0.2  # bottom rows look 40-46 degrees down: 1.55-1.93 m


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_nothing_added_reaches_far_below_the_ground_the_photos_stand_on(scale):
    """Four photographers 1.6 m above a ground at 0.2 m; one photo's bottom rows render junk 6 m under the
    ground (a scene's underside where it was never photographed). The lowest height an added object may
    reach: the median ground, less ``below`` times the photographers' height above it, in the scene's
    units (an SfM scene has an arbitrary scale); below it, the ground found under a hull is junk."""
    from reconstruction.changes import lowest_ground

    cam = Camera.pinhole(60, 60, 40, 30, 80, 60)
    black = torch.zeros(60, 80, 3)
    evs = []
    for k in range(4):
        pose = _level_camera(90 * k, 15, (scale * k, 0.0, scale * 1.8))
        evs.append(Evidence(f"p{k}.png", cam, pose, (80, 60), black, black, black[..., 0], black[..., 0], {},
                            black[..., 0] > 0))  # fmt: skip
    floors = [(np.zeros(3), scale * g) for g in (0.2, 0.19, -6.0, 0.21)]
    up = np.array([0.0, 0.0, 1.0])
    low = lowest_ground(evs, floors, up, 0.25)
    median = scale * 0.195  # the median of the four floors, the junk one outvoted
    assert low == pytest.approx(median - 0.25 * (scale * 1.8 - median))
    assert lowest_ground(evs, [], up, 0.25) is None


def test_novelty_measured_on_blocks_holds_for_each_block():
    """Measured at each 4x4 block's centre pixel it equals the full measurement there, and stays within the
    angle the block spans elsewhere (but along the edges of the scene photos' frames, where it jumps);
    pixels without a surface are 180 either way."""
    cam = Camera.pinhole(100, 100, 40, 30, 80, 60)
    depth = torch.full((60, 80), 5.0)
    depth[:, :6] = 0.0  # no surface
    target = np.array([0.0, 0.0, 5.0])
    views = [(cam, _looking_at(target + 5 * np.array([np.sin(a), 0, -np.cos(a)]), target))
             for a in np.radians([40.0, 10.0])]  # fmt: skip
    full = novelty(cam, Pose.from_matrix(np.eye(4)), depth, views)
    blocks = novelty(cam, Pose.from_matrix(np.eye(4)), depth, views, stride=4)
    assert blocks.shape == full.shape
    assert torch.equal(blocks[2::4, 6::4], full[2::4, 6::4])
    diff = (blocks - full).abs()
    assert float(diff.median()) < 0.5  # 2-3 pixels at f = 100: under 2 degrees of ray
    # only along the edges of the scene photos' frames may a block take another nearest photo
    assert float((diff > 3.0).float().mean()) < 0.1
    assert torch.all(blocks[:, :6] == 180.0)


def test_an_added_candidate_is_dropped_only_when_the_scenes_photos_showed_the_same_there(fixture, tmp_path):
    """A hull on the ground where a crate now stands: the scene's own photos show pavement there, unlike the
    new photos. The same hull over photos of the unchanged ground: the scene's photos show what the new
    photos show, as much as they agree with one another (a moved shadow, a poorly rendered surface)."""
    from reconstruction.changes import Candidate, Reference, _footprint, already_there

    world, scene, gt, splats = fixture
    target = _change(gt, "added")["box"]
    size = np.array([1.0, 0.8, 0.9])
    box = box_splats(_standing_on(target, size), size)
    config = DetectConfig()
    version = scene.version()
    refs = [Reference(im.entry.name, im.entry.camera, im.entry.cam_from_world, version.scene.root / im.file)
            for im in version.images()]  # fmt: skip
    points = torch.as_tensor(box.means, dtype=torch.float64)
    checks = {}
    for label, shown in (("crate", concat([splats, box])), ("ground", splats)):
        evidence, masks = [], {}
        for ev in _compared(photos_of(shown, gt, tmp_path / label), tmp_path / label, splats, config):
            foot = _footprint(ev, points, 0.05, config.depth_tolerance)
            if int(foot.sum()) >= 50:
                evidence.append(ev)
                masks[ev.name] = foot.numpy()
        assert len(masks) >= 2, label
        cand = Candidate("", "added", 1.0, {}, masks, box.means.astype(np.float64))
        checks[label] = already_there(cand, evidence, refs, splats, config, 0.05)
    crate, ground = checks["crate"], checks["ground"]
    assert len(crate["references"]) >= 2 and crate["consistency"] is not None
    assert not crate["already_there"], crate
    assert crate["agreement"] < config.same_as_before * crate["consistency"], crate
    assert ground["already_there"], ground
    assert ground["agreement"] >= config.same_as_before * ground["consistency"], ground
    assert ground["gain"] < config.min_already_there, ground  # the footprint-vs-ring rule alone misses it


def test_an_object_looks_alike_across_its_photos_and_crossing_rays_do_not(fixture, tmp_path):
    """A new crate's masks show the same colours in every photo that sees it. With a second crate of unlike
    colours elsewhere, masks over the first in two photos and over the second in two others (a hull where
    the rays of unrelated changes cross) show unlike things."""
    from reconstruction.changes import Candidate, _footprint, photo_consistency

    world, scene, gt, splats = fixture
    size = np.array([1.0, 0.8, 0.9])
    boxes = []
    palettes = {
        "added_crate": ((0.85, 0.25, 0.1), (0.95, 0.8, 0.2)),
        "added_vehicle": ((0.1, 0.2, 0.8), (0.2, 0.7, 0.9)),
    }
    for where, colours in palettes.items():  # empty ground in the before-scene
        target = next(c for c in gt["changes"] if c["id"] == where)["box"]
        boxes.append(box_splats(_standing_on(target, size), size, colours=colours))
    config = DetectConfig()
    evidence = _compared(photos_of(concat([splats, *boxes]), gt, tmp_path / "photos"), tmp_path / "photos",
                         splats, config)  # fmt: skip
    pts = [torch.as_tensor(b.means, dtype=torch.float64) for b in boxes]
    feet = [[_footprint(ev, p, 0.05, config.depth_tolerance).numpy() for p in pts] for ev in evidence]
    masks = [
        {ev.name: f[k] for ev, f in zip(evidence, feet, strict=True) if f[k].sum() >= 50} for k in range(2)
    ]
    only = [[n for n in masks[k] if n not in masks[1 - k]] for k in range(2)]  # photos that see one crate
    assert len(masks[0]) >= 3 and min(len(o) for o in only) >= 2, masks
    crate = Candidate("", "added", 1.0, {}, masks[0], boxes[0].means.astype(np.float64))
    assert photo_consistency(crate, evidence) >= config.min_photo_consistency + 0.2
    crossing = {n: masks[k][n] for k in range(2) for n in only[k][:2]}
    ghost = Candidate("", "added", 1.0, {}, crossing, boxes[0].means.astype(np.float64))
    assert photo_consistency(ghost, evidence) < config.min_photo_consistency - 0.1
    one = Candidate("", "added", 1.0, {}, {only[0][0]: masks[0][only[0][0]]}, boxes[0].means)
    assert photo_consistency(one, evidence) is None
