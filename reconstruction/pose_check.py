"""Does the scene, rendered at a camera pose, look like the photo? A check for weakly supported poses.

A photo seen from far off every scene photo's viewpoint, or under another light, keeps few SIFT matches
with the scene: its pose may rest on 10-25 inlier 2D-3D matches, as many as a wrong pose gathers from
chance matches. The splats tell them apart. Rendered at the right pose, the scene lines up with the photo
edge for edge; turned by a few degrees, it does not. So the check renders the scene at the pose and at
``decoys`` poses turned about the camera centre by ``turn_deg`` (left, right, up, down), and measures the
agreement of each render with the photo: the local normalised cross-correlation of their grey values
(``reconstruction.changes.local_ncc``: blind to exposure, white balance and the scene's own blur),
averaged with the render's opacity as weight. The pose passes when its agreement is at least ``ratio``
times the best decoy's: a pose is accepted because it is a sharp peak of agreement, measured against the
same photo and scene, not against a threshold tuned per world.

Measured on the small benchmark world (after-photos under another sun, 320x240 rendered at 160 px): the
true pose agrees 0.11-0.22, 5 degrees off 0.00-0.03, a wrong pose from 11 chance inliers 0.002.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera, Pose, undistort_image
from .changes import local_ncc
from .render import render
from .splats import Splats


@dataclass
class PoseCheckConfig:
    size: int = 160
    """Longer side (pixels) of the photo and the renders compared."""
    sigma: float = 1.5
    """Window of the local NCC (pixels at ``size``)."""
    turn_deg: float = 5.0
    """How far the decoy poses are turned about the camera centre."""
    ratio: float = 2.0
    """The pose's agreement must be at least this multiple of the best decoy's."""
    min_agreement: float = 0.05
    """...and at least this (NCC): a pose and its decoys all near zero agree with nothing."""
    min_coverage: float = 0.3
    """Mean opacity of the render at the pose below this: the photo looks where the scene has nothing."""


@dataclass
class PoseCheck:
    agreement: float  # opacity-weighted mean local NCC of photo and render at the pose
    decoys: float  # the highest agreement at the decoy poses
    coverage: float  # mean opacity of the render at the pose
    passed: bool

    def describe(self) -> str:
        return (f"the scene rendered at that pose agrees {self.agreement:.3f} with the photo, "
                f"{self.decoys:.3f} turned a few degrees, coverage {self.coverage:.2f}")  # fmt: skip

    def to_json(self) -> dict[str, float | bool]:
        return {"agreement": round(self.agreement, 4), "decoy_agreement": round(self.decoys, 4),
                "coverage": round(self.coverage, 3), "passed": self.passed}  # fmt: skip


def turned(pose: Pose, axis: np.ndarray, deg: float) -> Pose:
    """``pose`` turned by ``deg`` about ``axis`` (camera frame) through the camera centre."""
    a = np.radians(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    R = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    M = pose.matrix()
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = R @ M[:3, :3], R @ M[:3, 3]
    return Pose.from_matrix(out)


def prepare_photo(gray: np.ndarray, camera: Camera, size: int) -> tuple[torch.Tensor, Camera]:
    """A grey photo [H, W] uint8 taken with ``camera`` (same size), undistorted and resized so that its
    longer side is ``size``: ([h, w, 1] float in 0..1, its pinhole camera)."""
    img, pin = undistort_image(gray, camera)
    s = min(1.0, size / max(pin.width, pin.height))
    small = pin.scaled(s)
    t = torch.from_numpy(np.asarray(img, np.float32) / 255.0)[None, None]
    if (small.width, small.height) != (pin.width, pin.height):
        t = F.interpolate(t, size=(small.height, small.width), mode="area")
    return t[0, 0, :, :, None], small


def agreement(
    splats: Splats, photo: torch.Tensor, camera: Camera, pose: Pose, sigma: float
) -> tuple[float, float]:
    """(opacity-weighted mean local NCC of ``photo`` [h, w, 1] and the render at ``pose``, mean opacity)."""
    out = render(splats, camera, pose, background=[0.5, 0.5, 0.5])
    w = out.alpha.detach().clamp(0, 1)
    grey = out.rgb.detach().clamp(0, 1).mean(-1, keepdim=True)
    ncc = local_ncc(photo.to(grey), grey, sigma)
    return float((ncc * w).sum() / w.sum().clamp_min(1e-6)), float(w.mean())


def check_pose(
    splats: Splats, gray: np.ndarray, camera: Camera, pose: Pose, config: PoseCheckConfig | None = None
) -> PoseCheck:
    """Check ``pose`` of a grey photo [H, W] uint8 taken with ``camera`` against the scene ``splats``
    (see the module docstring)."""
    config = config or PoseCheckConfig()
    photo, cam = prepare_photo(gray, camera, config.size)
    return _against_decoys(
        splats, photo, cam, pose, agreement(splats, photo, cam, pose, config.sigma), config
    )


def _against_decoys(
    splats: Splats, photo: torch.Tensor, cam: Camera, pose: Pose, at_pose: tuple[float, float],
    config: PoseCheckConfig,
) -> PoseCheck:  # fmt: skip
    """The check of a prepared photo whose agreement and coverage at ``pose`` are ``at_pose``."""
    score, coverage = at_pose
    turns = [turned(pose, np.asarray(axis, float), sign * config.turn_deg)
             for axis in ((1, 0, 0), (0, 1, 0)) for sign in (1, -1)]  # fmt: skip
    decoys = max(agreement(splats, photo, cam, p, config.sigma)[0] for p in turns)
    passed = (coverage >= config.min_coverage and score >= config.min_agreement
              and score >= config.ratio * max(decoys, 0.0))  # fmt: skip
    return PoseCheck(score, decoys, coverage, passed)


def best_pose(
    splats: Splats,
    gray: np.ndarray,
    hypotheses: list[tuple[Camera, Pose]],
    config: PoseCheckConfig | None = None,
) -> tuple[int, PoseCheck] | None:
    """The hypothesis (camera, pose) of a grey photo whose render agrees best with it (one render each),
    checked with its decoys: (its index, its check); None without hypotheses."""
    config = config or PoseCheckConfig()
    if not hypotheses:
        return None
    prepared: dict[tuple, tuple[torch.Tensor, Camera]] = {}  # hypotheses mostly share the camera
    keys, scores = [], []
    for camera, pose in hypotheses:
        key = (camera.model, camera.width, camera.height, tuple(camera.params))
        if key not in prepared:
            prepared[key] = prepare_photo(gray, camera, config.size)
        keys.append(key)
        scores.append(agreement(splats, *prepared[key], pose, config.sigma))
    k = int(np.argmax([s for s, _ in scores]))
    return k, _against_decoys(splats, *prepared[keys[k]], hypotheses[k][1], scores[k], config)
