"""Brute-force reference renderer: every Gaussian evaluated at every pixel (tiny scenes only).

Written independently of ``reconstruction._torch_rasterizer`` and as plainly as possible: full 3x3 matrices,
``torch.linalg.inv`` for the conic, a dense [pixels, Gaussians] alpha matrix, ``cumprod`` transmittance. Rules
follow gsplat 1.5.3 (``ProjectionEWA3DGSFused.cu`` / ``RasterizeToPixels3DGSFwd.cu``):

- cull when camera z < near or z > far, det(cov2d + 0.3 I) <= 0 or opacity < 1/255;
- Jacobian with x/z and y/z clamped to the field of view widened by 30 %;
- alpha = min(0.999, opacity exp(-sigma)), skipped (no effect) when alpha < 1/255 or sigma < 0;
- front to back by camera z; a Gaussian with T (1 - alpha) <= 1e-4 is excluded and ends the pixel;
- rgb = sum w c + T_final bg, alpha = 1 - T_final, depth = sum w z / max(alpha, 1e-10).

Differentiable with autograd (masks are constants), so its gradients are the reference for the rasterizer's.
"""

from __future__ import annotations

import torch

from reconstruction.sh import sh_basis


def reference_render(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] wxyz
    scales: torch.Tensor,  # [N, 3] log
    opacities: torch.Tensor,  # [N] logit
    sh0: torch.Tensor,  # [N, 3]
    shN: torch.Tensor,  # [N, K, 3]
    sh_degree: int,
    viewmat: torch.Tensor,  # [4, 4]
    K: torch.Tensor,  # [3, 3]
    width: int,
    height: int,
    background: torch.Tensor | None = None,  # [3]
    near: float = 0.01,
    far: float = 1e10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rgb [H, W, 3], alpha [H, W], expected depth [H, W]."""
    dt = means.dtype
    n = means.shape[0]
    R = viewmat[:3, :3]
    t = viewmat[:3, 3]

    # Rotation matrices from normalised quaternions.
    q = quats / torch.linalg.norm(quats, dim=1, keepdim=True)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rot = torch.stack(
        [
            torch.stack([1 - 2 * (y**2 + z**2), 2 * (x * y - w * z), 2 * (x * z + w * y)], 1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x**2 + z**2), 2 * (y * z - w * x)], 1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x**2 + y**2)], 1),
        ],
        1,
    )  # [N, 3, 3]
    S = torch.diag_embed(torch.exp(scales))
    cov_world = rot @ S @ S @ rot.transpose(1, 2)
    cov_cam = R @ cov_world @ R.T  # [N, 3, 3]
    p_cam = means @ R.T + t  # [N, 3]

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    x_max, x_min = (width - cx) / fx + 0.3 * tan_fovx, -(cx / fx + 0.3 * tan_fovx)
    y_max, y_min = (height - cy) / fy + 0.3 * tan_fovy, -(cy / fy + 0.3 * tan_fovy)

    mean2d, conic, depth, op, color, used = [], [], [], [], [], []
    opac = torch.sigmoid(opacities)
    for i in range(n):
        px, py, pz = p_cam[i]
        if not (near <= float(pz.detach()) <= far) or float(opac[i].detach()) < 1.0 / 255.0:
            continue
        tx = pz * torch.clamp(px / pz, float(x_min), float(x_max))
        ty = pz * torch.clamp(py / pz, float(y_min), float(y_max))
        zero = torch.zeros((), dtype=dt)
        J = torch.stack(
            [torch.stack([fx / pz, zero, -fx * tx / pz**2]), torch.stack([zero, fy / pz, -fy * ty / pz**2])]
        )
        cov2d = J @ cov_cam[i] @ J.T + 0.3 * torch.eye(2, dtype=dt)
        if float(torch.linalg.det(cov2d.detach())) <= 0:
            continue
        mean2d.append(torch.stack([fx * px / pz + cx, fy * py / pz + cy]))
        conic.append(torch.linalg.inv(cov2d))
        depth.append(pz)
        op.append(opac[i])
        # Colour: SH at the direction from the camera centre to the mean.
        cam_centre = -R.T @ t
        d = means[i] - cam_centre
        d = d / torch.linalg.norm(d)
        basis = sh_basis(sh_degree, d[None])[0]  # [B]
        coeffs = torch.cat([sh0[i][None], shN[i]], 0)[: basis.shape[0]]  # [B, 3]
        color.append(torch.clamp(basis @ coeffs + 0.5, min=0.0))
        used.append(i)

    bg = torch.zeros(3, dtype=dt) if background is None else background
    if not used:
        return (
            bg.expand(height, width, 3).clone(),
            torch.zeros(height, width, dtype=dt),
            torch.zeros(height, width, dtype=dt),
        )
    mean2d, conic = torch.stack(mean2d), torch.stack(conic)  # [G, 2], [G, 2, 2]
    depth, op, color = torch.stack(depth), torch.stack(op), torch.stack(color)
    order = torch.argsort(depth.detach(), stable=True)
    mean2d, conic, depth, op, color = mean2d[order], conic[order], depth[order], op[order], color[order]

    jj, ii = torch.meshgrid(torch.arange(width, dtype=dt), torch.arange(height, dtype=dt), indexing="xy")
    pix = torch.stack([jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5], 1)  # [P, 2]
    d = mean2d[None, :, :] - pix[:, None, :]  # [P, G, 2]
    sigma = 0.5 * torch.einsum("pgi,gij,pgj->pg", d, conic, d)  # [P, G]
    alpha = torch.clamp(op[None, :] * torch.exp(-sigma), max=0.999)
    skip = (alpha.detach() < 1.0 / 255.0) | (sigma.detach() < 0)
    alpha = torch.where(skip, torch.zeros_like(alpha), alpha)
    one_minus = 1.0 - alpha
    T = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), one_minus[:, :-1]], 1), 1)  # before each
    next_T = T * one_minus
    ended = torch.cummax((next_T.detach() <= 1e-4).to(torch.int32), 1).values.bool()
    weight = torch.where(ended, torch.zeros_like(alpha), alpha * T)  # [P, G]
    T_final = torch.prod(torch.where(ended, torch.ones_like(alpha), one_minus), 1)  # after the last included
    acc_alpha = 1.0 - T_final
    rgb = weight @ color + T_final[:, None] * bg
    exp_depth = (weight @ depth) / torch.clamp(acc_alpha, min=1e-10)
    return rgb.reshape(height, width, 3), acc_alpha.reshape(height, width), exp_depth.reshape(height, width)
