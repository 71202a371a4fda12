"""Small pure operations on :class:`Splats` (STYLE.md item 7, after gsplat ``strategy/ops.py``).

Every function returns new Splats and leaves its inputs alone; only the format writers touch files.
``select``/``remove``/``concat`` work on numpy arrays and torch tensors alike; ``transform`` and
``in_box`` compute in float64 numpy and return the input's kind (numpy, or torch on the input's device).

Example::

    inside = in_box(splats.means, center, size, rotation_wxyz)     # [N] bool
    kept = select(splats, inside)
    both = concat([kept, asset])
    moved = transform(asset, rotation=R, translation=t, scale=2.0)  # SH rotated with the frame
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .cameras import matrix_to_quat, quat_multiply, quat_to_matrix
from .sh import rotate_sh
from .splats import FIELDS, Splats


def _as_index(mask: Any, n: int, like: Any) -> Any:
    """A boolean mask [N] or integer indices, in the array library of ``like``."""
    if isinstance(like, torch.Tensor):
        idx = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        idx = idx.to(like.device)
        if idx.dtype == torch.bool and tuple(idx.shape) != (n,):
            raise ValueError(f"select: mask has shape {tuple(idx.shape)}, expected ({n},)")
        return idx
    idx = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if idx.dtype == bool and idx.shape != (n,):
        raise ValueError(f"select: mask has shape {idx.shape}, expected ({n},)")
    if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"select: mask must be boolean [N] or integer indices, got dtype {idx.dtype}")
    return idx


def select(splats: Splats, mask: Any) -> Splats:
    """The Gaussians where ``mask`` [N] (bool) is true, or at integer indices ``mask`` [M], in that order."""
    idx = _as_index(mask, len(splats), splats.means)
    return Splats(**{f: getattr(splats, f)[idx] for f in FIELDS})


def remove(splats: Splats, mask: Any) -> Splats:
    """The Gaussians where the boolean ``mask`` [N] is false."""
    idx = _as_index(mask, len(splats), splats.means)
    if isinstance(idx, torch.Tensor):
        if idx.dtype != torch.bool:
            raise ValueError("remove: mask must be boolean [N]")
        return select(splats, ~idx)
    if idx.dtype != bool:
        raise ValueError("remove: mask must be boolean [N]")
    return select(splats, ~idx)


def concat(parts: Sequence[Splats]) -> Splats:
    """All Gaussians of ``parts``, in order.

    Parts with a lower SH degree are padded with zero coefficients to the highest degree among them
    (zero higher-order terms leave their colours unchanged). All numpy, or all torch on one device.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("concat: nothing to concatenate")
    k = max(int(p.shN.shape[1]) for p in parts)
    is_torch = [isinstance(p.means, torch.Tensor) for p in parts]
    if any(is_torch) and not all(is_torch):
        raise ValueError("concat: mix of numpy and torch splats; convert them with to_numpy() or to_torch()")
    out: dict[str, Any] = {}
    for f in FIELDS:
        vals = [getattr(p, f) for p in parts]
        if f == "shN":
            padded = []
            for v in vals:
                pad = k - int(v.shape[1])
                if pad and isinstance(v, torch.Tensor):
                    v = torch.cat([v, v.new_zeros((v.shape[0], pad, 3))], 1)
                elif pad:
                    v = np.concatenate([v, np.zeros((v.shape[0], pad, 3), v.dtype)], 1)
                padded.append(v)
            vals = padded
        out[f] = torch.cat(vals, 0) if all(is_torch) else np.concatenate(vals, 0)
    return Splats(**out)


def in_box(means: Any, center: Any, size: Any, rotation_wxyz: Any = (1.0, 0.0, 0.0, 0.0)) -> np.ndarray:
    """Boolean [N]: which points [N, 3] lie in the oriented box (boundary included).

    The box has centre ``center`` [3], edge lengths ``size`` [3] along its own axes, and its axes are
    the columns of the rotation ``rotation_wxyz`` [4] (box -> world), as in ``idu detect`` boxes.
    """
    p = means.detach().cpu().numpy() if isinstance(means, torch.Tensor) else np.asarray(means)
    c = np.asarray(center, np.float64).reshape(3)
    half = np.asarray(size, np.float64).reshape(3) / 2
    q = np.asarray(rotation_wxyz, np.float64).reshape(4)
    if not (np.isfinite(c).all() and np.isfinite(half).all() and np.isfinite(q).all()) or (half < 0).any():
        raise ValueError(
            f"in_box: bad box center={c.tolist()} size={(2 * half).tolist()} rotation={q.tolist()}"
        )
    if np.linalg.norm(q) < 1e-12:
        raise ValueError("in_box: box rotation is a zero quaternion")
    R = quat_to_matrix(q)
    local = (p.astype(np.float64) - c) @ R  # rows: R^T (p - c)
    return (np.abs(local) <= half).all(axis=1)


def transform(splats: Splats, rotation: Any = None, translation: Any = None, scale: float = 1.0) -> Splats:
    """Move Gaussians by the similarity ``x -> scale * R @ x + t`` with everything that goes with it.

    Args:
        splats: N Gaussians.
        rotation: [3, 3] rotation matrix or [4] wxyz quaternion (default identity).
        translation: [3] (default zero).
        scale: positive uniform scale.
    Returns:
        means ``s R m + t``; quats ``q_R * q`` (the Gaussian's axes turn with the frame); log scales
        ``+ log s``; shN rotated by ``R`` so each Gaussian looks the same from the transformed viewpoints;
        opacities and sh0 unchanged. Numpy float32 in, numpy float32 out; torch in, torch out.
    """
    R = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    if R.shape == (4,):
        R = quat_to_matrix(R)
    if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) < 0:
        raise ValueError(f"transform: rotation is not a proper rotation matrix: {R.tolist()}")
    t = np.zeros(3) if translation is None else np.asarray(translation, np.float64).reshape(3)
    scale = float(scale)
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(t).all()):
        raise ValueError(f"transform: bad scale {scale} or translation {t.tolist()}")
    like = splats.means
    s = splats.to_numpy()
    q_r = matrix_to_quat(R)
    out = Splats(
        means=(scale * (s.means.astype(np.float64) @ R.T) + t).astype(np.float32),
        quats=quat_multiply(q_r, s.quats).astype(np.float32),
        scales=(s.scales.astype(np.float64) + np.log(scale)).astype(np.float32),
        opacities=s.opacities.copy(),
        sh0=s.sh0.copy(),
        shN=np.ascontiguousarray(rotate_sh(s.shN.astype(np.float64), R), dtype=np.float32),
    )
    if isinstance(like, torch.Tensor):
        return out.to_torch(like.device, like.dtype)
    return out


__all__ = ["concat", "in_box", "remove", "select", "transform"]
