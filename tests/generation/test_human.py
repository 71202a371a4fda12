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
    kp = np.asarray(report["keypoints"]["xyz"])
    err = joint_errors(kp, truth)
    assert err["mpjpe_mm"] < 100 and err["pa_mpjpe_mm"] < 70, err  # measured: 60 / 40 mm (bench_people)
    assert np.mean(list(report["fit_silhouette_iou"].values())) > 0.55
    fitted = [h for h in report["hypotheses"] if h["fitted"]]
    assert len(fitted) == 2 and fitted[0]["silhouette_iou"] >= fitted[1]["silhouette_iou"]
    assert report["seen_fraction"] > 0.3 and len(asset) == 20000
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
    for name, iou in straight.silhouette_iou.items():
        assert abs(same[name] - iou) < 0.05, (name, iou, same[name])
    turned = fit_person(turned_windows, box, up, splats, cfg)
    assert turned.mean_iou > straight.mean_iou - 0.08
    for fit in (straight, turned):
        assert joint_errors(fit.posed.keypoints.numpy(), truth)["mpjpe_mm"] < 150
