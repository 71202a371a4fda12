"""`idu bench run WORLD_DIR`: judge every pipeline stage on a benchmark world with ground truth.

Steps: bootstrap the before-capture into a scene (cached per world and preset) → run each stage that
exists on the after-capture → metrics per stage → JSON and a table. Stages that do not exist yet are
reported as ``missing`` (with the module they will live in), never skipped silently.

The after-views are split once: even indices are the photos an update may use, odd indices are held
out; the updated scene (and the full-rebuild baseline) is judged on the held-out after-views,
separately inside and outside the changed regions (the union of the ground-truth change masks).

``--baseline full-rebuild``: SfM + training from scratch on the before photos plus the update photos,
timed, judged with the same metrics — the reference every update is compared with.

Example::

    report = run_benchmark(Path("worlds/small-0"), baseline="full-rebuild")
    print(report["stages"]["bootstrap"]["heldout_before_psnr"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from reconstruction.bootstrap import BootstrapConfig, bootstrap_scene
from reconstruction.cameras import Camera, Pose
from reconstruction.errors import IDUError
from reconstruction.render import render
from reconstruction.sfm import SfMConfig
from reconstruction.store import Scene, SceneStore
from reconstruction.train import preset, ssim_map

#: COLMAP on one thread for benchmark scenes: its multi-threaded matching and triangulation give a slightly
#: different model on each run, and the stages judged on the scene (detection above all) different figures.
BENCH_SFM = SfMConfig(num_threads=1)

log = logging.getLogger(__name__)

# The pipeline's stages after the bootstrap, in order: name -> (module that will hold it, issue title).
STAGES: dict[str, tuple[str, str]] = {
    "register": ("reconstruction.registration", "Register new photos against the existing scene"),
    "detect": ("reconstruction.changes", "Detect what changed"),
    "assets": ("generation.assets", "Assets for new objects and their placement"),
    "people": ("generation.human.fit", "People in the new photos"),
    "merge": ("reconstruction.merge", "Merge approved changes into a new scene version"),
    "update": ("generation.assets", "The whole update, auto-approved: register → detect → assets → merge"),
}
BASELINES = ("full-rebuild",)
BOOTSTRAP_POSES = ("known", "sfm")


def cache_root() -> Path:
    """Where bootstraps are cached (``IDU_CACHE_DIR``, default ``~/.cache/idu``)."""
    return Path(os.environ.get("IDU_CACHE_DIR", Path.home() / ".cache" / "idu"))


def load_world(world: Path) -> dict[str, Any]:
    world = Path(world)
    gt_path = world / "gt.json"
    if not gt_path.is_file():
        raise IDUError(f"{world}: not a benchmark world (no gt.json; make one with `idu bench world`)")
    try:
        gt = json.loads(gt_path.read_text())
    except json.JSONDecodeError as e:
        raise IDUError(f"{gt_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if gt.get("format") != "idu-bench-world":
        raise IDUError(f"{gt_path}: format is {gt.get('format')!r}, expected 'idu-bench-world'")
    for part in ("before", "after"):
        if not (world / part / "images").is_dir():
            raise IDUError(f"{world}: missing {part}/images")
    return gt


UPDATE_PHOTOS = ("even", "all")


def split_after(gt: dict[str, Any], update_photos: str = "even") -> tuple[list[str], list[str]]:
    """(update photos, held-out photos) of the after-capture: even / odd indices; ``update_photos="all"``:
    every after-photo updates the scene and none is held out (no held-out PSNR then)."""
    if update_photos not in UPDATE_PHOTOS:
        raise IDUError(f"--update-photos {update_photos}: expected one of {', '.join(UPDATE_PHOTOS)}")
    names = [im["name"] for im in gt["after"]["images"]]
    return (names, []) if update_photos == "all" else (names[0::2], names[1::2])


def emit_report(report: dict[str, Any], path: Path | None = None) -> None:
    """A benchmark's report as JSON on stdout, and into ``path`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        Path(path).write_text(text + "\n")


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_bootstrap(
    world: Path, gt: dict[str, Any], images: Path, config: BootstrapConfig, tag: str, poses: str = "sfm"
) -> Scene:
    """A scene bootstrapped from ``images`` in the world's ground-truth frame, built once per (world
    content, photos, config, poses).

    ``poses``: ``known`` triangulates with the ground-truth before-cameras (later stages are then measured
    without SfM's own error); ``sfm`` runs SfM and aligns it to the ground-truth centres (a similarity).
    """
    if poses not in BOOTSTRAP_POSES:
        raise IDUError(f"--bootstrap-poses {poses}: expected one of {', '.join(BOOTSTRAP_POSES)}")
    gt_hash = hashlib.sha256((world / "gt.json").read_bytes()).hexdigest()
    photos = sorted(p.name for p in images.iterdir())
    key = _key(tag, gt["generator_version"], gt_hash, photos, dataclasses.asdict(config.train),
               dataclasses.asdict(config.sfm), config.trainer, poses)  # fmt: skip
    scene = SceneStore(cache_root() / "bench" / "store").scene(f"{tag}-{poses}-{key}")
    if not scene.exists:
        if poses == "known":
            bootstrap_scene(images, scene, config, poses=world / "gt.json")
        else:
            bootstrap_scene(images, scene, config, align_to=world / "gt.json")
    return scene


def _load_rgb(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0)


def change_mask(world: Path, view: dict[str, Any]) -> np.ndarray:
    """Union of every changed object's mask in an after-view (both places of a moved object)."""
    h, w = None, None
    union = None
    for obj in view.get("objects", {}).values():
        for key in ("mask", "mask_before"):
            if key in obj:
                m = np.asarray(Image.open(world / obj[key])) > 0
                union = m if union is None else union | m
    if union is None:
        img = Image.open(world / view["path"])
        w, h = img.size
        union = np.zeros((h, w), bool)
    return union


def masked_metrics(pred: torch.Tensor, target: torch.Tensor, mask: np.ndarray) -> dict[str, float | None]:
    """PSNR and SSIM of pred vs target [H, W, 3] inside and outside ``mask`` [H, W] (None when empty)."""
    err = ((pred - target) ** 2).mean(-1).numpy()
    smap = ssim_map(pred, target, padding="same").mean(-1).numpy()
    out: dict[str, float | None] = {}
    for name, sel in (("all", np.ones_like(mask)), ("inside", mask), ("outside", ~mask)):
        if sel.sum() == 0:
            out[f"psnr_{name}"] = out[f"ssim_{name}"] = None
            continue
        mse = float(err[sel].mean())
        out[f"psnr_{name}"] = float("inf") if mse <= 0 else -10 * np.log10(mse)
        out[f"ssim_{name}"] = float(smap[sel].mean())
    return out


def evaluate_on_after(scene: Scene, world: Path, gt: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Render the scene (in the ground-truth frame) at held-out after-poses; metrics against the photos."""
    splats = scene.version().load_splats().to_torch()
    camera = Camera.from_json(gt["cameras"]["after"])
    views = {im["name"]: im for im in gt["after"]["images"]}
    per_view = {}
    for name in names:
        v = views[name]
        with torch.no_grad():
            pred = render(splats, camera, Pose.from_json(v["cam_from_world"])).rgb.clamp(0, 1)
        per_view[name] = masked_metrics(pred, _load_rgb(world / v["path"]), change_mask(world, v))
    summary = {}
    for k in next(iter(per_view.values()), {}):
        vals = [m[k] for m in per_view.values() if m[k] is not None and np.isfinite(m[k])]
        summary[k] = float(np.mean(vals)) if vals else None
    return {"mean": summary, "views": per_view}


def _bootstrap_report(scene: Scene) -> dict[str, Any]:
    meta = scene.version().meta
    lin = meta.get("lineage", {})
    train = lin.get("training", {})
    return {
        "status": "ok",
        "scene": scene.ref,
        "num_gaussians": meta.get("num_gaussians"),
        "registered": meta.get("num_images"),
        "photos": lin.get("source", {}).get("num_photos"),
        "seconds": lin.get("seconds", {}),
        "heldout_before_psnr": train.get("test_psnr"),
        "alignment_rms": (lin.get("alignment") or {}).get("residuals", {}).get("rms"),
    }


def run_benchmark(world: Path, preset_name: str = "default", baseline: str | None = None,
                  iterations: int | None = None, poses: str = "known", stages: list[str] | None = None,
                  update_photos: str = "even") -> dict[str, Any]:  # fmt: skip
    world = Path(world)
    gt = load_world(world)
    if baseline is not None and baseline not in BASELINES:
        raise IDUError(f"--baseline {baseline}: expected one of {', '.join(BASELINES)}")
    unknown = sorted(set(stages or ()) - set(STAGES))
    if unknown:
        raise IDUError(f"--stages {','.join(unknown)}: expected some of {', '.join(STAGES)}")
    overrides = {"iterations": iterations} if iterations else {}
    config = BootstrapConfig(sfm=dataclasses.replace(BENCH_SFM), train=preset(preset_name, **overrides),
                             progress=False)  # fmt: skip
    update_names, heldout = split_after(gt, update_photos)
    report: dict[str, Any] = {
        "world": str(world.resolve()),
        "generator_version": gt["generator_version"],
        "seed": gt.get("seed"),
        "size": gt.get("size"),
        "preset": preset_name,
        "bootstrap_poses": poses,
        "after_split": {"update": update_names, "heldout": heldout},
        "stages": {},
    }
    t0 = time.perf_counter()
    scene = cached_bootstrap(world, gt, world / "before" / "images", config, "before", poses)
    boot = _bootstrap_report(scene)
    boot["wall_seconds_this_run"] = time.perf_counter() - t0
    boot["unchanged_scene_on_heldout_after"] = evaluate_on_after(scene, world, gt, heldout)["mean"]
    report["stages"]["bootstrap"] = boot
    hooks = {"register": bench_register, "detect": bench_detect, "assets": bench_assets_stage,
             "people": bench_people_stage,
             "merge": lambda s, w, g: bench_merge(s, w, g, update_names, heldout),
             "update": lambda s, w, g: {
                 **bench_update(s, w, g, update_names, heldout),
                 "true_poses": bench_update(s, w, g, update_names, heldout, "true")}}  # fmt: skip
    for stage, (module, title) in STAGES.items():
        if importlib.util.find_spec(module) is None:
            report["stages"][stage] = {"status": "missing", "module": module, "issue": title}
        elif stages is not None and stage not in stages:
            report["stages"][stage] = {"status": "not run", "module": module, "issue": title}
        elif stage in hooks:
            res = hooks[stage](scene, world, gt)
            report["stages"][stage] = {"status": "ok", "module": module, "issue": title, **res}
        else:  # a stage that exists but has no benchmark hook yet is still not silently skipped
            report["stages"][stage] = {"status": "not benchmarked", "module": module, "issue": title}
    if baseline == "full-rebuild":
        report["baseline"] = full_rebuild(world, gt, config, update_names, heldout)
    return report


def rotation_error_deg(a: Pose, b: Pose) -> float:
    """Angle of the rotation between two poses, in degrees."""
    R = a.matrix()[:3, :3] @ b.matrix()[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def judge_registration(doc: dict[str, Any], truth: dict[str, Pose] | None, radius: float) -> dict[str, Any]:
    """Registered fraction, time per photo, reasons, and (with ``truth``) rotation / centre errors of an
    ``idu register`` document."""
    imgs = doc["images"]
    reg = [r for r in imgs if r["status"] == "registered"]
    out: dict[str, Any] = {
        "photos": len(imgs),
        "registered": len(reg),
        "registered_fraction": len(reg) / max(1, len(imgs)),
        "seconds_per_photo": float(np.mean([r["seconds"] for r in imgs])) if imgs else None,
        "rejections": {r["name"]: r["reason"] for r in imgs if r["status"] != "registered"},
    }
    if truth and reg:
        rot = [rotation_error_deg(Pose.from_json(r["cam_from_world"]), truth[r["name"]]) for r in reg]
        cen = [float(np.linalg.norm(Pose.from_json(r["cam_from_world"]).center() - truth[r["name"]].center()))
               for r in reg]  # fmt: skip
        out |= {
            "rotation_deg": {"median": float(np.median(rot)), "max": float(np.max(rot))},
            "centre_m": {"median": float(np.median(cen)), "max": float(np.max(cen))},
            "centre_pct_of_radius": {
                "median": 100 * float(np.median(cen)) / radius,
                "max": 100 * float(np.max(cen)) / radius,
            },  # fmt: skip
        }
    return out


def true_registration(gt: dict[str, Any], names: list[str] | None = None) -> dict[str, Any]:
    """An ``idu register --json`` document placing the after-photos (all, or ``names``) at their true poses:
    later stages measured without registration's own error."""
    return {"images": [{"name": im["name"], "status": "registered", "camera": gt["cameras"]["after"],
                        "cam_from_world": im["cam_from_world"]}
                       for im in gt["after"]["images"] if names is None or im["name"] in names]}  # fmt: skip


def bench_register(scene: Scene, world: Path, gt: dict[str, Any]) -> dict[str, Any]:
    """Register every after-photo against the scene; errors against the ground-truth after-cameras."""
    from reconstruction.registration import register_photos, scene_index

    t0 = time.perf_counter()
    index = scene_index(scene.version())
    index_s = time.perf_counter() - t0
    doc = register_photos(scene.version(), world / "after" / "images")
    truth = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
    return judge_registration(doc, truth, index.radius) | {"index_seconds": index_s}


def bench_detect(scene: Scene, world: Path, gt: dict[str, Any], reg: dict[str, Any] | None = None,
                 config=None, keep: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Detect the changes in the whole after-capture (at its true poses unless ``reg`` is given), judged
    by bench/bench_detect.py; the outputs go to ``keep`` when given."""
    import tempfile

    from bench.bench_detect import judge_detection
    from reconstruction.changes import detect_changes

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(keep or tmp)
        t0 = time.perf_counter()
        doc = detect_changes(scene.version(), world / "after" / "images", out, reg or true_registration(gt),
                             config)  # fmt: skip
        seconds = time.perf_counter() - t0
        res = judge_detection(doc, out, world, gt)
    return {"photos": len(doc["photos"]), "seconds": seconds, **res}


def bench_assets_stage(scene: Scene, world: Path, gt: dict[str, Any]) -> dict[str, Any]:
    """Assets of the added objects from oracle inputs (true masks, box and hull; bench/bench_assets.py)."""
    from bench.bench_assets import assets_on_scene

    rep = assets_on_scene(scene, world, gt, "oracle")
    ok = [e["multiview"] for e in rep["objects"].values() if e.get("status") == "ok"]

    def mean(side: str | None, key: str) -> float | None:
        vals = [(e[side] if side else e)[key] for e in ok]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else None

    return {"inputs": "oracle", "objects": {k: e.get("status") for k, e in rep["objects"].items()},
            "silhouette_iou_update": mean("update", "silhouette_iou"),
            "silhouette_iou_heldout": mean("heldout", "silhouette_iou"),
            "silhouette_iou_heldout_others_in_front": mean("heldout", "silhouette_iou_others_in_front"),
            "psnr_mask_heldout": mean("heldout", "psnr_mask"),
            "psnr_mask_heldout_scene": mean("heldout", "psnr_mask_scene"),
            "seconds_per_object": mean(None, "seconds"), "report": rep}  # fmt: skip


def bench_people_stage(scene: Scene, world: Path, gt: dict[str, Any]) -> dict[str, Any]:
    """bench_people on the world's person: the body fitted to its true masks in every after-photo that
    shows it (MPJPE, PA-MPJPE, silhouette IoU, seconds)."""
    from bench.bench_people import people_on_scene

    rep = people_on_scene(scene, world, gt, single=False)
    if "runs" not in rep:
        return {"note": rep.get("status", "no person")}
    r = rep["runs"]["all"]
    keys = ("photos", "mpjpe_mm", "mpjpe_all_mm", "pa_mpjpe_mm", "mean_silhouette_iou", "seconds")
    return {k: r[k] for k in keys}


def bench_merge(
    scene: Scene, world: Path, gt: dict[str, Any], update: list[str], heldout: list[str]
) -> dict[str, Any]:
    """Merge with oracle decisions — every removed object and every moved object's old place taken out by
    its true box, and every added object (a moved object's new place too) as the multi-view asset built
    from its true masks in the update photos (what a perfect detector and reviewer would approve) — and
    the update after-photos at their true poses; the merged version judged on the held-out after-views."""
    import tempfile

    from bench.bench_assets import carve_hull, true_views
    from generation.assets import write_asset
    from generation.multiview import multiview_asset
    from reconstruction.merge import merge

    cid = [c for c in gt["changes"] if c["kind"] in ("removed", "moved")]
    views = {im["name"]: im for im in gt["after"]["images"]}
    reg = true_registration(gt, update)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "update"
        photos.mkdir()
        for n in update:
            shutil.copyfile(world / views[n]["path"], photos / n)
        copy = scene.copy_to(Path(tmp) / "store", "merged")
        decisions = [{"change_id": c["id"], "action": "approve", "kind": "removed",
                      "box": c["box"] if c["kind"] == "removed" else c["box_before"]}
                     for c in cid]  # fmt: skip
        splats = scene.version().load_splats()
        asset_seconds = {}
        for c in gt["changes"]:
            views = true_views(world, gt, c["id"], update) if c["kind"] in ("added", "moved") else []
            if not views:
                continue
            t0 = time.perf_counter()
            asset, placement, _ = multiview_asset(splats, carve_hull(c["box"], views), c["box"], views,
                                                  name=c["id"])  # fmt: skip
            asset_seconds[c["id"]] = time.perf_counter() - t0
            doc = write_asset(Path(tmp) / "assets", c["id"], asset, placement)
            path = str(Path(tmp) / "assets" / doc["asset"])
            decisions.append({"change_id": f"{c['id']}+", "action": "approve", "kind": "added",
                              "asset": path, "transform": placement})  # fmt: skip
        doc = {"base_version": copy.current_version(), "photos": {"registration": reg, "images": str(photos)},
               "decisions": decisions}  # fmt: skip
        out = merge(copy, doc, Path(tmp))
        after = evaluate_on_after(copy, world, gt, heldout)["mean"]
    return {"decisions": "oracle removals (true boxes) and additions (multi-view assets from the true masks)",
            "merged": out["diff"], "seconds": out["seconds"], "asset_seconds": asset_seconds,
            "model": {k: v for k, v in out["model"].items() if k != "skipped_names"},
            "heldout_after": after}  # fmt: skip


def bench_update(scene: Scene, world: Path, gt: dict[str, Any], update: list[str], heldout: list[str],
                 poses: str = "registered") -> dict[str, Any]:  # fmt: skip
    """The update pipeline end to end on the update after-photos, every change approved as proposed:
    register (``poses="true"``: the true poses instead) → detect → an asset per added object → merge; each
    step timed, the merged version judged on the held-out after-views (inside / outside the changes)."""
    import tempfile

    from generation.assets import AssetConfig, asset_for_candidate
    from reconstruction.changes import detect_changes
    from reconstruction.merge import merge
    from reconstruction.registration import register_photos

    views = {im["name"]: im for im in gt["after"]["images"]}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "update"
        photos.mkdir()
        for n in update:
            shutil.copyfile(world / views[n]["path"], photos / n)
        copy = scene.copy_to(tmp / "store", "updated")
        version = copy.version()
        t0 = time.perf_counter()
        reg = register_photos(version, photos) if poses == "registered" else true_registration(gt, update)
        seconds["register"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        det = detect_changes(version, photos, tmp / "detect", reg)
        seconds["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        splats, config = version.load_splats(), AssetConfig(previews=False)
        decisions, assets = [], {}
        for c in det["candidates"]:
            d: dict[str, Any] = {"change_id": c["id"], "action": "approve", "kind": c["kind"]}
            if c["kind"] == "added":
                scene_points = version.load_points() if config.routes_to_person(c) else None
                doc = asset_for_candidate(tmp / "detect", c, reg, photos, tmp / "assets", splats, config,
                                          scene_points)  # fmt: skip
                assets[c["id"]] = {"backend": doc["backend"], "num_gaussians": doc["num_gaussians"],
                                   "silhouette_iou": doc["metrics"]["silhouette_iou"],
                                   "psnr_mask": doc["metrics"]["psnr_mask"],
                                   "seconds": (doc.get("optimisation") or {}).get("seconds")}  # fmt: skip
                d |= {"asset": str(tmp / "assets" / doc["asset"]), "transform": doc["transform"]}
            else:
                d["gaussian_ids"] = str(tmp / "detect" / c["gaussian_ids"])
            if c["kind"] == "moved":
                shift = np.subtract(c["box"]["center"], c["box_before"]["center"])
                d["transform"] = {"rotation_wxyz": [1.0, 0.0, 0.0, 0.0], "translation": shift.tolist()}
            decisions.append(d)
        seconds["assets"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        doc = {"base_version": copy.current_version(), "photos": {"registration": reg, "images": str(photos)},
               "decisions": decisions}  # fmt: skip
        out = merge(copy, doc, tmp)
        seconds["merge"] = time.perf_counter() - t0
        after = evaluate_on_after(copy, world, gt, heldout)["mean"]
    seconds["total"] = sum(seconds.values())
    return {"poses": poses, "registered": sum(r["status"] == "registered" for r in reg["images"]),
            "photos": len(update), "candidates": {c["id"]: c["kind"] for c in det["candidates"]},
            "assets": assets, "merged": out["diff"], "seconds": seconds, "heldout_after": after}  # fmt: skip


def full_rebuild(world: Path, gt: dict[str, Any], config: BootstrapConfig, update_names: list[str],
                 heldout: list[str]) -> dict[str, Any]:  # fmt: skip
    """SfM + training from scratch on the before and update photos; judged on held-out after-views."""
    images = cache_root() / "bench" / "rebuild-images" / _key(str(world.resolve()), update_names)
    if not images.is_dir():
        tmp = images.with_name(images.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for p in sorted((world / "before" / "images").iterdir()):
            shutil.copyfile(p, tmp / p.name)
        for n in update_names:
            shutil.copyfile(world / "after" / "images" / n, tmp / n)
        os.replace(tmp, images)
    t0 = time.perf_counter()
    scene = cached_bootstrap(world, gt, images, config, "rebuild")
    out = _bootstrap_report(scene)
    out["wall_seconds_this_run"] = time.perf_counter() - t0
    out["heldout_after"] = evaluate_on_after(scene, world, gt, heldout)
    return out


def _num(x: Any, fmt: str = ".2f") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, fmt)


def _quality(m: dict[str, Any]) -> str:
    return (
        f"PSNR in {_num(m.get('psnr_inside'))} / out {_num(m.get('psnr_outside'))} dB, "
        f"SSIM in {_num(m.get('ssim_inside'), '.3f')} / out {_num(m.get('ssim_outside'), '.3f')}"
    )


def _update_figures(r: dict[str, Any]) -> str:
    sec = r["seconds"]
    return (f"{r['registered']}/{r['photos']} registered, {len(r['candidates'])} changes merged; "
            f"{_num(sec['total'], '.0f')} s (register {_num(sec['register'], '.0f')}, detect "
            f"{_num(sec['detect'], '.0f')}, assets {_num(sec['assets'], '.0f')}, merge "
            f"{_num(sec['merge'], '.0f')}); held-out after-views: "
            + _quality(r["heldout_after"]))  # fmt: skip


def format_table(report: dict[str, Any]) -> str:
    rows = [("stage", "status", "figures")]
    for stage, r in report["stages"].items():
        if stage == "bootstrap":
            s = r.get("seconds", {})
            fig = (
                f"sfm {_num(s.get('sfm'), '.0f')} s, train {_num(s.get('train'), '.0f')} s, held-out before "
                f"PSNR {_num(r.get('heldout_before_psnr'))} dB; unchanged scene on held-out after-views: "
                + _quality(r.get("unchanged_scene_on_heldout_after", {}))
            )
        elif stage == "register" and r["status"] == "ok":
            fig = f"{r['registered']}/{r['photos']} after-photos registered"
            if "rotation_deg" in r:
                fig += (
                    f", rotation error median {_num(r['rotation_deg']['median'], '.3f')} deg, centre error "
                    f"median {_num(r['centre_pct_of_radius']['median'], '.3f')} % of the scene radius"
                )
        elif stage == "detect" and r["status"] == "ok":
            fig = (f"recall {_num(r['recall'])} of {r['changes']} changes, kind {_num(r['kind_accuracy'])}, "
                   f"mask IoU {_num(r['mask_iou_mean'])}, "
                   f"{r['false_candidates']} false candidates")  # fmt: skip
        elif stage == "merge" and r["status"] == "ok":
            fig = (f"{r['decisions']}, {_num(r['seconds'], '.1f')} s; held-out after-views: "
                   + _quality(r.get("heldout_after", {})))  # fmt: skip
        elif stage == "assets" and r["status"] == "ok":
            fig = (f"oracle inputs: silhouette IoU {_num(r['silhouette_iou_update'], '.3f')} on the update "
                   "photos, "
                   f"{_num(r['silhouette_iou_heldout'], '.3f')} held out; PSNR in the held-out masks "
                   f"{_num(r['psnr_mask_heldout'])} dB (scene alone {_num(r['psnr_mask_heldout_scene'])}); "
                   f"{_num(r['seconds_per_object'], '.1f')} s per object")  # fmt: skip
        elif stage == "people" and r["status"] == "ok" and "mpjpe_mm" in r:
            iou, secs = _num(r["mean_silhouette_iou"], ".3f"), _num(r["seconds"], ".1f")
            fig = (f"{r['photos']} photos, true masks: MPJPE {_num(r['mpjpe_mm'], '.1f')} mm, PA-MPJPE "
                   f"{_num(r['pa_mpjpe_mm'], '.1f')} mm, silhouette IoU {iou}, {secs} s")  # fmt: skip
        elif stage == "update" and r["status"] == "ok":
            fig = _update_figures(r)
            if "true_poses" in r:
                rows.append((stage, r["status"], fig))
                stage, fig = "update (true poses)", _update_figures(r["true_poses"])
        else:
            fig = r.get("issue", "")
        rows.append((stage, r["status"], fig))
    if "baseline" in report:
        b = report["baseline"]
        s = b.get("seconds", {})
        fig = (
            f"sfm {_num(s.get('sfm'), '.0f')} s, train {_num(s.get('train'), '.0f')} s; "
            "held-out after-views: " + _quality(b["heldout_after"]["mean"])
        )
        rows.append(("full-rebuild", b["status"], fig))
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{r[0]:<{width[0]}}  {r[1]:<{width[1]}}  {r[2]}" for r in rows)
