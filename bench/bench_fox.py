"""Benchmark registration on real photos: the instant-ngp fox capture in ``../shared/data``.

    python -m bench.bench_fox [DATA_DIR] [--json OUT]

DATA_DIR defaults to ``../shared/data`` beside the checkout; without it the benchmark says so and exits 0
(the data is never part of the repository, see its README: research/evaluation licence).

1. A scene is built from ``fox/images/`` (50 photos, 1080x1920): SfM at 1024 px, the ``fast`` training
   preset (the splats do not matter to registration). Built once, cached in ``IDU_CACHE_DIR``.
2. ``fox/images_holdout/`` (17 photos of the same capture) are registered against it.
3. Judged against ``transforms.json`` (NeRF/OpenGL camera-to-world): a similarity fitted on the scene's
   cameras (SfM centres -> capture centres, outliers left out) maps the registered poses into the
   capture's frame. Centre error is given in % of the scene radius, which is 3DGS's camera extent
   (1.1 x the largest distance of a scene camera from their mean). The capture's own poses were
   calibrated differently: their camera frames carry a constant rotation offset against SfM's, measured
   on the scene's cameras (their chordal mean) and removed before the rotation errors are taken.
4. Foreign photos registered against the same scene: ``sacre_coeur/mapping`` (another place, other
   cameras) and random-texture images. None may register.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.runner import _key, cache_root, emit_report
from reconstruction.bootstrap import BootstrapConfig, bootstrap_scene
from reconstruction.cameras import Pose
from reconstruction.registration import register_photos, scene_index
from reconstruction.sfm import SfMConfig, robust_umeyama
from reconstruction.store import SceneStore
from reconstruction.train import preset

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def capture_poses(transforms: Path) -> dict[str, Pose]:
    """``cam_from_world`` (OpenCV axes) by file name from a NeRF ``transforms.json``."""
    doc = json.loads(transforms.read_text())
    out = {}
    for fr in doc["frames"]:
        c2w = np.asarray(fr["transform_matrix"], np.float64) @ GL_TO_CV
        out[Path(fr["file_path"]).name] = Pose.from_matrix(np.linalg.inv(c2w))
    return out


def build_scene(fox: Path):
    config = BootstrapConfig(sfm=SfMConfig(max_image_size=1024), train=preset("fast"))
    images = fox / "images"
    names = sorted(p.name for p in images.iterdir())
    key = _key("fox", names, [p.stat().st_size for p in sorted(images.iterdir())], str(config))
    scene = SceneStore(cache_root() / "bench" / "store").scene(f"fox-{key}")
    t0 = time.perf_counter()
    if not scene.exists:
        bootstrap_scene(images, scene, config)
    return scene, time.perf_counter() - t0


def chordal_mean(Rs: list[np.ndarray]) -> np.ndarray:
    U, _, Vt = np.linalg.svd(np.sum(Rs, axis=0))
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt


def judge(doc: dict, index, truth: dict[str, Pose]) -> dict:
    """Errors of the registered photos in the capture's frame (see the module docstring)."""
    names = [n for n in index.names if n in truth]
    ours = {n: index.poses[index.names.index(n)] for n in names}
    sim3, inl = robust_umeyama(np.stack([ours[n].center() for n in names]),
                               np.stack([truth[n].center() for n in names]))  # fmt: skip

    def world_from_cam(pose: Pose) -> np.ndarray:  # in the capture's frame
        return sim3.R @ pose.R.T

    def angle(R: np.ndarray) -> float:
        return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))

    # Capture camera frame from ours, the same for every camera of the capture.
    offset = chordal_mean([truth[n].R @ world_from_cam(ours[n]) for n in names])
    scene_rot = [angle(truth[n].R @ world_from_cam(ours[n]) @ offset.T) for n in names]
    centres = np.stack([truth[n].center() for n in names])
    radius = 1.1 * float(np.max(np.linalg.norm(centres - centres.mean(0), axis=1)))
    reg = [r for r in doc["images"] if r["status"] == "registered"]
    cen, rot, rot_raw = [], [], []
    for r in reg:
        pose, gt = Pose.from_json(r["cam_from_world"]), truth[r["name"]]
        cen.append(float(np.linalg.norm(sim3.apply(pose.center()[None])[0] - gt.center())))
        rot_raw.append(angle(gt.R @ world_from_cam(pose)))
        rot.append(angle(gt.R @ world_from_cam(pose) @ offset.T))
    out = {
        "photos": len(doc["images"]),
        "registered": len(reg),
        "rejections": {r["name"]: r["reason"] for r in doc["images"] if r["status"] != "registered"},
        "seconds_per_photo": float(np.mean([r["seconds"] for r in doc["images"]])),
        "scene_radius": radius,
        "sim3_inliers": f"{int(inl.sum())}/{len(inl)}",
        "camera_frame_offset_deg": angle(offset),
        "scene_cameras_rotation_deg_after_offset": {
            "median": float(np.median(scene_rot)),
            "max": float(np.max(scene_rot)),
        },  # fmt: skip
    }
    if reg:
        out |= {
            "centre_pct_of_radius": {
                "median": 100 * float(np.median(cen)) / radius,
                "max": 100 * float(np.max(cen)) / radius,
            },  # fmt: skip
            "rotation_deg": {"median": float(np.median(rot)), "max": float(np.max(rot))},
            "rotation_deg_with_offset": {"median": float(np.median(rot_raw)), "max": float(np.max(rot_raw))},
        }
    return out


def random_textures(out: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(3)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        if k % 2:
            img = rng.integers(0, 255, (1920 // 8, 1080 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        else:
            img = rng.integers(0, 255, (1920, 1080, 3), dtype=np.uint8)
        Image.fromarray(img).save(out / f"texture_{k}.jpg", quality=92)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    fox = args.data / "fox"
    if not (fox / "transforms.json").is_file():
        print(f"{fox}: no fox capture here (../shared/data is not part of the repository); nothing measured")
        return 0
    scene, build_s = build_scene(fox)
    version = scene.version()
    t0 = time.perf_counter()
    index = scene_index(version)
    index_s = time.perf_counter() - t0
    truth = capture_poses(fox / "transforms.json")
    report: dict = {"scene": str(scene.root), "scene_build_seconds": build_s, "index_seconds": index_s}
    report["holdout"] = judge(register_photos(version, fox / "images_holdout", progress=True), index, truth)
    with tempfile.TemporaryDirectory() as tmp:
        foreign = {}
        for name, folder in (("sacre_coeur", args.data / "sacre_coeur" / "mapping"),
                             ("random_textures", random_textures(Path(tmp) / "tex"))):  # fmt: skip
            if folder.is_dir():
                doc = register_photos(version, folder)
                foreign[name] = {
                    "photos": len(doc["images"]),
                    "registered": sum(r["status"] == "registered" for r in doc["images"]),
                    "reasons": sorted({r["reason"].split(" (")[0] for r in doc["images"] if r.get("reason")}),
                }
        report["foreign"] = foreign
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
