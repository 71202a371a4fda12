"""The place: a courtyard of buildings around a paved plaza with a street along one side, props, and the
changes between the two captures (added crate, vehicle and person; a removed and a moved prop).

World frame: z up, metres, origin at the courtyard's centre on the street level (the plaza is raised by
``PLAZA_Z``). Everything is drawn from one ``numpy`` generator seeded by the world's seed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import numpy as np

from .meshes import Part, blob, box, cylinder, mesh_part, offset, place, quad, yaw_matrix
from .person import Person, anny_available, make_person

log = logging.getLogger(__name__)

PLAZA_Z = 0.12
SIDEWALK = 1.8
ROAD_WIDTH = 6.0
BUILDING_DEPTH = 8.0
STREET_RUN = 22.0  # how far the street and its buildings run beyond the courtyard on each side
WALK_RING = 0.62  # the before capture's walk follows this scale of the plaza-shaped ellipse
WALK_CLEARANCE = 1.3  # metres kept free of before-scene props on each side of the walk


def ring_distance(plaza, x: float, y: float) -> float:
    """Distance (metres, approximate) from (x, y) to the walk ring: the ellipse of semi-axes
    WALK_RING * (plaza half extents) around the plaza centre."""
    x0, x1, y0, y1 = plaza
    ax, ay = (x1 - x0) / 2, (y1 - y0) / 2
    dx, dy = x - (x0 + x1) / 2, y - (y0 + y1) / 2
    rho = float(np.hypot(dx / ax, dy / ay))
    theta = np.arctan2(dy, dx)
    r_unit = 1.0 / float(np.hypot(np.cos(theta) / ax, np.sin(theta) / ay))  # the ellipse's radius there
    return abs(rho - WALK_RING) * r_unit


@dataclass
class SceneObject:
    """A named group of parts with its oriented bounding box (world frame)."""

    id: str
    category: str
    parts: list[Part]
    box_center: np.ndarray  # [3]
    box_size: np.ndarray  # [3]
    box_rotation: np.ndarray  # [3, 3] world_from_box
    footprint: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x, y, radius (props only)
    meta: dict = field(default_factory=dict)

    @property
    def num_faces(self) -> int:
        return sum(p.num_faces for p in self.parts)

    def box_corners(self) -> np.ndarray:
        """The 8 corners [8, 3] of the oriented box."""
        s = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
        return self.box_center + (s * self.box_size) @ self.box_rotation.T

    def vertices(self) -> np.ndarray:
        return np.concatenate([p.vertices for p in self.parts])


@dataclass
class Change:
    """One difference between the captures. ``before``/``after`` are the object in each scene (None where
    it does not exist); both carry the change's id."""

    id: str
    kind: str  # added | removed | moved
    category: str
    before: SceneObject | None
    after: SceneObject | None


@dataclass
class Sun:
    direction: np.ndarray  # [3] unit vector towards the sun
    color: np.ndarray  # [3] linear RGB irradiance scale

    @property
    def azimuth_deg(self) -> float:
        return float(np.degrees(np.arctan2(self.direction[1], self.direction[0])))

    @property
    def elevation_deg(self) -> float:
        return float(np.degrees(np.arcsin(np.clip(self.direction[2], -1, 1))))


def sun_from_angles(azimuth_deg: float, elevation_deg: float, color) -> Sun:
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    return Sun(np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)]), np.asarray(color, float))


@dataclass
class World:
    seed: int
    half: tuple[float, float]  # courtyard half extents (x, y)
    plaza: tuple[float, float, float, float]  # x0, x1, y0, y1 of the raised plaza
    road: tuple[float, float]  # y0, y1 of the street
    static: list[SceneObject]  # buildings, ground, fixtures: identical in both captures
    props: list[SceneObject]  # props present and unchanged in both captures
    changes: list[Change]
    sun_before: Sun
    sun_after: Sun
    person: Person | None
    person_change: str | None = None

    def objects(self, which: str) -> list[SceneObject]:
        """Every object of the ``before`` or ``after`` scene."""
        assert which in ("before", "after"), which
        ch = [getattr(c, which) for c in self.changes]
        return self.static + self.props + [o for o in ch if o is not None]

    @property
    def center(self) -> np.ndarray:
        x0, x1, y0, y1 = self.plaza
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2, PLAZA_Z])

    def ground_z(self, x: float, y: float) -> float:
        return 0.0 if self.road[0] <= y <= self.road[1] else PLAZA_Z


def make_object(
    oid: str, category: str, local_parts: list[Part], yaw: float = 0.0, position=(0.0, 0.0, 0.0), **meta
) -> SceneObject:
    """Place parts built in a local frame and record the box of their local extents."""
    v = np.concatenate([p.vertices for p in local_parts])
    lo, hi = v.min(0), v.max(0)
    R = yaw_matrix(yaw)
    t = np.asarray(position, float)
    parts = place(local_parts, yaw, t)
    c = R @ ((lo + hi) / 2) + t
    radius = 0.5 * float(np.hypot(hi[0] - lo[0], hi[1] - lo[1]))
    meta = {"yaw": float(yaw), "position": [float(x) for x in t], **meta}
    return SceneObject(oid, category, parts, c, hi - lo, R, (float(c[0]), float(c[1]), radius), meta)


def local_parts(o: SceneObject) -> list[Part]:
    """An object's parts back in its local frame (undoing :func:`make_object`'s placement)."""
    R, t = yaw_matrix(o.meta["yaw"]), np.asarray(o.meta["position"], float)
    return [p.transformed(R.T, -R.T @ t) for p in o.parts]


def centered(parts: list[Part]) -> list[Part]:
    """Parts shifted so that their xy extents are centred on the origin."""
    v = np.concatenate([p.vertices for p in parts])
    c = (v[:, :2].min(0) + v[:, :2].max(0)) / 2
    return [offset(p, (-c[0], -c[1], 0.0)) for p in parts]


def _inst(rng: np.random.Generator) -> int:
    return int(rng.integers(1, 1 << 30))


# -- buildings ---------------------------------------------------------------------------------
def building(
    rng: np.random.Generator, width: float, height: float, facade_windows: bool = True
) -> list[Part]:
    """A building in its local frame: facade on y = 0 facing -y, x in [-width/2, width/2], depth along +y."""
    mat = ["brick", "plaster", "plaster", "concrete", "brick"][int(rng.integers(5))]
    inst = _inst(rng)
    w, h, d = width, height, BUILDING_DEPTH
    parts = [offset(box((w, d, h), mat, inst), (0, d / 2, 0))]
    parts.append(quad((-w / 2, 0, h + 0.005), (w, 0, 0), (0, d, 0), "roof", inst))
    trim = _inst(rng)
    parts.append(offset(box((w + 0.24, 0.45, 0.35), "stone_trim", trim), (0, 0.1, h - 0.35)))
    parts.append(offset(box((w, 0.12, 0.55), "stone_trim", trim), (0, 0.0, 0)))
    if not facade_windows:
        return parts
    ground_h, floor_h = 3.6, 3.2
    floors = 1 + max(0, int((h - ground_h - 0.8) // floor_h))
    ww, wh = rng.uniform(1.0, 1.4), rng.uniform(1.35, 1.7)
    spacing = rng.uniform(2.3, 3.2)
    n = max(1, int((w - 0.8) // spacing))
    xs = (np.arange(n) - (n - 1) / 2) * spacing
    balconies = rng.random() < 0.4
    for k in range(1, floors):
        z = ground_h + (k - 1) * floor_h + 0.9
        for x in xs:
            parts.append(
                quad((x - ww / 2, -0.03, z), (ww, 0, 0), (0, 0, wh), "window", _inst(rng), unit_uv=True)
            )
            parts.append(offset(box((ww + 0.14, 0.12, 0.07), "stone_trim", trim), (x, -0.04, z - 0.07)))
            if balconies and k % 2 == 1 and rng.random() < 0.5:
                parts += _balcony(ww, x, z - 0.9, trim)
            # the back facade has windows too (seen over lower buildings)
            back = quad(
                (x + ww / 2, BUILDING_DEPTH + 0.03, z), (-ww, 0, 0), (0, 0, wh), "window", _inst(rng), True
            )
            parts.append(back)
        # and so do the side walls (seen where a neighbour is lower or set back)
        for y in np.arange(1.6, d - 1.0, spacing):
            for sx in (-1, 1):
                o = (sx * (w / 2 + 0.03), y - sx * ww / 2, z)
                parts.append(quad(o, (0, sx * ww, 0), (0, 0, wh), "window", _inst(rng), True))
    # ground floor: a shop front with its sign, or a door between windows
    shop = w >= 5.5 and rng.random() < 0.6
    taken = []
    if shop:
        sw = min(w - 1.8, 4.2)
        sx = float(rng.uniform(-(w - sw) / 2 + 0.9, (w - sw) / 2 - 0.9)) if w - sw > 1.8 else 0.0
        parts.append(
            quad((sx - sw / 2, -0.03, 0.55), (sw, 0, 0), (0, 0, 2.1), "window", _inst(rng), unit_uv=True)
        )
        parts.append(quad((sx - 1.5, -0.06, 2.85), (3.0, 0, 0), (0, 0, 0.6), "sign", _inst(rng)))
        parts.append(offset(box((3.1, 0.05, 0.7), "metal_paint", _inst(rng)), (sx, -0.0, 2.8)))
        taken.append((sx - sw / 2 - 0.3, sx + sw / 2 + 0.3))
    door_x = float(xs[int(rng.integers(len(xs)))])
    if not any(a <= door_x <= b for a, b in taken):
        parts.append(
            quad((door_x - 0.55, -0.03, 0.12), (1.1, 0, 0), (0, 0, 2.25), "door", _inst(rng), unit_uv=True)
        )
        parts.append(offset(box((1.4, 0.15, 0.12), "stone_trim", trim), (door_x, -0.05, 2.37)))
        taken.append((door_x - 0.8, door_x + 0.8))
    for x in xs:
        if not any(a <= x <= b for a, b in taken):
            parts.append(
                quad((x - ww / 2, -0.03, 1.1), (ww, 0, 0), (0, 0, wh), "window", _inst(rng), unit_uv=True)
            )
            parts.append(offset(box((ww + 0.14, 0.12, 0.07), "stone_trim", trim), (x, -0.04, 1.03)))
            taken.append((x - ww / 2 - 0.05, x + ww / 2 + 0.05))
    # posters and graffiti-like panels on free wall between openings
    for x in np.linspace(-w / 2 + 0.6, w / 2 - 0.6, 9):
        if any(a - 0.35 <= x <= b + 0.35 for a, b in taken) or rng.random() < 0.55:
            continue
        pw, ph = rng.uniform(0.5, 0.8), rng.uniform(0.7, 1.0)
        parts.append(
            quad((x - pw / 2, -0.02, 0.9), (pw, 0, 0), (0, 0, ph), "poster", _inst(rng), unit_uv=True)
        )
        taken.append((x - pw / 2, x + pw / 2))
    # fixtures that make each facade unique: a drainpipe, air-conditioning units, wall lamps
    pipe_i = _inst(rng)
    px = (w / 2 - 0.22) * (1 if rng.random() < 0.5 else -1)
    parts.append(offset(cylinder(0.055, h - 0.1, "metal_paint", pipe_i, segments=10), (px, -0.09, 0)))
    for k in range(1, floors):
        z = ground_h + (k - 1) * floor_h + 0.5
        for x in xs:
            if rng.random() < 0.18 and abs(x + ww / 2 + 0.55) < w / 2 - 0.5:
                unit = box((0.8, 0.32, 0.55), "metal_paint", _inst(rng))
                parts.append(offset(unit, (x + ww / 2 + 0.55, -0.17, z)))
    for x in xs[:: max(1, len(xs) // 2)]:
        if rng.random() < 0.5:
            parts.append(offset(box((0.18, 0.2, 0.25), "chrome", 0), (x, -0.1, 3.05)))
    return parts


def _balcony(ww: float, x: float, floor_z: float, trim: int) -> list[Part]:
    bw = ww + 0.7
    return [
        offset(box((bw, 1.0, 0.15), "stone_trim", trim), (x, -0.5, floor_z - 0.15)),
        offset(box((bw, 0.05, 0.95), "metal_paint", trim + 1), (x, -0.98, floor_z)),
        offset(box((0.05, 0.95, 0.95), "metal_paint", trim + 1), (x - bw / 2 + 0.03, -0.5, floor_z)),
        offset(box((0.05, 0.95, 0.95), "metal_paint", trim + 1), (x + bw / 2 - 0.03, -0.5, floor_z)),
    ]


def building_row(rng, name: str, x0: float, x1: float, yaw: float, facade_at, heights=(7.0, 14.0)) -> list:
    """Buildings along a facade line from local x0 to x1; ``facade_at(x)`` maps the local x of a building's
    centre to its world position (facade centre)."""
    out = []
    x = x0
    i = 0
    while x < x1 - 1.0:
        w = min(float(rng.uniform(5.0, 9.5)), x1 - x)
        if x1 - (x + w) < 3.0:
            w = x1 - x
        h = float(rng.uniform(*heights))
        setback = float(rng.uniform(0.0, 0.25))
        parts = building(rng, w, h)
        c = np.asarray(facade_at(x + w / 2), float)
        out.append(make_object(f"{name}_{i}", "building", parts, yaw, c + yaw_matrix(yaw) @ [0, setback, 0]))
        x += w
        i += 1
    return out


# -- props -------------------------------------------------------------------------------------
def bench(rng) -> list[Part]:
    wood_i, leg_i = _inst(rng), _inst(rng)
    L = float(rng.uniform(1.6, 2.2))
    parts = [offset(box((L, 0.45, 0.06), "wood", wood_i), (0, 0, 0.42))]
    parts.append(offset(box((L, 0.06, 0.4), "wood", wood_i), (0, 0.22, 0.55)))
    leg = "concrete" if rng.random() < 0.5 else "metal_paint"
    for s in (-1, 1):
        parts.append(offset(box((0.1, 0.5, 0.42), leg, leg_i), (s * (L / 2 - 0.2), 0, 0)))
        parts.append(offset(box((0.08, 0.08, 0.5), leg, leg_i), (s * (L / 2 - 0.2), 0.24, 0.45)))
    return parts


def planter(rng) -> list[Part]:
    s = float(rng.uniform(0.8, 1.2))
    h = float(rng.uniform(0.5, 0.8))
    parts = [
        box((s, s, h), "concrete", _inst(rng)),
        offset(box((s - 0.1, s - 0.1, 0.02), "soil", 0), (0, 0, h)),
    ]
    b = blob(s * 0.5, "foliage", _inst(rng), rng)
    parts.append(offset(b, (0, 0, h + s * 0.35)))
    return parts


def barrel(rng, n: int = 1) -> list[Part]:
    parts = []
    for k in range(n):
        inst = _inst(rng)
        parts.append(offset(cylinder(0.29, 0.88, "barrel", inst), (k * 0.62, 0.05 * rng.normal(), 0)))
    return parts


def crate(rng, size: float | None = None, painted: bool = True, pallet: bool = False) -> list[Part]:
    s = float(rng.uniform(0.7, 1.1)) if size is None else size
    sz = (s * float(rng.uniform(0.9, 1.3)), s, s * float(rng.uniform(0.75, 1.0)))
    z = 0.0
    parts = []
    if pallet:
        pi = _inst(rng)
        parts.append(box((max(sz[0], 1.2), max(sz[1], 1.0), 0.03), "wood", pi))
        for dx in (-0.45, 0.0, 0.45):
            parts.append(offset(box((0.1 * 1.0, max(sz[1], 1.0), 0.1), "wood", pi), (dx * sz[0], 0, 0.03)))
        parts.append(offset(box((max(sz[0], 1.2), max(sz[1], 1.0), 0.02), "wood", pi), (0, 0, 0.13)))
        z = 0.15
    parts.append(offset(box(sz, "crate_paint" if painted else "wood", _inst(rng), center_uv=True), (0, 0, z)))
    return parts


def crate_stack(rng) -> list[Part]:
    parts = crate(rng, painted=rng.random() < 0.5)
    top = max(p.vertices[:, 2].max() for p in parts)
    small = crate(rng, size=float(rng.uniform(0.45, 0.65)), painted=True)
    parts += [offset(p, (rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), top)) for p in small]
    side = crate(rng, size=float(rng.uniform(0.5, 0.8)), painted=rng.random() < 0.5)
    parts += [offset(p, (0.0, 1.05, 0)) for p in side]
    return parts


def dumpster(rng) -> list[Part]:
    inst = _inst(rng)
    parts = [offset(box((1.9, 1.1, 1.05), "metal_paint", inst), (0, 0, 0.15))]
    lid = box((1.95, 1.2, 0.06), "metal_paint", inst)
    R = np.array([[1, 0, 0], [0, np.cos(0.08), -np.sin(0.08)], [0, np.sin(0.08), np.cos(0.08)]])
    parts.append(lid.transformed(R, np.array([0, 0, 1.2])))
    for sx in (-0.8, 0.8):
        for sy in (-0.4, 0.4):
            wheel = cylinder(0.08, 0.06, "rubber", 0, segments=12)
            Rw = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])
            parts.append(wheel.transformed(Rw, np.array([sx, sy + 0.03, 0.08])))
    return parts


def lamp_post(rng) -> list[Part]:
    inst = _inst(rng)
    parts = [cylinder(0.12, 0.5, "metal_paint", inst), cylinder(0.065, 4.6, "metal_paint", inst, segments=16)]
    parts.append(offset(box((0.8, 0.12, 0.08), "metal_paint", inst), (0.35, 0, 4.5)))
    parts.append(offset(box((0.45, 0.3, 0.18), "chrome", inst), (0.65, 0, 4.35)))
    return parts


def bollard(rng) -> list[Part]:
    return [cylinder(0.1, 0.9, "metal_paint", _inst(rng), segments=16)]


def tree(rng) -> list[Part]:
    h = float(rng.uniform(2.4, 3.4))
    parts = [cylinder(0.16, h + 0.6, "bark", _inst(rng), segments=14)]
    r = float(rng.uniform(1.3, 1.9))
    parts.append(offset(blob(r, "foliage", _inst(rng), rng, bumps=0.3), (0, 0, h + r * 0.7)))
    return parts


def kiosk(rng) -> list[Part]:
    inst = _inst(rng)
    parts = [box((2.6, 2.0, 2.5), "wood", inst)]
    parts.append(offset(box((3.0, 2.4, 0.15), "metal_paint", _inst(rng)), (0, 0, 2.5)))
    parts.append(quad((-1.5, -1.03, 2.65), (3.0, 0, 0), (0, 0, 0.6), "sign", _inst(rng)))
    parts.append(quad((-1.1, -1.02, 1.0), (1.4, 0, 0), (0, 0, 1.1), "window", _inst(rng), unit_uv=True))
    parts.append(quad((0.55, -1.02, 0.0), (0.8, 0, 0), (0, 0, 2.0), "door", _inst(rng), unit_uv=True))
    return parts


def vehicle(rng, van: bool | None = None) -> list[Part]:
    """A car or a van: body, cabin glass and roof, wheels, bumpers, lights; long axis along x."""
    van = bool(rng.random() < 0.4) if van is None else van
    L, W = (float(rng.uniform(4.8, 5.4)), 2.0) if van else (float(rng.uniform(4.0, 4.7)), 1.8)
    paint = _inst(rng)
    clear, body_h = 0.3, (1.2 if van else 0.75)
    parts = [offset(box((L, W, body_h), "car_paint", paint), (0, 0, clear))]
    if van:
        cab = box((L * 0.7, W - 0.04, 0.75), "glass", 0)
        parts.append(offset(cab, (-L * 0.12, 0, clear + body_h)))
        parts.append(
            offset(box((L * 0.72, W, 0.08), "car_paint", paint), (-L * 0.12, 0, clear + body_h + 0.75))
        )
        parts.append(
            offset(box((L * 0.66, W + 0.01, 0.5), "car_paint", paint), (-L * 0.15, 0, clear + body_h + 0.1))
        )
    else:
        cab = box((L * 0.5, W - 0.16, 0.52), "glass", 0)
        parts.append(offset(cab, (-L * 0.06, 0, clear + body_h)))
        parts.append(
            offset(box((L * 0.46, W - 0.12, 0.07), "car_paint", paint), (-L * 0.06, 0, clear + body_h + 0.52))
        )
    for sx in (-1, 1):
        parts.append(offset(box((0.14, W + 0.04, 0.22), "rubber", 0), (sx * (L / 2 + 0.02), 0, clear + 0.05)))
        for sy in (-1, 1):
            parts.append(
                offset(
                    box((0.05, 0.3, 0.14), "chrome", 0),
                    (sx * (L / 2 + 0.01), sy * (W / 2 - 0.25), clear + 0.4),
                )
            )
            wheel = cylinder(0.33, 0.24, "rubber", _inst(rng), segments=20)
            Rw = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])  # axis along y, spanning y in [-0.24, 0]
            wheel_y = sy * (W / 2 - 0.1) + 0.12
            parts.append(wheel.transformed(Rw, np.array([sx * (L / 2 - 0.85), wheel_y, 0.33])))
    return parts


def cafe_set(rng) -> list[Part]:
    """A round table, two or three chairs and sometimes a parasol."""
    metal, wood_i = _inst(rng), _inst(rng)
    parts = [
        cylinder(0.04, 0.72, "metal_paint", metal, segments=10),
        cylinder(0.22, 0.03, "metal_paint", metal),
    ]
    parts.append(offset(cylinder(0.4, 0.03, "wood", wood_i), (0, 0, 0.72)))
    n = int(rng.integers(2, 4))
    for k in range(n):
        a = 2 * np.pi * k / n + rng.uniform(-0.3, 0.3)
        chair = [offset(box((0.42, 0.42, 0.04), "wood", wood_i), (0, 0, 0.45))]
        chair += [
            offset(box((0.03, 0.03, 0.45), "metal_paint", metal), (sx * 0.18, sy * 0.18, 0))
            for sx in (-1, 1)
            for sy in (-1, 1)
        ]
        chair.append(offset(box((0.42, 0.03, 0.42), "wood", wood_i), (0, 0.2, 0.49)))
        R = yaw_matrix(a + np.pi / 2)
        t = np.array([0.72 * np.cos(a), 0.72 * np.sin(a), 0.0])
        parts += [c.transformed(R, t) for c in chair]
    if rng.random() < 0.6:
        parts.append(cylinder(0.025, 2.3, "chrome", 0, segments=8))
        k = 12
        ang = np.linspace(0, 2 * np.pi, k, endpoint=False)
        v = np.concatenate([[[0, 0, 2.45]], np.c_[1.25 * np.cos(ang), 1.25 * np.sin(ang), np.full(k, 2.05)]])
        f = np.stack([np.zeros(k, int), 1 + np.arange(k), 1 + (np.arange(k) + 1) % k], 1)
        parts.append(mesh_part(v, f, "fabric", _inst(rng), smooth=False))
    return parts


def litter_bin(rng) -> list[Part]:
    inst = _inst(rng)
    return [
        cylinder(0.25, 0.9, "metal_paint", inst, segments=18),
        offset(cylinder(0.28, 0.06, "metal_paint", inst + 1), (0, 0, 0.9)),
    ]


def bike_rack(rng) -> list[Part]:
    inst = _inst(rng)
    parts = []
    for k in range(int(rng.integers(3, 6))):
        x = 0.75 * k
        parts += [offset(box((0.05, 0.05, 0.8), "chrome", inst), (x, sy, 0)) for sy in (-0.3, 0.3)]
        parts.append(offset(box((0.05, 0.65, 0.05), "chrome", inst), (x, 0, 0.8)))
    return parts


def monument(rng) -> list[Part]:
    trim = _inst(rng)
    parts = [
        box((1.8, 1.8, 0.4), "stone_trim", trim),
        offset(box((1.2, 1.2, 1.3), "stone_trim", trim), (0, 0, 0.4)),
    ]
    parts.append(quad((-0.4, -0.62, 0.9), (0.8, 0, 0), (0, 0, 0.3), "sign", _inst(rng)))
    body = blob(0.45, "bronze", _inst(rng), rng, bumps=0.35)
    body.vertices = body.vertices * np.array([0.8, 0.6, 2.0])
    parts.append(offset(body, (0, 0, 1.7 + 0.85)))
    parts.append(offset(blob(0.25, "bronze", _inst(rng), rng, bumps=0.2), (0, 0, 1.7 + 1.95)))
    return parts


def person_parts(rng, person: Person) -> list[Part]:
    """The person split by body part into materials (skin, hair, top, sleeves, bottom, shoes)."""
    insts = {
        "skin": _inst(rng),
        "hair": _inst(rng),
        "top": _inst(rng),
        "bottom": _inst(rng),
        "shoes": _inst(rng),
    }
    sleeves = "skin" if rng.random() < 0.4 else "top"
    mats = {"skin": "skin", "hair": "hair", "top": "fabric", "bottom": "fabric", "shoes": "leather"}
    face_part = person.vertex_parts[person.faces[:, 0]]
    face_part = np.where(face_part == "sleeve", sleeves, face_part)
    parts = []
    from .meshes import triplanar_uv, vertex_normals

    vn = vertex_normals(person.vertices, person.faces)
    uv = triplanar_uv(person.vertices, person.faces)
    for key in ("skin", "hair", "top", "bottom", "shoes"):
        m = face_part == key
        if not m.any():
            continue
        f = person.faces[m]
        parts.append(Part(person.vertices, f, uv[m], vn[f], mats[key], insts[key]))
    return [_compact(p) for p in parts]


def _compact(p: Part) -> Part:
    used, inv = np.unique(p.faces, return_inverse=True)
    return Part(p.vertices[used], inv.reshape(p.faces.shape), p.uv, p.normals, p.material, p.inst)


# -- the world ---------------------------------------------------------------------------------
class _Footprints:
    """Circles on the ground that props must not overlap."""

    def __init__(self):
        self.items: list[tuple[float, float, float]] = []

    def free(self, x: float, y: float, r: float, gap: float = 0.5) -> bool:
        return all(np.hypot(x - a, y - b) >= r + c + gap for a, b, c in self.items)

    def add(self, x: float, y: float, r: float) -> None:
        self.items.append((x, y, r))


def _sample_spot(rng, area, r, fp: _Footprints, gap=0.5, tries=400, near=None, max_dist=None, walkway=None):
    """A free spot for a footprint of radius r; ``walkway`` (the plaza) keeps it off the walk ring."""
    x0, x1, y0, y1 = area
    for _ in range(tries):
        x, y = float(rng.uniform(x0 + r, x1 - r)), float(rng.uniform(y0 + r, y1 - r))
        if near is not None and np.hypot(x - near[0], y - near[1]) > max_dist:
            continue
        if walkway is not None and ring_distance(walkway, x, y) < r + WALK_CLEARANCE:
            continue
        if fp.free(x, y, r, gap):
            return x, y
    return None


def _footprint_radius(parts: list[Part]) -> float:
    return _xy_radius(np.concatenate([p.vertices for p in parts]))


def _xy_radius(v: np.ndarray) -> float:
    """Half the diagonal of the points' bounding box seen from above."""
    return 0.5 * float(np.hypot(*(v[:, :2].max(0) - v[:, :2].min(0))))


def build_world(seed: int, with_person: bool = True, clothes: bool = True) -> World:
    """The place for ``seed``: static buildings and fixtures, props, changes and the two suns.

    Args:
        seed: any int; the same seed always gives the same world.
        with_person: add a person (needs anny; without it the world has none and a line on stderr says so).
        clothes: dress the person (``bench/worlds/person.py``: ``CLOTHES``).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x1D0]))
    hx, hy = float(rng.uniform(12.0, 15.0)), float(rng.uniform(10.0, 13.0))
    road = (-hy + SIDEWALK, -hy + SIDEWALK + ROAD_WIDTH)
    plaza = (-hx, hx, road[1], hy)
    static: list[SceneObject] = []
    far = hx + STREET_RUN

    # ground: street asphalt everywhere, the raised plaza and sidewalk, kerbs, markings
    ground = [quad((-150, -150, 0), (300, 0, 0), (0, 300, 0), "asphalt", _inst(rng))]
    ground.append(
        quad((-far, road[1], PLAZA_Z), (2 * far, 0, 0), (0, hy + 10 - road[1], 0), "pavers", _inst(rng))
    )
    ground.append(
        quad((-far, -hy - 10, PLAZA_Z), (2 * far, 0, 0), (0, road[0] + hy + 10, 0), "pavers", _inst(rng))
    )
    kerb = _inst(rng)
    for y in road:
        k = box((2 * far, 0.16, PLAZA_Z + 0.006), "stone_trim", kerb)
        ground.append(offset(k, (0, y, 0)))
    paint = _inst(rng) & ~1  # even: white
    yc = 0.5 * (road[0] + road[1])
    for x in np.arange(-far, far, 4.0):
        ground.append(quad((x, yc - 0.06, 0.004), (2.2, 0, 0), (0, 0.12, 0), "paint", paint))
    for x in np.arange(-hx + 1, hx - 1, 2.6):  # parking bays along the plaza side
        ground.append(quad((x, road[1] - 2.3, 0.004), (0.1, 0, 0), (0, 2.1, 0), "paint", paint))
    ground.append(quad((-far, road[1] - 2.4, 0.004), (2 * far, 0, 0), (0, 0.1, 0), "paint", paint + 1))
    for _ in range(int(rng.integers(5, 9))):
        x, y = float(rng.uniform(-hx + 1, hx - 1)), float(rng.uniform(road[1] + 0.8, hy - 1))
        if rng.random() < 0.5:
            ground.append(
                quad((x, y, PLAZA_Z + 0.003), (0.8, 0, 0), (0, 0.8, 0), "manhole", _inst(rng), unit_uv=True)
            )
        else:
            ground.append(
                quad((x, y, PLAZA_Z + 0.003), (0.5, 0, 0), (0, 0.35, 0), "grate", _inst(rng), unit_uv=True)
            )
    for x in np.arange(-hx + 2.0, hx - 1.0, float(rng.uniform(5.0, 8.0))):  # gutters along the kerb
        ground.append(
            quad((x, road[1] - 0.45, 0.003), (0.45, 0, 0), (0, 0.3, 0), "grate", _inst(rng), unit_uv=True)
        )
    static.append(make_object("ground", "ground", ground))

    # buildings: north row, east and west rows, the street's south row, and rows closing the street's ends
    static += building_row(rng, "north", -hx - 1, hx + 1, 0.0, lambda x: (x, hy, 0))
    static += building_row(rng, "east", road[1] + SIDEWALK + 0.3, hy + 1, -np.pi / 2, lambda x: (hx, x, 0))
    static += building_row(rng, "west", -hy - 1, -road[1] - SIDEWALK - 0.3, np.pi / 2, lambda x: (-hx, -x, 0))
    static += building_row(rng, "south", -far, far, np.pi, lambda x: (-x, -hy, 0))
    static += building_row(rng, "street_ne", hx, far, 0.0, lambda x: (x, road[1] + SIDEWALK, 0))
    static += building_row(rng, "street_nw", -far, -hx, 0.0, lambda x: (x, road[1] + SIDEWALK, 0))
    static += building_row(
        rng, "street_e", -hy - 2, road[1] + SIDEWALK + 1, -np.pi / 2, lambda x: (far, x, 0)
    )
    static += building_row(
        rng, "street_w", -road[1] - SIDEWALK - 1, hy + 2, np.pi / 2, lambda x: (-far, -x, 0)
    )

    fp = _Footprints()
    inner = (plaza[0] + 1.0, plaza[1] - 1.0, plaza[2] + 0.6, plaza[3] - 1.0)
    # fixtures along the plaza's street edge: lamp posts and bollards (static)
    for i, x in enumerate(np.arange(-hx + 3.0, hx - 2.0, float(rng.uniform(7.0, 9.0)))):
        lp = lamp_post(rng)
        static.append(make_object(f"lamp_{i}", "lamp_post", lp, -np.pi / 2, (x, road[1] + 0.45, PLAZA_Z)))
        fp.add(x, road[1] + 0.45, 0.3)
    bx = float(rng.uniform(-hx + 2, hx - 6))
    for i in range(int(rng.integers(4, 7))):
        x = bx + 1.4 * i
        static.append(make_object(f"bollard_{i}", "bollard", bollard(rng), 0.0, (x, road[1] + 0.3, PLAZA_Z)))
        fp.add(x, road[1] + 0.3, 0.15)
    # a planted bed with a tree in a corner of the plaza
    bw, bd = float(rng.uniform(3.0, 4.5)), float(rng.uniform(3.0, 4.0))
    cx = (hx - 1.0 - bw / 2) * (1 if rng.random() < 0.5 else -1)
    cy = hy - 1.0 - bd / 2
    bed_i = _inst(rng)
    bed = [offset(box((bw, 0.25, 0.35), "stone_trim", bed_i), (0, s * (bd / 2 - 0.125), 0)) for s in (-1, 1)]
    bed += [
        offset(box((0.25, bd - 0.5, 0.35), "stone_trim", bed_i), (s * (bw / 2 - 0.125), 0, 0))
        for s in (-1, 1)
    ]
    bed.append(
        quad((-bw / 2 + 0.25, -bd / 2 + 0.25, 0.28), (bw - 0.5, 0, 0), (0, bd - 0.5, 0), "grass", _inst(rng))
    )
    bed += [offset(p, (rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3), 0.28)) for p in tree(rng)]
    rb = 0.5 * np.hypot(bw, bd)
    for cx_ in (cx, -cx):  # the corner that leaves the walk free
        if ring_distance(plaza, cx_, cy) > rb + WALK_CLEARANCE - 0.5:
            static.append(make_object("tree_bed", "tree", bed, 0.0, (cx_, cy, PLAZA_Z)))
            fp.add(cx_, cy, rb)
            break
    # kiosk against the back wall, where the walk leaves room
    kiosk_parts = kiosk(rng)
    for kx in rng.permutation(np.linspace(-hx + 2.5, hx - 2.5, 15)):
        if fp.free(kx, hy - 1.4, 1.7) and ring_distance(plaza, kx, hy - 1.4) > 1.7 + WALK_CLEARANCE - 0.3:
            static.append(make_object("kiosk", "kiosk", kiosk_parts, 0.0, (kx, hy - 1.4, PLAZA_Z)))
            fp.add(kx, hy - 1.4, 1.7)
            break
    # a parked car on the street
    px = float(rng.uniform(-hx + 3, hx - 3))
    car = vehicle(rng, van=False)
    parked = make_object(
        "parked_car", "vehicle", car, 0.0 if rng.random() < 0.5 else np.pi, (px, road[1] - 1.25, 0)
    )
    static.append(parked)

    # movable props
    props: list[SceneObject] = []
    mono = centered(monument(rng))
    spot = _sample_spot(rng, inner, 1.4, fp, gap=1.5, walkway=plaza)
    if spot is not None:
        static.append(
            make_object("monument", "monument", mono, float(rng.uniform(0, 2 * np.pi)), (*spot, PLAZA_Z))
        )
        fp.add(*spot, 1.4)
    makers = [("bench", bench), ("bench", bench), ("planter", planter), ("planter", planter)]
    makers += [("barrel", lambda r: barrel(r, int(r.integers(1, 3)))), ("crate", crate_stack)]
    makers += [("cafe_set", cafe_set), ("cafe_set", cafe_set), ("bin", litter_bin), ("bin", litter_bin)]
    makers += [("planter", planter), ("barrel", lambda r: barrel(r, 1)), ("bike_rack", bike_rack)]
    for k, (cat, fn) in enumerate(makers):
        parts = centered(fn(rng))
        r = _footprint_radius(parts)
        spot = _sample_spot(rng, inner, r, fp, gap=0.9, walkway=plaza)
        if spot is None:
            continue
        fp.add(*spot, r)
        props.append(
            make_object(f"{cat}_{k}", cat, parts, float(rng.uniform(0, 2 * np.pi)), (*spot, PLAZA_Z))
        )
    dx = float(rng.uniform(-hx + 3, hx - 3))
    if fp.free(dx, hy - 1.0, 1.1) and ring_distance(plaza, dx, hy - 0.85) > 1.1 + WALK_CLEARANCE:
        props.append(make_object("dumpster_0", "dumpster", dumpster(rng), 0.0, (dx, hy - 0.85, PLAZA_Z)))
        fp.add(dx, hy - 0.85, 1.1)

    # changes: a removed and a moved prop near the middle, then added objects in free spots
    center = np.array([(plaza[0] + plaza[1]) / 2, (plaza[2] + plaza[3]) / 2])
    order = sorted(props, key=lambda o: np.hypot(*(np.array(o.footprint[:2]) - center)))
    removable = [
        o
        for o in order
        if o.category in ("bench", "planter", "barrel", "crate", "dumpster", "cafe_set", "bin")
    ]
    removed = removable[int(rng.integers(min(3, len(removable))))]
    movable = [
        o
        for o in order
        if o is not removed and o.category in ("bench", "barrel", "planter", "dumpster", "cafe_set", "bin")
    ]
    moved = movable[int(rng.integers(min(3, len(movable))))]
    props = [o for o in props if o is not removed and o is not moved]
    changes = [
        Change(
            f"removed_{removed.category}",
            "removed",
            removed.category,
            _renamed(removed, f"removed_{removed.category}"),
            None,
        )
    ]
    mid = f"moved_{moved.category}"
    local = local_parts(moved)
    spot = None
    for _ in range(200):
        cand = _sample_spot(
            rng, inner, moved.footprint[2], fp, gap=0.6, near=moved.footprint[:2], max_dist=4.5
        )
        if cand is not None and np.hypot(cand[0] - moved.footprint[0], cand[1] - moved.footprint[1]) > 1.5:
            spot = cand
            break
    if spot is None:  # no room: turn it round where it stands
        spot = tuple(moved.meta["position"][:2])
    yaw0 = moved.meta["yaw"]
    yaw1 = yaw0 + float(rng.uniform(0.5, 2.5)) * (1 if rng.random() < 0.5 else -1)
    after = make_object(mid, moved.category, local, yaw1, (*spot, PLAZA_Z))
    fp.add(*spot, after.footprint[2])
    changes.append(Change(mid, "moved", moved.category, _renamed(moved, mid), after))

    crate_parts = crate(rng, size=float(rng.uniform(0.8, 1.1)), painted=True, pallet=True)
    r = _footprint_radius(crate_parts)
    spot = _sample_spot(rng, inner, r, fp, gap=0.8, near=center, max_dist=0.6 * min(hx, hy)) or _sample_spot(
        rng, inner, r, fp, 0.3
    )
    fp.add(*spot, r)
    changes.append(
        Change(
            "added_crate",
            "added",
            "crate",
            None,
            make_object(
                "added_crate", "crate", crate_parts, float(rng.uniform(0, 2 * np.pi)), (*spot, PLAZA_Z)
            ),
        )
    )

    veh = vehicle(rng)
    vlen = max(p.vertices[:, 0].max() for p in veh) * 2
    parked_x = parked.footprint[0]
    for _ in range(200):
        vx = float(rng.uniform(-hx + vlen / 2 + 1, hx - vlen / 2 - 1))
        if abs(vx - parked_x) > vlen + 1.0:
            break
    vyaw = (0.0 if rng.random() < 0.5 else np.pi) + float(rng.normal(0, 0.04))
    vy = road[1] - 1.3 if rng.random() < 0.6 else yc - 1.6
    changes.append(
        Change(
            "added_vehicle",
            "added",
            "vehicle",
            None,
            make_object("added_vehicle", "vehicle", veh, vyaw, (vx, vy, 0.0)),
        )
    )

    person = None
    person_change = None
    if with_person:
        prng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9E5]))
        person = make_person(prng, clothes)
        if person is None:
            print(
                "idu bench world: anny is not installed: this world has no person (pip install anny)",
                file=sys.stderr,
            )
        else:
            pparts = person_parts(prng, person)
            # placed by the body's footprint, not the clothes': the clothes change nothing else in the world
            body = person.vertices if person.body_vertices is None else person.body_vertices
            r = _xy_radius(body[np.unique(person.faces)]) + 0.2
            spot = _sample_spot(
                rng, inner, r, fp, gap=0.6, near=center, max_dist=0.55 * min(hx, hy)
            ) or _sample_spot(rng, inner, r, fp, 0.3)
            fp.add(*spot, r)
            yaw = float(rng.uniform(0, 2 * np.pi))
            obj = make_object("added_person", "person", pparts, yaw, (*spot, PLAZA_Z))
            changes.append(Change("added_person", "added", "person", None, obj))
            person_change = "added_person"

    az = float(rng.uniform(0, 360))
    el = float(rng.uniform(38, 60))
    sun_before = sun_from_angles(az, el, (1.0, 0.96, 0.90))
    daz = float(rng.uniform(30, 70)) * (1 if rng.random() < 0.5 else -1)
    sun_after = sun_from_angles(az + daz, float(np.clip(el + rng.uniform(-12, 8), 30, 65)), (1.0, 0.92, 0.82))
    return World(
        int(seed), (hx, hy), plaza, road, static, props, changes, sun_before, sun_after, person, person_change
    )


def _renamed(o: SceneObject, oid: str) -> SceneObject:
    return SceneObject(
        oid, o.category, o.parts, o.box_center, o.box_size, o.box_rotation, o.footprint, dict(o.meta)
    )


def person_joints_world(world: World) -> dict | None:
    """The person's keypoints and bone heads in the world frame (None without a person)."""
    if world.person is None or world.person_change is None:
        return None
    obj = next(c.after for c in world.changes if c.id == world.person_change)
    R, t = yaw_matrix(obj.meta["yaw"]), np.asarray(obj.meta["position"], float)
    p = world.person
    return {
        "keypoints": (p.keypoints @ R.T + t),
        "bone_heads": (p.bone_heads @ R.T + t),
    }


__all__ = ["World", "SceneObject", "Change", "Sun", "build_world", "anny_available", "mesh_part"]
