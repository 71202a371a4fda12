"""Seam refinement after a merge: a short optimisation of the Gaussians near the edits only.

    refined, stats = refine_seams(splats, regions, photos, SeamConfig(steps=150))

``regions`` are the edited places (axis-aligned boxes in the scene frame: where Gaussians were removed,
where an asset or a moved object now stands). The optimised Gaussians are those inside a region grown by
a shell (``shell`` times the region's diagonal, at least ``min_shell``), plus *fill* Gaussians seeded
where something was removed (the background it hid was never seen by the scene's photos; the new photos
show it). Every other Gaussian is passed through untouched, bit for bit and in its place, so renders away
from the edits change only where a shell Gaussian reaches.

Targets are the registered new photos inside the edited boxes' projections (colour-aligned to the scene
first: exposure and white balance, a robust affine colour transform fitted on the pixels away from the
edits) and the merged scene's own render outside them, so the shell is pulled towards the photos where
the edit is and held to what it was everywhere else; photos are downscaled to ``max_side``.
Loss: (1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM), as in 3DGS; Adam with 3DGS's learning rates.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera, Pose
from .render import render
from .splats import FIELDS, Splats

log = logging.getLogger(__name__)


@dataclass
class SeamConfig:
    steps: int = 150
    """Optimisation steps (one photo each, round robin)."""
    shell: float = 0.25
    """Gaussians within this fraction of a region's diagonal around it are optimised too."""
    min_shell: float = 0.0
    """... and at least this far (scene units)."""
    fill: bool = True
    """Seed Gaussians where Gaussians were removed (to take the revealed background)."""
    fill_fraction: float = 0.5
    """Fill Gaussians per removed Gaussian (spread over the removed ones' places)."""
    fill_scale: float = 0.25
    """Fill Gaussians' standard deviation as a fraction of their mean spacing (small: they may not spill
    out of the removed object's place; they shrink, never grow, while optimised)."""
    max_side: int = 320
    """Longer side of the photos during the refinement."""
    ssim_lambda: float = 0.2
    hold_weight: float = 10.0
    """Weight of the pixels outside the edited boxes (held to the merged scene's render) against the
    pixels inside (fitted to the photos): the refinement may not spill over."""
    means_lr: float = 1.6e-4
    """Times the scene extent (the regions' diagonal)."""
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    seed: int = 0


@dataclass
class Photo:
    """A registered new photo: [H, W, 3] float in [0, 1], its intrinsics (undistorted) and pose."""

    rgb: torch.Tensor
    camera: Camera
    pose: Pose


def _grow(box: dict[str, Any], config: SeamConfig) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.asarray(box["center"], np.float64), np.asarray(box["size"], np.float64)
    m = max(config.shell * float(np.linalg.norm(s)), config.min_shell)
    return c - s / 2 - m, c + s / 2 + m


def _inside(means: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.all((means >= lo) & (means <= hi), axis=1)


def _fill(splats: Splats, removed_means: np.ndarray, config: SeamConfig, rng) -> Splats:
    """Fill Gaussians at a subsample of the removed Gaussians' places, coloured like their neighbours."""
    n = max(1, int(len(removed_means) * config.fill_fraction))
    pos = removed_means[rng.choice(len(removed_means), n, replace=len(removed_means) < n)]
    spread = float(np.linalg.norm(np.ptp(removed_means, axis=0))) or 1.0
    spacing = spread / max(2.0, n ** (1 / 3))
    # colour of the nearest kept Gaussians around the region
    means = np.asarray(splats.means, np.float64)
    lo, hi = removed_means.min(0) - spacing, removed_means.max(0) + spacing
    near = np.flatnonzero(_inside(means, lo, hi))
    sh0 = np.asarray(splats.sh0)[near].mean(0) if len(near) else np.zeros(3, np.float32)
    k = splats.shN.shape[1]
    quats = np.zeros((n, 4), np.float32)
    quats[:, 0] = 1
    return Splats(
        means=pos.astype(np.float32),
        quats=quats,
        scales=np.full((n, 3), math.log(config.fill_scale * spacing), np.float32),
        opacities=np.full(n, -2.0, np.float32),  # sigmoid: 0.12, so they take over only where the photos ask
        sh0=np.tile(np.asarray(sh0, np.float32), (n, 1)),
        shN=np.zeros((n, k, 3), np.float32),
    )


def fit_colours(photo: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The photo mapped by the robust affine colour transform that best takes it onto ``target`` where
    ``weight`` > 0 (IRLS, Huber weights)."""
    sel = weight.flatten() > 0
    if int(sel.sum()) < 50:
        return photo
    X = torch.cat([photo.reshape(-1, 3), torch.ones_like(photo.reshape(-1, 3)[:, :1])], 1).double()
    Y = target.reshape(-1, 3).double()
    Xs, Ys = X[sel], Y[sel]
    w = torch.ones(len(Xs), dtype=torch.float64)
    M = torch.eye(4, 3, dtype=torch.float64)
    for _ in range(5):
        A = Xs * w[:, None]
        M = torch.linalg.lstsq(A.T @ Xs + 1e-6 * torch.eye(4, dtype=torch.float64), A.T @ Ys).solution
        r = (Xs @ M - Ys).norm(dim=1)
        delta = max(1.4826 * float(r.median()), 0.01)
        w = torch.where(r <= delta, 1.0, delta / r.clamp_min(1e-12))
    return (X @ M).reshape(photo.shape).float().clamp(0, 1)


def box_pixels(box: dict[str, Any], camera: Camera, pose: Pose) -> np.ndarray:
    """Pixels [H, W] inside the bounding rectangle of a box's projected corners (``{"center", "size"}``,
    optional ``rotation_wxyz``); a box reaching behind the camera covers the whole frame."""
    from .cameras import quat_to_matrix

    c, s = np.asarray(box["center"], np.float64), np.asarray(box["size"], np.float64)
    R = quat_to_matrix(np.asarray(box.get("rotation_wxyz", [1, 0, 0, 0]), np.float64))
    corners = c + (np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * s / 2) @ R.T
    m = pose.matrix()
    pc = corners @ m[:3, :3].T + m[:3, 3]
    mask = np.zeros((camera.height, camera.width), bool)
    if (pc[:, 2] <= 1e-3).any():
        mask[:] = bool((pc[:, 2] > 0).any())
        return mask
    K = camera.K()
    uv = pc[:, :2] / pc[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    lo, hi = np.floor(uv.min(0)).astype(int), np.ceil(uv.max(0)).astype(int)
    mask[max(0, lo[1]) : max(0, hi[1] + 1), max(0, lo[0]) : max(0, hi[0] + 1)] = True
    return mask


def _resized(p: Photo, max_side: int) -> Photo:
    s = min(1.0, max_side / max(p.camera.width, p.camera.height))
    if s >= 1:
        return Photo(p.rgb, p.camera.undistorted(), p.pose)
    cam = p.camera.undistorted().scaled(s)
    x = F.interpolate(p.rgb.permute(2, 0, 1)[None], size=(cam.height, cam.width), mode="bilinear",
                      antialias=True, align_corners=False)[0].permute(1, 2, 0)  # fmt: skip
    return Photo(x, cam, p.pose)


def refine_seams(
    splats: Splats,
    regions: list[dict[str, Any]],
    photos: list[Photo],
    config: SeamConfig | None = None,
    removed_means: np.ndarray | None = None,
) -> tuple[Splats, dict[str, Any]]:
    """Optimise the Gaussians near ``regions`` against ``photos`` (see the module docstring).

    Args:
        splats: the merged Gaussians (numpy float32).
        regions: edited places, ``{"center": [3], "size": [3]}`` (axis-aligned, scene frame).
        photos: registered new photos (undistorted here if needed).
        removed_means: [R, 3] where Gaussians were removed (fill seeds).
    Returns:
        (splats: the untouched Gaussians first-identical in place, the optimised ones changed in place,
        fill Gaussians appended; statistics).
    """
    from .train import ssim

    config = config or SeamConfig()
    t0 = time.perf_counter()
    s = splats.to_numpy()
    rng = np.random.default_rng(config.seed)
    means = s.means.astype(np.float64)
    sel = np.zeros(len(s), bool)
    boxes = [_grow(r, config) for r in regions]
    for lo, hi in boxes:
        sel |= _inside(means, lo, hi)
    fill = None
    if config.fill and removed_means is not None and len(removed_means):
        fill = _fill(s, np.asarray(removed_means, np.float64), config, rng)
    idx = np.flatnonzero(sel)
    stats: dict[str, Any] = {"optimised": int(len(idx)), "fill": 0 if fill is None else len(fill),
                             "steps": config.steps}  # fmt: skip
    if (len(idx) == 0 and fill is None) or not photos or config.steps <= 0:
        return s, stats | {"seconds": time.perf_counter() - t0}
    frozen = {f: torch.from_numpy(np.delete(getattr(s, f), idx, axis=0)) for f in FIELDS}
    start = {f: np.concatenate([getattr(s, f)[idx], getattr(fill, f)]) if fill is not None
             else getattr(s, f)[idx] for f in FIELDS}  # fmt: skip
    params = {f: torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(v, np.float32)))
              for f, v in start.items()}  # fmt: skip
    extent = max((float(np.linalg.norm(hi - lo)) for lo, hi in boxes), default=1.0)
    lrs = {"means": config.means_lr * extent, "scales": config.scales_lr, "quats": config.quats_lr,
           "opacities": config.opacities_lr, "sh0": config.sh0_lr, "shN": config.shN_lr}  # fmt: skip
    opt = torch.optim.Adam([{"params": [params[f]], "lr": lrs[f]} for f in FIELDS], eps=1e-15)

    def current() -> Splats:
        return Splats(**{f: torch.cat([frozen[f], params[f]]) for f in FIELDS})

    # targets: inside the edited boxes, the photo (colour-aligned to the scene on the pixels away from the
    # edits); outside, the merged scene's own render, so the refinement leaves the rest of the view alone
    views = []
    with torch.no_grad():
        for p in photos:
            p = _resized(p, config.max_side)
            ref = render(current(), p.camera, p.pose, background=(0.0, 0.0, 0.0), backend="torch")
            inside = torch.from_numpy(np.any([box_pixels(r, p.camera, p.pose) for r in regions], 0))
            aligned = fit_colours(p.rgb, ref.rgb, (~inside & (ref.alpha > 0.95)).float())
            target = torch.where(inside[..., None], aligned, ref.rgb)
            views.append(
                (Photo(target, p.camera, p.pose), torch.where(inside, 1.0, config.hold_weight)[..., None])
            )
    scales0 = params["scales"].detach().clone()  # Gaussians may shrink, not grow: no spill-over
    losses = []
    for step in range(config.steps):
        v, w = views[step % len(views)]
        out = render(current(), v.camera, v.pose, background=(0.0, 0.0, 0.0), backend="torch")
        l1 = ((out.rgb - v.rgb).abs() * w).sum() / (w.sum() * 3)
        loss = (1 - config.ssim_lambda) * l1 + config.ssim_lambda * (1 - ssim(out.rgb, v.rgb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            params["scales"].copy_(torch.minimum(params["scales"], scales0))
        losses.append(float(loss.detach()))
    out_s = {}
    for f in FIELDS:
        base = getattr(s, f)
        new = params[f].detach().numpy()
        arr = np.array(base)  # the untouched rows stay exactly as they were
        arr[idx] = new[: len(idx)]
        out_s[f] = np.concatenate([arr, new[len(idx) :]]) if fill is not None else arr
    n = len(views)
    stats |= {"loss_first": float(np.mean(losses[:n])), "loss_last": float(np.mean(losses[-n:])),
              "seconds": time.perf_counter() - t0}  # fmt: skip
    log.info("seams: %d Gaussians optimised (+%d fill), %d steps, loss %.4f -> %.4f in %.1f s",
             len(idx), stats["fill"], config.steps, stats["loss_first"], stats["loss_last"],
             stats["seconds"])  # fmt: skip
    return Splats(**out_s), stats


__all__ = ["Photo", "SeamConfig", "box_pixels", "fit_colours", "refine_seams"]
