"""Capture paths: the before walk-around and drone rings, and after views aimed at the changes.

Cameras are OpenCV cameras (x right, y down, z forward) with ``cam_from_world`` poses made by
:func:`bench.sample_scene.look_at` (image up is world +z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.sample_scene import look_at
from reconstruction.cameras import Camera, Pose

from .layout import PLAZA_Z, WALK_RING, SceneObject, World
from .render import SKY_ID, Geometry

AFTER_VIEW_KINDS = ("low_close", "ring", "high", "far")
_IGNORE = ("ground", "building")


@dataclass
class View:
    pose: Pose
    kind: str
    target: str | None = None  # the change an after view was aimed at


def _free(world_objects: list[SceneObject], x: float, y: float, margin: float = 0.45) -> bool:
    for o in world_objects:
        if o.category in _IGNORE:
            continue
        ox, oy, r = o.footprint
        if np.hypot(x - ox, y - oy) < r + margin:
            return False
    return True


def _inside(world: World, x: float, y: float, margin: float = 0.6) -> bool:
    hx, hy = world.half
    return -hx + margin < x < hx - margin and world.road[0] + margin < y < hy - margin


def before_views(
    world: World, geom: Geometry, camera: Camera, n: int, elevated_fraction: float, rng: np.random.Generator
) -> list[View]:
    """A walk-around at eye height looking across the plaza, plus raised views above it.

    Consecutive walk views turn by the same small angle (360 / walk views) so SfM can chain them; a
    position is moved in, out or aside until the view is not blocked by something close to the lens.
    Raised views (a mast or a low drone, 3-4 m up) stand behind every few walk views, looking across and
    down at the plaza.
    """
    x0, x1, y0, y1 = world.plaza
    c = world.center
    ax, ay = (x1 - x0) / 2, (y1 - y0) / 2
    n_e = int(round(n * elevated_fraction))
    n_g = n - n_e
    objs = world.objects("before")
    small = camera.scaled(min(1.0, 64 / camera.width))
    ground = geom.object_ids.index("ground")
    views = []
    a0 = float(rng.uniform(0, 2 * np.pi))

    def ring(theta: float, scale: float) -> np.ndarray:
        # the point of the plaza-shaped ellipse (semi-axes scale * ax, scale * ay) at polar angle theta:
        # stepping theta evenly turns consecutive views by the same angle, however elongated the plaza
        r = scale / np.hypot(np.cos(theta) / ax, np.sin(theta) / ay)
        return np.array([c[0] + r * np.cos(theta), c[1] + r * np.sin(theta)])

    def place(theta: float, scales, height: float, target: np.ndarray) -> Pose:
        best, best_near = None, np.inf
        for da in (0.0, 0.04, -0.04, 0.08, -0.08, 0.13, -0.13, 0.2, -0.2):
            for k in scales:
                x, y = ring(theta + da, k)
                if not _free(objs, x, y, margin=0.8):
                    continue
                pose = look_at(np.array([x, y, height]), target)
                ids, depth = geom.id_map(small, pose)
                # something other than the ground within a few metres hides the plaza
                near = float(((depth < 4.0) & (ids != ground)).mean()) + 5 * float((depth < 1.5).mean())
                if near < 0.12:
                    return pose
                if near < best_near:
                    best, best_near = pose, near
        return best if best is not None else look_at(np.r_[ring(theta, scales[0]), height], target)

    targets = []
    for i in range(n_g):
        a = a0 + 2 * np.pi * i / n_g
        tgt = np.array([c[0], c[1], PLAZA_Z + 1.2]) + np.r_[rng.normal(0, 0.3, 2), rng.normal(0, 0.1)]
        scales = (
            WALK_RING,
            WALK_RING - 0.07,
            WALK_RING + 0.08,
            WALK_RING - 0.14,
            WALK_RING + 0.16,
            0.4,
            0.86,
        )
        pose = place(a, scales, PLAZA_Z + rng.uniform(1.5, 1.7), tgt)
        views.append(View(pose, "walk"))
        targets.append(tgt)
    j0 = int(rng.integers(n_g)) if n_g else 0
    step = max(1, int(round(n_g / (3 * max(n_e, 1)))))
    for i in range(n_e):
        # a raised pass (a mast or a low drone) over a stretch of the walk: above and a little behind
        # consecutive walk positions, aimed lower at the same spots; each raised view shares most of its
        # view with its neighbours and with the walk view below it
        j = (j0 + i * step) % n_g
        below = views[j].pose.center()
        back = below[:2] - c[:2]
        back = back / max(float(np.linalg.norm(back)), 1e-6)
        pos = np.r_[below[:2] + 0.6 * back, below[2] + rng.uniform(1.6, 2.2)]
        pose = look_at(pos, targets[j] - np.array([0.0, 0.0, 0.7]))
        views.append(View(pose, "drone"))
    return views


def _candidate(world: World, target: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    dist, height = {
        "low_close": ((3.0, 5.5), (0.9, 1.3)),
        "ring": ((6.0, 9.0), (1.5, 1.8)),
        "high": ((5.0, 8.0), (3.0, 4.5)),
        "far": ((9.0, 13.0), (2.0, 2.8)),
    }[kind]
    a = rng.uniform(0, 2 * np.pi)
    r = rng.uniform(*dist)
    x, y = target[0] + r * np.cos(a), target[1] + r * np.sin(a)
    return np.array([x, y, world.ground_z(x, y) + rng.uniform(*height)])


def after_views(
    world: World,
    before: Geometry,
    after: Geometry,
    camera: Camera,
    n: int,
    rng: np.random.Generator,
    candidates: int = 60,
) -> list[View]:
    """``n`` views, each aimed at one change (in turn) from a pose of a varying kind, chosen among random
    candidates: the target (for a removed object: the place where it stood) must be mostly unoccluded in
    the after scene, neither tiny nor filling the frame; little sky; nothing close to the lens."""
    small = camera.scaled(min(1.0, 96 / camera.width))
    changes = world.changes
    objs_after = world.objects("after")
    alone = {c.id: Geometry([c.after if c.after is not None else c.before]) for c in changes}
    views = []
    for i in range(n):
        ch = changes[i % len(changes)]
        kind = AFTER_VIEW_KINDS[i % len(AFTER_VIEW_KINDS)]
        obj = ch.after if ch.after is not None else ch.before
        best, best_score = None, -np.inf
        for _ in range(candidates):
            pos = _candidate(world, obj.box_center, kind, rng)
            if not _inside(world, pos[0], pos[1]) or not _free(objs_after, pos[0], pos[1], margin=0.8):
                continue
            aim = obj.box_center + np.r_[rng.normal(0, 0.35, 2), rng.normal(0, 0.15)]
            pose = look_at(pos, aim)
            ids_a, depth_a = after.id_map(small, pose)
            if ch.after is not None:
                target = ids_a == after.object_ids.index(ch.id)
            else:  # where the before scene showed it and the after scene does not hide that place
                ids_b, depth_b = before.id_map(small, pose)
                target = (ids_b == before.object_ids.index(ch.id)) & (depth_a >= depth_b - 0.05)
            solo, _ = alone[ch.id].id_map(small, pose)
            seen = float(target.mean())
            full = float((solo == 0).mean())
            sky = float((ids_a == SKY_ID).mean())
            near = float((depth_a < 1.2).mean())
            score = min(seen, 0.3) - 0.5 * sky - 2 * near + 0.2 * seen / max(full, 1e-6)
            ok = 0.01 <= seen <= 0.4 and seen >= 0.6 * full and sky < 0.3 and near < 0.03
            if ok:
                best = pose
                break
            if score > best_score:
                best, best_score = pose, score
        if best is None:  # every candidate was outside the courtyard: look from the plaza centre
            best = look_at(world.center + np.array([0.0, 0.0, 1.6]), obj.box_center)
        views.append(View(best, kind, ch.id))
    return views


def nearest_view(pose: Pose, others: list[Pose]) -> tuple[int, float, float]:
    """Index of the closest pose in ``others`` (by centre distance), that distance (m) and the angle
    (degrees) between the two optical axes."""
    c = pose.center()
    d = [float(np.linalg.norm(c - o.center())) for o in others]
    k = int(np.argmin(d))
    z1, z2 = pose.R[2], others[k].R[2]
    ang = float(np.degrees(np.arccos(np.clip(z1 @ z2, -1, 1))))
    return k, d[k], ang
