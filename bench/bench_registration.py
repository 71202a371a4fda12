"""Benchmark registration: accuracy on a world's photos against its scene, foreign photos, time per photo.

    python -m bench.bench_registration [WORLD_DIR] [--novel N] [--json OUT]

WORLD_DIR defaults to the test fixture (small world, seed 0; bench/fixtures.py). The scene is the world's
before-capture bootstrapped with its known cameras (cached). Three photo sets are registered:

- ``after``: the world's after-capture (another sun, changed objects, new viewpoints);
- ``novel``: N new photos of the unchanged place from poses between consecutive before-views (raised
  0.3 m, turned 5 degrees, exposure -1..+1 stop), rendered by the world's own renderer;
- ``foreign``: random-noise and random-block images and photos of the sample place (another place).

Reported per set: registered fraction, rotation error (median, max, degrees), camera-centre error
(median, max, metres and % of the scene radius), seconds per photo; the index build time.

``--scale``: seconds per new 1-MP photo (decode, SIFT, retrieval, matching, pose; no feature cache)
against the scene of every 4th before-photo and against the scene of all of them, to show that top-k
retrieval keeps the time flat as the scene grows.

``--index``: seconds to build the scene's registration index in a copy of the scene, from nothing and
again with the photos' features in the scene's feature cache (what a merged version's index finds there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.fixtures import fixture_world_and_scene, render_world_view
from bench.runner import cached_bootstrap, emit_report, load_world
from bench.runner import judge_registration as judge
from reconstruction.cameras import Camera, Pose
from reconstruction.registration import RegistrationConfig, register_photos, scene_index


def _turn(pose: Pose, centre: np.ndarray, yaw_deg: float) -> Pose:
    a = np.radians(yaw_deg)
    Rz = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])  # about camera y
    R = Rz @ pose.matrix()[:3, :3]
    return Pose.from_matrix(np.block([[R, (-R @ centre)[:, None]], [np.zeros((1, 3)), np.ones((1, 1))]]))


def novel_views(world: Path, gt: dict, n: int, out: Path) -> dict[str, Pose]:
    """``n`` photos of the unchanged place between consecutive before-views (see the module docstring)."""
    cam = Camera.from_json(gt["cameras"]["before"])
    views = gt["before"]["images"]
    rng = np.random.default_rng(1)
    truth = {}
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        i = int(k * (len(views) - 1) / max(1, n))
        a, b = (Pose.from_json(views[j]["cam_from_world"]) for j in (i, i + 1))
        c = 0.5 * (a.center() + b.center()) + np.array([0.0, 0.0, 0.3])
        pose = _turn(a, c, float(rng.uniform(-5, 5)))
        img = render_world_view(gt["seed"], pose, cam, exposure_stops=float(rng.uniform(-1, 1)), noise_seed=k)
        name = f"novel_{k:03d}.png"
        Image.fromarray(img).save(out / name)
        truth[name] = pose
    return truth


def foreign_photos(out: Path, n: int = 6) -> None:
    from bench.sample_scene import look_at, render_photo, sample_splats

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    cam = Camera.pinhole(270, 270, 160, 120, 320, 240)
    for k in range(n):
        if k % 3 == 0:
            img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        elif k % 3 == 1:
            img = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8).repeat(10, 0).repeat(10, 1)
        else:
            a = rng.uniform(0, 2 * np.pi)
            img = render_photo(sample_splats(k), cam, look_at(np.array([4 * np.cos(a), 4 * np.sin(a), 1.5]),
                                                              [0, 0, 0.4]))  # fmt: skip
        Image.fromarray(img).save(out / f"foreign_{k:03d}.png")


def scale_report(world: Path, gt: dict, n: int = 5, width: int = 1152) -> dict:
    """Seconds per 1-MP photo against a scene of N/4 and of N photos (see the module docstring)."""
    import os

    from bench.fixtures import fixture_config
    from bench.runner import _key, cache_root
    from reconstruction.registration import load_photo, register_photo

    names = [im["name"] for im in gt["before"]["images"]]
    quarter = cache_root() / "bench" / "quarter-images" / _key(str(world.resolve()), names[::4])
    if not quarter.is_dir():
        quarter.mkdir(parents=True)
        for nm in names[::4]:
            os.symlink(world / "before" / "images" / nm, quarter / nm)
    scenes = {
        "quarter": cached_bootstrap(world, gt, quarter, fixture_config(), "quarter", "known"),
        "full": cached_bootstrap(world, gt, world / "before" / "images", fixture_config(), "before", "known"),
    }
    cam0 = Camera.from_json(gt["cameras"]["before"])
    cam = cam0.scaled(width / cam0.width)
    config = RegistrationConfig()
    out: dict = {"photo_size": [cam.width, cam.height]}
    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "small"
        truth = novel_views(world, gt, n, small)
        big = Path(tmp) / "big"
        big.mkdir()
        for k, (name, pose) in enumerate(truth.items()):
            img = render_world_view(gt["seed"], pose, cam, exposure_stops=0.0, noise_seed=100 + k)
            Image.fromarray(img).save(big / name)
        for label, scene in scenes.items():
            index = scene_index(scene.version(), config)
            secs, ok = [], 0
            for p in sorted(big.iterdir()):
                t0 = time.perf_counter()
                r = register_photo(index, load_photo(p, config), config, cache=None)
                secs.append(time.perf_counter() - t0)
                ok += r.status == "registered"
            out[label] = {
                "scene_photos": len(index.names), "registered": ok, "photos": len(secs),
                "seconds_per_photo": {"median": float(np.median(secs)), "max": float(np.max(secs))},
            }  # fmt: skip
    return out


def anchor_report(world: Path, gt: dict, scene) -> dict:
    """The plain pycolmap way, side by side: the scene's photos and the after-photos in one database,
    exhaustive matching, then COLMAP's incremental mapper continuing the scene's model (triangulated with
    its cameras) with ``fix_existing_frames``. Same metrics as :func:`judge`."""
    import os

    import pycolmap

    from reconstruction.sfm import SfMConfig, colmap_log, run_sfm

    version = scene.version()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        photos.mkdir()
        stored = version.images()
        for im in stored:
            os.symlink((version.scene.root / im.file).resolve(), photos / im.entry.name)
        known = {im.entry.name: (im.entry.cam_from_world, im.entry.camera) for im in stored}
        t0 = time.perf_counter()
        run_sfm(photos, tmp / "sfm", SfMConfig(matcher="exhaustive"), sorted(known), known)
        scene_s = time.perf_counter() - t0
        new = sorted(p.name for p in (world / "after" / "images").iterdir())
        for n in new:
            os.symlink((world / "after" / "images" / n).resolve(), photos / n)
        db = tmp / "sfm" / "database.db"
        cam = stored[0].entry.camera
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = cam.model
        reader.camera_params = ",".join(str(p) for p in cam.params)
        t0 = time.perf_counter()
        with colmap_log(tmp / "colmap.log"):
            pycolmap.extract_features(db, photos, image_names=new, camera_mode=pycolmap.CameraMode.SINGLE,
                                      reader_options=reader, device=pycolmap.Device.cpu)  # fmt: skip
            pycolmap.match_exhaustive(db, device=pycolmap.Device.cpu)
            opts = pycolmap.IncrementalPipelineOptions()
            opts.fix_existing_frames = True
            opts.ba_refine_focal_length = opts.ba_refine_extra_params = opts.ba_refine_principal_point = False
            (tmp / "map").mkdir()
            models = pycolmap.incremental_mapping(
                db, photos, tmp / "map", opts, input_path=tmp / "sfm" / "sparse" / "0"
            )
        seconds = time.perf_counter() - t0
        rec = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
        images = []
        for n in new:
            im = rec.find_image_with_name(n) if rec is not None else None
            if im is not None and im.has_pose:
                pose = Pose.from_pycolmap(im.cam_from_world()).to_json()
                images.append({"name": n, "status": "registered", "seconds": seconds / len(new),
                               "cam_from_world": pose})  # fmt: skip
            else:
                images.append({"name": n, "status": "rejected", "reason": "not registered by the mapper",
                                "seconds": seconds / len(new)})  # fmt: skip
        shutil.rmtree(tmp / "map", ignore_errors=True)
    truth = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
    radius = scene_index(version).radius
    return judge({"images": images}, truth, radius) | {"scene_matching_seconds": scene_s, "seconds": seconds}


def index_report(scene) -> dict:
    """Index build time in a copy of ``scene``: from nothing, then with the features cached."""

    with tempfile.TemporaryDirectory() as tmp:
        version = scene.copy_to(Path(tmp) / "store", caches=False).version()
        t0 = time.perf_counter()
        first = scene_index(version)
        empty_s = time.perf_counter() - t0
        shutil.rmtree(first.path.parent)  # the index goes, the feature cache stays
        t0 = time.perf_counter()
        scene_index(version)
        cached_s = time.perf_counter() - t0
    return {"scene": scene.ref, "scene_photos": len(first.names), "index_seconds_from_nothing": empty_s,
            "index_seconds_features_cached": cached_s}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", nargs="?", type=Path, help="world folder (default: the test fixture)")
    ap.add_argument("--novel", type=int, default=10)
    ap.add_argument("--json", type=Path, help="write the report here")
    ap.add_argument("--scale", action="store_true", help="time 1-MP photos against N/4 and N scene photos")
    ap.add_argument("--index", action="store_true", help="time the scene's index, from nothing and cached")
    ap.add_argument(
        "--anchor", action="store_true", help="also register the after-capture the plain pycolmap way"
    )
    args = ap.parse_args(argv)
    if args.world is None:
        world, scene = fixture_world_and_scene()
    else:
        from bench.fixtures import fixture_config

        world = args.world
        gt0 = load_world(world)
        scene = cached_bootstrap(world, gt0, world / "before" / "images", fixture_config(), "before", "known")
    gt = json.loads((world / "gt.json").read_text())
    if args.scale:
        emit_report(scale_report(world, gt), args.json)
        return 0
    if args.index:
        emit_report(index_report(scene), args.json)
        return 0
    config = RegistrationConfig()
    t0 = time.perf_counter()
    index = scene_index(scene.version(), config)
    report: dict = {
        "world": str(world), "scene": scene.ref, "scene_photos": len(index.names),
        "index_seconds_or_cached": time.perf_counter() - t0, "radius_m": index.radius,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        after_truth = {im["name"]: Pose.from_json(im["cam_from_world"]) for im in gt["after"]["images"]}
        report["after"] = judge(register_photos(scene.version(), world / "after" / "images", config),
                                after_truth, index.radius)  # fmt: skip
        truth = novel_views(world, gt, args.novel, tmp / "novel")
        report["novel"] = judge(register_photos(scene.version(), tmp / "novel", config), truth, index.radius)
        foreign_photos(tmp / "foreign")
        report["foreign"] = judge(
            register_photos(scene.version(), tmp / "foreign", config), None, index.radius
        )
    if args.anchor:
        report["anchor_after"] = anchor_report(world, gt, scene)
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
