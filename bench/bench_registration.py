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

from bench.fixtures import fixture_world_and_scene, render_world_view
from bench.runner import cached_bootstrap, load_world
from reconstruction.cameras import Camera, Pose
from reconstruction.registration import RegistrationConfig, register_photos, scene_index


def _rot_deg(a: Pose, b: Pose) -> float:
    R = a.matrix()[:3, :3] @ b.matrix()[:3, :3].T
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


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


def judge(doc: dict, truth: dict[str, Pose] | None, radius: float) -> dict:
    imgs = doc["images"]
    reg = [r for r in imgs if r["status"] == "registered"]
    out = {
        "photos": len(imgs),
        "registered": len(reg),
        "registered_fraction": len(reg) / max(1, len(imgs)),
        "seconds_per_photo": float(np.mean([r["seconds"] for r in imgs])) if imgs else None,
        "rejections": {r["name"]: r["reason"] for r in imgs if r["status"] != "registered"},
    }
    if truth and reg:
        rot = [_rot_deg(Pose.from_json(r["cam_from_world"]), truth[r["name"]]) for r in reg]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", nargs="?", type=Path, help="world folder (default: the test fixture)")
    ap.add_argument("--novel", type=int, default=10)
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    if args.world is None:
        world, scene = fixture_world_and_scene()
    else:
        from bench.fixtures import fixture_config

        world = args.world
        gt0 = load_world(world)
        scene = cached_bootstrap(world, gt0, world / "before" / "images", fixture_config(), "before", "known")
    gt = json.loads((world / "gt.json").read_text())
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
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
