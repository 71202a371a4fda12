"""Hash-based procedural noise (numpy): infinite, non-repeating, and the same in every view.

Every function is a pure function of its coordinates and an integer ``seed``: no lattice arrays, so a texture
evaluated at a surface point gives the same value whichever camera looks at it.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x8DA6B343)
_M2 = np.uint32(0xD8163841)
_M3 = np.uint32(0xCB1AB31F)
_M4 = np.uint32(0x5BD1E995)


def hash_u32(ix: np.ndarray, iy: np.ndarray, seed: int | np.ndarray = 0) -> np.ndarray:
    """A well-mixed uint32 per integer lattice point (ix, iy) (any int arrays, broadcasting)."""
    with np.errstate(over="ignore"):
        x = np.asarray(ix).astype(np.int64).astype(np.uint32)
        y = np.asarray(iy).astype(np.int64).astype(np.uint32)
        s = (np.asarray(seed).astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
        h = x * _M1 ^ y * _M2 ^ s * _M3
        h ^= h >> np.uint32(15)
        h *= _M4
        h ^= h >> np.uint32(13)
        h *= _M1
        h ^= h >> np.uint32(16)
    return h


def hash01(ix: np.ndarray, iy: np.ndarray, seed: int | np.ndarray = 0) -> np.ndarray:
    """Uniform float32 in [0, 1) per integer lattice point."""
    return (hash_u32(ix, iy, seed) >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


_TABLE = 4096
_PERM = np.random.default_rng(0x1D0).permutation(_TABLE).astype(np.int32)
_VALUES = np.random.default_rng(0x1D1).random(_TABLE).astype(np.float32)


def lattice01(ix: np.ndarray, iy: np.ndarray, seed: int = 0) -> np.ndarray:
    """Uniform float32 in [0, 1) per lattice point from permutation tables (period 4096 cells)."""
    m = _TABLE - 1
    s1, s2 = (seed * 7919) & m, (seed * 104729) & m
    return _VALUES[_PERM[(_PERM[(ix + s1) & m] + iy + s2) & m]]


def value_noise(u: np.ndarray, v: np.ndarray, seed: int = 0) -> np.ndarray:
    """Smooth value noise in [0, 1] with one feature per unit cell (float32)."""
    u = np.asarray(u, np.float32)
    v = np.asarray(v, np.float32)
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    tu = tu * tu * (3 - 2 * tu)
    tv = tv * tv * (3 - 2 * tv)
    m = _TABLE - 1
    iu = fu.astype(np.int32) + ((seed * 7919) & m)
    iv = fv.astype(np.int32) + ((seed * 104729) & m)
    p0 = _PERM[iu & m]
    p1 = _PERM[(iu + 1) & m]
    iv1 = iv + 1
    a = _VALUES[_PERM[(p0 + iv) & m]]
    b = _VALUES[_PERM[(p1 + iv) & m]]
    c = _VALUES[_PERM[(p0 + iv1) & m]]
    d = _VALUES[_PERM[(p1 + iv1) & m]]
    return (a + (b - a) * tu) * (1 - tv) + (c + (d - c) * tu) * tv


def fbm(
    u: np.ndarray,
    v: np.ndarray,
    seed: int = 0,
    scale: float = 1.0,
    octaves: int = 4,
    gain: float = 0.5,
    aspect: float = 1.0,
    fp: np.ndarray | None = None,
) -> np.ndarray:
    """Fractal value noise in [0, 1] (about mean 0.5): ``octaves`` layers from cell size ``scale`` (metres)
    down by halves. ``aspect`` > 1 stretches features along u (grain, streaks).

    ``fp`` [N] is the footprint of a sample on the surface (metres, same units as u, v): octaves whose
    cells are smaller than about two footprints fade to their mean instead of aliasing (like mip-mapping).
    """
    u = np.asarray(u, np.float32)
    v = np.asarray(v, np.float32)
    total = np.zeros(np.shape(u), np.float32)
    amp, norm, f = 1.0, 0.0, 1.0 / scale
    for k in range(octaves):
        cell = min(1.0, aspect) / f
        if fp is None:
            total += np.float32(amp) * value_noise(u * (f / aspect), v * f, seed + 7919 * k)
        else:
            w = np.clip(np.float32(cell) / fp - 1.0, 0.0, 1.0).astype(np.float32)
            if w.any():
                n = value_noise(u * (f / aspect), v * f, seed + 7919 * k)
                total += np.float32(amp) * (0.5 + w * (n - 0.5))
            else:
                total += np.float32(amp * 0.5)
        norm += amp
        amp *= gain
        f *= 2.0
    return total / np.float32(norm)


def cells(u: np.ndarray, v: np.ndarray, size_u: float, size_v: float, row_offset: float = 0.0):
    """A running-bond grid (bricks, pavers, planks): (cell index u, cell index v, local u, local v) with
    local coordinates in metres inside the cell; odd rows shift by ``row_offset`` of a cell."""
    row = np.floor(v / size_v)
    uu = u + (row % 2) * row_offset * size_u
    col = np.floor(uu / size_u)
    return col.astype(np.int64), row.astype(np.int64), uu - col * size_u, v - row * size_v


def edge_distance(lu: np.ndarray, lv: np.ndarray, size_u: float, size_v: float) -> np.ndarray:
    """Distance (metres) from a point inside a cell to the cell's nearest edge."""
    return np.minimum(np.minimum(lu, size_u - lu), np.minimum(lv, size_v - lv))
