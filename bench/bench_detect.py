"""Benchmark of change detection on benchmark worlds and on real photos of an unchanged place.

    python -m bench.bench_detect [WORLD_DIR ...] [--poses true|registered] [--photometric-only] [--json OUT]
    python -m bench.bench_detect --fox ../shared/data/fox [--json OUT]
    python -m bench.bench_detect WORLD_DIR --timing [--work-size 512] [--json OUT]
    python -m bench.bench_detect --draws torch:0,compiled:0,compiled:1 [--json OUT]
    (any of them: --set FIELD=VALUE sets a DetectConfig field)

WORLD_DIR defaults to the test fixture (small world, seed 0). The scene is the world's before-capture
bootstrapped with its known cameras (the runner's default preset, cached); the new photos are the whole
after-capture, at their true poses (``--poses true``, measures detection alone) or registered by
``reconstruction.registration`` (``--poses registered``, the pipeline as a user runs it; unregistered photos
are not compared). ``--photometric-only`` renders the world's before-scene again at the after-poses with
the after-capture's light and exposures (bench.worlds; nothing moved): every candidate is false.

A ground-truth change visible in >= 2 after-photos is *found* when a candidate's masks overlap its masks
(mean IoU over the photos >= 0.25; a moved object's old place counts too); the best-overlapping candidate
is its match. Reported: recall; kind accuracy of the matches; mean per-photo mask IoU of the matches
(full resolution, every photo where the object is visible, a photo without a predicted mask counting 0);
box centre error over the object's diagonal; false candidates (matching no change).

``--timing``: the time to render the scene at each after-photo's true pose and compare them
(``compare_photo``, at ``--work-size``: 512 compares a 4:3 photo at 512x384), and of the whole stage
(``detect_changes``: compare, vote, hulls, masks, outputs) on the first K = 6 and on all 12 after-photos of
a medium world.

``--draws``: the fixture world against its scene trained again with other random draws (``bench_draws``).

``--fox``: the scene is built from ``images/`` (cached, as in bench_fox), the photos of ``images_holdout/``
are registered and compared; nothing changed there, so every candidate is false.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.fixtures import fixture_world_and_scene
from bench.runner import bench_detect, cached_bootstrap, emit_report, load_world
from reconstruction.bootstrap import BootstrapConfig
from reconstruction.changes import DetectConfig, detect_changes
from reconstruction.train import preset

MIN_IOU = 0.25


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 0


def _iou(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 0.0
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def judge_detection(doc: dict[str, Any], out: Path, world: Path, gt: dict[str, Any]) -> dict[str, Any]:
    """Match candidates to the world's changes (see the module docstring)."""
    compared = {n for n, s in doc["photos"].items() if s == "compared"}
    views = {im["name"]: im for im in gt["after"]["images"] if im["name"] in compared}
    cands = doc["candidates"]
    pred = {c["id"]: {n: _mask(out / p) for n, p in c["masks"].items()} for c in cands}
    pred_before = {c["id"]: {n: _mask(out / p) for n, p in c.get("masks_before", {}).items()} for c in cands}
    used: set[str] = set()
    per_change = []
    for ch in gt["changes"]:
        truth: list[tuple[str, str, np.ndarray]] = []  # (photo, where, mask)
        for name, v in views.items():
            o = v["objects"].get(ch["id"], {})
            if o.get("pixels", 0) > 0:
                truth.append((name, "mask", _mask(world / o["mask"])))
            if o.get("pixels_before", 0) > 0:
                truth.append((name, "mask_before", _mask(world / o["mask_before"])))
        photos = {t[0] for t in truth}
        entry: dict[str, Any] = {"id": ch["id"], "kind": ch["kind"], "photos": len(photos)}
        if len(photos) < 2:
            entry["status"] = "seen in < 2 photos"
            per_change.append(entry)
            continue
        best = (0.0, None, [])
        for c in cands:
            ious = []
            for name, where, m in truth:
                if ch["kind"] == "moved" and c["kind"] == "moved":
                    p = (pred if where == "mask" else pred_before)[c["id"]].get(name)
                elif where == "mask_before":  # the old place of a moved object: a removal
                    p = pred[c["id"]].get(name) if c["kind"] == "removed" else None
                else:
                    p = pred[c["id"]].get(name) if c["kind"] != "removed" or ch["kind"] == "removed" else None
                ious.append(_iou(p, m))
            if ious and float(np.mean(ious)) > best[0]:
                best = (float(np.mean(ious)), c, ious)
        iou, c, ious = best
        entry |= {"found": iou >= MIN_IOU, "mask_iou": iou}
        if c is not None and iou >= MIN_IOU:
            used.add(c["id"])
            box = ch["box"]
            err = float(np.linalg.norm(np.subtract(c["box"]["center"], box["center"])))
            entry |= {"candidate": c["id"], "predicted_kind": c["kind"],
                      "kind_correct": c["kind"] == ch["kind"],
                      "centre_error_over_diagonal": err / float(np.linalg.norm(box["size"])),
                      "per_photo_iou": [round(x, 3) for x in ious]}  # fmt: skip
        per_change.append(entry)
    judged = [e for e in per_change if "found" in e]
    found = [e for e in judged if e["found"]]
    return {
        "changes": len(judged),
        "recall": len(found) / len(judged) if judged else None,
        "kind_accuracy": float(np.mean([e["kind_correct"] for e in found])) if found else None,
        "mask_iou_mean": float(np.mean([e["mask_iou"] for e in judged])) if judged else None,
        "centre_error_over_diagonal_median": (
            float(np.median([e["centre_error_over_diagonal"] for e in found])) if found else None
        ),
        "false_candidates": len([c for c in cands if c["id"] not in used]),
        "candidates": len(cands),
        "per_change": per_change,
    }


def world_scene(world: Path):
    """The world's before-capture bootstrapped with its known cameras (the `default` preset, cached)."""
    boot = BootstrapConfig(train=preset("default"), progress=False)
    return cached_bootstrap(world, load_world(world), world / "before" / "images", boot, "before", "known")


def bench_world(world: Path | None, poses: str, config: DetectConfig, keep: Path | None,
                scene_from: Path | None = None) -> dict[str, Any]:  # fmt: skip
    if world is None:
        world, scene = fixture_world_and_scene()
        gt = load_world(world)
    else:
        gt = load_world(world)
        scene = world_scene(scene_from or world)  # a world without changes shares its twin's scene
    reg = None
    if poses == "registered":
        from reconstruction.registration import register_photos

        reg = register_photos(scene.version(), world / "after" / "images")
    res = bench_detect(scene, world, gt, reg, config, keep)
    return {"world": str(world), "size": gt.get("size"), "seed": gt.get("seed"), "poses": poses, **res}


def bench_timing(world: Path, config: DetectConfig, ks: tuple[int, ...] = (6, 12)) -> dict[str, Any]:
    """Seconds per photo of render + compare, and of the whole stage for K photos (see the docstring)."""
    from bench.runner import true_registration
    from reconstruction.cameras import Camera, Pose
    from reconstruction.changes import compare_photo
    from reconstruction.registration import load_rgb

    gt = load_world(world)
    version = world_scene(world).version()
    splats = version.load_splats().to_torch()
    views = [(im.entry.camera, im.entry.cam_from_world) for im in version.images()]
    camera = Camera.from_json(gt["cameras"]["after"])
    per_photo = []
    for im in gt["after"]["images"]:
        rgb = load_rgb(world / "after" / "images" / im["name"], max(camera.width, camera.height))
        t0 = time.perf_counter()
        pose = Pose.from_json(im["cam_from_world"])
        ev = compare_photo(im["name"], rgb, camera, pose, splats, config, views)
        per_photo.append(time.perf_counter() - t0)
    names = [im["name"] for im in gt["after"]["images"]]
    stage = {}
    for k in ks:
        if k > len(names):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            doc = detect_changes(version, world / "after" / "images", Path(tmp) / "out",
                                 true_registration(gt, names[:k]), config)  # fmt: skip
            stage[k] = {"seconds": time.perf_counter() - t0, "candidates": len(doc["candidates"])}
    return {"world": str(world), "photo_size": [camera.width, camera.height],
            "compared_at": list(ev.photo.shape[1::-1]), "scene_gaussians": len(splats.means),
            "render_compare_seconds": [round(t, 3) for t in per_photo],
            "render_compare_median": float(np.median(per_photo)), "stage": stage}  # fmt: skip


def bench_draws(draws: list[str], config: DetectConfig) -> list[dict[str, Any]]:
    """The fixture world's after-capture against its scene trained again with other random draws: each
    ``ENGINE:SEED`` trains the fixture's configuration (``fast`` preset, known cameras) with that CPU
    compositing engine and training seed (cached). Training is chaotic (float rounding flips a few
    densification decisions and the random draws of the splits follow), so each draw is another scene of
    the same place; detection should not depend on which."""
    from bench.fixtures import fixture_config, fixture_world
    from reconstruction._torch_rasterizer import engine_override

    world = fixture_world()
    gt = load_world(world)
    reports = []
    for draw in draws:
        engine, _, seed = draw.partition(":")
        boot = fixture_config()
        boot = dataclasses.replace(boot, train=dataclasses.replace(boot.train, seed=int(seed or 0)))
        with engine_override(engine):
            scene = cached_bootstrap(world, gt, world / "before" / "images", boot, f"before-draw-{engine}",
                                     "known")  # fmt: skip
        res = bench_detect(scene, world, gt, None, config)
        reports.append({"world": f"{world} ({draw})", "draw": draw, "size": gt.get("size"),
                        "seed": gt.get("seed"), "poses": "true", **res})  # fmt: skip
    return reports


def bench_fox(fox: Path, config: DetectConfig, keep: Path | None) -> dict[str, Any]:
    """The fox scene (built from images/, cached) and its held-out photos, registered then compared."""
    from bench.bench_fox import build_scene
    from reconstruction.registration import register_photos

    scene, _ = build_scene(fox)
    reg = register_photos(scene.version(), fox / "images_holdout")
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "detect"
        t0 = time.perf_counter()
        doc = detect_changes(scene.version(), fox / "images_holdout", out, reg, config)
        seconds = time.perf_counter() - t0
    compared = sum(1 for v in doc["photos"].values() if v == "compared")
    return {"world": str(fox), "photos": len(doc["photos"]), "compared": compared, "seconds": seconds,
            "false_candidates": len(doc["candidates"]), "candidates": len(doc["candidates"]),
            "recall": None, "kind_accuracy": None, "mask_iou_mean": None,
            "centre_error_over_diagonal_median": None,
            "boxes": [(c["kind"], c["box"]) for c in doc["candidates"]]}  # fmt: skip


def _overrides(items: list[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings as DetectConfig keyword arguments (each value parsed as its field's type)."""
    names = {f.name for f in dataclasses.fields(DetectConfig)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE with FIELD one of DetectConfig's fields")
        default = getattr(DetectConfig, key)
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, tuple):
            out[key] = tuple(float(v) for v in value.split(",") if v)
        else:
            out[key] = type(default)(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("worlds", nargs="*", type=Path)
    ap.add_argument("--poses", choices=("true", "registered"), default="true")
    ap.add_argument("--work-size", type=int, default=DetectConfig.work_size)
    ap.add_argument("--keep", type=Path, help="write the detection outputs here (one world)")
    ap.add_argument("--scene-from", type=Path, help="use the scene of this world (the twin of a world made "
                    "with `idu bench world --no-changes`)")  # fmt: skip
    ap.add_argument("--fox", type=Path, help="the fox dataset folder (images/, images_holdout/)")
    ap.add_argument("--timing", action="store_true", help="time render + compare per photo and the stage "
                    "for K = 6 and 12 photos (a medium world)")  # fmt: skip
    ap.add_argument("--draws", help="ENGINE:SEED,... the fixture world against its scene trained with "
                    "these CPU compositing engines (torch, compiled) and training seeds, "
                    "e.g. torch:0,compiled:1")  # fmt: skip
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a DetectConfig field (repeatable), e.g. --set below_ground=0.5")  # fmt: skip
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    config = DetectConfig(work_size=args.work_size, **_overrides(args.set))
    if args.timing:
        reports = [bench_timing(w, config) for w in args.worlds]
        for r in reports:
            stage = ", ".join(f"K={k}: {v['seconds']:.0f} s" for k, v in r["stage"].items())
            print(f"{r['world']}: render + compare {r['render_compare_median']:.2f} s per photo at "
                  f"{r['compared_at'][0]}x{r['compared_at'][1]}; stage {stage}", file=sys.stderr)  # fmt: skip
        emit_report({"config": dataclasses.asdict(config), "timing": reports}, args.json)
        return 0
    if args.draws:
        reports = bench_draws(args.draws.split(","), config)
    elif args.fox:
        reports = [bench_fox(args.fox, config, args.keep)]
    else:
        worlds = args.worlds or [None]
        reports = [bench_world(w, args.poses, config, args.keep, args.scene_from) for w in worlds]
    for r in reports:
        print(f"{r['world']}: recall {r['recall']}, kind {r['kind_accuracy']}, IoU {r['mask_iou_mean']}, "
              f"centre/diag {r['centre_error_over_diagonal_median']}, false {r['false_candidates']}, "
              f"{r['seconds']:.0f} s", file=sys.stderr)  # fmt: skip
    doc: dict[str, Any] = {"config": dataclasses.asdict(config), "worlds": reports}
    if args.draws:
        doc["over_draws"] = {
            "recall_mean": float(np.mean([r["recall"] for r in reports])),
            "mask_iou_mean": float(np.mean([r["mask_iou_mean"] for r in reports])),
            "false_candidates": int(sum(r["false_candidates"] for r in reports)),
        }
        print(f"over {len(reports)} draws: {doc['over_draws']}", file=sys.stderr)
    emit_report(doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
