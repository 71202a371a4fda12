"""Benchmark the person branch: the anny body fitted to a world's person from its silhouettes.

    python -m bench.bench_people [WORLD_DIR] [--scene STORE/NAME] [--json OUT]

WORLD_DIR defaults to the test fixture (small world, seed 0, its person undressed: ``idu bench world --seed 0
--out DIR`` writes the dressed one, on which the README's figures are taken). The person of a benchmark
world is an anny body in a random pose with known 3D keypoints (gt.json ``person``). Inputs are oracle:
the person's true masks in the after-photos at their true poses, the true box (so the fit is judged
without detection's error). Runs: every after-photo that shows the person together, then each such
photo alone.

The fit takes the 2D keypoints the pipeline would (``--keypoints auto``: MediaPipe's pose landmarker, whose
weights the mediapipe wheel ships, when it is installed; generation/human/keypoints.py), or none
(``--keypoints none``: the silhouettes alone), or those of another model (a registered name or a folder).
``--oracle-keypoints`` gives it the true keypoints projected into each photo instead: the figures a perfect
2D keypoint model would allow.

With a keypoint model, the report also gives its keypoints' mean error in pixels per photo against the
true ones projected (``keypoint_error_px``).

Reported per run: MPJPE of the 17 COCO keypoints (mm, scene frame: the placement's error included), of
all 23 (with the feet), root-relative MPJPE (the hips' midpoints moved together: Human3.6M's protocol #1,
what monocular methods report), PA-MPJPE (after the best similarity transform), silhouette IoU per photo
(the fitted mesh ray-cast through the pixel centres, as the worlds' masks are made), the asset's (its
Gaussians rendered at the photo's resolution, the scene in front, after their refinement; and as sampled
from the mesh), the facing direction found, the ground found under the person, seconds; and the best
MPJPE (absolute and root-relative) among the hypotheses kept for the reviewer ("best-k": multi-hypothesis
methods' protocol, beside the top one's).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_assets import before_scene, true_views
from bench.fixtures import fixture_world
from bench.runner import emit_report, load_world
from generation.assets import person_keypoints
from generation.human.fit import PersonFitConfig, fit_person
from generation.human.keypoints import COCO17
from generation.human.person import person_asset
from generation.multiview import MultiViewConfig, prepare_windows
from reconstruction.cameras import Pose
from reconstruction.changes import up_direction
from reconstruction.sfm import umeyama


def _mean(values: dict[str, float] | None) -> float | None:
    return float(np.mean(list(values.values()))) if values else None


def joint_errors(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Joint errors in millimetres: MPJPE over the 17 COCO joints and over all (in the scene frame: the
    body's placement included); root-relative MPJPE over the 17 after moving the prediction's root (the
    hips' midpoint; COCO has no pelvis) onto the truth's, Human3.6M's protocol #1; PA-MPJPE over the 17
    after the best similarity (Umeyama) takes the prediction onto the truth."""
    e = np.linalg.norm(pred - truth, axis=1)
    hips = [COCO17.index("left_hip"), COCO17.index("right_hip")]
    rooted = pred[:17] - pred[hips].mean(0) + truth[hips].mean(0)
    aligned = umeyama(pred[:17], truth[:17]).apply(pred[:17])
    pa = np.linalg.norm(aligned - truth[:17], axis=1)
    return {"mpjpe_mm": 1000 * float(e[:17].mean()), "mpjpe_all_mm": 1000 * float(e.mean()),
            "root_mpjpe_mm": 1000 * float(np.linalg.norm(rooted - truth[:17], axis=1).mean()),
            "pa_mpjpe_mm": 1000 * float(pa.mean())}  # fmt: skip


Keypoints = bool | str | None


def run(world: Path, scene_ref: str | None = None, preset_name: str = "default",
        config: PersonFitConfig | None = None, keypoints: Keypoints = "auto") -> dict[str, Any]:  # fmt: skip
    gt = load_world(world)
    if not gt.get("person"):
        return {"world": str(world), "status": "this world has no person"}
    scene = before_scene(world, gt, scene_ref, preset_name)
    return people_on_scene(scene, world, gt, config, keypoints=keypoints)


def oracle_keypoints(gt: dict[str, Any], views) -> dict[str, np.ndarray]:
    """The person's true COCO keypoints projected into each photo ([17, 3], confidence 1): what a perfect
    2D keypoint model would give (occluded ones included)."""
    from reconstruction.cameras import project_points

    X = np.asarray(gt["person"]["keypoints"]["xyz"], np.float64)[:17]
    out = {}
    for v in views:
        uv, _ = project_points(v.camera, v.pose, X)
        out[v.name] = np.concatenate([uv, np.ones((17, 1))], 1)
    return out


def keypoint_errors(found: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per photo: the detected keypoints' mean distance (pixels) from the true ones projected, over those
    with confidence above 0.5, and how many they are."""
    out = {}
    for name, k in found.items():
        sure = k[:, 2] > 0.5
        e = np.linalg.norm(k[sure, :2] - truth[name][sure, :2], axis=1)
        out[name] = {"mean_px": round(float(e.mean()), 2) if len(e) else None, "confident": int(sure.sum())}
    return out


def people_on_scene(scene, world: Path, gt: dict[str, Any], config: PersonFitConfig | None = None,
                    single: bool = True, keypoints: Keypoints = "auto") -> dict[str, Any]:  # fmt: skip
    """The report of :func:`run` on a given before-scene (``single``: also each photo alone;
    ``keypoints``: True: the oracle 2D keypoints of :func:`oracle_keypoints`; a model name or folder
    (``auto`` as AssetConfig.keypoint_model); False or None: none)."""
    if not gt.get("person"):
        return {"world": str(world), "status": "this world has no person"}
    splats, points = scene.version().load_splats(), scene.version().load_points()
    change = next(c for c in gt["changes"] if c["id"] == gt["person"]["object_id"])
    views = true_views(world, gt, change["id"], [im["name"] for im in gt["after"]["images"]])
    up = up_direction([Pose.from_json(im["cam_from_world"]) for im in gt["before"]["images"]])
    truth = np.asarray(gt["person"]["keypoints"]["xyz"], np.float64)
    report: dict[str, Any] = {"world": str(world), "photos_with_person": [v.name for v in views],
                              "keypoints": "oracle (true 3D keypoints projected)" if keypoints is True
                              else str(keypoints or "none"),
                              "runs": {}}  # fmt: skip
    runs = {"all": views} | ({v.name: [v] for v in views} if single and len(views) > 1 else {})
    for label, sub in runs.items():
        windows = prepare_windows(splats, sub, MultiViewConfig(), change["box"])
        t0 = time.perf_counter()
        if keypoints is True:
            kps = oracle_keypoints(gt, sub)
        else:
            kps = person_keypoints(sub, change["box"], keypoints or None)
        fit = fit_person(windows, change["box"], up, splats, config, keypoints=kps, points=points)
        asset, _, rep = person_asset(fit, windows)
        secs = time.perf_counter() - t0
        if label == "all" and kps is not None and keypoints is not True:
            report["keypoint_error_px"] = keypoint_errors(kps, oracle_keypoints(gt, sub))
        kept = [joint_errors(k, truth) for k in fit.kept_keypoints]
        report["runs"][label] = {
            "photos": len(sub),
            **joint_errors(fit.posed.keypoints.numpy(), truth),
            "silhouette_iou": fit.silhouette_iou,
            "mean_silhouette_iou": fit.mean_iou,
            "mean_body_silhouette_iou": _mean(fit.extra.get("body_silhouette_iou")),
            "clothing": fit.extra.get("clothing"),
            "hypotheses": fit.hypotheses[:3],
            # multi-hypothesis methods' protocol: the best of the hypotheses kept for the reviewer
            "best_kept_mpjpe_mm": min(e["mpjpe_mm"] for e in kept),
            "best_kept_root_mpjpe_mm": min(e["root_mpjpe_mm"] for e in kept),
            "ground": fit.ground,
            "ground_from": fit.extra.get("ground_from"),
            "phenotype": rep["phenotype"],
            "seen_fraction": rep["seen_fraction"],
            "num_gaussians": len(asset),
            # the Gaussians that get merged, rendered at the photos' resolution: sampled, then refined
            "asset_silhouette_iou": rep["asset_silhouette_iou"]["after"],
            "mean_asset_silhouette_iou": _mean(rep["asset_silhouette_iou"]["after"]),
            "mean_asset_silhouette_iou_sampled": _mean(rep["asset_silhouette_iou"]["before"]),
            "seconds": secs,
        }
    single = [r for k, r in report["runs"].items() if k != "all"]
    if single:
        keys = (
            "mpjpe_mm",
            "root_mpjpe_mm",
            "pa_mpjpe_mm",
            "best_kept_mpjpe_mm",
            "best_kept_root_mpjpe_mm",
            "mean_silhouette_iou",
            "mean_asset_silhouette_iou",
            "seconds",
        )
        report["single_photo_mean"] = {k: float(np.mean([r[k] for r in single])) for k in keys}
    return report


def table(report: dict[str, Any]) -> str:
    heads = ("MPJPE", "all", "root", "PA", "best-k", "bk-root")
    lines = [f"{'run':16s} {'photos':>6s} " + " ".join(f"{h:>7s}" for h in heads)
             + f" {'IoU':>6s} {'asset':>6s} {'s':>6s}"]  # fmt: skip
    for k, r in report.get("runs", {}).items():
        keys = ("mpjpe", "mpjpe_all", "root_mpjpe", "pa_mpjpe", "best_kept_mpjpe", "best_kept_root_mpjpe")
        errs = " ".join(f"{r[f'{key}_mm']:7.1f}" for key in keys)
        lines.append(
            f"{k:16s} {r['photos']:6d} {errs} {r['mean_silhouette_iou']:6.3f} "
            f"{r['mean_asset_silhouette_iou']:6.3f} {r['seconds']:6.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("world", nargs="?", type=Path, help="a benchmark world (default: the test fixture)")
    ap.add_argument("--scene", help="STORE/NAME of the before-scene (default: bootstrapped, cached)")
    ap.add_argument("--preset", default="default", help="bootstrap preset when the scene is built here")
    ap.add_argument(
        "--oracle-keypoints",
        action="store_true",
        help="give the fit the true keypoints projected into the photos (a perfect model)",
    )
    ap.add_argument(
        "--keypoints",
        default="auto",
        help="2D keypoint model: auto (MediaPipe when installed), none, a name or folder",
    )
    ap.add_argument("--json", type=Path, help="also write the report here")
    a = ap.parse_args(argv)
    kps = True if a.oracle_keypoints else (None if a.keypoints == "none" else a.keypoints)
    report = run(a.world or fixture_world(), a.scene, a.preset, keypoints=kps)
    print(table(report), file=sys.stderr)
    emit_report(report, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
