"""A person for the benchmark worlds: the anny body model (Apache-2.0 code, CC0 assets) in a random pose.

anny builds its model data once (about 2 minutes and ~790 MB) into a cache folder: ``ANNY_CACHE_DIR`` if set,
else ``~/.cache/idu/anny``; later loads take about a second. Without anny installed, :func:`make_person`
returns None and the world has no person (the caller says so).

Example::

    person = make_person(np.random.default_rng(0))
    if person is not None:
        person.vertices  # [V, 3] metres, z up, facing -y, feet on z = 0, pelvis above the origin
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from generation.human.body import anny_available, axis_rotation, cache_dir, load_anny

log = logging.getLogger(__name__)

POSE_KINDS = ("stand", "walk", "wave", "phone", "point")

# Body part of each vertex, from its dominant skinning bone (the first matching prefix wins).
_PART_OF_BONE = [
    ("eye", "skin"),
    ("head", "skin"),
    ("neck", "skin"),
    ("wrist", "skin"),
    ("finger", "skin"),
    ("metacarpal", "skin"),
    ("lowerarm", "sleeve"),
    ("upperarm", "top"),
    ("shoulder", "top"),
    ("clavicle", "top"),
    ("spine", "top"),
    ("foot", "shoes"),
    ("toe", "shoes"),
    ("lowerleg", "bottom"),
    ("upperleg", "bottom"),
    ("pelvis", "bottom"),
    ("root", "bottom"),
]


@dataclass
class Person:
    """A posed body mesh in its own frame: z up, facing -y, feet on z = 0, centred on x = y = 0."""

    vertices: np.ndarray  # [V, 3] float64, metres
    faces: np.ndarray  # [F, 3] int64
    vertex_parts: np.ndarray  # [V] str: skin | hair | top | sleeve | bottom | shoes
    keypoint_names: list[str]  # COCO (+ feet) keypoints of anny's regressor
    keypoints: np.ndarray  # [K, 3] float64, same frame as vertices
    bone_names: list[str]
    bone_heads: np.ndarray  # [B, 3] float64, same frame
    phenotype: dict[str, float]
    pose: dict[str, Any] = field(default_factory=dict)  # kind and angles (degrees) of the random pose
    model: str = ""
    clothing: dict[str, Any] = field(default_factory=dict)  # kind and offsets (metres) of the clothes
    body_vertices: np.ndarray | None = None  # [V, 3] the body under the clothes (same frame)

    @property
    def height(self) -> float:
        return float(self.vertices[:, 2].max() - self.vertices[:, 2].min())


def _rot(axis: str, deg: float):
    import torch

    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = torch.from_numpy(axis_rotation(axis, deg))
    return m


def random_pose(rng: np.random.Generator) -> dict[str, Any]:
    """A plausible standing pose as named angles (degrees) about world-aligned axes at each joint.

    anny's ``local-ref`` parameterisation rotates each bone about axes parallel to the body frame
    (x to the body's left, y backwards, z up): +x swings a leg backwards and bends a knee, +y lowers the
    left arm (and -y the right one), z turns about the vertical.
    """
    kind = POSE_KINDS[int(rng.integers(len(POSE_KINDS)))]
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    a: dict[str, float] = {
        "arm_down_L": u(28, 40),
        "arm_down_R": u(28, 40),
        "arm_swing_L": u(-10, 10),
        "arm_swing_R": u(-10, 10),
        "elbow_L": u(5, 25),
        "elbow_R": u(5, 25),
        "leg_swing_L": u(-4, 4),
        "leg_swing_R": u(-4, 4),
        "knee_L": u(0, 8),
        "knee_R": u(0, 8),
        "hip_spread_L": u(-3, 3),
        "hip_spread_R": u(-3, 3),
        "torso_bend": u(-3, 8),
        "torso_twist": u(-15, 15),
        "head_turn": u(-35, 35),
        "head_nod": u(-10, 15),
    }
    if kind == "walk":
        s = u(14, 24) * (1 if rng.random() < 0.5 else -1)
        a.update(leg_swing_L=-s, leg_swing_R=s, knee_L=u(5, 25), knee_R=u(5, 25))
        a.update(arm_swing_L=0.8 * s, arm_swing_R=-0.8 * s)
    elif kind == "wave":
        side = "L" if rng.random() < 0.5 else "R"
        a[f"arm_down_{side}"] = u(-80, -60)
        a[f"elbow_{side}"] = u(40, 80)
    elif kind == "phone":
        side = "L" if rng.random() < 0.5 else "R"
        a[f"arm_swing_{side}"] = u(-50, -30)
        a[f"elbow_{side}"] = u(90, 120)
        a["head_nod"] = u(15, 30)
        a["head_turn"] = u(-10, 10)
    elif kind == "point":
        side = "L" if rng.random() < 0.5 else "R"
        a[f"arm_swing_{side}"] = u(-85, -65)
        a[f"arm_down_{side}"] = u(15, 30)
        a[f"elbow_{side}"] = u(0, 10)
    return {"kind": kind, "angles_deg": {k: round(v, 3) for k, v in a.items()}}


def _pose_parameters(pose: dict[str, Any]) -> dict[str, Any]:
    a = pose["angles_deg"]
    p = {}

    def put(bone, *mats):
        m = mats[0]
        for n in mats[1:]:
            m = n @ m
        p[bone] = m[None]

    for side, sgn in (("L", 1.0), ("R", -1.0)):
        put(f"upperarm01.{side}", _rot("y", sgn * a[f"arm_down_{side}"]), _rot("x", a[f"arm_swing_{side}"]))
        put(f"lowerarm01.{side}", _rot("x", -a[f"elbow_{side}"]))
        put(f"upperleg01.{side}", _rot("x", a[f"leg_swing_{side}"]), _rot("y", sgn * a[f"hip_spread_{side}"]))
        put(f"lowerleg01.{side}", _rot("x", a[f"knee_{side}"]))
        # keep the feet roughly flat: undo the leg's pitch at the ankle
        put(f"foot.{side}", _rot("x", -(a[f"leg_swing_{side}"] + a[f"knee_{side}"])))
    put("spine03", _rot("x", a["torso_bend"]), _rot("z", a["torso_twist"]))
    put("head", _rot("x", a["head_nod"]), _rot("z", a["head_turn"]))
    return p


def _vertex_parts(model, verts: np.ndarray, keypoints: dict[str, np.ndarray]) -> np.ndarray:
    w = model.vertex_bone_weights.detach().cpu().numpy()
    idx = model.vertex_bone_indices.detach().cpu().numpy()
    dominant = idx[np.arange(len(idx)), w.argmax(1)]
    labels = [model.bone_labels[i] for i in dominant]
    parts = []
    for lab in labels:
        for prefix, part in _PART_OF_BONE:
            if lab.startswith(prefix):
                parts.append(part)
                break
        else:
            parts.append("top")
    parts = np.asarray(parts, dtype=object)
    # hair: the top and back of the head, above the eyes (model frame: facing -y)
    eye_z = 0.5 * (keypoints["left_eye"][2] + keypoints["right_eye"][2])
    ear_y = 0.5 * (keypoints["left_ear"][1] + keypoints["right_ear"][1])
    head = parts == "skin"
    hair = head & (
        (verts[:, 2] > eye_z + 0.045) | ((verts[:, 2] > eye_z - 0.09) & (verts[:, 1] > ear_y + 0.015))
    )
    parts[hair] = "hair"
    return parts


#: Clothes: (kind, probability, {part: (least, most) offset in metres along the body's normals}).
CLOTHES = [
    ("fitted", 0.3, {"top": (0.005, 0.012), "sleeve": (0.004, 0.01), "bottom": (0.004, 0.01)}),
    ("coat", 0.35, {"top": (0.025, 0.045), "sleeve": (0.015, 0.03), "bottom": (0.006, 0.015)}),
    ("skirt", 0.35, {"top": (0.008, 0.02), "sleeve": (0.005, 0.012), "bottom": (0.006, 0.012)}),
]


def _clothes(rng: np.random.Generator, verts: np.ndarray, faces: np.ndarray, parts: np.ndarray,
             kp: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """The clothed surface: every vertex moved out along the body's normal by its garment's offset (a
    skirt flares from the hips to above the knees), smoothed over the mesh so seams do not step."""
    from .meshes import vertex_normals

    k = rng.choice(len(CLOTHES), p=[c[1] for c in CLOTHES])
    kind, _, ranges = CLOTHES[k]
    drawn = {part: float(rng.uniform(*r)) for part, r in ranges.items()}
    d = np.array([drawn.get(str(p), 0.0) for p in parts])
    if kind == "skirt":
        hip = 0.5 * (kp["left_hip"][2] + kp["right_hip"][2])
        knee = 0.5 * (kp["left_knee"][2] + kp["right_knee"][2])
        length = float(rng.uniform(0.5, 0.85))  # down to this share of the way to the knees
        flare = float(rng.uniform(0.05, 0.09))
        t = (hip - verts[:, 2]) / max(hip - knee, 1e-3)
        legs = (parts == "bottom") & (t > 0) & (t < length)
        d[legs] = np.maximum(d[legs], flare * t[legs] / length)
    # a few rounds of averaging over the mesh's edges: garments, not steps at the part boundaries
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    deg = np.bincount(e[:, 0], minlength=len(d)) + np.bincount(e[:, 1], minlength=len(d))
    for _ in range(3):
        acc = np.bincount(e[:, 0], d[e[:, 1]], len(d)) + np.bincount(e[:, 1], d[e[:, 0]], len(d))
        d = 0.5 * d + 0.5 * acc / np.maximum(deg, 1)
    d[(parts == "skin") | (parts == "hair") | (parts == "shoes")] = 0.0
    out = verts + d[:, None] * vertex_normals(verts, faces)
    return out, {"kind": kind, "offsets_m": {p: round(v, 4) for p, v in drawn.items()},
                 "max_offset_m": round(float(d.max()), 4)}  # fmt: skip


def make_person(rng: np.random.Generator, clothes: bool = True) -> Person | None:
    """A random adult in a random standing pose, or None when anny is not installed.

    Args:
        rng: the only source of randomness (phenotype and pose).
        clothes: dress the body (:data:`CLOTHES`); the clothes never change the rest of the world.
    Returns:
        the posed mesh in its own frame (see :class:`Person`), keypoints and bone heads in the same frame.
    """
    if not anny_available():
        return None
    import torch

    phen = {
        "gender": float(rng.uniform(0, 1)),
        "age": float(rng.uniform(0.55, 0.85)),
        "muscle": float(rng.uniform(0.3, 0.7)),
        "weight": float(rng.uniform(0.3, 0.7)),
        "height": float(rng.uniform(0.3, 0.6)),
        "proportions": 0.5,
    }
    pose = random_pose(rng)
    model, regressor, version = load_anny(str(cache_dir()))
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        out = model(
            pose_parameters=_pose_parameters(pose),
            phenotype_kwargs={k: torch.tensor([v], dtype=model.dtype) for k, v in phen.items()},
        )
        kp = regressor(out)[0].double().numpy()
    verts = out["vertices"][0].double().numpy()
    bones = out["bone_poses"][0, :, :3, 3].double().numpy()
    faces = model.get_triangular_faces().cpu().numpy().astype(np.int64)
    # feet on the ground, centred between the ankles... on the body's footprint centre
    shift = np.array(
        [
            -0.5 * (verts[:, 0].min() + verts[:, 0].max()),
            -0.5 * (verts[:, 1].min() + verts[:, 1].max()),
            -verts[:, 2].min(),
        ]
    )
    verts, kp, bones = verts + shift, kp + shift, bones + shift
    kp_named = dict(zip(regressor.labels, kp, strict=True))
    parts = _vertex_parts(model, verts, kp_named)
    # the clothes draw from their own generator (seeded by the body): the rest of the world is unchanged
    clothed, clothing = verts, {"kind": "none"}
    if clothes:
        crng = np.random.default_rng(int(1e9 * phen["age"]) ^ int(1e9 * phen["weight"]))
        clothed, clothing = _clothes(crng, verts, faces, parts, kp_named)
    return Person(
        vertices=clothed,
        faces=faces,
        vertex_parts=parts,
        keypoint_names=list(regressor.labels),
        keypoints=kp,
        bone_names=list(model.bone_labels),
        bone_heads=bones,
        phenotype={k: round(v, 6) for k, v in phen.items()},
        pose=pose,
        model=f"anny {version}",
        clothing=clothing,
        body_vertices=verts,
    )
