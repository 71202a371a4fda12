"""`make demo`: the most complete path IDU has, end to end, through the `idu` command line.

Today: make a sample place (photos + COLMAP model + splats) -> `idu scene import` -> `info` ->
`render` at a photo's pose (PSNR against the photo) -> `export` (ply, splat, spz) -> a second import
-> `versions` -> `rollback`. The orchestration issue turns this into the full update from new photos.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def idu(*args: str) -> dict:
    cmd = [sys.executable, "-m", "flows.cli", *args, "--json"]
    print("$ idu " + " ".join(args), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"demo: `idu {' '.join(args)}` failed")
    return json.loads(p.stdout)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2) / 255.0**2
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    a = ap.parse_args()
    out: Path = a.out
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()

    from bench.sample_scene import make_sample_dataset

    print("demo: making a sample place (splats, 16 photos, COLMAP model)", file=sys.stderr)
    ds = make_sample_dataset(out / "sample", seed=0, num_views=16)
    store = out / "store"
    ref = f"{store}/sample"

    def import_colmap(ply: Path) -> dict:
        return idu("scene", "import", str(ds), "--store", str(store), "--name", "sample",
                   "--format", "colmap", "--ply", str(ply))  # fmt: skip

    imp = import_colmap(ds / "splats.ply")
    info = idu("scene", "info", ref)
    name = info["images"][3]["name"]
    r = idu(
        "scene",
        "render",
        ref,
        "--image",
        name,
        "--out",
        str(out / f"render_{Path(name).stem}.png"),
        "--background",
        "0.62,0.72,0.85",
    )
    quality = psnr(
        np.asarray(Image.open(r["out"]).convert("RGB")),
        np.asarray(Image.open(ds / "images" / name).convert("RGB")),
    )
    exports = {
        fmt: idu("scene", "export", ref, "--format", fmt, "--out", str(out / f"sample.{fmt}"))
        for fmt in ("ply", "splat", "spz")
    }
    import_colmap(out / "sample.ply")
    versions = idu("scene", "versions", ref)
    rb = idu("scene", "rollback", ref, "--to", "1")

    summary = {
        "scene": ref,
        "gaussians": imp["num_gaussians"],
        "images": imp["num_images"],
        "render": {"image": name, "seconds": round(r["seconds"], 3), "psnr_vs_photo_db": round(quality, 2)},
        "exports": {k: v["bytes"] for k, v in exports.items()},
        "versions": [v["version"] for v in versions["versions"]],
        "current_after_rollback": rb["current"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary, indent=2))
    if quality < 30:
        raise SystemExit(f"demo: render at {name} differs from the photo (PSNR {quality:.1f} dB)")


if __name__ == "__main__":
    main()
