"""3D Gaussian Splatting training from an SfM model and its photos (gsplat on CUDA, our rasterizer on CPU).

The recipe is the original 3DGS one as gsplat's ``simple_trainer.py`` runs it with its ``DefaultStrategy``:
Gaussians start at the SfM points, Adam with per-parameter learning rates (the means' scaled by the scene
extent, decaying exponentially), loss ``(1 - λ) L1 + λ (1 - SSIM)`` with λ = 0.2, SH degree raised every
``sh_degree_interval`` steps, and adaptive density control: Gaussians whose mean image-space gradient is
high are cloned (small) or split in two (large), transparent and huge ones pruned, opacities reset
periodically, all under a cap on the count. Every ``holdout_every``-th photo is held out and its PSNR
reported.

The one public function is :func:`train_splats`; presets live in :data:`PRESETS`.

Example::

    rec = pycolmap.Reconstruction("work/sfm/sparse/0")
    splats, stats = train_splats(rec, "photos/", preset("fast"))
    print(stats["test_psnr"])
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Camera, ImageEntry, model_images, model_points, quat_to_matrix_torch, undistort_image
from .errors import IDUError, SceneFormatError
from .importers import splats_from_points
from .render import render
from .splats import FIELDS, SH_C0, Splats, num_sh_bases

log = logging.getLogger(__name__)

BACKGROUNDS = ("black", "white", "random")


@dataclass
class TrainConfig:
    """How :func:`train_splats` optimises Gaussians (step counts are absolute: see ``with_iterations``)."""

    iterations: int = 3000
    """Optimisation steps (one photo per step)."""
    resolution: float = 1.0
    """Downscale factor applied to the photos (2: half size)."""
    max_side: int | None = None
    """Further downscale so that the longer image side is at most this many pixels (None: no limit)."""
    sh_degree: int = 3
    """Final spherical-harmonics degree (0..3)."""
    sh_degree_interval: int = 1000
    """Raise the SH degree by one every this many steps."""
    ssim_lambda: float = 0.2
    """Weight of the D-SSIM term in the loss."""
    background: str = "black"
    """Colour composited behind the splats while training: black, white or random (per step)."""
    init_opacity: float = 0.1
    """Opacity of the initial Gaussians."""
    init_scale: float = 1.0
    """Initial Gaussian size, relative to the mean distance to the 3 nearest SfM points."""
    init_max_px: float = 0.0
    """Cap on the initial Gaussians' size: this many pixels (one sigma) from the nearest camera (0: none)."""
    seed_points_per_view: int = 0
    """Extra Gaussians seeded per photo from its pixels, at depths interpolated from its SfM points."""
    sky_points: int = 0
    """Extra Gaussians on a far sphere around the scene, coloured from the photos (skies, far walls)."""
    sky_distance: float = 4.0
    """Radius of that sphere, in scene extents."""
    means_lr: float = 1.6e-4
    """Learning rate of the means, times the scene extent; decays exponentially to ``means_lr_final``."""
    means_lr_final: float = 1.6e-6
    """Final learning rate of the means, times the scene extent."""
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    refine_start: int = 500
    """First step of densification and pruning."""
    refine_stop: int = 15_000
    """Densification stops after this step."""
    refine_every: int = 100
    """Densify and prune every this many steps."""
    reset_every: int = 3000
    """Reset opacities (to twice ``prune_opacity``) every this many steps."""
    grow_grad2d: float = 2e-4
    """Mean image-space gradient (normalised coordinates) above which a Gaussian is cloned or split."""
    grow_scale3d: float = 0.01
    """Gaussians larger than this (times the scene extent) are split, smaller ones cloned."""
    prune_opacity: float = 0.005
    """Gaussians more transparent than this are removed."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this (times the scene extent) are removed (after the first opacity reset)."""
    max_gaussians: int = 1_000_000
    """Cap on the number of Gaussians: growth stops there (the highest gradients grow first)."""
    appearance: bool = True
    """Learn the camera's response along with the Gaussians: a radial vignetting shared by all photos and
    a per-photo exposure / white balance (gain and offset per channel), as gsplat's and nerfstudio's
    appearance models; the Gaussians then hold the place's colours at the photos' mean exposure."""
    appearance_lr: float = 5e-3
    """Learning rate of the camera-response parameters."""
    holdout_every: int = 8
    """Every this many-th photo (sorted by name) is held out for evaluation; 0: none."""
    eval_every: int = 0
    """Evaluate the held-out photos every this many steps (0: only at the end)."""
    seed: int = 0
    """Random seed (photo order, splits, backgrounds)."""

    def with_iterations(self, iterations: int) -> TrainConfig:
        """The same schedule stretched to ``iterations`` steps (every step count scaled alike)."""
        f = iterations / self.iterations
        steps = (
            "sh_degree_interval",
            "refine_start",
            "refine_stop",
            "refine_every",
            "reset_every",
            "eval_every",
        )
        scaled = {k: max(1, round(getattr(self, k) * f)) if getattr(self, k) > 0 else 0 for k in steps}
        return dataclasses.replace(self, iterations=int(iterations), **scaled)


#: Named configurations (gsplat's ``configs`` dict, STYLE.md 4):
#:
#: - "fast": tests and quick CPU previews (photos at 160 px, 300 steps).
#: - "default": the CPU bootstrap of a small place: ~30 photos at 160 px in about 5 minutes on 2 cores. Short
#:   schedules need the means' learning rate 10x gsplat's, no opacity reset, and a dense start (photo seeds,
#:   a sky backdrop, initial sizes capped at 3 px). A random background each step (as nerfstudio's
#:   splatfacto) leaves no half-transparent haze for a black one to darken: on the small benchmark world
#:   (true cameras, 600 steps) held-out PSNR 22.6 -> 23.4 dB, with 1000 photo seeds per view 23.9; from
#:   SfM's cameras 24.1 dB at 600 steps, 24.7 at 1200 (bench/bench_bootstrap.py).
#: - "quality": the 3DGS paper's schedule at full resolution (30k steps, SH degree 3: GPU workers).
PRESETS: dict[str, TrainConfig] = {
    "fast": TrainConfig(
        iterations=300, max_side=160, sh_degree=1, sh_degree_interval=100, refine_start=60, refine_stop=240,
        refine_every=30, reset_every=10_000, means_lr=1.6e-3, means_lr_final=1.6e-4, init_max_px=3.0,
        seed_points_per_view=300, sky_points=1000, max_gaussians=40_000,
    ),
    "default": TrainConfig(
        iterations=1200, max_side=160, sh_degree=1, sh_degree_interval=400, refine_start=240,
        refine_stop=960, refine_every=120, reset_every=20_000, means_lr=1.6e-3, means_lr_final=1.6e-4,
        init_max_px=3.0, seed_points_per_view=1000, sky_points=2000, max_gaussians=60_000,
        background="random",
    ),
    "quality": TrainConfig(iterations=30_000, sh_degree=3, sky_points=5000),
}  # fmt: skip


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A copy of ``PRESETS[name]`` with ``overrides``; ``iterations`` stretches the whole schedule."""
    if name not in PRESETS:
        raise IDUError(f"training preset {name!r}: expected one of {', '.join(PRESETS)}")
    cfg = PRESETS[name]
    if overrides.get("iterations") is not None:
        cfg = cfg.with_iterations(int(overrides.pop("iterations")))
    overrides.pop("iterations", None)
    return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


# -- data --------------------------------------------------------------------------------------------
@dataclass
class View:
    """One training photo: its (undistorted, downscaled) pixels, pinhole camera and pose."""

    name: str
    image: Tensor  # [H, W, 3] uint8
    camera: Camera  # PINHOLE, H x W
    viewmat: Tensor  # [4, 4] cam_from_world


def load_views(
    entries: Sequence[ImageEntry],
    image_dir: Path,
    resolution: float = 1.0,
    max_side: int | None = None,
    device: torch.device | str = "cpu",
) -> list[View]:
    """Read, downscale and undistort the photos of ``entries`` (once); cameras scaled to match."""
    from PIL import Image

    views = []
    for e in entries:
        path = Path(image_dir) / e.name
        if not path.is_file():
            raise SceneFormatError(f"{path}: photo of registered image {e.name!r} is missing")
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (e.camera.width, e.camera.height):
                raise SceneFormatError(
                    f"{path}: photo is {im.size[0]}x{im.size[1]} but its camera is "
                    f"{e.camera.width}x{e.camera.height}"
                )
            s = 1.0 / max(float(resolution), 1e-6)
            if max_side:
                s = min(s, max_side / max(im.size))
            cam = e.camera
            if s < 1.0:
                cam = e.camera.scaled(s)
                im = im.resize((cam.width, cam.height), Image.Resampling.LANCZOS)
            arr = np.asarray(im)
        arr, pin = undistort_image(arr, cam)
        views.append(
            View(
                e.name,
                torch.from_numpy(np.ascontiguousarray(arr)).to(device),
                pin,
                torch.as_tensor(e.cam_from_world.matrix(), dtype=torch.float32, device=device),
            )
        )
    return views


def split_views(views: Sequence[View], holdout_every: int) -> tuple[list[View], list[View]]:
    """(train, test): every ``holdout_every``-th view (0, k, 2k, ...) is a test view, as 3DGS's llffhold."""
    if holdout_every <= 0 or len(views) < 3:
        return list(views), []
    test = [v for i, v in enumerate(views) if i % holdout_every == 0]
    train = [v for i, v in enumerate(views) if i % holdout_every != 0]
    return train, test


# -- losses and metrics ------------------------------------------------------------------------------
def _gauss_window(size: int = 11, sigma: float = 1.5, device=None, dtype=torch.float32) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim_map(
    img1: Tensor, img2: Tensor, window: int = 11, sigma: float = 1.5, padding: str = "valid"
) -> Tensor:
    """Per-pixel SSIM [H', W', C] of two images [H, W, C] in [0, 1] (Gaussian window).

    ``padding="valid"`` drops the borders (H' = H - window + 1); ``"same"`` reflects them (H' = H).
    Differentiable; the constants are the usual ``(0.01 L)^2`` and ``(0.03 L)^2`` with L = 1.
    """
    c = img1.shape[-1]
    x = img1.permute(2, 0, 1)[None]
    y = img2.permute(2, 0, 1)[None]
    if padding == "same":
        p = window // 2
        x = F.pad(x, (p, p, p, p), mode="reflect")
        y = F.pad(y, (p, p, p, p), mode="reflect")
    g = _gauss_window(window, sigma, img1.device, img1.dtype)
    gh = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    gv = g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s[0].permute(1, 2, 0)


def ssim(img1: Tensor, img2: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of two images [H, W, C] in [0, 1] (Gaussian 11x11 window, sigma 1.5, 'valid' borders)."""
    return ssim_map(img1, img2, window, sigma).mean()


def psnr(img1: Tensor, img2: Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(((img1.float() - img2.float()) ** 2).mean())
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# -- initialisation ----------------------------------------------------------------------------------
def scene_extent(views: Sequence[View]) -> float:
    """gsplat's scene scale: 1.1 x the largest camera distance from the cameras' mean centre."""
    centres = torch.stack([-(v.viewmat[:3, :3].T @ v.viewmat[:3, 3]) for v in views]).double().cpu()
    r = float((centres - centres.mean(0)).norm(dim=-1).max())
    return 1.1 * r if r > 1e-9 else 1.0


def _fibonacci_sphere(m: int) -> np.ndarray:
    k = np.arange(m) + 0.5
    phi = np.arccos(1 - 2 * k / m)
    theta = np.pi * (1 + 5**0.5) * k
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], -1)


def _sample_views(pts: np.ndarray, views: Sequence[View], order: Sequence[int]) -> np.ndarray:
    """Colour [P, 3] in [0, 1] of each point in the first view (in ``order``) that sees it; NaN if none."""
    colour = np.full((len(pts), 3), np.nan)
    for i in order:
        v = views[i]
        Rt = v.viewmat.double().cpu().numpy()
        pc = pts @ Rt[:3, :3].T + Rt[:3, 3]
        K = v.camera.K()
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = K[0, 0] * pc[:, 0] / z + K[0, 2]
            w = K[1, 1] * pc[:, 1] / z + K[1, 2]
        h, wd = v.image.shape[:2]
        ok = (z > 0) & (u >= 0) & (u < wd) & (w >= 0) & (w < h) & np.isnan(colour[:, 0])
        if ok.any():
            img = v.image.cpu().numpy()
            colour[ok] = img[w[ok].astype(int), u[ok].astype(int)] / 255.0
    return colour


def sky_splats(views: Sequence[View], n: int, radius: float, centre: np.ndarray, seed: int = 0) -> Splats:
    """About ``n`` Gaussians on a sphere (``radius`` around ``centre``) where the photos see it, each
    coloured by the photo pixel it projects to: a backdrop for the sky and distant surroundings."""
    if n <= 0:
        return Splats.empty(0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(views))
    probe = 20_000
    seen_frac = max(
        1e-3,
        float(
            (~np.isnan(_sample_views(centre + radius * _fibonacci_sphere(probe), views, order)[:, 0])).mean()
        ),
    )
    m = max(n, int(round(n / seen_frac)))
    pts = centre + radius * _fibonacci_sphere(m)
    colour = _sample_views(pts, views, order)
    idx = np.nonzero(~np.isnan(colour[:, 0]))[0]
    out = Splats.empty(len(idx))
    if not len(idx):
        return out
    spacing = radius * math.sqrt(4 * math.pi / m)
    out.means = pts[idx].astype(np.float32)
    out.scales[:] = math.log(0.6 * spacing)
    out.opacities[:] = 0.0  # opacity 0.5
    out.sh0 = ((colour[idx] - 0.5) / SH_C0).astype(np.float32)
    return out


def view_seed_splats(
    model: pycolmap.Reconstruction, views: Sequence[View], per_view: int, opacity: float, seed: int = 0
) -> Splats:
    """Gaussians seeded from the photos' pixels: about ``per_view`` per photo on a jittered grid, each at the
    depth interpolated from the SfM points that photo observes (inverse-distance weights of the 4 nearest in
    the image), coloured by its pixel and sized by its footprint. Pixels far from any observed point (sky)
    get none. A dense, appearance-correct start that densification alone takes many steps to reach."""
    if per_view <= 0:
        return Splats.empty(0)
    rng = np.random.default_rng(seed)
    by_name = {model.image(i).name: model.image(i) for i in model.reg_image_ids()}
    means, cols, sizes = [], [], []
    for v in views:
        im = by_name.get(v.name)
        if im is None:
            continue
        ids = [p.point3D_id for p in im.points2D if p.has_point3D()]
        if len(ids) < 4:
            continue
        X = np.stack([model.point3D(i).xyz for i in ids])
        Rt = v.viewmat.double().cpu().numpy()
        pc = X @ Rt[:3, :3].T + Rt[:3, 3]
        pc = pc[pc[:, 2] > 1e-6]
        if len(pc) < 4:
            continue
        K = v.camera.K()
        uv = np.stack([K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2], K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]], -1)
        h, w = v.image.shape[:2]
        step = math.sqrt(h * w / per_view)
        gx, gy = np.meshgrid(np.arange(step / 2, w, step), np.arange(step / 2, h, step))
        q = np.stack([gx.ravel(), gy.ravel()], -1) + rng.uniform(-step / 2, step / 2, (gx.size, 2))
        q = np.clip(q, 0, [w - 1e-3, h - 1e-3])
        d = np.linalg.norm(q[:, None, :] - uv[None, :, :], axis=-1)  # [S, P]
        k = min(4, len(uv))
        nn = np.argpartition(d, k - 1, axis=1)[:, :k]
        dn = np.take_along_axis(d, nn, 1)
        keep = dn.min(1) < 3 * math.sqrt(h * w / len(uv)) + step
        wts = 1.0 / (dn + 1.0)
        inv_z = (wts / pc[nn, 2]).sum(1) / wts.sum(1)  # interpolate inverse depth
        z = 1.0 / inv_z
        q, z = q[keep], z[keep]
        rays = np.stack([(q[:, 0] - K[0, 2]) / K[0, 0], (q[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(q))], -1)
        pcam = rays * z[:, None]
        R, t = Rt[:3, :3], Rt[:3, 3]
        means.append((pcam - t) @ R)  # R^T (p - t)
        img = v.image.cpu().numpy()
        cols.append(img[q[:, 1].astype(int), q[:, 0].astype(int)] / 255.0)
        sizes.append(0.5 * step * z / K[0, 0])
    if not means:
        return Splats.empty(0)
    out = Splats.empty(sum(len(m) for m in means))
    out.means = np.concatenate(means).astype(np.float32)
    out.scales[:] = np.log(np.concatenate(sizes))[:, None].astype(np.float32)
    out.opacities[:] = math.log(opacity / (1 - opacity))
    out.sh0 = ((np.concatenate(cols) - 0.5) / SH_C0).astype(np.float32)
    return out


def init_splats(
    model: pycolmap.Reconstruction, views: Sequence[View], config: TrainConfig, extent: float
) -> Splats:
    """Gaussians at the SfM points (3DGS init), plus the sky shell when ``config.sky_points``."""
    xyz, rgb = model_points(model)
    if len(xyz) < 4:
        raise SceneFormatError(f"SfM model has {len(xyz)} 3D points; training needs at least 4 to start from")
    s = splats_from_points(xyz, rgb, opacity=config.init_opacity)
    s.scales = s.scales + np.float32(math.log(config.init_scale))
    if config.init_max_px > 0:
        # at most init_max_px pixels (one sigma) as seen from the nearest camera: sparse points otherwise
        # start as huge blobs that cost the rasterizer dearly until densification splits them
        centres = torch.stack([-(v.viewmat[:3, :3].T @ v.viewmat[:3, 3]) for v in views]).double().cpu()
        near = torch.cdist(torch.as_tensor(xyz, dtype=torch.float64), centres).min(1).values.numpy()
        focal = float(np.mean([v.camera.K()[0, 0] for v in views]))
        cap = np.log(np.maximum(config.init_max_px * near / focal, 1e-7)).astype(np.float32)
        s.scales = np.minimum(s.scales, cap[:, None])
    parts = [s]
    if config.seed_points_per_view > 0:
        parts.append(
            view_seed_splats(model, views, config.seed_points_per_view, config.init_opacity, config.seed)
        )
    if config.sky_points > 0:
        centre = np.median(xyz, 0)
        parts.append(sky_splats(views, config.sky_points, config.sky_distance * extent, centre, config.seed))
    from .splat_ops import concat

    out = concat([p for p in parts if len(p)])
    k = num_sh_bases(config.sh_degree) - 1
    out.shN = np.zeros((len(out), k, 3), np.float32)
    return out


# -- optimisation state ------------------------------------------------------------------------------
class GaussianParams:
    """Parameters as leaf tensors, one Adam each (as gsplat), with the edits densification needs."""

    def __init__(self, splats: Splats, config: TrainConfig, extent: float, device: torch.device):
        t = splats.to_torch(device)
        self.params = {f: torch.nn.Parameter(getattr(t, f).contiguous()) for f in FIELDS}
        lrs = {
            "means": config.means_lr * extent,
            "scales": config.scales_lr,
            "quats": config.quats_lr,
            "opacities": config.opacities_lr,
            "sh0": config.sh0_lr,
            "shN": config.shN_lr,
        }
        self.opt = {f: torch.optim.Adam([p], lr=lrs[f], eps=1e-15) for f, p in self.params.items()}

    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    def splats(self) -> Splats:
        return Splats(**self.params)

    def step(self) -> None:
        for o in self.opt.values():
            o.step()
            o.zero_grad(set_to_none=True)

    def _edit(self, param_fn, state_fn) -> None:
        for f, p in list(self.params.items()):
            opt = self.opt[f]
            new = torch.nn.Parameter(param_fn(f, p.data))
            st = opt.state.pop(p, {})
            opt.state[new] = {k: (v if k == "step" else state_fn(k, v)) for k, v in st.items()}
            opt.param_groups[0]["params"] = [new]
            self.params[f] = new

    def duplicate(self, idx: Tensor) -> None:
        self._edit(
            lambda f, p: torch.cat([p, p[idx]]),
            lambda k, v: torch.cat([v, v.new_zeros((len(idx), *v.shape[1:]))]),
        )

    def split(self, mask: Tensor, gen: torch.Generator) -> None:
        sel, rest = torch.nonzero(mask).squeeze(1), torch.nonzero(~mask).squeeze(1)
        p = self.params
        scales = torch.exp(p["scales"].data[sel])
        rot = quat_to_matrix_torch(p["quats"].data[sel])
        noise = torch.randn((2, len(sel), 3), generator=gen, device=scales.device)
        samples = torch.einsum("nij,nj,bnj->bni", rot, scales, noise)  # [2, S, 3]

        def param_fn(f: str, v: Tensor) -> Tensor:
            if f == "means":
                new = (v[sel] + samples).reshape(-1, 3)
            elif f == "scales":
                new = torch.log(scales / 1.6).repeat(2, 1)
            else:
                new = v[sel].repeat(2, *([1] * (v.dim() - 1)))
            return torch.cat([v[rest], new])

        self._edit(param_fn, lambda k, v: torch.cat([v[rest], v.new_zeros((2 * len(sel), *v.shape[1:]))]))

    def remove(self, mask: Tensor) -> None:
        keep = torch.nonzero(~mask).squeeze(1)
        self._edit(lambda f, p: p[keep], lambda k, v: v[keep])

    def reset_opacities(self, value: float) -> None:
        p = self.params["opacities"]
        with torch.no_grad():
            p.clamp_(max=math.log(value / (1 - value)))
        for k, v in self.opt["opacities"].state.get(p, {}).items():
            if k != "step":
                v.zero_()


# -- training ----------------------------------------------------------------------------------------
class CameraResponse(torch.nn.Module):
    """What a camera did to the light, learned with the Gaussians (``TrainConfig.appearance``).

    ``photo = (rgb * exp(gain_i) + offset_i) * (1 + k1 r^2 + k2 r^4)``: per photo ``i`` a gain and an offset
    per channel (exposure, white balance; centred over the photos, so the Gaussians keep the mean
    exposure), and a radial vignetting per camera (``r``: distance to the principal point over the
    half-diagonal). Photos without an index (held out) get the mean exposure and their camera's vignetting.
    """

    def __init__(self, num_photos: int, num_cameras: int = 1):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.zeros(num_photos, 3))
        self.offset = torch.nn.Parameter(torch.zeros(num_photos, 3))
        self.vignetting = torch.nn.Parameter(torch.zeros(num_cameras, 2))

    def forward(self, rgb: Tensor, camera: Camera, photo: int | None = None, cam: int = 0) -> Tensor:
        H, W = rgb.shape[:2]
        K = camera.K()
        y, x = torch.meshgrid(
            torch.arange(H, device=rgb.device, dtype=rgb.dtype) + 0.5,
            torch.arange(W, device=rgb.device, dtype=rgb.dtype) + 0.5,
            indexing="ij",
        )
        r2 = ((x - float(K[0, 2])) ** 2 + (y - float(K[1, 2])) ** 2) / (0.25 * (W * W + H * H))
        k = self.vignetting[cam]
        out = rgb
        if photo is not None:
            gain = self.gain[photo] - self.gain.mean(0)
            offset = self.offset[photo] - self.offset.mean(0)
            out = out * torch.exp(gain) + offset
        return out * (1 + k[0] * r2 + k[1] * r2 * r2)[..., None]

    def summary(self) -> dict[str, Any]:
        """Learned values, JSON-ready: vignetting [cameras][k1, k2], exposure in stops per photo."""
        with torch.no_grad():
            stops = (self.gain - self.gain.mean(0)).mean(1) / math.log(2.0)
            return {
                "vignetting": self.vignetting.detach().cpu().tolist(),
                "exposure_stops": [round(float(x), 4) for x in stops.cpu()],
            }


def _progress(enabled: bool, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=Console(file=sys.stderr), disable=not enabled,
        transient=False,
    )  # fmt: skip


def _background(config: TrainConfig, gen: torch.Generator, device) -> Tensor:
    if config.background == "black":
        return torch.zeros(3, device=device)
    if config.background == "white":
        return torch.ones(3, device=device)
    return torch.rand(3, generator=gen, device=device)


def colour_correct(pred: Tensor, gt: Tensor) -> Tensor:
    """``pred`` [H, W, 3] mapped by the affine colour transform (3x3 + offset) that best fits ``gt``
    (least squares): the colour-corrected metrics of appearance-varying captures (gsplat's cc_psnr)."""
    X = torch.cat([pred.reshape(-1, 3), torch.ones_like(pred.reshape(-1, 3)[:, :1])], 1).double()
    A = torch.linalg.lstsq(X, gt.reshape(-1, 3).double()).solution
    return (X @ A).float().reshape(pred.shape)


@torch.no_grad()
def evaluate(
    splats: Splats,
    views: Sequence[View],
    background: Sequence[float] = (0.0, 0.0, 0.0),
    sh_degree=None,
    response: CameraResponse | None = None,
) -> dict[str, Any]:
    """PSNR and SSIM of renders against ``views`` (mean and per view), and ``psnr_cc``: the PSNR after
    the best affine colour transform per photo (a held-out photo's own exposure cannot be predicted).

    ``response``: the learned camera response; held-out photos get its vignetting and mean exposure.
    """
    per = {}
    for v in views:
        out = render(splats, v.camera, v.viewmat, background=list(background), sh_degree=sh_degree)
        gt = v.image.float() / 255.0
        pred = out.rgb if response is None else response(out.rgb, v.camera)
        pred = pred.clamp(0, 1)
        per[v.name] = {
            "psnr": psnr(pred, gt),
            "ssim": float(ssim(pred, gt)),
            "psnr_cc": psnr(colour_correct(pred, gt).clamp(0, 1), gt),
        }
    if not per:
        return {"psnr": None, "ssim": None, "psnr_cc": None, "views": {}}
    return {k: float(np.mean([p[k] for p in per.values()])) for k in ("psnr", "ssim", "psnr_cc")} | {
        "views": per
    }


def train_splats(
    model: pycolmap.Reconstruction,
    image_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    init: Splats | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> tuple[Splats, dict[str, Any]]:
    """Train 3D Gaussians on the registered photos of an SfM model.

    Args:
        model: the SfM model (registered images, cameras, 3D points) in the frame the splats will have.
        image_dir: folder holding the photos by their image names.
        config: :class:`TrainConfig` (default: ``PRESETS["default"]``).
        init: Gaussians to start from (in the model's frame) instead of the SfM points.
        device: torch device (default: CUDA when available, then rendering goes through gsplat; else CPU).
        progress: show a progress bar on stderr.
    Returns:
        ``(splats, stats)``: float32 numpy Splats [N] with SH degree ``config.sh_degree``, and a dict with
        ``test_psnr`` / ``test_ssim`` (held-out photos; None without any), ``train_psnr``, ``test_views``,
        ``num_gaussians``, ``initial_gaussians``, ``seconds``, ``seconds_per_step``, ``loss_first``,
        ``loss_last``, ``image_size`` [W, H], ``scene_extent``, ``backend`` and the densification history.
    Raises:
        SceneFormatError: a registered photo is missing or its size disagrees with its camera, or the model
            has no points to start from.
    """
    config = config or PRESETS["default"]
    if config.background not in BACKGROUNDS:
        raise IDUError(f"training background {config.background!r}: expected one of {', '.join(BACKGROUNDS)}")
    if not 0 <= config.sh_degree <= 3:
        raise IDUError(f"training sh_degree {config.sh_degree}: expected 0..3")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_start = time.perf_counter()
    gen = torch.Generator(device=device).manual_seed(config.seed)
    cpu_gen = torch.Generator().manual_seed(config.seed)
    entries = model_images(model)
    if not entries:
        raise SceneFormatError("SfM model has no registered images to train on")
    views = load_views(entries, Path(image_dir), config.resolution, config.max_side, device)
    train, test = split_views(views, config.holdout_every)
    if not train:
        raise IDUError(f"training: holdout_every={config.holdout_every} leaves no photo to train on")
    extent = scene_extent(views)
    if init is None:
        init = init_splats(model, train, config, extent)  # held-out photos stay unseen
    else:
        init = init.to_numpy()
        k = num_sh_bases(config.sh_degree) - 1
        if init.shN.shape[1] < k:
            init.shN = np.concatenate(
                [init.shN, np.zeros((len(init), k - init.shN.shape[1], 3), np.float32)], 1
            )
        init.shN = init.shN[:, :k]
    g = GaussianParams(init, config, extent, device)
    n_init = len(g)
    response = None
    if config.appearance:
        response = CameraResponse(len(train)).to(device)
        response_opt = torch.optim.Adam(response.parameters(), lr=config.appearance_lr)
    gamma = (config.means_lr_final / config.means_lr) ** (1.0 / max(1, config.iterations))
    sched = torch.optim.lr_scheduler.ExponentialLR(g.opt["means"], gamma=gamma)
    W, H = train[0].camera.width, train[0].camera.height
    log.info(
        "training %d Gaussians on %d photos (%d held out) at %dx%d, %d steps, %s",
        n_init, len(train), len(test), W, H, config.iterations,
        "gsplat on CUDA" if device.type == "cuda" else f"CPU rasterizer ({torch.get_num_threads()} threads)",
    )  # fmt: skip

    grad2d = torch.zeros(len(g), device=device)
    count = torch.zeros(len(g), device=device)
    history: list[dict[str, Any]] = []
    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    order: list[int] = []
    backend = None
    with _progress(progress, config.iterations) as bar:
        task = bar.add_task("train", total=config.iterations, info="")
        for step in range(config.iterations):
            if not order:
                order = torch.randperm(len(train), generator=cpu_gen).tolist()
            index = order.pop()
            view = train[index]
            degree = min(step // max(1, config.sh_degree_interval), config.sh_degree)
            bg = _background(config, gen, device)
            info: dict[str, Any] = {}
            out = render(g.splats(), view.camera, view.viewmat, background=bg, sh_degree=degree, info=info)
            backend = out.backend
            gt = view.image.float() / 255.0
            pred = out.rgb if response is None else response(out.rgb, view.camera, index)
            l1 = (pred - gt).abs().mean()
            loss = (1 - config.ssim_lambda) * l1 + config.ssim_lambda * (1 - ssim(pred, gt))
            loss.backward()
            if response is not None:
                response_opt.step()
                response_opt.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))

            refining = step < config.refine_stop
            if refining and info["means2d"].grad is not None:
                with torch.no_grad():
                    gr = info["means2d"].grad.reshape(-1, 2).clone()
                    gr[:, 0] *= view.camera.width / 2
                    gr[:, 1] *= view.camera.height / 2
                    vis = info["visible"]
                    grad2d[vis] += gr.norm(dim=-1)[vis]
                    count[vis] += 1
            g.step()
            sched.step()

            s1 = step + 1
            if refining and s1 > config.refine_start and s1 % config.refine_every == 0:
                h = densify_and_prune(g, grad2d, count, config, extent, s1, gen)
                history.append(h)
                grad2d = torch.zeros(len(g), device=device)
                count = torch.zeros(len(g), device=device)
                if s1 % config.reset_every == 0:
                    g.reset_opacities(2 * config.prune_opacity)
            if config.eval_every and s1 % config.eval_every == 0 and test and s1 < config.iterations:
                ev = evaluate(g.splats(), test, response=response)
                evals.append({"step": s1, "psnr": ev["psnr"], "num_gaussians": len(g)})
                log.info("step %d: held-out PSNR %.2f dB, %d Gaussians", s1, ev["psnr"], len(g))
            if s1 % 10 == 0 or s1 == config.iterations:
                bar.update(task, completed=s1, info=f"loss {np.mean(losses[-10:]):.4f}  {len(g)} Gaussians")
            if not progress and s1 % max(1, config.iterations // 10) == 0:
                log.info(
                    "step %d/%d: loss %.4f, %d Gaussians, %.2f s/step", s1, config.iterations,
                    np.mean(losses[-10:]), len(g), (time.perf_counter() - t_start) / s1,
                )  # fmt: skip
    train_seconds = time.perf_counter() - t_start
    splats = g.splats().to_numpy()
    test_ev = evaluate(splats.to_torch(device), test, response=response)
    rng = np.random.default_rng(config.seed)
    sub = [train[i] for i in sorted(rng.choice(len(train), min(len(train), 8), replace=False))]
    train_ev = evaluate(splats.to_torch(device), sub, response=response)
    stats = {
        "test_psnr": test_ev["psnr"],
        "test_ssim": test_ev["ssim"],
        "test_psnr_cc": test_ev["psnr_cc"],
        "test_views": {k: round(v["psnr"], 3) for k, v in test_ev["views"].items()},
        "train_psnr": train_ev["psnr"],
        "num_train_views": len(train),
        "num_test_views": len(test),
        "initial_gaussians": n_init,
        "num_gaussians": len(splats),
        "iterations": config.iterations,
        "seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, config.iterations),
        "loss_first": float(np.mean(losses[:10])) if losses else None,
        "loss_last": float(np.mean(losses[-10:])) if losses else None,
        "image_size": [W, H],
        "scene_extent": extent,
        "backend": backend,
        "device": str(device),
        "refinements": history,
        "evaluations": evals,
        "camera_response": None if response is None else response.summary(),
    }
    log.info(
        "trained %d Gaussians in %.1f s (%.3f s/step); held-out PSNR %s, train PSNR %.2f dB",
        len(splats), train_seconds, stats["seconds_per_step"],
        "n/a" if test_ev["psnr"] is None
        else f"{test_ev['psnr']:.2f} dB ({test_ev['psnr_cc']:.2f} dB colour-corrected)", train_ev["psnr"],
    )  # fmt: skip
    return splats.validate("trained splats"), stats


@torch.no_grad()
def densify_and_prune(
    g: GaussianParams, grad2d: Tensor, count: Tensor, config: TrainConfig, extent: float, step: int, gen
) -> dict[str, Any]:
    """One round of adaptive density control (gsplat DefaultStrategy: grow, then prune)."""
    n0 = len(g)
    grads = grad2d / count.clamp_min(1)
    high = grads > config.grow_grad2d
    size = torch.exp(g.params["scales"].data).max(-1).values
    small = size <= config.grow_scale3d * extent
    room = max(0, config.max_gaussians - n0)
    cand = torch.nonzero(high).squeeze(1)
    # each clone adds one Gaussian, each split adds one net; the highest gradients go first under the cap
    if len(cand) > room:
        keep = cand[torch.argsort(grads[cand], descending=True)[:room]]
        high = torch.zeros_like(high)
        high[keep] = True
    dupli = high & small
    split = high & ~small
    n_dupli, n_split = int(dupli.sum()), int(split.sum())
    if n_dupli:
        g.duplicate(torch.nonzero(dupli).squeeze(1))
        split = torch.cat([split, split.new_zeros(n_dupli)])
    if n_split:
        g.split(split, gen)
    op = torch.sigmoid(g.params["opacities"].data)
    prune = op < config.prune_opacity
    if step > config.reset_every:
        prune |= torch.exp(g.params["scales"].data).max(-1).values > config.prune_scale3d * extent
    n_prune = int(prune.sum())
    if n_prune:
        g.remove(prune)
    log.debug(
        "step %d: %d cloned, %d split, %d pruned -> %d Gaussians", step, n_dupli, n_split, n_prune, len(g)
    )
    return {"step": step, "cloned": n_dupli, "split": n_split, "pruned": n_prune, "num_gaussians": len(g)}


__all__ = [
    "PRESETS", "CameraResponse", "GaussianParams", "TrainConfig", "View", "colour_correct",
    "densify_and_prune", "evaluate", "init_splats", "load_views", "preset", "psnr", "sky_splats",
    "split_views", "ssim", "ssim_map", "train_splats",
]  # fmt: skip
