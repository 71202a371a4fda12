"""Assets for added objects on a benchmark world: silhouettes, colours, time per object.

    python -m bench.bench_assets [WORLD] [--inputs oracle|detected] [--steps N] [--max-side PX] [--json OUT]

For each object the world *added*, the asset is built from the update after-photos (the even ones, as
``idu bench run``) at their true poses, and judged on every after-photo that sees it — the update photos
(what it was fitted to) and the held-out ones (views it never saw):

- ``--inputs oracle`` (default): the stage alone. Its inputs are what a perfect detector would hand it:
  the true masks in the update photos, the true box, and the visual hull carved from those masks inside
  the box.
- ``--inputs detected``: the pipeline's own: change detection on the update photos, each added candidate
  matched to the true object nearest its box centre.

Per object and backend (``hull``: the starting point, no optimisation; ``multiview``: the default;
``person``, for the world's person: the person branch, the anny body fitted to the masks, which a
candidate takes once labelled person by a classifier or a reviewer):
silhouette IoU of the asset's visible coverage (scene occlusions included) against the true mask, PSNR
inside the true mask of the scene + asset render against the photo (colour-aligned to the scene as the
optimisation does), seconds. The scene without the asset gives the PSNR the asset has to beat.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.runner import BENCH_SFM, cached_bootstrap, load_world, split_after
from generation.assets import AssetConfig, HullConfig, View, build_asset, hull_asset
from generation.multiview import (
    MultiViewConfig,
    aligned_views,
    multiview_asset,
    prepare_windows,
    window_metrics,
)
from reconstruction.bootstrap import BootstrapConfig
from reconstruction.cameras import Camera, Pose, project_points, quat_to_matrix
from reconstruction.train import preset

log = logging.getLogger(__name__)


def true_views(world: Path, gt: dict[str, Any], obj: str, names: list[str]) -> list[View]:
    """The after-photos among ``names`` where object ``obj`` shows, with its true mask."""
    cam = Camera.from_json(gt["cameras"]["after"])
    out = []
    for im in gt["after"]["images"]:
        o = im["objects"].get(obj)
        if im["name"] not in names or not o or not o.get("pixels"):
            continue
        rgb = np.asarray(Image.open(world / im["path"]).convert("RGB"))
        mask = np.asarray(Image.open(world / o["mask"])) > 0
        out.append(View(im["name"], rgb, cam, Pose.from_json(im["cam_from_world"]), mask.astype(np.uint8)))
    return out


def others_in_front(world: Path, gt: dict[str, Any], obj: str, names: list[str]) -> dict[str, np.ndarray]:
    """Per after-photo among ``names``: the true masks of the other new objects (added, or a moved one's new
    place) nearer the camera than ``obj`` (box centres). There the photo shows another new object in
    front; ``obj``'s asset judged alone would be blamed for covering it."""
    boxes = {c["id"]: np.asarray(c["box"]["center"], float) for c in gt["changes"]}
    kinds = {c["id"]: c["kind"] for c in gt["changes"]}
    out: dict[str, np.ndarray] = {}
    if obj not in boxes:
        return out
    for im in gt["after"]["images"]:
        if im["name"] not in names:
            continue
        centre = Pose.from_json(im["cam_from_world"]).center()
        far = np.linalg.norm(boxes[obj] - centre)
        union = None
        for oid, o in im["objects"].items():
            if oid == obj or kinds.get(oid) not in ("added", "moved") or not o.get("pixels"):
                continue
            if np.linalg.norm(boxes[oid] - centre) < far:
                m = np.asarray(Image.open(world / o["mask"])) > 0
                union = m if union is None else union | m
        if union is not None:
            out[im["name"]] = union
    return out


def carve_hull(box: dict[str, Any], views: list[View], cells: int = 48) -> np.ndarray:
    """Points of a grid in ``box`` whose projection falls inside the mask in every photo that frames it."""
    c, s = np.asarray(box["center"]), np.asarray(box["size"])
    R = quat_to_matrix(np.asarray(box.get("rotation_wxyz", [1, 0, 0, 0]), float))
    step = float(s.max()) / cells
    axes = [np.arange(-h + step / 2, h, step) for h in s / 2]
    local = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    X = c + local @ R.T
    keep = np.ones(len(X), bool)
    for v in views:
        uv, z = project_points(v.camera, v.pose, X)
        h, w = v.mask.shape
        px = np.floor(uv).astype(int)
        inframe = (z > 0) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        inside = np.zeros(len(X), bool)
        inside[inframe] = v.mask[px[inframe, 1], px[inframe, 0]] > 0
        keep &= inside | ~inframe
    return X[keep]


def detected_inputs(scene, world: Path, gt: dict[str, Any], update: list[str], tmp: Path):
    """Change detection on the update photos; added candidates matched to the true added objects."""
    import shutil

    from bench.runner import true_registration
    from reconstruction.changes import detect_changes

    photos = tmp / "update"
    photos.mkdir(parents=True, exist_ok=True)
    views = {im["name"]: im for im in gt["after"]["images"]}
    for n in update:
        shutil.copyfile(world / views[n]["path"], photos / n)
    t0 = time.perf_counter()
    doc = detect_changes(scene.version(), photos, tmp / "detect", true_registration(gt, update))
    detect_s = time.perf_counter() - t0
    truth = {c["id"]: np.asarray(c["box"]["center"]) for c in gt["changes"] if c["kind"] == "added"}
    cam = Camera.from_json(gt["cameras"]["after"])
    matched = {}
    for cand in doc["candidates"]:
        if cand["kind"] != "added" or not truth:
            continue
        centre = np.asarray(cand["box"]["center"])
        obj = min(truth, key=lambda k: np.linalg.norm(truth[k] - centre))
        if obj in matched:
            continue
        vs = []
        for name, rel in cand["masks"].items():
            rgb = np.asarray(Image.open(photos / name).convert("RGB"))
            m = np.asarray(Image.open(tmp / "detect" / rel)) > 0
            vs.append(View(name, rgb, cam, Pose.from_json(views[name]["cam_from_world"]), m.astype(np.uint8)))
        pts = np.load(tmp / "detect" / cand["points"])
        matched[obj] = {"candidate": cand["id"], "box": cand["box"], "points": pts, "views": vs}
    return matched, detect_s


def judge(scene_splats, asset, placement, box, views: list[View], config: MultiViewConfig,
          hidden: dict[str, np.ndarray] | None = None) -> dict[str, Any]:  # fmt: skip
    """Silhouette IoU and PSNR in the true mask of the placed asset on ``views`` (and of the scene alone),
    at the photos' own resolution whatever the resolution the asset was fitted at (``config.max_side``);
    with ``hidden`` (photo -> full-size mask, see :func:`others_in_front`), also the IoU without those
    pixels (``silhouette_iou_others_in_front``)."""
    import torch
    import torch.nn.functional as F

    from reconstruction.splat_ops import transform

    if views:
        config = dataclasses.replace(config, max_side=max(max(v.rgb.shape[:2]) for v in views))

    placed = (transform(asset, placement["rotation_wxyz"], placement["translation"], placement["scale"])
              if asset is not None else None)  # fmt: skip
    per = {}
    for w in prepare_windows(scene_splats, views, config, box):
        empty = placed is None
        keep = None
        if hidden is not None and w.name in hidden:  # the hiding masks cut to the window as the photo was
            full = torch.from_numpy(hidden[w.name]).float()[None, None]
            small = F.interpolate(full, size=w.photo.shape[:2], mode="area")[0, 0] > 0.5
            (x0, y0), (h, wd) = w.offset, w.mask.shape
            keep = ~small[y0 : y0 + h, x0 : x0 + wd]
        m = window_metrics(w, placed.to_torch(), keep) if not empty else None
        base = window_metrics(w, _nothing(scene_splats).to_torch())
        per[w.name] = {
            "silhouette_iou": None if empty else m["silhouette_iou"],
            "psnr_mask": None if empty else m["psnr_mask"],
            "psnr_mask_scene": base["psnr_mask"],
        }
        if hidden is not None and not empty:
            per[w.name]["silhouette_iou_others_in_front"] = m.get("silhouette_iou_kept", m["silhouette_iou"])
    return per


def _nothing(like):
    from reconstruction.splats import Splats

    return Splats.empty(0, like.sh_degree)


def _side(per: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = ("silhouette_iou", "silhouette_iou_others_in_front", "psnr_mask", "psnr_mask_scene")
    return {**{k: _mean(per, k) for k in keys}, "views": per}


def _mean(per: dict[str, dict[str, Any]], key: str) -> float | None:
    vals = [v[key] for v in per.values() if v.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def run(world: Path, inputs: str = "oracle", steps: int | None = None, preset_name: str = "default",
        scene_ref: str | None = None, device: str | None = None, max_side: int | None = None):  # fmt: skip
    """The report for ``world`` with its before-scene (bootstrapped with the known cameras and cached, or
    ``scene_ref``)."""
    gt = load_world(world)
    return assets_on_scene(before_scene(world, gt, scene_ref, preset_name), world, gt, inputs, steps, device,
                           max_side)  # fmt: skip


def before_scene(world: Path, gt: dict[str, Any], scene_ref: str | None, preset_name: str):
    """``scene_ref``'s scene, or the world's before-scene bootstrapped with the known cameras (cached)."""
    from reconstruction.store import SceneStore

    if scene_ref:
        return SceneStore.from_ref(scene_ref)
    config = BootstrapConfig(sfm=BENCH_SFM, train=preset(preset_name), progress=False)
    return cached_bootstrap(world, gt, world / "before" / "images", config, "before", "known")


def assets_on_scene(scene, world: Path, gt: dict[str, Any], inputs: str = "oracle", steps: int | None = None,
                    device: str | None = None, max_side: int | None = None):  # fmt: skip
    import tempfile

    import torch

    splats = scene.version().load_splats()
    update, heldout = split_after(gt)
    mv = MultiViewConfig(device=device) if steps is None else MultiViewConfig(steps=steps, device=device)
    if max_side is not None:
        mv = dataclasses.replace(mv, max_side=max_side)
    added = [c for c in gt["changes"] if c["kind"] == "added"]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report: dict[str, Any] = {"world": str(world), "inputs": inputs, "steps": mv.steps, "objects": {},
                              "max_side": mv.max_side, "judged_at": "the photos' own resolution",
                              "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
                              f"CPU, {torch.get_num_threads()} threads"}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if inputs == "detected":
            found, report["detect_seconds"] = detected_inputs(scene, world, gt, update, Path(tmp))
        for c in added:
            fit_views = true_views(world, gt, c["id"], update)
            test_views = true_views(world, gt, c["id"], heldout)
            hidden = others_in_front(world, gt, c["id"], heldout)
            entry: dict[str, Any] = {"category": c["category"], "update_views": [v.name for v in fit_views],
                                     "heldout_views": [v.name for v in test_views]}  # fmt: skip
            if inputs == "oracle":
                if not fit_views:
                    entry["status"] = "not in the update photos"
                    report["objects"][c["id"]] = entry
                    continue
                box, views, points = c["box"], fit_views, carve_hull(c["box"], fit_views)
            else:
                if c["id"] not in found:
                    entry["status"] = "not detected"
                    report["objects"][c["id"]] = entry
                    continue
                f = found[c["id"]]
                box, views, points = f["box"], f["views"], f["points"]
                entry["candidate"] = f["candidate"]
            entry["status"] = "ok"
            entry["hull_points"] = len(points)
            t0 = time.perf_counter()
            windows = prepare_windows(splats, views, mv, box)  # both backends' time includes them
            windows_s = time.perf_counter() - t0
            aligned = aligned_views(windows)  # as the multiview start
            hull, hp = hull_asset(points, aligned, HullConfig(seed=0), name=c["id"])
            hull_s = time.perf_counter() - t0
            asset, placement, stats = multiview_asset(splats, points, box, views, mv, name=c["id"],
                                                      windows=windows)  # fmt: skip
            results = {
                "hull": (hull, hp, hull_s),
                "multiview": (asset, placement, windows_s + stats["seconds"]),
            }
            if c["category"] == "person":
                scene_points = scene.version().load_points()
                results["person"] = person_branch(splats, c["id"], box, views, points, scene_points)
            for label, (a, p, secs) in results.items():
                fit = judge(splats, a, p, box, fit_views, mv)
                test = judge(splats, a, p, box, test_views, mv, hidden) if test_views else {}
                entry[label] = {"seconds": secs, "num_gaussians": len(a), "update": _side(fit),
                                "heldout": _side(test)}  # fmt: skip
            report["objects"][c["id"]] = entry
    return report


def person_branch(splats, cid: str, box: dict[str, Any], views: list[View], points: np.ndarray,
                  scene_points: np.ndarray | None = None):  # fmt: skip
    """(asset, placement, seconds) of the asset stage for a candidate labelled person (the person branch,
    ``generation.human``: keypoints by the default model, the ground on ``scene_points``), windows
    included."""
    t0 = time.perf_counter()
    cand = {"id": cid, "kind": "added", "box": box, "label": "person"}
    config = AssetConfig(seed=0, previews=False)
    asset, placement, _, _ = build_asset(splats, cand, views, points, config, scene_points)
    return asset, placement, time.perf_counter() - t0


def placement_report(
    world: Path, scene_ref: str | None = None, preset_name: str = "default"
) -> dict[str, Any]:
    """Placement alone, with a perfect generator: each added object's own mesh in IDU's object frame (turned
    by a known angle about up, largest extent 1) placed by its silhouettes in the update photos; errors of
    scale, centre and turn against the truth, and the residuals placement reports."""
    from generation.image_to_3d import to_object_frame
    from generation.placement import place_asset
    from generation.surface import load_mesh, mesh_to_splats

    gt = load_world(world)
    splats = before_scene(world, gt, scene_ref, preset_name).version().load_splats()
    update, _ = split_after(gt)
    up = np.asarray(gt["frame"]["up"], np.float64)
    out = {}
    for c in gt["changes"]:
        views = true_views(world, gt, c["id"], update) if c["kind"] == "added" else []
        if not views:
            continue
        turn = 1.0  # radians: what placement has to find again
        Rz = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
        mesh = load_mesh(world / c["mesh"])
        asset = mesh_to_splats(to_object_frame(mesh, Rz), num=4000)
        windows = prepare_windows(splats, views, MultiViewConfig(), c["box"])
        t0 = time.perf_counter()
        placement, res = place_asset(asset, c["box"], windows, up, splats, name=c["id"])
        diag = float(np.linalg.norm(c["box"]["size"]))
        true_scale = float(np.ptp(mesh.vertices @ Rz.T, axis=0).max())
        R = quat_to_matrix(np.asarray(placement["rotation_wxyz"]))
        # the mesh's own frame is the world's: the placed asset should undo the turn (up to its symmetry)
        yaw = float(np.degrees(np.arctan2((R @ Rz)[1, 0], (R @ Rz)[0, 0])))
        centre = np.asarray(placement["translation"]) - (
            0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0)))  # fmt: skip
        out[c["id"]] = {"photos": len(views), "seconds": time.perf_counter() - t0,
                        "scale_error_pct": 100 * (placement["scale"] / true_scale - 1),
                        "centre_error_diag": float(np.linalg.norm(centre)) / diag,
                        "turn_error_deg": yaw, "residuals": res}  # fmt: skip
    return {"world": str(world), "objects": out}


def _fmt(x, f=".3f"):
    return "—" if x is None else format(x, f)


def table(report: dict[str, Any]) -> str:
    rows = [("object", "backend", "s", "IoU update", "IoU held-out", "(others in front)",
             "PSNR update (scene)", "PSNR held-out (scene)")]  # fmt: skip
    for oid, e in report["objects"].items():
        if e.get("status") != "ok":
            rows.append((oid, e.get("status", ""), "", "", "", "", "", ""))
            continue
        for b in ("hull", "multiview", "person"):
            if b not in e:
                continue
            r = e[b]
            u, h = r["update"], r["heldout"]
            rows.append((oid, b, _fmt(r["seconds"], ".1f"), _fmt(u["silhouette_iou"]),
                         _fmt(h["silhouette_iou"]), _fmt(h.get("silhouette_iou_others_in_front")),
                         f"{_fmt(u['psnr_mask'], '.2f')} ({_fmt(u['psnr_mask_scene'], '.2f')})",
                         f"{_fmt(h['psnr_mask'], '.2f')} ({_fmt(h['psnr_mask_scene'], '.2f')})"))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    from bench.runner import cache_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", nargs="?", type=Path, default=None,
                    help="benchmark world (default: the test fixture's small world, seed 0)")  # fmt: skip
    ap.add_argument("--inputs", choices=("oracle", "detected"), default="oracle")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--max-side", type=int, default=None,
                    help="longer side the photos are fitted at (MultiViewConfig.max_side); "
                    "judged at their own")  # fmt: skip
    ap.add_argument("--preset", default="default", help="training preset of the before-scene (as bench run)")
    ap.add_argument(
        "--scene", default=None, help="STORE/NAME of the before-scene (default: bootstrap, cached)"
    )
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--placement", action="store_true",
                    help="placement alone, the objects' own meshes as a perfect generator")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    world = a.world or next((cache_root() / "worlds").glob("small-0-*"))
    if a.placement:
        report = placement_report(world, a.scene, a.preset)
        for oid, r in report["objects"].items():
            print(f"{oid}: IoU {r['residuals']['silhouette_iou_mean']:.3f}, "
                  f"scale {r['scale_error_pct']:+.1f} %, "
                  f"centre {r['centre_error_diag']:.3f} diag, turn {r['turn_error_deg']:+.1f} deg, gap "
                  f"{r['residuals']['ground_gap']}, {r['seconds']:.1f} s", file=sys.stderr)  # fmt: skip
    else:
        report = run(world, a.inputs, a.steps, a.preset, a.scene, a.device, a.max_side)
        print(table(report), file=sys.stderr)
    text = json.dumps(report, indent=1, default=float)
    if a.json:
        a.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
