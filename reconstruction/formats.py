"""Splat export formats: INRIA PLY, antimatter15 ``.splat`` and Niantic ``.spz``, plus the export dispatcher.

``idu scene export STORE/NAME --format ply|splat|spz --out PATH`` ends in :func:`export`.

- ``ply``: lossless, :mod:`reconstruction.ply`.
- ``splat``: 32 bytes per Gaussian, no higher SH (view-dependent colour is dropped), uint8 colour and
  rotation; the layout of antimatter15/splat's ``convert.py``, which web viewers read.
- ``spz``: Niantic's compressed format (about 10x smaller than PLY), written and read by gsply (MIT).

Example::

    export(splats, "scene.spz", "spz", crop_box=([0, 0, 0], [4, 4, 2], [1, 0, 0, 0]))
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SceneFormatError
from .ply import read_ply, write_ply
from .splat_ops import in_box, select
from .splats import SH_C0, Splats

EXPORT_FORMATS = ("ply", "splat", "spz")


def _atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Run ``write(tmp)`` on a temporary name next to ``path`` and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_readable(path: Path, what: str) -> None:
    if path.is_dir():
        raise SceneFormatError(f"{path}: is a directory, not a {what} file")
    if not path.exists():
        raise SceneFormatError(f"{path}: {what} file does not exist")


# -- antimatter15 .splat -------------------------------------------------------------------------------
SPLAT_RECORD = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)),
                         ("rotation", "u1", (4,))])  # fmt: skip
"""One Gaussian of a ``.splat`` file: 32 bytes, little endian."""


def write_splat(path: str | os.PathLike, splats: Splats) -> Path:
    """Write the antimatter15 ``.splat`` format; returns the path.

    Per Gaussian (32 bytes): position 3 x float32; scale 3 x float32 = ``exp(log scales)``; RGBA 4 x uint8 =
    ``(0.5 + SH_C0 * sh0) * 255`` and ``sigmoid(opacity) * 255``; rotation 4 x uint8 = normalised wxyz
    ``* 128 + 128``; uint8 values clipped to [0, 255] and truncated, all arithmetic in float32, Gaussians
    sorted by descending ``exp(sum of log scales) * sigmoid(opacity)`` (stable), as the reference
    ``convert.py`` does. Higher SH coefficients are not stored.
    """
    path = Path(path)
    s = splats.to_numpy().validate(str(path))
    with np.errstate(over="ignore"):  # huge Gaussians sort first, as in the reference
        sc = s.scales
        key = -np.exp(sc[:, 0] + sc[:, 1] + sc[:, 2]) / (np.float32(1) + np.exp(-s.opacities))
    order = np.argsort(key, kind="stable")
    rec = np.empty(len(s), SPLAT_RECORD)
    rec["position"] = s.means[order]
    rec["scale"] = np.exp(s.scales[order])
    rgb = (np.float32(0.5) + np.float32(SH_C0) * s.sh0[order]) * np.float32(255)
    with np.errstate(over="ignore"):
        alpha = np.float32(1) / (np.float32(1) + np.exp(-s.opacities[order])) * np.float32(255)
    rec["rgba"][:, :3] = np.clip(rgb, 0, 255).astype(np.uint8)
    rec["rgba"][:, 3] = np.clip(alpha, 0, 255).astype(np.uint8)
    q = s.quats[order]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    rec["rotation"] = np.clip(q * np.float32(128) + np.float32(128), 0, 255).astype(np.uint8)
    return _atomic(path, lambda tmp: rec.tofile(tmp))


def read_splat(path: str | os.PathLike) -> Splats:
    """Read a ``.splat`` file into float32 Splats of SH degree 0 (inverse of :func:`write_splat` up to its
    uint8 quantisation; alpha is read as ``a / 255`` clamped to [0.5/255, 1 - 0.5/255] before the logit)."""
    path = Path(path)
    _check_readable(path, ".splat")
    size = path.stat().st_size
    if size % SPLAT_RECORD.itemsize:
        raise SceneFormatError(
            f"{path}: size {size} bytes is not a multiple of {SPLAT_RECORD.itemsize}; not a .splat file"
        )
    rec = np.fromfile(path, SPLAT_RECORD)
    n = len(rec)
    rgba = rec["rgba"].astype(np.float32) / np.float32(255)
    alpha = np.clip(rgba[:, 3], 0.5 / 255, 1 - 0.5 / 255)
    with np.errstate(divide="ignore"):
        scales = np.log(rec["scale"])
    splats = Splats(
        means=np.ascontiguousarray(rec["position"]),
        quats=(rec["rotation"].astype(np.float32) - np.float32(128)) / np.float32(128),
        scales=scales,
        opacities=np.log(alpha / (1 - alpha)).astype(np.float32),
        sh0=((rgba[:, :3] - np.float32(0.5)) / np.float32(SH_C0)).astype(np.float32),
        shN=np.zeros((n, 0, 3), np.float32),
    )
    return splats.validate(str(path))


# -- Niantic .spz (through gsply) -----------------------------------------------------------------------
SPZ_FRAMES = ("RUB", "RDF")
_FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # RDF <-> RUB: a half turn about x


def _flip_sh_signs(k: int) -> np.ndarray:
    """[K] signs taking SH coefficients to the y/z-flipped frame: every real SH basis function is even or
    odd under (y, z) -> (-y, -z), so :func:`rotate_sh` by the flip is diagonal with entries +-1."""
    from .sh import rotate_sh

    if k == 0:
        return np.zeros(0, np.float32)
    m = rotate_sh(np.repeat(np.eye(k)[:, :, None], 3, axis=2), _FLIP_YZ)[:, :, 0].T
    signs = np.rint(np.diag(m))
    assert np.allclose(m, np.diag(signs), atol=1e-6), "SH flip must be diagonal"
    return signs.astype(np.float32)


def _flip_yz(s: Splats) -> Splats:
    """The same Gaussians in the frame with y and z negated (RDF <-> RUB), as Niantic's converter does:
    positions ``(x, -y, -z)``, quaternions ``(w, x, -y, -z)`` (the rotation conjugated by the flip), SH
    coefficients rotated with the frame (sign changes); scales, opacities and sh0 unchanged. Exact in
    float32, and its own inverse."""
    return Splats(
        means=s.means * np.array([1, -1, -1], np.float32),
        quats=s.quats * np.array([1, 1, -1, -1], np.float32),
        scales=s.scales.copy(),
        opacities=s.opacities.copy(),
        sh0=s.sh0.copy(),
        shN=s.shN * _flip_sh_signs(s.shN.shape[1])[None, :, None],
    )


def _spz_fractional_bits(means: np.ndarray, path: Path) -> int:
    """12 fractional bits (Niantic's default, 1/4096 units) unless the positions need a wider range:
    positions are 24-bit signed fixed point, so |x| must stay below 2**(23 - bits)."""
    extent = float(np.abs(means).max()) if len(means) else 0.0
    for bits in range(12, 0, -1):
        if extent * (1 << bits) < (1 << 23) - 1:
            return bits
    raise SceneFormatError(f"{path}: positions reach {extent:g}, beyond the .spz range (+-4194303)")


def write_spz(path: str | os.PathLike, splats: Splats, coordinate_system: str = "RUB") -> Path:
    """Write Niantic ``.spz`` (gzip container, version 3) through gsply; returns the path.

    Frames: the SPZ specification (nianticlabs/spz README, "Coordinate System") stores data in **RUB**
    (x right, y up, z back: OpenGL / three.js), while INRIA PLY and IDU's scene frame (COLMAP) are **RDF**
    (x right, y down, z forward). Niantic's own tools convert on save (``PackOptions.from = RDF`` flips y
    and z). **gsply does not convert**: ``gsply.write_spz`` stores the arrays it is given and
    ``gsply.read_spz`` returns the stored values. So with ``coordinate_system="RUB"`` (the default) this
    function flips y and z first (:func:`_flip_yz`), making files that spec-following readers show the
    same way as the scene's PLY in PLY viewers; ``"RDF"`` stores the scene frame unchanged, as
    ``gsply.write_spz`` alone would.

    Quantisation (gsply's, per the SPZ format): positions 24-bit fixed point with 12 fractional bits
    (fewer when the scene extent needs it), log scales in steps of 1/16 within [-10, 5.94], rotations
    smallest-three 9-bit, opacity and sh0 colour 8 bits, higher SH 8 bits in [-1, 1) (values clipped).
    """
    import gsply

    path = Path(path)
    if coordinate_system not in SPZ_FRAMES:
        raise ValueError(
            f"write_spz: coordinate_system must be one of {SPZ_FRAMES}, got {coordinate_system!r}"
        )
    s = splats.to_numpy().validate(str(path))
    if coordinate_system == "RUB":
        s = _flip_yz(s)
    bits = _spz_fractional_bits(s.means, path)
    data = gsply.GSData.from_arrays(
        means=s.means, scales=s.scales, quats=s.quats, opacities=s.opacities, sh0=s.sh0,
        shN=s.shN if s.shN.shape[1] else None, format="ply",
    )  # fmt: skip
    return _atomic(path, lambda tmp: gsply.write_spz(tmp, data, version=3, fractional_bits=bits))


def read_spz(path: str | os.PathLike, coordinate_system: str = "RUB") -> Splats:
    """Read a ``.spz`` file (gzip v1-v3 or NGSP v4 container) through gsply into float32 Splats in the
    RDF / COLMAP frame: data stored in RUB (the SPZ specification, and :func:`write_spz`'s default) is
    flipped back; pass ``coordinate_system="RDF"`` for files written with the scene frame unchanged."""
    import gsply

    path = Path(path)
    if coordinate_system not in SPZ_FRAMES:
        raise ValueError(
            f"read_spz: coordinate_system must be one of {SPZ_FRAMES}, got {coordinate_system!r}"
        )
    _check_readable(path, ".spz")
    try:
        d = gsply.read_spz(path)
    except (ValueError, OSError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SceneFormatError(f"{path}: cannot be read as .spz ({msg})") from None
    n = int(np.asarray(d.means).shape[0])
    shn = d.shN
    shn = np.zeros((n, 0, 3), np.float32) if shn is None or np.asarray(shn).size == 0 else shn
    s = Splats(
        means=np.ascontiguousarray(d.means, np.float32),
        quats=np.ascontiguousarray(d.quats, np.float32),
        scales=np.ascontiguousarray(d.scales, np.float32),
        opacities=np.ascontiguousarray(np.asarray(d.opacities).reshape(n), np.float32),
        sh0=np.ascontiguousarray(d.sh0, np.float32),
        shN=np.ascontiguousarray(shn, np.float32),
    )
    if coordinate_system == "RUB":
        s = _flip_yz(s)
    return s.validate(str(path))


# -- dispatcher -----------------------------------------------------------------------------------------
_WRITERS: dict[str, Callable[[Path, Splats], Path]] = {
    "ply": write_ply,
    "splat": write_splat,
    "spz": write_spz,
}
_READERS: dict[str, Callable[[Path], Splats]] = {"ply": read_ply, "splat": read_splat, "spz": read_spz}


def crop(splats: Splats, crop_box: Sequence[Any]) -> Splats:
    """The Gaussians whose centres lie in ``crop_box = (center[3], size[3], rotation_wxyz[4])``, an
    oriented box in the scene frame (the ``box`` of ``idu detect``; boundary included)."""
    try:
        center, size, rotation = crop_box
    except (TypeError, ValueError):
        raise ValueError("crop_box must be (center[3], size[3], rotation_wxyz[4])") from None
    return select(splats, in_box(splats.means, center, size, rotation))


def export(splats: Splats, path: str | os.PathLike, fmt: str, crop_box: Sequence[Any] | None = None) -> Path:
    """Write ``splats`` (scene frame) as ``fmt`` ('ply' | 'splat' | 'spz') to ``path``; returns the path.

    Args:
        splats: the scene's Gaussians.
        path: output file (written atomically).
        fmt: 'ply' (lossless INRIA layout), 'splat' (antimatter15, SH degree 0) or 'spz' (Niantic, RUB).
        crop_box: optional ``(center[3], size[3], rotation_wxyz[4])``; only Gaussians whose centres are
            inside are written.
    """
    if fmt not in _WRITERS:
        raise ValueError(f"export: unknown format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
    if crop_box is not None:
        splats = crop(splats, crop_box)
    return _WRITERS[fmt](Path(path), splats)


def read_splats(path: str | os.PathLike, fmt: str | None = None) -> Splats:
    """Read any export format back (``fmt`` from the file suffix when not given)."""
    path = Path(path)
    fmt = fmt or path.suffix.lower().lstrip(".")
    if fmt not in _READERS:
        raise SceneFormatError(f"{path}: unknown splat format {fmt!r} (expected .ply, .splat or .spz)")
    return _READERS[fmt](path)


__all__ = [
    "EXPORT_FORMATS", "SPLAT_RECORD", "crop", "export", "read_splat", "read_splats", "read_spz",
    "write_splat", "write_spz",
]  # fmt: skip
