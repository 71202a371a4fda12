"""Render a splat scene from a camera: gsplat on CUDA, our own rasterizer on CPU (same semantics).

The CPU rasterizer (``_torch_rasterizer``) projects in torch (autograd through the projection and the
spherical harmonics) and composites with compiled scanline kernels (``_numba_rasterizer``) or, where numba
is missing or ``IDU_CPU_RASTERIZER=torch``, with chunked torch operations.

The one public function is :func:`render`. Both backends implement gsplat 1.x's "classic" 3DGS
rasterization (EWA projection, ``eps2d = 0.3`` blur, alpha clamped to 0.999, alpha < 1/255 skipped,
front-to-back compositing that stops before transmittance falls to 1e-4) and return the same outputs; the
CPU one is tested against a brute-force per-pixel reference and, on a GPU, against gsplat.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ._torch_rasterizer import render_torch
from .cameras import Camera, Pose
from .errors import RenderError, SceneFormatError
from .splats import FIELDS, Splats, num_sh_bases

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """What :func:`render` returns (torch tensors on the splats' device, differentiable)."""

    rgb: Tensor  # [H, W, 3] colour, background composited in
    alpha: Tensor  # [H, W] accumulated opacity
    depth: Tensor  # [H, W] expected camera z: sum(w z) / alpha, 0 where alpha == 0
    backend: str = "torch"
    """Which backend produced the image: ``"torch"`` or ``"gsplat"``."""


def render(
    splats: Splats,  # means [N, 3], quats [N, 4], scales [N, 3], opacities [N], sh0 [N, 3], shN [N, K, 3]
    camera: Camera,  # H x W; rendered as its distortion-free pinhole
    cam_from_world: Pose | np.ndarray | Tensor,  # [4, 4] world -> camera
    *,
    background: Sequence[float] | Tensor | None = None,  # [3]
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
    backend: str = "auto",
    info: dict | None = None,
) -> RenderOutput:
    """Render ``splats`` seen by ``camera`` at ``cam_from_world``.

    Args:
        splats: the scene (DESIGN.md conventions), numpy arrays or torch tensors (float32, or float64 on
            the torch backend). Tensors already on the target device are used as they are, so gradients
            reach them; anything else is converted with ``splats.to_torch(device)``.

            - ``means``     [N, 3]     centres (scene frame)
            - ``quats``     [N, 4]     wxyz, unnormalised allowed
            - ``scales``    [N, 3]     log standard deviations
            - ``opacities`` [N]        logits
            - ``sh0``       [N, 3]     SH degree 0
            - ``shN``       [N, K, 3]  higher SH, K = 0, 3, 8, 15
        camera: intrinsics and image size. It is rendered as its distortion-free pinhole
            (``camera.undistorted()``): to compare a render with a photo, undistort the photo first with
            ``reconstruction.cameras.undistort_image``.
        cam_from_world: world-to-camera pose (OpenCV axes: x right, y down, z forward) as a :class:`Pose`,
            or a [4, 4] matrix (numpy or torch). A torch tensor that requires grad receives gradients.
        background: [3] colour composited behind the splats (``rgb + (1 - alpha) * background``); None is
            black.
        sh_degree: SH degree to evaluate, 0 .. ``splats.sh_degree``; None uses all the splats' coefficients.
        near, far: Gaussians whose camera z is below ``near`` or above ``far`` are culled.
        backend: ``"auto"`` (gsplat when the splat tensors are on CUDA, else the CPU rasterizer), ``"torch"``
            (the CPU rasterizer, on any device) or ``"gsplat"`` (needs CUDA).
        info: optional dict that receives per-Gaussian screen-space data (for densification in training):
            ``means2d`` [N, 2] projected centres in pixels, or [1, N, 2] on gsplat (its ``.grad`` is kept
            after backward: reshape to [N, 2]), ``visible`` [N] bool (drawn in this image) and ``radii``
            [N] (pixels). Off by default; nothing else changes when it is given.

    Returns:
        :class:`RenderOutput` with ``rgb`` [H, W, 3], ``alpha`` [H, W] and ``depth`` [H, W] (expected
        camera z, 0 where nothing was hit), differentiable w.r.t. the splat tensors.

    Raises:
        RenderError: bad shapes, a non-finite or non-rigid pose, an empty image, an unknown backend, an SH
            degree the splats do not have, or ``backend="gsplat"`` without CUDA.

    Example::

        >>> from reconstruction.cameras import Camera, Pose
        >>> from reconstruction.render import render
        >>> from bench.synthetic import random_splats
        >>> splats = random_splats(10_000, seed=0)
        >>> camera = Camera.pinhole(256, 256, 128, 128, 256, 256)
        >>> out = render(splats, camera, Pose.identity(), background=(1.0, 1.0, 1.0))
        >>> out.rgb.shape, out.alpha.shape, out.depth.shape
        (torch.Size([256, 256, 3]), torch.Size([256, 256]), torch.Size([256, 256]))
    """
    if backend not in BACKENDS:
        raise RenderError(f"render: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    if not isinstance(splats, Splats):
        raise RenderError(f"render: splats must be a Splats container, got {type(splats).__name__}")
    if not isinstance(camera, Camera):
        raise RenderError(f"render: camera must be a Camera, got {type(camera).__name__}")
    width, height = int(camera.width), int(camera.height)
    if width <= 0 or height <= 0:
        raise RenderError(f"render: empty image size {width}x{height}")
    if not (0 < near < far) or not math.isfinite(near) or math.isnan(far):
        raise RenderError(f"render: need 0 < near < far, got near={near}, far={far}")

    device = _pick_device(splats, backend)
    use_gsplat = backend == "gsplat" or (backend == "auto" and device.type == "cuda")
    if use_gsplat and not torch.cuda.is_available():
        raise RenderError(
            'render: backend="gsplat" needs CUDA, which is not available here; use backend="torch"'
        )
    if use_gsplat and device.type != "cuda":
        device = torch.device("cuda")

    sp = _splats_on(splats, device)
    n = _check_splats(sp)
    degree = sp.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= sp.sh_degree:
        raise RenderError(f"render: sh_degree={sh_degree} but the splats hold SH up to degree {sp.sh_degree}")
    dtype = sp.means.dtype
    if use_gsplat and dtype != torch.float32:
        raise RenderError(f"render: gsplat renders float32 splats, got {dtype}")

    viewmat = _viewmat(cam_from_world, device, dtype)
    pin = camera.undistorted()
    K = torch.as_tensor(pin.K(), dtype=dtype, device=device)
    bg = _background(background, device, dtype)

    if n == 0:
        return _empty(sp, height, width, bg, "gsplat" if use_gsplat else "torch")

    coeffs = torch.cat([sp.sh0[:, None, :], sp.shN[:, : num_sh_bases(degree) - 1, :]], 1)
    log.debug(
        "render: %d Gaussians, %dx%d, SH degree %d, %s",
        n,
        width,
        height,
        degree,
        "gsplat" if use_gsplat else f"torch on {device}",
    )
    if use_gsplat:
        rgb, alpha, depth = _render_gsplat(sp, coeffs, degree, viewmat, K, width, height, bg, near, far, info)
        return RenderOutput(rgb, alpha, depth, "gsplat")
    rgb, alpha, depth = render_torch(
        sp.means, sp.quats, sp.scales, sp.opacities, coeffs, degree, viewmat, K, width, height, bg, near, far,
        info=info,
    )  # fmt: skip
    return RenderOutput(rgb, alpha, depth, "torch")


# -- boundary checks ----------------------------------------------------------------------------------
def _pick_device(splats: Splats, backend: str) -> torch.device:
    m = splats.means
    if isinstance(m, Tensor):
        return m.device
    return torch.device("cuda") if backend == "gsplat" else torch.device("cpu")


def _splats_on(splats: Splats, device: torch.device) -> Splats:
    vals = [getattr(splats, f) for f in FIELDS]
    for f, v in zip(FIELDS, vals, strict=True):
        if not isinstance(v, (Tensor, np.ndarray)):
            raise RenderError(
                f"render: splats.{f} must be a numpy array or torch tensor, got {type(v).__name__}"
            )
    if all(isinstance(v, Tensor) and v.device == device for v in vals):
        dtypes = {v.dtype for v in vals}
        if len(dtypes) == 1 and dtypes <= {torch.float32, torch.float64}:
            return splats
    try:
        return splats.to_torch(device)
    except (TypeError, ValueError, RuntimeError) as e:
        raise RenderError(
            f"render: splats cannot be converted to float32 tensors on {device} ({e})"
        ) from None


def _check_splats(sp: Splats) -> int:
    try:
        return len(sp.validate("render: splats"))
    except (SceneFormatError, IndexError) as e:
        raise RenderError(
            str(e) if isinstance(e, SceneFormatError) else "render: splats.means is not [N, 3]"
        ) from None


def _viewmat(cam_from_world, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(cam_from_world, Pose):
        m = torch.as_tensor(cam_from_world.matrix(), dtype=dtype, device=device)
    elif isinstance(cam_from_world, np.ndarray):
        try:
            m = torch.as_tensor(np.asarray(cam_from_world, dtype=np.float64), dtype=dtype, device=device)
        except (TypeError, ValueError) as e:
            raise RenderError(f"render: cam_from_world is not a numeric 4x4 matrix ({e})") from None
    elif isinstance(cam_from_world, Tensor):
        m = cam_from_world.to(device=device, dtype=dtype)
    else:
        raise RenderError(
            f"render: cam_from_world must be a Pose or a 4x4 matrix, got {type(cam_from_world).__name__}"
        )
    if tuple(m.shape) != (4, 4):
        raise RenderError(f"render: cam_from_world has shape {tuple(m.shape)}, expected (4, 4)")
    md = m.detach().double()
    if not bool(torch.isfinite(md).all()):
        raise RenderError("render: cam_from_world holds NaN or Inf values")
    R = md[:3, :3]
    bottom = md[3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=md.dtype, device=md.device)
    rigid_err = float((R @ R.T - torch.eye(3, dtype=md.dtype, device=md.device)).abs().max())
    if rigid_err > 1e-3 or float(bottom.abs().max()) > 1e-6 or float(torch.det(R)) <= 0:
        raise RenderError(
            "render: cam_from_world is not a rigid transform (rotation not orthonormal with det +1, or last "
            "row not [0, 0, 0, 1])"
        )
    return m


def _background(background, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    if background is None:
        return None
    try:
        bg = (
            torch.as_tensor(background, dtype=dtype, device=device)
            if not isinstance(background, Tensor)
            else background.to(device=device, dtype=dtype)
        )
    except (TypeError, ValueError, RuntimeError) as e:
        raise RenderError(f"render: background must be 3 floats ({e})") from None
    if tuple(bg.shape) != (3,):
        raise RenderError(f"render: background has shape {tuple(bg.shape)}, expected (3,)")
    if not bool(torch.isfinite(bg).all()):
        raise RenderError("render: background holds NaN or Inf values")
    return bg


def _empty(sp: Splats, height: int, width: int, bg: Tensor | None, backend: str) -> RenderOutput:
    """The image of no Gaussians; still part of the autograd graph when the (empty) splats are."""
    zero = sum(getattr(sp, f).sum() for f in FIELDS) * 0.0
    alpha = torch.zeros(height, width, device=sp.means.device, dtype=sp.means.dtype) + zero
    rgb = alpha[..., None].expand(height, width, 3) + (0.0 if bg is None else bg)
    return RenderOutput(rgb.contiguous(), alpha, alpha.clone(), backend)


# -- gsplat ------------------------------------------------------------------------------------------
def _render_gsplat(
    sp: Splats,
    coeffs: Tensor,
    degree: int,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    bg: Tensor | None,
    near: float,
    far: float,
    info: dict | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    try:
        from gsplat import rasterization
    except ImportError as e:  # pragma: no cover - gsplat is a dependency
        raise RenderError(f"render: gsplat is not importable ({e}); use backend='torch'") from None
    colors, alphas, meta = rasterization(
        means=sp.means,
        quats=sp.quats,
        scales=torch.exp(sp.scales),
        opacities=torch.sigmoid(sp.opacities),
        colors=coeffs,  # [N, (d+1)^2, 3]
        viewmats=viewmat[None],  # [1, 4, 4]
        Ks=K[None],  # [1, 3, 3]
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        sh_degree=degree,
        render_mode="RGB+ED",
        packed=False,  # per-Gaussian means2d / radii [1, N, ...], which densification reads
    )  # the background is composited below: gsplat 1.5.3 rejects ``backgrounds`` with RGB+ED when packed
    if info is not None:
        means2d, radii = meta["means2d"], meta["radii"]  # [1, N, 2]; radii [1, N, 2] (1.5) or [1, N]
        if means2d.requires_grad:
            means2d.retain_grad()
        r = radii[0].reshape(radii.shape[1], -1).max(-1).values.to(sp.means.dtype)
        info.update(means2d=means2d, visible=r > 0, radii=r)
    # gsplat 1.5.3: colors [1, H, W, 4] (RGB + expected depth), alphas [1, H, W, 1].
    rgb, alpha = colors[0, ..., :3], alphas[0, ..., 0]
    if bg is not None:
        rgb = rgb + (1.0 - alpha[..., None]) * bg  # what gsplat's own background would add
    return rgb, alpha, colors[0, ..., 3]
