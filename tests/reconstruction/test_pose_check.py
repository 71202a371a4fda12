"""The render check of a pose: the fixture scene rendered at a photo's pose must line up with the photo."""

import json

import numpy as np
from PIL import Image

from reconstruction.cameras import Camera, Pose
from reconstruction.pose_check import PoseCheckConfig, best_pose, check_pose, turned


def _grey(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def test_a_true_pose_passes_and_aturned_or_foreign_one_does_not(bench_world):
    world, scene = bench_world
    gt = json.loads((world / "gt.json").read_text())
    splats = scene.version().load_splats()
    cam = Camera.from_json(gt["cameras"]["after"])
    view = gt["after"]["images"][2]  # another sun, a changed place, a viewpoint far from the scene photos
    gray, truth = _grey(world / "after" / "images" / view["name"]), Pose.from_json(view["cam_from_world"])

    ok = check_pose(splats, gray, cam, truth)
    assert ok.passed and ok.coverage > 0.5
    assert ok.agreement >= 2 * ok.decoys and ok.agreement >= 0.05

    off = check_pose(splats, gray, cam, turned(truth, np.array([0.0, 1.0, 0.0]), 12.0))
    assert not off.passed and off.agreement < ok.agreement / 2

    noise = np.random.default_rng(0).integers(0, 255, gray.shape, dtype=np.uint8)
    assert not check_pose(splats, noise, cam, truth).passed

    sky = Pose.look_at(truth.center(), truth.center() + np.array([0.0, 0.0, 10.0]) + 0.1)  # nothing there
    away = check_pose(splats, gray, cam, sky)
    assert not away.passed
    assert "agrees" in away.describe() and set(away.to_json()) == {"agreement", "decoy_agreement", "coverage",
                                                                   "passed"}  # fmt: skip

    # among several hypotheses the true pose is the one that agrees best (one render each)
    wrong = [turned(truth, np.array([1.0, 0.0, 0.0]), a) for a in (-8.0, 6.0)]
    k, check = best_pose(splats, gray, [(cam, wrong[0]), (cam, truth), (cam, wrong[1])], PoseCheckConfig())
    assert k == 1 and check.passed
    assert best_pose(splats, gray, []) is None
