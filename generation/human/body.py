"""The 3D body prior: the anny body model (PyPI ``anny``: Apache-2.0 code, CC0 assets), differentiable.

anny builds its model data once (about 2 minutes and ~790 MB) into a cache folder: ``ANNY_CACHE_DIR`` if
set, else ``~/.cache/idu/anny``; later loads take about a second, a forward pass 10-30 ms on a CPU.

:class:`BodyParams` is the compact set the fit optimises: an axis-angle rotation for each of the
:data:`POSE_BONES` (anny's default parameterisation: each bone turned about axes parallel to the body
frame: x to the body's left, y backwards, z up), the six phenotype values (through a sigmoid, so they
stay in anny's 0..1 range), the turn about the up axis and the position of the feet's centre.
:meth:`Body.pose` returns the mesh vertices and anny's COCO (+ feet) keypoints in the scene frame.

    body = Body.load()
    out = body.pose(BodyParams.standing(yaw=0.3, feet=np.array([1.0, 2.0, 0.0])), frame=np.eye(3))
    out.vertices  # [13718, 3] torch, metres, scene frame
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("~/.cache/idu/anny")
PHENOTYPE = ("gender", "age", "muscle", "weight", "height", "proportions")
POSE_BONES = (
    "spine03",
    "neck01",
    "head",
    "upperarm01.L",
    "upperarm01.R",
    "lowerarm01.L",
    "lowerarm01.R",
    "upperleg01.L",
    "upperleg01.R",
    "lowerleg01.L",
    "lowerleg01.R",
    "foot.L",
    "foot.R",
)


class BodyModelUnavailable(RuntimeError):
    """anny is not installed (``pip install anny``)."""


def anny_available() -> bool:
    """Whether the anny package can be imported (without importing it)."""
    return importlib.util.find_spec("anny") is not None


def cache_dir() -> Path:
    """anny's model cache: ``ANNY_CACHE_DIR`` if set, else ``~/.cache/idu/anny``."""
    return Path(os.environ.get("ANNY_CACHE_DIR") or DEFAULT_CACHE_DIR).expanduser()


@functools.lru_cache(maxsize=2)
def load_anny(cache: str):
    """(anny's full-body model with torch skinning, its COCO keypoint regressor, anny's version), cached
    per process."""
    if not anny_available():
        raise BodyModelUnavailable("the person branch needs the anny body model: pip install anny")
    os.environ.setdefault("ANNY_CACHE_DIR", cache)
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout clean for --json
        import anny
        import anny.paths

        anny.paths.set_anny_cache_path(cache)
        if not any(Path(cache).glob("*")):
            log.warning("building anny's model cache in %s (once, about 2 minutes)", cache)
        model = anny.Anny(skinning_method="lbs")
        regressor = anny.KeypointsRegressor.coco(model)
    return model, regressor, getattr(anny, "__version__", "?")


def axis_angle_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] of axis-angle vectors [..., 3] (differentiable at zero)."""
    th2 = (w * w).sum(-1, keepdim=True)[..., None]
    th = torch.sqrt(th2 + 1e-24)
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    k = torch.stack(
        [torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1), torch.stack([-y, x, o], -1)], -2
    )
    a = torch.where(th < 1e-6, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(th < 1e-6, 0.5 - th2 / 24, (1 - torch.cos(th)) / th2.clamp_min(1e-24))
    return torch.eye(3, dtype=w.dtype, device=w.device) + a * k + b * (k @ k)


def matrix_axis_angle(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector [3] of a rotation matrix [3, 3] (angles below 180 degrees)."""
    c = np.clip((np.trace(R) - 1) / 2, -1.0, 1.0)
    th = math.acos(c)
    if th < 1e-8:
        return np.zeros(3)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    return th * v / (2 * math.sin(th))


def axis_rotation(axis: str, deg: float) -> np.ndarray:
    """The rotation [3, 3] by ``deg`` degrees about the frame's ``axis`` (``x``, ``y`` or ``z``)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


#: Arm configurations the fit tries for each arm (the silhouette alone cannot lift an arm that starts
#: inside the torso): (degrees the arm is lowered from horizontal, swung forward, elbow bent).
ARM_POSES = {
    "down": (34.0, 0.0, 12.0),
    "out": (0.0, 0.0, 10.0),
    "raised": (-70.0, 0.0, 50.0),
    "forward": (20.0, -75.0, 5.0),
    "bent": (30.0, -40.0, 105.0),
}


def arm_axis_angles(side: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(upper arm, lower arm) axis-angles of one of :data:`ARM_POSES` for side ``L`` or ``R``."""
    down, swing, elbow = ARM_POSES[kind]
    sgn = 1.0 if side == "L" else -1.0
    upper = axis_rotation("x", swing) @ axis_rotation("y", sgn * down)
    return matrix_axis_angle(upper), matrix_axis_angle(axis_rotation("x", -elbow))


#: Stances the fit tries for the legs: (left thigh swung forward, right thigh swung forward, knees bent),
#: degrees; the feet are kept flat.
STANCES = {
    "straight": (0.0, 0.0, 3.0),
    "left forward": (20.0, -20.0, 12.0),
    "right forward": (-20.0, 20.0, 12.0),
}


def stance_axis_angles(kind: str) -> dict[str, np.ndarray]:
    """Axis-angles of the thighs, shins and feet for one of :data:`STANCES`."""
    left, right, knee = STANCES[kind]
    out = {}
    for side, fwd in (("L", left), ("R", right)):
        out[f"upperleg01.{side}"] = matrix_axis_angle(axis_rotation("x", -fwd))
        out[f"lowerleg01.{side}"] = matrix_axis_angle(axis_rotation("x", knee))
        out[f"foot.{side}"] = matrix_axis_angle(axis_rotation("x", fwd - knee))
    return out


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


@dataclass
class BodyParams:
    """What the fit optimises (torch float64 tensors; see the module docstring)."""

    pose: torch.Tensor  # [len(POSE_BONES), 3] axis-angle per bone
    phenotype: torch.Tensor  # [6] logits of PHENOTYPE
    yaw: torch.Tensor  # [] radians about the up axis (0: the body faces the frame's -y)
    feet: torch.Tensor  # [3] scene-frame position of the point between the feet, on the ground
    label: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def standing(cls, yaw: float = 0.0, feet=(0.0, 0.0, 0.0), arms_down_deg: float = 34.0,
                 elbows_deg: float = 12.0, label: str = "stand") -> BodyParams:  # fmt: skip
        """A relaxed standing pose (arms down by ``arms_down_deg``, elbows a little bent), average body."""
        pose = torch.zeros(len(POSE_BONES), 3, dtype=torch.float64)
        i = POSE_BONES.index
        a, e = math.radians(arms_down_deg), math.radians(elbows_deg)
        pose[i("upperarm01.L"), 1], pose[i("upperarm01.R"), 1] = a, -a
        pose[i("lowerarm01.L"), 0], pose[i("lowerarm01.R"), 0] = -e, -e
        phen = torch.tensor([_logit(0.5)] * len(PHENOTYPE), dtype=torch.float64)
        return cls(pose, phen, torch.tensor(float(yaw), dtype=torch.float64),
                   torch.as_tensor(np.asarray(feet, np.float64)), label)  # fmt: skip

    @classmethod
    def crouching(cls, yaw: float = 0.0, feet=(0.0, 0.0, 0.0)) -> BodyParams:
        """Knees bent by 70 degrees, hips by 60, the trunk leaning forward."""
        p = cls.standing(yaw, feet, label="crouch")
        i = POSE_BONES.index
        for side in ("L", "R"):
            p.pose[i(f"upperleg01.{side}"), 0] = -math.radians(60)
            p.pose[i(f"lowerleg01.{side}"), 0] = math.radians(70)
            p.pose[i(f"foot.{side}"), 0] = -math.radians(10)
        p.pose[i("spine03"), 0] = -math.radians(15)
        return p

    def tensors(self) -> list[torch.Tensor]:
        return [self.pose, self.phenotype, self.yaw, self.feet]

    def detached(self) -> BodyParams:
        return BodyParams(*(t.detach().clone() for t in self.tensors()), self.label, dict(self.meta))

    def phenotype_values(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in zip(PHENOTYPE, torch.sigmoid(self.phenotype), strict=True)}


@dataclass
class PosedBody:
    vertices: torch.Tensor  # [V, 3] scene frame
    keypoints: torch.Tensor  # [K, 3] scene frame
    faces: np.ndarray  # [F, 3]


class Body:
    """anny posed from :class:`BodyParams` (see the module docstring)."""

    def __init__(self, model, regressor, version: str = "?"):
        self.model, self.regressor, self.version = model, regressor, version
        self.keypoint_names: list[str] = list(regressor.labels)
        self.faces = model.get_triangular_faces().cpu().numpy().astype(np.int64)
        self._feet = [
            i for i, n in enumerate(self.keypoint_names) if "heel" in n or "toe" in n or "ankle" in n
        ]

    @classmethod
    def load(cls, cache: str | os.PathLike | None = None) -> Body:
        model, regressor, version = load_anny(str(Path(cache) if cache else cache_dir()))
        return cls(model, regressor, version)

    def pose(self, p: BodyParams, frame: np.ndarray | torch.Tensor) -> PosedBody:
        """Vertices and keypoints of ``p`` in the scene frame; ``frame`` [3, 3] is scene-from-upright (its
        third column the scene's up). Differentiable in every tensor of ``p``."""
        dt = self.model.dtype
        R = axis_angle_matrix(p.pose.to(dt))
        M = torch.zeros(len(POSE_BONES), 4, 4, dtype=dt)
        M[:, :3, :3] = R
        M[:, 3, 3] = 1.0
        params = {b: M[k][None] for k, b in enumerate(POSE_BONES)}
        phen = {k: torch.sigmoid(p.phenotype[j]).to(dt)[None] for j, k in enumerate(PHENOTYPE)}
        with contextlib.redirect_stdout(sys.stderr):
            out = self.model(pose_parameters=params, phenotype_kwargs=phen)
            kp = self.regressor(out)[0]
        v = out["vertices"][0]
        # the point between the feet, on the sole: the body's origin
        soles = v[:, 2].min()
        centre = kp[self._feet, :2].mean(0)
        origin = torch.stack([centre[0], centre[1], soles])
        c, s = torch.cos(p.yaw), torch.sin(p.yaw)
        o, one = torch.zeros_like(c), torch.ones_like(c)
        rz = torch.stack([torch.stack([c, -s, o]), torch.stack([s, c, o]), torch.stack([o, o, one])]).to(dt)
        F_ = torch.as_tensor(np.asarray(frame, np.float64), dtype=dt) @ rz
        return PosedBody(
            (v - origin) @ F_.T + p.feet.to(dt), (kp - origin) @ F_.T + p.feet.to(dt), self.faces
        )


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3] (outward for counter-clockwise faces)."""
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
