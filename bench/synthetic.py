"""Random but realistic splat scenes for benchmarks and tests of the renderer.

``random_splats(n, seed)`` spreads Gaussians in a box in front of ``default_view()``'s camera: anisotropic,
randomly rotated, a few pixels wide on average at 512x512, opacities spread by a sigmoid, SH degree 3.

Example::

    splats = random_splats(100_000, seed=0)
    camera, pose = default_view(512, 512)
    out = render(splats, camera, pose)
"""

from __future__ import annotations

import numpy as np

from reconstruction.cameras import Camera, Pose
from reconstruction.splats import Splats, num_sh_bases


def random_splats(
    n: int,
    seed: int,
    sh_degree: int = 3,
    *,
    box_min: tuple[float, float, float] = (-1.5, -1.5, 2.0),
    box_max: tuple[float, float, float] = (1.5, 1.5, 5.0),
    log_scale_mean: float = -5.0,
    log_scale_std: float = 0.5,
    opacity_logit_mean: float = 0.0,
    opacity_logit_std: float = 2.0,
    sh0_std: float = 0.6,
    shN_std: float = 0.15,
) -> Splats:
    """``n`` float32 Gaussians, uniform in the box ``box_min .. box_max`` (camera looks along +z).

    Defaults: log-scales N(-5, 0.5) per axis (std ~7 mm: at the box's mean depth 3.5 and f = 512 about 1 px
    before the 0.3 px^2 blur, so a splat's visible footprint is ~5-7 px across), random rotations, opacity
    logits N(0, 2), colours N(0, 0.6) in degree 0 and N(0, 0.15) above.
    """
    rng = np.random.default_rng(seed)
    k = num_sh_bases(sh_degree) - 1
    lo, hi = np.asarray(box_min, np.float64), np.asarray(box_max, np.float64)
    means = lo + rng.random((n, 3)) * (hi - lo)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return Splats(
        means=means.astype(np.float32),
        quats=quats.astype(np.float32),
        scales=rng.normal(log_scale_mean, log_scale_std, size=(n, 3)).astype(np.float32),
        opacities=rng.normal(opacity_logit_mean, opacity_logit_std, size=n).astype(np.float32),
        sh0=rng.normal(0.0, sh0_std, size=(n, 3)).astype(np.float32),
        shN=rng.normal(0.0, shN_std, size=(n, k, 3)).astype(np.float32),
    )


def default_view(width: int = 512, height: int = 512, focal: float | None = None) -> tuple[Camera, Pose]:
    """A pinhole camera (focal = image width unless given, centred principal point) at the origin looking
    along +z, which sees the whole default box of :func:`random_splats` at depth 3."""
    f = float(width if focal is None else focal)
    return Camera.pinhole(f, f, width / 2.0, height / 2.0, width, height), Pose.identity()
