"""The person branch on the fixture world's person (an anny body in a random pose, true 3D keypoints):
the body fitted to its true masks in the after-photos, coloured from them, routed by the label."""

import json

import numpy as np
import pytest
import torch

from bench.bench_assets import true_views
from bench.bench_people import joint_errors
from generation.assets import AssetConfig, View, build_asset
from generation.human.body import ARM_POSES, arm_axis_angles, axis_angle_matrix, matrix_axis_angle
from generation.human.fit import PersonFitConfig, fit_person
from generation.multiview import MultiViewConfig, prepare_windows
from reconstruction.cameras import Camera, Pose


def test_axis_angles_round_trip_and_arm_poses():
    w = torch.tensor(
        [[0.3, -1.2, 0.5], [0.0, 0.0, 0.0], [1e-8, 0.0, 0.0], [0.0, 2.5, 0.1]], dtype=torch.float64
    )
    R = axis_angle_matrix(w)
    assert torch.allclose(
        R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4, 3, 3), atol=1e-12
    )
    for r, v in zip(R.numpy(), w.numpy(), strict=True):
        assert np.allclose(matrix_axis_angle(r), v, atol=1e-6)
    up, low = arm_axis_angles("L", "raised")
    up_r, low_r = arm_axis_angles("R", "raised")
    assert np.allclose(up[[0, 2]], -up_r[[0, 2]]) or np.allclose(np.abs(up), np.abs(up_r))  # mirrored
    assert np.isclose(np.linalg.norm(low), np.radians(ARM_POSES["raised"][2]))


@pytest.fixture(scope="module")
def person_inputs(bench_world):
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    change = next(c for c in gt["changes"] if c["id"] == gt["person"]["object_id"])
    views = true_views(world, gt, change["id"], [im["name"] for im in gt["after"]["images"]])
    assert len(views) >= 3
    return scene.version().load_splats(), change, views, np.asarray(gt["person"]["keypoints"]["xyz"])


def _rotated(v: View) -> View:
    """The same photo turned 90 degrees clockwise (camera rolled with it)."""
    K = v.camera.K()
    h = v.camera.height
    cam = Camera.pinhole(K[1, 1], K[0, 0], h - K[1, 2], K[0, 2], h, v.camera.width)
    roll = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # new x = old -y... as rot90 cw
    M = v.pose.matrix()
    M[:3] = roll @ M[:3]
    return View(v.name, np.ascontiguousarray(np.rot90(v.rgb, -1)), cam, Pose.from_matrix(M),
                np.ascontiguousarray(np.rot90(v.mask, -1)))  # fmt: skip


def test_a_person_labelled_person_gets_the_body_fitted_to_its_silhouettes(person_inputs, tmp_path):
    splats, change, views, truth = person_inputs
    cand = {"id": "c1", "kind": "added", "box": change["box"], "label": "person"}
    asset, placement, report, windows = build_asset(splats, cand, views, np.zeros((0, 3)), AssetConfig())
    assert report["backend"] == "person" and report["body_model"] == "anny"
    # the default keypoint model (MediaPipe, its weights shipped with its wheel) read every photo
    assert set(report["keypoints_2d"]) == {v.name for v in views}, report["keypoints_2d"]
    # confident ones of 17 per photo (measured 17 / 7 / 17 / 12: after_002 sees the person from behind)
    assert sum(report["keypoints_2d"].values()) >= 40, report["keypoints_2d"]
    kp = np.asarray(report["keypoints"]["xyz"])
    err = joint_errors(kp, truth)
    assert err["mpjpe_mm"] < 60 and err["pa_mpjpe_mm"] < 45, err  # measured 33 / 20 mm (dressed: 36 / 26)
    assert np.mean(list(report["fit_silhouette_iou"].values())) > 0.78  # measured: 0.88 (dressed: 0.86)
    fitted = [h for h in report["hypotheses"] if h["fitted"]]
    assert len(fitted) == 2 and fitted[0]["silhouette_iou"] >= fitted[1]["silhouette_iou"]
    assert report["seen_fraction"] > 0.3 and 4000 < len(asset) <= 5000
    # the Gaussians sampled from the mesh render it too wide at the photos' resolution; refined against
    # the photos they match the masks
    sil = report["asset_silhouette_iou"]
    before, after = np.mean(list(sil["before"].values())), np.mean(list(sil["after"].values()))
    assert after > 0.78 and after > before + 0.08, sil  # measured: 0.70 -> 0.82
    # the feet rest near the bottom of the person's box, under its centre
    feet, centre = np.asarray(placement["translation"]), np.asarray(change["box"]["center"])
    assert np.linalg.norm(feet[:2] - centre[:2]) < 0.25
    assert abs(feet[2] - (centre[2] - change["box"]["size"][2] / 2)) < 0.15
    # coloured from the photos: the shirt is green in the photos, so is the asset's upper body
    from reconstruction.splats import SH_C0

    rgb = 0.5 + SH_C0 * np.asarray(asset.sh0)
    chest = np.abs(np.asarray(asset.means)[:, 2] - 0.72 * (kp[:, 2].max() - feet[2])) < 0.1
    assert rgb[chest, 1].mean() > rgb[chest, 0].mean()
    # without the label the same candidate gets the object asset
    _, _, rep2, _ = build_asset(splats, {**cand, "label": None}, views[:2], _box_points(change["box"]),
                                AssetConfig(backend="hull"))  # fmt: skip
    assert rep2["backend"] == "hull"


def _box_points(box) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.asarray(box["center"]) + (rng.random((500, 3)) - 0.5) * np.asarray(box["size"]) * 0.5


def test_the_fit_does_not_depend_on_how_the_photos_are_turned(person_inputs):
    """Photos turned by 90 degrees (their cameras rolled with them): the same body agrees as well with
    them, and a fit on them finds a body as good."""
    from generation.human.body import Body
    from generation.human.fit import _Fitter
    from generation.placement import _frame

    splats, change, views, truth = person_inputs
    up, box = np.array([0.0, 0.0, 1.0]), change["box"]
    cfg = PersonFitConfig(steps=40)
    windows = prepare_windows(splats, views[:3], MultiViewConfig(), box)
    turned_windows = prepare_windows(splats, [_rotated(v) for v in views[:3]], MultiViewConfig(), box)
    assert [tuple(w.mask.shape) for w in turned_windows] == [tuple(w.mask.shape)[::-1] for w in windows]
    straight = fit_person(windows, box, up, splats, cfg)
    frame = _frame(up, box)
    same = _Fitter(Body.load(), turned_windows, frame, None, cfg).ious(straight.params)
    for name, iou in straight.extra["body_silhouette_iou"].items():  # the body's, without its clothing
        assert abs(same[name] - iou) < 0.05, (name, iou, same[name])
    turned = fit_person(turned_windows, box, up, splats, cfg)
    assert turned.mean_iou > straight.mean_iou - 0.08
    for fit in (straight, turned):
        assert joint_errors(fit.posed.keypoints.numpy(), truth)["mpjpe_mm"] < 150


def test_heatmap_peaks_are_found_to_a_fraction_of_a_pixel():
    from generation.human.keypoints import _peaks

    yy, xx = torch.meshgrid(torch.arange(16.0) + 0.5, torch.arange(12.0) + 0.5, indexing="ij")
    truth = [(3.3, 7.8), (8.6, 2.2), (5.0, 12.4)]  # (x, y) in pixel centres at +0.5
    heat = torch.stack([0.9 * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0) for x, y in truth])
    xy, conf = _peaks(heat)
    assert np.abs(xy - np.array(truth)).max() < 0.15 and np.all((conf > 0.7) & (conf <= 1))


def test_a_keypoint_model_loads_from_a_folder_and_answers_in_photo_pixels(person_inputs, tmp_path):
    """A tiny ViTPose built from a config (the registered weights are not on this machine)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    from generation.human.keypoints import COCO17, detect_keypoints, load_keypoint_model
    from reconstruction.models import MODELS, ModelNotAvailable, resolve

    assert MODELS["vitpose-base"].licence == "Apache-2.0" and MODELS["vitpose-base"].kind == "vitpose"
    torch.manual_seed(0)
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[8, 8], hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     out_indices=[2])  # fmt: skip
    tiny = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17))
    tiny.save_pretrained(tmp_path / "kp")
    model = load_keypoint_model(tmp_path / "kp")
    _, _, views, _ = person_inputs
    v = views[0]
    kps = detect_keypoints(model, v.rgb, v.mask)
    assert kps.shape == (len(COCO17), 3) and np.all((kps[:, 2] >= 0) & (kps[:, 2] <= 1))
    ys, xs = np.nonzero(v.mask)
    h = ys.max() - ys.min() + 1
    assert np.all(np.abs(kps[:, 1] - 0.5 * (ys.min() + ys.max())) < 0.7 * h)  # inside the person's crop
    assert np.all(np.abs(kps[:, 0] - 0.5 * (xs.min() + xs.max())) < 0.7 * h)
    with pytest.raises(ModelNotAvailable, match="vitpose-base"):
        resolve("vitpose-base")


def test_mediapipe_reads_the_keypoints_in_upright_and_turned_photos(person_inputs, bench_world):
    """BlazePose, whose weights the mediapipe wheel ships (the default keypoint model), on the fixture's
    person (51-129 pixels tall): within a few pixels of its true keypoints, in the photos as taken and in
    the photos turned by 90 degrees (its crops turned by the scene's up in each photo)."""
    from bench.bench_people import oracle_keypoints
    from generation.human.keypoints import detect_keypoints, image_up, load_keypoint_model
    from reconstruction.models import MODELS

    assert MODELS["mediapipe-pose"].licence == "Apache-2.0" and MODELS["mediapipe-pose"].kind == "mediapipe"
    _, change, views, _ = person_inputs
    gt = json.loads((bench_world[0] / "gt.json").read_text())
    model = load_keypoint_model("mediapipe-pose")
    centre, up = np.asarray(change["box"]["center"]), np.array([0.0, 0.0, 1.0])
    for turned in (False, True):
        photos = [_rotated(v) for v in views] if turned else views
        truth = oracle_keypoints(gt, photos)
        errors = []
        for v in photos:
            d = image_up(v.camera, v.pose, centre, up)
            assert abs(d[0 if turned else 1]) > 0.9  # the scene's up: along x in the turned photos
            kp = detect_keypoints(model, v.rgb, v.mask, d)
            assert kp.shape == (17, 3) and np.all((kp[:, 2] >= 0) & (kp[:, 2] <= 1))
            errors.append(float(np.linalg.norm(kp[:, :2] - truth[v.name][:, :2], axis=1).mean()))
        assert np.median(errors) < 4 and max(errors) < 8, (turned, errors)


def test_keypoints_pin_the_joints_the_silhouettes_leave_loose(person_inputs, bench_world):
    """The head's turn, the hands, front and back: silhouettes leave them loose, keypoints (here the true
    ones projected, as a perfect keypoint model would give) pin them: within the issue's 40 mm."""
    from bench.bench_people import oracle_keypoints

    splats, change, views, truth = person_inputs
    gt = json.loads((bench_world[0] / "gt.json").read_text())
    windows = prepare_windows(splats, views[:3], MultiViewConfig(), change["box"])
    fit = fit_person(windows, change["box"], np.array([0.0, 0.0, 1.0]), splats, PersonFitConfig(steps=60),
                     keypoints=oracle_keypoints(gt, views[:3]))  # fmt: skip
    err = joint_errors(fit.posed.keypoints.numpy(), truth)
    assert err["mpjpe_mm"] < 40 and err["pa_mpjpe_mm"] < 30, err  # measured with 4 photos: 14 / 11 mm


def test_a_clothing_layer_widens_the_silhouette_without_moving_the_body(person_inputs):
    """A body in a skirt (its vertices between hips and knees pushed 6 cm out): with the body held at the
    truth, the clothing layer's offsets grow there and stay small elsewhere, and the silhouettes agree
    better than the bare body's."""
    from generation.human.body import Body, BodyParams, vertex_normals
    from generation.human.fit import _Fitter, mesh_covers
    from generation.placement import _frame

    splats, change, views, _ = person_inputs
    box, up = change["box"], np.array([0.0, 0.0, 1.0])
    frame = _frame(up, box)
    body = Body.load()
    cfg = PersonFitConfig()
    feet = np.asarray(box["center"]) - np.array([0, 0, box["size"][2] / 2])
    p = BodyParams.standing(0.7, feet)
    windows = prepare_windows(splats, views[:3], MultiViewConfig(), box)
    fitter = _Fitter(body, windows, frame, None, cfg)
    V = fitter.posed(p).vertices.detach()
    height = V @ torch.as_tensor(up)
    rel = (height - height.min()) / (height.max() - height.min())
    skirt = (rel > 0.3) & (rel < 0.52)
    n = torch.as_tensor(vertex_normals(V.numpy(), body.faces))
    clothed = V + 0.06 * skirt[:, None] * n
    for w, m in zip(windows, mesh_covers(windows, clothed.numpy(), body.faces), strict=True):
        w.mask = m.float()  # the skirted body's masks, made as the benchmark worlds make them
    bare = np.mean(list(fitter.ious(p).values()))
    offsets, ious = fitter.clothing(p)
    dressed = np.mean(list(ious.values()))
    print(
        f"bare {bare:.3f} clothed {dressed:.3f}; skirt {offsets[skirt.numpy()].mean():.4f} m, "
        f"elsewhere {offsets[~skirt.numpy()].mean():.4f} m"
    )
    assert dressed >= bare + 0.04 and dressed >= 0.85
    assert offsets[skirt.numpy()].mean() >= 0.025 and offsets[~skirt.numpy()].mean() <= 0.012
