"""Benchmark of the merge stage: a large scene, one placed asset and one removal, end to end.

    python -m bench.bench_merge [--gaussians 5000000] [--asset 50000] [--remove 20000] [--repeat 3]
                                [--dir /tmp] [--no-render-check] [--json]

A store holds a scene of ``--gaussians`` random Gaussians (SH degree 3, bench/synthetic.py) as version 1.
The decisions remove the ``--remove`` Gaussians nearest a point (an object's compact set of ids) and add an
asset of ``--asset`` Gaussians turned, scaled and moved into place. Timed: ``merge()`` from reading the
base version to ``current`` pointing at the new one (read, edit, PLY write, fsync, read-back validation,
atomic rename). After a warm-up, ``--repeat`` timed merges (each new version deleted outside the timing);
peak memory is tracemalloc's peak during one more merge, divided by the scene's size (its arrays' bytes).

The render check renders the parent and the merged version from one view (CPU, 256x256) and reports the
largest colour difference on pixels no edited Gaussian reaches (removed or inserted: where their own render
has zero opacity); bit-identical carry-over makes it 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench.synthetic import default_view, random_splats
from reconstruction.cameras import ImageEntry, Pose, build_model
from reconstruction.merge import merge
from reconstruction.ply import write_ply
from reconstruction.splat_ops import select
from reconstruction.store import SceneStore

TARGET_S = 5.0
PEAK_TARGET = 2.0


def make_scene(root: Path, n: int):
    splats = random_splats(n, seed=0)
    cam, _ = default_view(256, 256)
    entries = []
    for k in range(4):
        a = np.radians(10 * (k - 1.5))
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        m = np.eye(4)
        m[:3, :3] = R
        entries.append(ImageEntry(f"view_{k}.png", cam, Pose.from_matrix(m)))
    rng = np.random.default_rng(1)
    pts = splats.means[rng.choice(n, 2000, replace=False)].astype(np.float64)
    model = build_model(entries, pts, np.full((len(pts), 3), 128))
    scene = SceneStore(root / "store").scene("big")
    with scene.writer() as w:
        w.add_version(splats, model, entries, reason="bench scene")
    return scene, splats


def make_decisions(folder: Path, splats, n_asset: int, n_remove: int) -> dict:
    centre = np.array([0.5, -0.4, 2.0], np.float32)  # at the front of the cloud: the edit shows
    d = np.linalg.norm(splats.means - centre, axis=1)
    ids = np.argpartition(d, n_remove)[:n_remove].astype(np.int64)
    np.save(folder / "removed_ids.npy", np.sort(ids))
    asset = random_splats(n_asset, seed=7, box_min=(-0.2, -0.2, -0.2), box_max=(0.2, 0.2, 0.2))
    write_ply(folder / "asset.ply", asset)
    q = np.array([0.9, 0.1, 0.3, 0.2])
    return {
        "base_version": 1,
        "decisions": [
            {"change_id": "c1", "action": "approve", "kind": "removed", "gaussian_ids": "removed_ids.npy"},
            {"change_id": "c2", "action": "approve", "kind": "added", "asset": "asset.ply",
             "transform": {"rotation_wxyz": (q / np.linalg.norm(q)).tolist(), "translation": [-0.6, 0.3, 1.6],
                           "scale": 1.5}},
        ],
    }  # fmt: skip


def _reset(scene, keep: int = 1) -> None:
    with scene.writer() as w:
        w.set_current(keep, event="bench reset")
    for v in scene.version_numbers():
        if v != keep:
            shutil.rmtree(scene.root / f"v{v}")


def render_check(scene, splats, folder: Path, doc: dict) -> dict:
    from reconstruction.render import render

    splats = scene.version(1).load_splats()  # the parent as stored
    new = scene.version().load_splats()
    ids = np.load(folder / "removed_ids.npy")
    kept = len(splats) - len(ids)
    cam, pose = default_view(256, 256)
    t0 = time.perf_counter()
    a = render(splats, cam, pose, backend="torch")
    b = render(new, cam, pose, backend="torch")
    touched = render(select(splats, ids), cam, pose, backend="torch").alpha > 0
    touched |= render(select(new, np.arange(kept, len(new))), cam, pose, backend="torch").alpha > 0
    diff = (a.rgb - b.rgb).abs().amax(-1)
    return {
        "touched_fraction": float(touched.float().mean()),
        "max_diff_untouched": float(diff[~touched].max()),
        "max_diff_touched": float(diff[touched].max()) if bool(touched.any()) else None,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gaussians", type=int, default=5_000_000)
    ap.add_argument("--asset", type=int, default=50_000)
    ap.add_argument("--remove", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--no-render-check", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        scene, splats = make_scene(root, args.gaussians)
        payload = splats.nbytes()
        folder = root / "review"
        folder.mkdir()
        doc = make_decisions(folder, splats, args.asset, args.remove)
        merge(scene, doc, folder)  # warm-up (page cache, imports)
        _reset(scene)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = merge(scene, doc, folder)
            times.append(time.perf_counter() - t0)
            if _ != args.repeat - 1:
                _reset(scene)
        check = None if args.no_render_check else render_check(scene, splats, folder, doc)
        _reset(scene)
        tracemalloc.start()
        merge(scene, doc, folder)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        report = {
            "gaussians": args.gaussians,
            "asset": args.asset,
            "removed": args.remove,
            "payload_bytes": payload,
            "merge_s": {"median": statistics.median(times), "all": times},
            "peak_over_payload": peak / payload,
            "diff": out["diff"],
            "render_check": check,
            "targets": {"merge_s": TARGET_S, "peak_over_payload": PEAK_TARGET},
        }
    med, peak_x = report["merge_s"]["median"], report["peak_over_payload"]
    print(f"merge of {args.gaussians:,} Gaussians (+{args.asset:,} / -{args.remove:,}): median {med:.2f} s "
          f"(target <= {TARGET_S} s), peak {peak_x:.2f} x the scene (target <= {PEAK_TARGET})",
          file=sys.stderr)  # fmt: skip
    if check:
        share = 1 - check["touched_fraction"]
        print(f"render check: max difference {check['max_diff_untouched']} on the {share:.0%} of pixels no "
              "edited Gaussian reaches", file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
