"""A small sample scene made by IDU's own code: splats, posed photos and a COLMAP model.

It stands in for a captured place in the demo and the tests (no downloads, deterministic per seed):
a textured ground, two walls and a few props, as Gaussians; photos are rendered from an orbit of
cameras; the COLMAP model holds those cameras and a subsample of the splat centres as points.
The benchmark worlds (bench/worlds) are the honest test bed: rendered from meshes, not splats.

Example::

    ds = make_sample_dataset(Path("out/sample"), seed=0)
    # ds / "images/*.png", ds / "sparse/0", ds / "splats.ply"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from reconstruction.cameras import Camera, ImageEntry, Pose, build_model
from reconstruction.ply import write_ply
from reconstruction.splats import SH_C0, Splats


def _value_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray, cells: int) -> np.ndarray:
    """Smooth 2D value noise in [0, 1] at coordinates u, v in [0, 1]."""
    grid = rng.random((cells + 2, cells + 2))
    x, y = u * cells, v * cells
    i, j = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - i, y - j
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a, b = grid[i, j], grid[i + 1, j]
    c, d = grid[i, j + 1], grid[i + 1, j + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _surface(rng, origin, eu, ev, nu, nv, base_rgb, thickness=0.004, cells=(6, 24)) -> dict:
    """Flat Gaussians tiling the parallelogram origin + s*eu + t*ev with a noisy texture."""
    s, t = np.meshgrid((np.arange(nu) + 0.5) / nu, (np.arange(nv) + 0.5) / nv, indexing="ij")
    s, t = s.ravel(), t.ravel()
    eu, ev = np.asarray(eu, float), np.asarray(ev, float)
    means = np.asarray(origin, float) + s[:, None] * eu + t[:, None] * ev
    tex = 0.55 * _value_noise(rng, s, t, cells[0]) + 0.45 * _value_noise(rng, s, t, cells[1])
    rgb = np.clip(np.asarray(base_rgb) * (0.45 + 0.9 * tex[:, None]), 0, 1)
    # rotation whose local x, y span the surface and z is its normal
    x = eu / np.linalg.norm(eu)
    z = np.cross(eu, ev)
    z /= np.linalg.norm(z)
    y = np.cross(z, x)
    from reconstruction.cameras import matrix_to_quat

    q = matrix_to_quat(np.stack([x, y, z], 1))
    step = np.array([np.linalg.norm(eu) / nu, np.linalg.norm(ev) / nv])
    scales = np.log(np.array([step[0] * 0.75, step[1] * 0.75, thickness]))
    return {"means": means, "rgb": rgb, "quat": q, "scales": scales}


def sample_splats(seed: int = 0, density: float = 1.0) -> Splats:
    """The sample place as splats (about 40k Gaussians at density 1, SH degree 1, z up)."""
    rng = np.random.default_rng(seed)
    d = lambda n: max(2, int(round(n * density)))  # noqa: E731
    parts = [
        _surface(rng, (-5, -5, 0), (10, 0, 0), (0, 10, 0), d(150), d(150), (0.55, 0.5, 0.42)),  # ground
        _surface(rng, (-5, 5, 0), (10, 0, 0), (0, 0, 2.5), d(150), d(40), (0.7, 0.35, 0.3)),  # back wall
        _surface(rng, (5, -5, 0), (0, 10, 0), (0, 0, 2.5), d(150), d(40), (0.35, 0.45, 0.6)),  # side wall
    ]
    # props: axis-aligned boxes (4 sides + top)
    for _ in range(4):
        c = rng.uniform(-1.8, 1.8, 2)
        w, h = rng.uniform(0.3, 0.7, 2), rng.uniform(0.3, 0.9)
        col = rng.uniform(0.2, 0.9, 3)
        x0, y0 = c - w / 2
        x1, y1 = c + w / 2
        n = lambda length: d(max(4, int(length / 0.04)))  # noqa: E731
        parts += [
            _surface(rng, (x0, y0, 0), (w[0], 0, 0), (0, 0, h), n(w[0]), n(h), col),
            _surface(rng, (x1, y1, 0), (-w[0], 0, 0), (0, 0, h), n(w[0]), n(h), col),
            _surface(rng, (x1, y0, 0), (0, w[1], 0), (0, 0, h), n(w[1]), n(h), col),
            _surface(rng, (x0, y1, 0), (0, -w[1], 0), (0, 0, h), n(w[1]), n(h), col),
            _surface(rng, (x0, y0, h), (w[0], 0, 0), (0, w[1], 0), n(w[0]), n(w[1]), col * 1.1),
        ]
    means = np.concatenate([p["means"] for p in parts]).astype(np.float32)
    rgb = np.concatenate([p["rgb"] for p in parts])
    quats = np.concatenate([np.repeat(p["quat"][None], len(p["means"]), 0) for p in parts]).astype(np.float32)
    scales = np.concatenate([np.repeat(p["scales"][None], len(p["means"]), 0) for p in parts]).astype(
        np.float32
    )
    n = len(means)
    out = Splats.empty(n, sh_degree=1)
    out.means, out.quats, out.scales = means, quats, scales
    out.opacities[:] = 4.0
    out.sh0 = ((rgb - 0.5) / SH_C0).astype(np.float32)
    out.shN = (rng.normal(0, 0.03, (n, 3, 3))).astype(np.float32)
    return out.validate("sample scene")


def look_at(center: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> Pose:
    """cam_from_world of an OpenCV camera at ``center`` looking at ``target`` (image y towards -up)."""
    return Pose.look_at(center, target, up)


def orbit_poses(
    n: int,
    radius: float = 3.4,
    height: float = 1.6,
    target=(0.0, 0.0, 0.4),
    phase: float = 0.0,
    jitter: float = 0.0,
    seed: int = 0,
) -> list[Pose]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = phase + 2 * np.pi * i / n
        c = np.array([radius * np.cos(a), radius * np.sin(a), height]) + rng.normal(0, jitter, 3)
        out.append(look_at(c, np.asarray(target) + rng.normal(0, jitter, 3)))
    return out


def render_photo(splats: Splats, camera: Camera, pose: Pose, background=(0.62, 0.72, 0.85)) -> np.ndarray:
    from reconstruction.render import render

    with torch.no_grad():
        out = render(splats, camera, pose, background=list(background))
    return (out.rgb.clamp(0, 1) * 255 + 0.5).byte().numpy()


def make_sample_dataset(
    out: Path, seed: int = 0, num_views: int = 16, width: int = 320, height: int = 240, density: float = 1.0
) -> Path:
    """Write ``out/images/*.png``, ``out/sparse/0`` (COLMAP binary) and ``out/splats.ply``."""
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splats = sample_splats(seed, density)
    camera = Camera.pinhole(0.9 * width, 0.9 * width, width / 2, height / 2, width, height)
    tsplats = splats.to_torch()
    entries = []
    for i, pose in enumerate(orbit_poses(num_views, seed=seed)):
        name = f"view_{i:03d}.png"
        Image.fromarray(render_photo(tsplats, camera, pose)).save(out / "images" / name)
        entries.append(ImageEntry(name, camera, pose))
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(splats), size=min(len(splats), 3000), replace=False)
    colors = np.clip((0.5 + SH_C0 * splats.sh0[keep]) * 255, 0, 255)
    model = build_model(entries, splats.means[keep].astype(float), colors)
    (out / "sparse" / "0").mkdir(parents=True, exist_ok=True)
    model.write_binary(str(out / "sparse" / "0"))
    write_ply(out / "splats.ply", splats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--views", type=int, default=16)
    a = ap.parse_args()
    print(make_sample_dataset(a.out, a.seed, a.views))


if __name__ == "__main__":
    main()
