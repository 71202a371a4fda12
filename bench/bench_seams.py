"""Benchmark of the merge with and without seam refinement on a benchmark world.

    python -m bench.bench_seams [WORLD_DIR] [--steps 150] [--json OUT]

WORLD_DIR defaults to the test fixture (small world, seed 0). The scene is the world's before-capture
bootstrapped with its known cameras (cached, as for the other stage benchmarks). The decisions remove every
object the world removed and the old place of every moved object (their ground-truth boxes, so this
measures the merge, not detection); the photos are the after-capture at its true poses. Two merges of
the same decisions: plain (a pure edit) and with seam refinement. Reported, on every after-view that sees
a removed place:

- ``outside``: mean absolute colour difference between the two merged versions' renders on pixels
  outside the projected edited boxes (the refinement must leave the rest alone: target <= 1/255);
- ``inside``: PSNR against the after-photo (colour-aligned to the render away from the edits) on the
  pixels where the removed object used to be visible: plain vs refined (the revealed background);
- the refinement's time and the Gaussians it optimised and added.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.fixtures import fixture_config, fixture_world_and_scene
from bench.runner import cached_bootstrap, emit_report, load_world, true_registration
from reconstruction.cameras import Camera, Pose
from reconstruction.merge import merge
from reconstruction.render import render
from reconstruction.seams import SeamConfig, box_pixels, fit_colours
from reconstruction.store import SceneStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("world", nargs="?", type=Path)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--shell", type=float, default=SeamConfig.shell)
    ap.add_argument("--hold", type=float, default=SeamConfig.hold_weight)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.world is None:
        world, cached = fixture_world_and_scene()
        gt = load_world(world)
    else:
        world = args.world
        gt = load_world(world)
        cached = cached_bootstrap(world, gt, world / "before" / "images", fixture_config(), "before", "known")
    boxes = [c["box"] for c in gt["changes"] if c["kind"] == "removed"]
    boxes += [c["box_before"] for c in gt["changes"] if c["kind"] == "moved"]
    ids = [c["id"] for c in gt["changes"] if c["kind"] in ("removed", "moved")]
    cam = Camera.from_json(gt["cameras"]["after"])
    reg = true_registration(gt)
    decisions = {
        "base_version": cached.version().number,
        "photos": {"registration": reg, "images": str(world / "after" / "images")},
        "decisions": [{"change_id": cid, "action": "approve", "kind": "removed", "box": b}
                      for cid, b in zip(ids, boxes, strict=True)],
    }  # fmt: skip
    report: dict = {
        "world": str(world),
        "steps": args.steps,
        "shell": args.shell,
        "hold_weight": args.hold,
        "removed_places": ids,
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = SceneStore(Path(tmp) / "store")
        versions = {}
        for name, seams in (
            ("plain", None),
            ("seams", SeamConfig(steps=args.steps, shell=args.shell, hold_weight=args.hold)),
        ):
            scene = cached.copy_to(store, name)
            t0 = time.perf_counter()
            out = merge(scene, decisions, Path(tmp), seams=seams)
            report[f"{name}_seconds"] = time.perf_counter() - t0
            versions[name] = scene.version(out["version"])
        report["seams"] = versions["seams"].meta["seams"]
        plain, refined = (versions[k].load_splats() for k in ("plain", "seams"))
        views = []
        for im in gt["after"]["images"]:
            keys = [(c["id"], "mask" if c["kind"] == "removed" else "mask_before") for c in gt["changes"]
                    if c["id"] in ids]  # fmt: skip
            masks = [np.asarray(Image.open(world / im["objects"][c][k])) > 0 for c, k in keys]
            where = np.any(masks, 0)
            if where.sum() < 50:
                continue
            pose = Pose.from_json(im["cam_from_world"])
            edited = np.any([box_pixels(b, cam, pose) for b in boxes], 0)
            with torch.no_grad():
                a = render(plain, cam, pose, background=(0, 0, 0))
                b = render(refined, cam, pose, background=(0, 0, 0))
            photo = torch.from_numpy(
                np.asarray(Image.open(world / im["path"]).convert("RGB"), np.float32) / 255
            )
            away = torch.from_numpy(~edited)
            target = fit_colours(photo, a.rgb, (away & (a.alpha > 0.95)).float())
            w = torch.from_numpy(where)

            def psnr(x: torch.Tensor, sel: torch.Tensor = w, t: torch.Tensor = target) -> float:
                return -10 * math.log10(max(float(((x - t)[sel] ** 2).mean()), 1e-12))

            views.append({
                "name": im["name"],
                "outside_mean_abs": float((a.rgb - b.rgb).abs()[away].mean()) if bool(away.any()) else None,
                "inside_psnr_plain": psnr(a.rgb), "inside_psnr_seams": psnr(b.rgb),
                "removed_pixels": int(where.sum()),
            })  # fmt: skip
        report["views"] = views
        if views:
            outs = [v["outside_mean_abs"] for v in views if v["outside_mean_abs"] is not None]
            report["outside_mean_abs"] = {"mean": float(np.mean(outs)), "max": float(np.max(outs))}
            report["inside_psnr"] = {k: float(np.mean([v[f"inside_psnr_{k}"] for v in views]))
                                     for k in ("plain", "seams")}  # fmt: skip
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
