"""Real spherical harmonics up to degree 3, in the basis of 3DGS / gsplat.

``sh_basis(degree, dirs)`` evaluates the basis; ``eval_sh`` turns coefficients into colours;
``rotate_sh`` rotates coefficients with the frame so a rotated asset looks the same from every side.
"""

from __future__ import annotations

import numpy as np
import torch

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(degree: int, dirs):
    """Basis values [..., (degree+1)^2] at unit directions [..., 3] (torch or numpy)."""
    lib = torch if isinstance(dirs, torch.Tensor) else np
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [C0 * lib.ones_like(x)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [C2[0] * xy, C2[1] * yz, C2[2] * (2 * zz - xx - yy), C2[3] * xz, C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            C3[0] * y * (3 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3 * yy),
        ]
    return lib.stack(out, -1)


def eval_sh(degree: int, coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Colours [N, 3] from coefficients [N, (degree+1)^2, 3] at view directions [N, 3].

    As gsplat/3DGS: ``max(sum_k c_k Y_k(d) + 0.5, 0)``; ``dirs`` need not be normalised.
    """
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, d)  # [N, B]
    return ((basis[..., None] * coeffs[:, : basis.shape[-1]]).sum(-2) + 0.5).clamp_min(0.0)


def _band_rotation(l: int, R: np.ndarray) -> np.ndarray:
    """(2l+1)x(2l+1) matrix M with  Y_l(d) . (M c) = Y_l(R^T d) . c  for all unit d."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(64, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lo, hi = l * l, (l + 1) ** 2
    b = sh_basis(l, d)[:, lo:hi]
    b_rot = sh_basis(l, d @ R)[:, lo:hi]  # rows (R^T d)^T = d^T R
    return np.linalg.lstsq(b, b_rot, rcond=None)[0]


def rotate_sh(shN, R: np.ndarray):
    """Rotate higher-order coefficients [N, K, 3] (K = 3, 8, 15) by the rotation matrix R [3, 3].

    The returned coefficients seen from direction ``R d`` equal the input seen from ``d``.
    Degree 0 is rotation invariant and is not passed in.
    """
    k = shN.shape[1]
    if k == 0:
        return shN
    degree = {3: 1, 8: 2, 15: 3}[k]
    R = np.asarray(R, dtype=np.float64)
    blocks = np.zeros((k, k))
    for l in range(1, degree + 1):
        s = slice(l * l - 1, (l + 1) ** 2 - 1)
        blocks[s, s] = _band_rotation(l, R)
    if isinstance(shN, torch.Tensor):
        return torch.einsum("ij,njc->nic", torch.as_tensor(blocks, dtype=shN.dtype, device=shN.device), shN)
    return np.einsum("ij,njc->nic", blocks.astype(shN.dtype), shN)
