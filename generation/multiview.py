"""Multi-view asset backend (the default, offline): an added object's Gaussians optimised against the photos.

    asset, placement, stats = multiview_asset(scene_splats, points, box, views, MultiViewConfig())

The start is the hull asset (:func:`generation.assets.hull_asset`: the candidate's visual-hull points,
coloured from the photos that see them). Only the asset's Gaussians are optimised; the scene's Gaussians
around the object are rendered together with them and frozen, so whatever stands in front of the object
hides it and whatever stands behind it shows through, as in the photos. Each photo is cut to a window
around the candidate's mask (``crop_margin``) at most ``max_side`` pixels on its longer side, and mapped
onto the scene's colours first (exposure, white balance: per-channel gains fitted on the whole photo away
from the object, at the densest mode of the per-pixel ratios as change detection does, so other changes
do not bend it): the asset then carries the scene's colours, not one photo's exposure.

Loss per step (one photo, round robin over a shuffled order):

- photometric: (1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM) between the composited render and the photo,
  inside the mask;
- silhouette: binary cross-entropy between the asset's visible coverage (the same composite with the asset
  white and the scene black, so occluders count) and the mask, over the whole window, weighted by
  ``silhouette_weight``.

Adaptive density control is 3DGS's (``reconstruction.train.densify_and_prune``: clone, split, prune the
transparent), the means stay inside the candidate's box grown by ``box_margin`` and no Gaussian grows
beyond ``max_scale`` of the box's diagonal. Works with 2–12 photos (one photo works too, but only the
image-to-3D backends know what the object looks like from behind).
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

from reconstruction.cameras import Camera, Pose, quat_to_matrix, undistort_image
from reconstruction.changes import fit_gains
from reconstruction.render import render
from reconstruction.splats import FIELDS, Splats
from reconstruction.train import GaussianParams, TrainConfig, densify_and_prune, ssim_map

from .assets import C0, AssetError, HullConfig, View, hull_asset

log = logging.getLogger(__name__)


@dataclass
class MultiViewConfig:
    """How :func:`multiview_asset` optimises an added object's Gaussians."""

    steps: int = 100
    """Optimisation steps (one photo each). More fit the update photos closer and other views worse (with
    2 photos on the small benchmark world: 300 steps gain 4 dB in the masks they fit and lose 0.5 dB in
    held-out views)."""
    max_side: int = 320
    """Photos are downscaled so that their longer side is at most this many pixels."""
    crop_margin: float = 0.35
    """Window around the mask: its bounding box grown by this fraction of its longer side."""
    init_points: int = 3000
    """Gaussians to start from (a subsample of the hull points)."""
    init_opacity: float = 0.6
    """Opacity of the starting Gaussians."""
    max_gaussians: int = 30_000
    """Densification stops growing the asset here."""
    silhouette_weight: float = 2.0
    """Weight of the silhouette (coverage vs mask) loss against the photometric one."""
    ssim_lambda: float = 0.2
    """Weight of D-SSIM in the photometric loss."""
    photometric_weight: float = 1.0
    """Weight of the photometric loss."""
    recolour: bool = False
    """After the optimisation, give every Gaussian the median colour of the photos that see its centre
    (generation.assets' z-buffered colouring): colours agree across views instead of fitting each."""
    refine_start: int = 30
    """First densification step."""
    refine_every: int = 30
    """Densify and prune every this many steps ..."""
    refine_stop: float = 0.7
    """... until this fraction of the steps."""
    grow_grad2d: float = 2e-4
    """Mean screen-space gradient (normalised coordinates) above which a Gaussian is cloned or split."""
    grow_scale: float = 0.02
    """Gaussians larger than this fraction of the box's diagonal are split, smaller ones cloned."""
    prune_opacity: float = 0.03
    """Gaussians more transparent than this are removed."""
    max_scale: float = 0.15
    """No Gaussian's standard deviation exceeds this fraction of the box's diagonal."""
    box_margin: float = 0.1
    """The means stay inside the candidate's box grown by this fraction of its size."""
    means_lr: float = 1e-3
    """Learning rate of the means, times the box's diagonal."""
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 5e-3
    seed: int = 0
    """Seed of the hull subsample, the photo order and the splits (``regenerate`` asks for another)."""
    device: str | None = None
    """Where the optimisation runs (None: CUDA when available, else the CPU). The renderer is IDU's torch
    rasterizer on either (the layered composite is exact for it)."""


@dataclass
class Window:
    """One photo cut to the window around the object: the target colours, the mask and the frozen scene.

    The scene is split by the depth of its Gaussians' centres against the depth range of the candidate's
    box in this camera: ``front`` (nearer than any asset Gaussian can be) and ``back`` (farther) are
    rendered once; only the ``middle`` Gaussians are rendered with the asset at each step. The renderer
    composites in the order of the centres' depths, so the layered composite is the joint render.
    """

    name: str
    target: torch.Tensor  # [h, w, 3] photo mapped onto the scene's colours
    mask: torch.Tensor  # [h, w] float {0, 1}
    camera: Camera  # pinhole of the window
    pose: Pose
    middle: Splats  # torch tensors: the scene's Gaussians within the box's depth range
    front_rgb: torch.Tensor  # [h, w, 3] premultiplied render of the nearer scene Gaussians
    front_alpha: torch.Tensor  # [h, w]
    back_rgb: torch.Tensor  # [h, w, 3] premultiplied render of the farther ones
    offset: tuple[int, int]  # (x0, y0) of the window in the (downscaled, undistorted) photo
    scale: float  # downscale applied to the photo
    photo: torch.Tensor  # [H, W, 3] the whole (downscaled, undistorted) photo, for composites

    def to(self, device: torch.device) -> Window:
        """The window with its tensors on ``device`` (the whole photo stays where it is)."""
        mv = {f: getattr(self.middle, f).to(device) for f in FIELDS}
        return Window(self.name, self.target.to(device), self.mask.to(device), self.camera, self.pose,
                      Splats(**mv), self.front_rgb.to(device), self.front_alpha.to(device),
                      self.back_rgb.to(device), self.offset, self.scale, self.photo)  # fmt: skip


def _box_frame(box: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.asarray(box["center"], np.float64)
    s = np.asarray(box["size"], np.float64)
    R = quat_to_matrix(np.asarray(box.get("rotation_wxyz", [1, 0, 0, 0]), np.float64))
    return c, s, R


def scene_near(scene: Splats, camera: Camera, pose: Pose, near: float = 0.01) -> np.ndarray:
    """Indices of the Gaussians whose 3-sigma footprint can reach the image of ``camera`` (pinhole)."""
    m = pose.matrix()
    X = np.asarray(scene.means, np.float64)
    pc = X @ m[:3, :3].T + m[:3, 3]
    z = pc[:, 2]
    K = camera.K()
    zs = np.maximum(z, near)
    u = K[0, 0] * pc[:, 0] / zs + K[0, 2]
    v = K[1, 1] * pc[:, 1] / zs + K[1, 2]
    r = 3.0 * K[0, 0] * np.exp(np.asarray(scene.scales, np.float64).max(1)) / zs + 2.0
    ok = (z > near) & (u + r >= 0) & (u - r <= camera.width) & (v + r >= 0) & (v - r <= camera.height)
    return np.flatnonzero(ok)


def _subset(scene: Splats, idx: np.ndarray) -> Splats:
    return Splats(**{f: torch.from_numpy(np.ascontiguousarray(getattr(scene, f)[idx])) for f in FIELDS})


def _depth_range(box: dict[str, Any], margin: float, pose: Pose) -> tuple[float, float]:
    c, s, R = _box_frame(box)
    corners = (
        c + (np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).reshape(3, -1).T * s / 2 * (1 + margin)) @ R.T
    )
    m = pose.matrix()
    z = corners @ m[2, :3] + m[2, 3]
    return float(z.min()), float(z.max())


def prepare_windows(
    scene: Splats, views: list[View], config: MultiViewConfig, box: dict[str, Any]
) -> list[Window]:
    """Each photo undistorted, downscaled, cut to the window around its mask, colour-aligned to the scene,
    with the scene in depth layers around ``box`` (see :class:`Window`); photos whose mask is empty are
    left out."""
    scene = scene.to_numpy()
    out = []
    for v in views:
        rgb, cam = (v.rgb, v.camera) if v.camera.is_pinhole else undistort_image(v.rgb, v.camera)
        cam = cam.undistorted()
        photo = torch.from_numpy(np.asarray(rgb[..., :3], np.float32) / 255.0)
        mask = torch.from_numpy(np.asarray(v.mask) > 0).float()
        if mask.shape != photo.shape[:2]:
            mask = F.interpolate(mask[None, None], size=photo.shape[:2], mode="nearest")[0, 0]
        s = min(1.0, config.max_side / max(cam.width, cam.height))
        if s < 1.0:
            cam = cam.scaled(s)
            photo = F.interpolate(photo.permute(2, 0, 1)[None], size=(cam.height, cam.width), mode="bilinear",
                                  antialias=True, align_corners=False)[0].permute(1, 2, 0)  # fmt: skip
            mask = F.interpolate(mask[None, None], size=(cam.height, cam.width), mode="area")[0, 0] > 0.5
            mask = mask.float()
        ys, xs = torch.nonzero(mask > 0, as_tuple=True)
        if len(ys) < 4:
            continue
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        pad = int(config.crop_margin * max(y1 - y0, x1 - x0)) + 4
        y0, y1 = max(0, y0 - pad), min(cam.height, y1 + pad)
        x0, x1 = max(0, x0 - pad), min(cam.width, x1 + pad)
        K = cam.K()
        wcam = Camera.pinhole(K[0, 0], K[1, 1], K[0, 2] - x0, K[1, 2] - y0, x1 - x0, y1 - y0)
        idx = scene_near(scene, wcam, v.pose)
        mpose = v.pose.matrix()
        z = np.asarray(scene.means, np.float64)[idx] @ mpose[2, :3] + mpose[2, 3]
        z0, z1 = _depth_range(box, config.box_margin, v.pose)
        m = mask[y0:y1, x0:x1]
        with torch.no_grad():
            whole = render(_subset(scene, scene_near(scene, cam, v.pose)), cam, v.pose, backend="torch")
            front = render(_subset(scene, idx[z < z0]), wcam, v.pose, backend="torch")
            back = render(_subset(scene, idx[z > z1]), wcam, v.pose, backend="torch")
        # exposure and white balance of the whole photo against the scene, away from the object
        weight = ((_dilate(mask, 5) == 0) & (whole.alpha > 0.95)).float()
        target = fit_gains(photo, whole.rgb, weight)[y0:y1, x0:x1]
        middle = _subset(scene, idx[(z >= z0) & (z <= z1)])
        out.append(Window(v.name, target, m, wcam, v.pose, middle, front.rgb, front.alpha, back.rgb, (x0, y0),
                          s, photo))  # fmt: skip
    return out


def _dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(m[None, None].float(), 2 * r + 1, 1, r)[0, 0]


def _joint(scene: Splats, asset: Splats) -> Splats:
    """Scene and asset in one set; the asset's missing SH bands are zero."""
    k = scene.shN.shape[1]
    a_shn = asset.shN
    if a_shn.shape[1] < k:
        a_shn = torch.cat([a_shn, a_shn.new_zeros((a_shn.shape[0], k - a_shn.shape[1], 3))], 1)
    return Splats(**{f: torch.cat([getattr(scene, f), a_shn[:, :k] if f == "shN" else getattr(asset, f)])
                     for f in FIELDS})  # fmt: skip


def composite(win: Window, asset: Splats, info: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The window rendered with the scene and the asset [h, w, 3], and the asset's visible coverage [h, w]
    (the same composite with the asset white and the scene black: occluders hide it). ``info`` receives
    the render's per-Gaussian data for the middle layer followed by the asset."""
    joint = _joint(win.middle, asset)
    mid = render(joint, win.camera, win.pose, backend="torch", info=info)
    t_front = (1.0 - win.front_alpha)[..., None]
    rgb = win.front_rgb + t_front * (mid.rgb + (1.0 - mid.alpha)[..., None] * win.back_rgb)
    n = len(win.middle.means)
    dev = asset.means.device
    sh0 = torch.cat([torch.full((n, 3), -0.5 / C0, device=dev),
                     torch.full((asset.means.shape[0], 3), 0.5 / C0, device=dev)])  # fmt: skip
    mono = Splats(**{f: getattr(joint, f) for f in FIELDS if f not in ("sh0", "shN")}, sh0=sh0,
                  shN=joint.shN[:, :0])  # fmt: skip
    cover = render(mono, win.camera, win.pose, backend="torch").rgb[..., 0] * t_front[..., 0]
    return rgb, cover


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = float((a | b).sum())
    return float((a & b).sum()) / union if union else 0.0


def window_metrics(win: Window, asset: Splats, keep: torch.Tensor | None = None) -> dict[str, float]:
    """Silhouette IoU (coverage > 0.5 vs mask) and PSNR inside the mask of one window; with ``keep``
    ([h, w] bool), also the IoU over those pixels only (``silhouette_iou_kept``)."""
    with torch.no_grad():
        rgb, cover = composite(win, asset)
    sil, m = cover > 0.5, win.mask > 0.5
    mse = float(((rgb.clamp(0, 1) - win.target) ** 2).mean(-1)[m].mean()) if bool(m.any()) else float("nan")
    out = {"silhouette_iou": _iou(sil, m), "psnr_mask": -10 * math.log10(max(mse, 1e-10))}
    if keep is not None:
        out["silhouette_iou_kept"] = _iou(sil & keep, m & keep)
    return out


def _summary(per_view: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = next(iter(per_view.values()), {}).keys()
    return {k: float(np.mean([m[k] for m in per_view.values()])) for k in keys}


def optimise_in_box(
    init: Splats, box: dict[str, Any], windows: list[Window], config: MultiViewConfig
) -> tuple[Splats, dict[str, Any]]:
    """Optimise ``init`` (scene frame) against ``windows`` with the scene frozen (module docstring)."""
    t0 = time.perf_counter()
    c, size, R = _box_frame(box)
    diag = float(np.linalg.norm(size))
    half = torch.from_numpy(size / 2 * (1 + config.box_margin))
    c_t, R_t = torch.from_numpy(c), torch.from_numpy(R)
    tc = TrainConfig(
        iterations=config.steps, sh_degree=0, means_lr=config.means_lr, scales_lr=config.scales_lr,
        quats_lr=config.quats_lr, opacities_lr=config.opacities_lr, sh0_lr=config.sh0_lr, shN_lr=0.0,
        refine_start=config.refine_start, refine_every=config.refine_every,
        refine_stop=int(config.refine_stop * config.steps), reset_every=10**9,
        grow_grad2d=config.grow_grad2d, grow_scale3d=config.grow_scale, prune_opacity=config.prune_opacity,
        max_gaussians=config.max_gaussians,
    )  # fmt: skip
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    windows = [w.to(device) for w in windows]
    g = GaussianParams(init, tc, diag, device)
    half, c_t, R_t = half.to(device), c_t.to(device), R_t.to(device)
    gen = torch.Generator().manual_seed(config.seed)
    max_log_scale = math.log(config.max_scale * diag)
    before = {w.name: window_metrics(w, g.splats()) for w in windows}
    grad2d = torch.zeros(len(g), device=device)
    count = torch.zeros(len(g), device=device)
    losses: list[float] = []
    history = []
    order: list[int] = []
    for step in range(config.steps):
        if not order:
            order = torch.randperm(len(windows), generator=gen).tolist()
        w = windows[order.pop()]
        info: dict[str, Any] = {}
        asset = g.splats()
        rgb, cover = composite(w, asset, info)
        m = w.mask
        area = m.sum().clamp_min(1.0)
        l1 = ((rgb - w.target).abs().mean(-1) * m).sum() / area
        d_ssim = ((1 - ssim_map(rgb, w.target, padding="same").mean(-1)) * m).sum() / area
        sil = F.binary_cross_entropy(cover.clamp(1e-4, 1 - 1e-4), m)
        photometric = (1 - config.ssim_lambda) * l1 + config.ssim_lambda * d_ssim
        loss = config.photometric_weight * photometric + config.silhouette_weight * sil
        loss.backward()
        n_scene = len(w.middle.means)
        if info["means2d"].grad is not None:
            with torch.no_grad():
                gr = info["means2d"].grad.reshape(-1, 2)[n_scene:].clone()
                gr[:, 0] *= w.camera.width / 2
                gr[:, 1] *= w.camera.height / 2
                vis = info["visible"][n_scene:]
                grad2d[vis] += gr.norm(dim=-1)[vis]
                count[vis] += 1
        g.step()
        with torch.no_grad():  # inside the box, no Gaussian larger than the object allows
            p = g.params["means"]
            local = ((p.double() - c_t) @ R_t).clamp(-half, half)
            p.copy_((local @ R_t.T + c_t).float())
            g.params["scales"].clamp_(max=max_log_scale)
        losses.append(float(loss.detach()))
        s1 = step + 1
        if s1 > tc.refine_start and s1 % tc.refine_every == 0 and s1 <= tc.refine_stop:
            history.append(densify_and_prune(g, grad2d, count, tc, diag, s1, gen))
            grad2d = torch.zeros(len(g), device=device)
            count = torch.zeros(len(g), device=device)
    with torch.no_grad():  # the last word: nothing nearly transparent stays
        op = torch.sigmoid(g.params["opacities"].data)
        if bool((op < config.prune_opacity).any()) and bool((op >= config.prune_opacity).any()):
            g.remove(op < config.prune_opacity)
    final = g.splats().to_numpy()
    after = {w.name: window_metrics(w, final.to_torch(device)) for w in windows}
    n = len(windows)
    stats = {
        "steps": config.steps,
        "photos": [w.name for w in windows],
        "initial_gaussians": len(init),
        "num_gaussians": len(final),
        "loss_first": float(np.mean(losses[:n])) if losses else None,
        "loss_last": float(np.mean(losses[-n:])) if losses else None,
        "before": {"mean": _summary(before), "views": before},
        "after": {"mean": _summary(after), "views": after},
        "refinements": history,
        "seconds": time.perf_counter() - t0,
    }
    return final, stats


def aligned_views(windows: list[Window]) -> list[View]:
    """The windows as photos (uint8, the window's pinhole camera): what the hull colouring reads."""
    return [View(w.name, (w.target.clamp(0, 1) * 255).round().byte().numpy(), w.camera, w.pose,
                 (w.mask > 0.5).numpy().astype(np.uint8)) for w in windows]  # fmt: skip


def multiview_asset(
    scene: Splats,
    points: np.ndarray,
    box: dict[str, Any],
    views: list[View],
    config: MultiViewConfig | None = None,
    name: str = "candidate",
    windows: list[Window] | None = None,
) -> tuple[Splats, dict[str, Any], dict[str, Any]]:
    """An added object's Gaussians from its hull points [P, 3] and the photos that see it.

    Args:
        scene: the scene version's Gaussians (frozen; they occlude and show through).
        points: the candidate's supporting points (visual hull), scene frame.
        box: the candidate's box ``{"center", "size", "rotation_wxyz"}`` (scene frame).
        views: the registered photos with the candidate's mask in each (photo-sized, undistorted frame).
        windows: ``prepare_windows(scene, views, config, box)`` when the caller has them already.
    Returns:
        (asset in its own frame: the box centre is the origin; placement ``{"rotation_wxyz",
        "translation", "scale"}`` into the scene; statistics: per-photo silhouette IoU and PSNR inside the
        mask before and after the optimisation, Gaussian counts, losses, seconds).
    Raises:
        AssetError: no photo with a non-empty mask, no points, or none of the photos sees them.
    """
    config = config or MultiViewConfig()
    t0 = time.perf_counter()
    if windows is None:
        windows = prepare_windows(scene, views, config, box)
    if not windows:
        raise AssetError(f"{name}: none of the {len(views)} photo(s) has a mask to fit the asset to")
    aligned = aligned_views(windows)  # colours from the photos mapped onto the scene's
    hull, placement = hull_asset(points, aligned, HullConfig(max_points=config.init_points,
                                 opacity=config.init_opacity, seed=config.seed), name=name)  # fmt: skip
    centre = np.asarray(placement["translation"], np.float32)
    init = hull.to_numpy()
    init.means = init.means + centre
    asset, stats = optimise_in_box(init, box, windows, config)
    if config.recolour:
        from .assets import _colours, _spacing

        X = np.asarray(asset.means, np.float64)
        col, seen = _colours(X, aligned, _spacing(X))
        asset.sh0[seen > 0] = ((np.clip(col[seen > 0], 0, 1) - 0.5) / C0).astype(np.float32)
    asset.means = (asset.means - centre).astype(np.float32)
    stats["seconds"] = time.perf_counter() - t0
    b, a = stats["before"]["mean"], stats["after"]["mean"]
    log.info(
        "%s: multi-view asset, %d photos, %d -> %d Gaussians, silhouette IoU %.3f -> %.3f, "
        "PSNR in mask %.2f -> %.2f dB, %.1f s",
        name, len(windows), stats["initial_gaussians"], stats["num_gaussians"], b["silhouette_iou"],
        a["silhouette_iou"], b["psnr_mask"], a["psnr_mask"], stats["seconds"],
    )  # fmt: skip
    return asset.validate(f"{name} asset"), placement, stats


__all__ = ["MultiViewConfig", "Window", "composite", "multiview_asset", "optimise_in_box",
           "prepare_windows", "scene_near", "window_metrics"]  # fmt: skip
