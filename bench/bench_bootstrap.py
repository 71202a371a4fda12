"""Benchmark the scene bootstrap: SfM and 3DGS training times, held-out PSNR.

    python -m bench.bench_bootstrap WORLD_DIR|IMAGES_DIR [--preset default] [--iterations N] [--json]
    python -m bench.bench_bootstrap --make-capture /tmp/cap30 --views 30     # a test capture to run it on

A world folder (``before/images/`` and ``gt.json``, bench/README.md) is reconstructed from its before-photos
and aligned to the ground-truth cameras (the camera-centre residual is reported); a plain folder of photos
is reconstructed as it is. Nothing is written to a store: SfM and training run in ``--work`` (a temporary
folder by default).

:func:`make_capture` renders a small capture of the sample place (bench/sample_scene.py) from cameras on
an arc inside its open side, with a ``gt.json`` in the world format; the tests use it too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.sample_scene import look_at, render_photo, sample_splats
from reconstruction.cameras import Camera, Pose


def capture_poses(
    n: int, radius: float = 4.2, heights=(1.2, 2.0), arc_deg=(150.0, 300.0), seed: int = 0
) -> list[Pose]:
    """``n`` cameras on an arc of the sample place's open side, looking at its middle (varied heights)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, a in enumerate(np.deg2rad(np.linspace(arc_deg[0], arc_deg[1], n))):
        h = heights[0] + (heights[1] - heights[0]) * (0.5 + 0.5 * np.sin(2.3 * i))
        c = np.array([radius * np.cos(a), radius * np.sin(a), h]) + rng.normal(0, 0.05, 3)
        out.append(look_at(c, np.array([0.0, 0.0, 0.4]) + rng.normal(0, 0.1, 3)))
    return out


def make_capture(
    out: Path,
    views: int = 12,
    width: int = 160,
    height: int = 120,
    seed: int = 0,
    density: float = 1.0,
    arc_deg: tuple[float, float] = (150.0, 300.0),
) -> Path:
    """Photos of the sample place (``out/images/view_*.png``) and ``out/gt.json`` with their true poses.

    gt.json: ``{"views": [{"name", "cam_from_world": {"rotation_wxyz", "translation"}, "camera"}]}``.
    """
    from PIL import Image

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    splats = sample_splats(seed, density).to_torch()
    camera = Camera.pinhole(0.9 * width, 0.9 * width, width / 2, height / 2, width, height)
    gt = []
    for i, pose in enumerate(capture_poses(views, arc_deg=arc_deg, seed=seed)):
        name = f"view_{i:03d}.png"
        Image.fromarray(render_photo(splats, camera, pose)).save(out / "images" / name)
        gt.append({"name": name, "cam_from_world": pose.to_json(), "camera": camera.to_json()})
    (out / "gt.json").write_text(json.dumps({"views": gt}, indent=1) + "\n")
    return out


def cached_capture(root: Path, **kwargs) -> Path:
    """:func:`make_capture` into ``root`` unless it already holds one made with the same arguments."""
    root = Path(root)
    key = json.dumps(kwargs, sort_keys=True, default=str)
    stamp = root / "capture.json"
    if not (stamp.is_file() and stamp.read_text() == key and (root / "gt.json").is_file()):
        make_capture(root, **kwargs)
        stamp.write_text(key)
    return root


def resolve_input(path: Path) -> tuple[Path, Path | None]:
    """(images folder, gt.json or None) for a world folder, a capture folder or a plain image folder."""
    path = Path(path)
    for images, gt in (
        (path / "before" / "images", path / "gt.json"),
        (path / "images", path / "gt.json"),
        (path, path / "gt.json"),
    ):
        if images.is_dir() and any(images.iterdir()):
            return images, gt if gt.is_file() else None
    raise SystemExit(f"error: {path}: no photos (expected before/images/, images/ or image files)")


def rotation_errors(rec, gt: Path) -> dict:
    """Angles (degrees) between the aligned model's camera rotations and the true ones: median and max."""
    from bench.runner import rotation_error_deg
    from reconstruction.bootstrap import read_reference_poses
    from reconstruction.cameras import model_images

    truth = read_reference_poses(gt)
    entries = [e for e in model_images(rec) if e.name in truth]
    errs = [rotation_error_deg(e.cam_from_world, truth[e.name][0]) for e in entries]
    if not errs:
        return {"rotation_median_deg": None, "rotation_max_deg": None}
    return {"rotation_median_deg": float(np.median(errs)), "rotation_max_deg": float(np.max(errs))}


def run(
    path: Path, preset_name: str = "default", iterations: int | None = None, max_side: int | None = None,
    work: Path | None = None, progress: bool = True,
) -> dict:  # fmt: skip
    import torch

    from reconstruction.bootstrap import read_reference_centres
    from reconstruction.sfm import SfMConfig, align_to_reference, alignment_residuals, read_sfm_stats, run_sfm
    from reconstruction.train import preset, train_splats

    images, gt = resolve_input(path)
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_bootstrap_")
        work = Path(tmp.name)
    try:
        t0 = time.perf_counter()
        rec = run_sfm(images, work / "sfm", SfMConfig())
        sfm_s = time.perf_counter() - t0
        sfm = read_sfm_stats(work / "sfm")
        align = None
        if gt is not None:
            ref = read_reference_centres(gt)
            sim3, rec, _ = align_to_reference(rec, None, ref)
            align = {"scale": sim3.scale, **alignment_residuals(rec, ref), **rotation_errors(rec, gt)}
        cfg = preset(preset_name, iterations=iterations, max_side=max_side)
        t0 = time.perf_counter()
        _, stats = train_splats(rec, images, cfg, progress=progress)
        train_s = time.perf_counter() - t0
    finally:
        if tmp is not None:
            tmp.cleanup()
    return {
        "input": str(path),
        "images": str(images),
        "preset": preset_name,
        "threads": torch.get_num_threads(),
        "num_images": sfm["num_images"],
        "num_registered": sfm["num_registered"],
        "matcher": sfm["matcher"],
        "num_points3D": sfm["num_points3D"],
        "sfm_seconds": sfm_s,
        "train_seconds": train_s,
        "total_seconds": sfm_s + train_s,
        "iterations": stats["iterations"],
        "image_size": stats["image_size"],
        "num_gaussians": stats["num_gaussians"],
        "test_psnr": stats["test_psnr"],
        "test_ssim": stats["test_ssim"],
        "test_psnr_cc": stats.get("test_psnr_cc"),
        "test_views": stats.get("test_views"),
        "camera_response": stats.get("camera_response"),
        "train_psnr": stats["train_psnr"],
        "num_test_views": stats["num_test_views"],
        "seconds_per_step": stats["seconds_per_step"],
        "alignment": align,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", type=Path, nargs="?", help="world folder, capture folder or image folder")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--max-side", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep SfM/training files here")
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ap.add_argument("--make-capture", type=Path, default=None, help="write a sample capture here and exit")
    ap.add_argument("--views", type=int, default=30)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if a.make_capture is not None:
        print(make_capture(a.make_capture, a.views, a.width, a.height))
        return
    if a.path is None:
        ap.error("give a world, capture or image folder (or --make-capture OUT)")
    res = run(a.path, a.preset, a.iterations, a.max_side, a.work, progress=not a.json)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        al = res["alignment"]
        print(
            f"{res['input']}: {res['num_registered']}/{res['num_images']} registered ({res['matcher']}), "
            f"SfM {res['sfm_seconds']:.1f} s, training {res['train_seconds']:.1f} s "
            f"({res['iterations']} steps at {res['image_size'][0]}x{res['image_size'][1]}, "
            f"{res['num_gaussians']} Gaussians), held-out PSNR {res['test_psnr']:.2f} dB "
            f"(train {res['train_psnr']:.2f} dB)" + (f", alignment rms {al['rms']:.4f}" if al else ""),
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
