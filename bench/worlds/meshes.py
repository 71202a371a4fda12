"""Textured triangle meshes for the worlds: parts (one material each), primitives and placement.

A :class:`Part` holds triangles with per-corner texture coordinates (metres along the surface unless its
material says otherwise) and per-corner normals (flat or smooth). Primitives are built in a local frame
(z up, base on z = 0) and placed with :func:`place`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Part:
    """Triangles of one material: vertices [V, 3], faces [F, 3], corner uvs [F, 3, 2], corner normals
    [F, 3, 3]; ``inst`` varies the material between parts (colour, markings, window layout)."""

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    normals: np.ndarray
    material: str
    inst: int = 0

    def transformed(self, R: np.ndarray, t: np.ndarray) -> Part:
        return replace(self, vertices=self.vertices @ R.T + t, normals=self.normals @ R.T)

    @property
    def num_faces(self) -> int:
        return len(self.faces)


def _flat_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    return np.repeat(n[:, None], 3, 1)


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals [V, 3]."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def triplanar_uv(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Corner uvs [F, 3, 2]: each face projected on the axis plane most parallel to it."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    ax = np.abs(fn).argmax(1)
    corners = v[f]  # [F, 3, 3]
    pairs = np.array([[1, 2], [0, 2], [0, 1]])[ax]  # [F, 2]
    return np.take_along_axis(corners, np.repeat(pairs[:, None, :], 3, 1), axis=2)


def mesh_part(v, f, material: str, inst: int = 0, smooth: bool = True, uv=None) -> Part:
    """A part from any triangle mesh; uvs triplanar unless given, normals smooth or flat."""
    v, f = np.asarray(v, np.float64), np.asarray(f, np.int64)
    normals = vertex_normals(v, f)[f] if smooth else _flat_normals(v, f)
    return Part(v, f, triplanar_uv(v, f) if uv is None else uv, normals, material, int(inst))


def quad(origin, eu, ev, material: str, inst: int = 0, unit_uv: bool = False) -> Part:
    """The parallelogram origin + s*eu + t*ev (s, t in [0, 1]), facing eu x ev. uvs in metres along eu, ev,
    or in [0, 1] with ``unit_uv``."""
    o, eu, ev = (np.asarray(x, np.float64) for x in (origin, eu, ev))
    v = np.stack([o, o + eu, o + eu + ev, o + ev])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    su, sv = (1.0, 1.0) if unit_uv else (np.linalg.norm(eu), np.linalg.norm(ev))
    uv4 = np.array([[0, 0], [su, 0], [su, sv], [0, sv]], np.float64)
    return Part(v, f, uv4[f], _flat_normals(v, f), material, int(inst))


def box(size, material: str, inst: int = 0, center_uv: bool = False, open_bottom: bool = True) -> Part:
    """An axis-aligned box, x and y centred on 0, z from 0 to size[2]. Side uvs are (along the face as
    seen from outside, height); with ``center_uv`` every face's uv origin is its centre."""
    sx, sy, sz = (float(s) for s in size)
    x0, x1, y0, y1, z0, z1 = -sx / 2, sx / 2, -sy / 2, sy / 2, 0.0, sz
    zc = sz / 2 if center_uv else 0.0
    faces = [  # (origin, eu, ev) with eu x ev pointing outwards; uv origin offset
        ((x0, y0, z0), (sx, 0, 0), (0, 0, sz), (-sx / 2, -zc)),  # -y
        ((x1, y1, z0), (-sx, 0, 0), (0, 0, sz), (-sx / 2, -zc)),  # +y
        ((x1, y0, z0), (0, sy, 0), (0, 0, sz), (-sy / 2, -zc)),  # +x
        ((x0, y1, z0), (0, -sy, 0), (0, 0, sz), (-sy / 2, -zc)),  # -x
        ((x0, y0, z1), (sx, 0, 0), (0, sy, 0), (-sx / 2, -sy / 2)),  # +z
    ]
    if not open_bottom:
        faces.append(((x0, y1, z0), (sx, 0, 0), (0, -sy, 0), (-sx / 2, -sy / 2)))
    parts = []
    for o, eu, ev, off in faces:
        q = quad(o, eu, ev, material, inst)
        q.uv = q.uv + np.asarray(off)
        parts.append(q)
    return merge_parts(parts)


def cylinder(
    radius: float, height: float, material: str, inst: int = 0, segments: int = 24, caps: bool = True
) -> Part:
    """A z-axis cylinder from z = 0 to ``height``; sides smooth, uv (arc length, height)."""
    a = np.linspace(0, 2 * np.pi, segments + 1)
    ring = np.stack([radius * np.cos(a), radius * np.sin(a)], 1)
    v = np.concatenate([np.c_[ring, np.zeros(len(a))], np.c_[ring, np.full(len(a), height)]])
    n = segments + 1
    i = np.arange(segments)
    f = np.concatenate([np.stack([i, i + 1, n + i + 1], 1), np.stack([i, n + i + 1, n + i], 1)])
    uvv = np.c_[np.concatenate([a, a]) * radius, v[:, 2]]
    nrm = np.c_[np.cos(a), np.sin(a), np.zeros(n)]
    nrm = np.concatenate([nrm, nrm])
    side = Part(v, f, uvv[f], nrm[f], material, int(inst))
    if not caps:
        return side
    cap_v = np.concatenate([[[0.0, 0.0, height]], np.c_[ring[:-1], np.full(segments, height)]])
    cf = np.stack([np.zeros(segments, int), 1 + i, 1 + (i + 1) % segments], 1)
    top = mesh_part(cap_v, cf, material, inst, smooth=False, uv=cap_v[:, :2][cf])
    return merge_parts([side, top])


def blob(radius: float, material: str, inst: int, rng: np.random.Generator, bumps: float = 0.25) -> Part:
    """A lumpy sphere (foliage, bushes) centred on the origin; smooth normals, triplanar uvs."""
    import open3d as o3d

    s = o3d.geometry.TriangleMesh.create_sphere(radius=1.0, resolution=14)
    v, f = np.asarray(s.vertices), np.asarray(s.triangles).astype(np.int64)
    k = rng.normal(size=(6, 3))
    ph = rng.uniform(0, 2 * np.pi, 6)
    lump = sum(np.sin(v @ k[j] * 1.7 + ph[j]) for j in range(6)) / 6
    v = v * (radius * (1 + bumps * lump))[:, None]
    return mesh_part(v, f, material, inst, smooth=True)


def merge_parts(parts: list[Part]) -> Part:
    """Concatenate parts of the same material (the first part's material and inst are kept)."""
    offs = np.cumsum([0] + [len(p.vertices) for p in parts])
    return Part(
        np.concatenate([p.vertices for p in parts]),
        np.concatenate([p.faces + o for p, o in zip(parts, offs[:-1], strict=True)]),
        np.concatenate([p.uv for p in parts]),
        np.concatenate([p.normals for p in parts]),
        parts[0].material,
        parts[0].inst,
    )


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def offset(part: Part, t) -> Part:
    """The part translated by t (local placement inside an object)."""
    return part.transformed(np.eye(3), np.asarray(t, np.float64))


def place(parts: list[Part], yaw: float, t) -> list[Part]:
    """Parts rotated by ``yaw`` (radians, about +z) then translated by t."""
    R = yaw_matrix(yaw)
    return [p.transformed(R, np.asarray(t, np.float64)) for p in parts]
