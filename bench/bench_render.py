"""Renderer benchmark: the CPU rasterizer's speed and memory, and gsplat on CUDA when there is a GPU.

Usage::

    python -m bench.bench_render            # table on stdout
    python -m bench.bench_render --json     # one JSON document on stdout, the table on stderr
    python -m bench.bench_render --engine torch   # the CPU cases on the pure-torch compositor

Cases (each in its own subprocess, so peak memory is per case; median of ``--repeats`` runs after a warm-up):

- ``cpu_fwd_100k``    forward, 100k Gaussians, 512x512, under ``torch.no_grad``
- ``cpu_fwdbwd_100k`` forward + backward of a loss on rgb, alpha and depth, 100k Gaussians, 512x512
- ``cpu_fwd_1m``      forward, 1M Gaussians, 512x512, with the peak RSS of the process
- ``cpu_fwd_dense_100k`` / ``cpu_fwdbwd_dense_100k``  as the 100k cases with splats 4.5x larger and more
  opaque (``DENSE``): pixels covered by hundreds of splats, most of them ending early, as in a trained scene
- ``gpu_fwd_1m_1080p`` gsplat forward, 1M Gaussians, 1920x1080 (CUDA only)
- ``gpu_vs_cpu``      gsplat vs the torch backend, 20k Gaussians at 512x512: max / mean abs difference (CUDA)

Scenes come from :func:`bench.synthetic.random_splats` (SH degree 3) seen by
:func:`bench.synthetic.default_view`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from reconstruction._torch_rasterizer import ENGINES, default_engine

CPU_CASES = {
    "cpu_fwd_100k": dict(n=100_000, width=512, height=512, backward=False),
    "cpu_fwdbwd_100k": dict(n=100_000, width=512, height=512, backward=True),
    "cpu_fwd_1m": dict(n=1_000_000, width=512, height=512, backward=False),
    # Like a trained scene: larger, more opaque splats overlap deeply, so most pixels stop early.
    "cpu_fwd_dense_100k": dict(n=100_000, width=512, height=512, backward=False, dense=True),
    "cpu_fwdbwd_dense_100k": dict(n=100_000, width=512, height=512, backward=True, dense=True),
}
#: ``random_splats`` arguments of the dense cases.
DENSE = dict(log_scale_mean=-3.5, opacity_logit_mean=1.0)
GPU_CASES = {
    "gpu_fwd_1m_1080p": dict(n=1_000_000, width=1920, height=1080),
    "gpu_vs_cpu": dict(n=20_000, width=512, height=512),
}
#: Targets on the 2-core build machine (seconds, GiB).
TARGETS = {"cpu_fwd_100k": 1.0, "cpu_fwdbwd_100k": 2.5, "cpu_fwd_1m": 16.0, "cpu_fwd_1m_rss_gib": 4.0}


# -- worker side (one case per process) ---------------------------------------------------------------
def _vm_hwm_mib() -> float | None:
    """Peak RSS of this process since the last reset (Linux), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _count_pairs(splats, camera, pose) -> dict:
    """(Gaussian, pixel) pairs with alpha >= 1/255: how heavy the scene is for a rasterizer."""
    import torch

    from reconstruction import _torch_rasterizer as tr

    with torch.no_grad():
        sp = splats.to_torch()
        coeffs = torch.cat([sp.sh0[:, None], sp.shN], 1)
        K = torch.as_tensor(camera.K(), dtype=torch.float32)
        vm = torch.as_tensor(pose.matrix(), dtype=torch.float32)
        p = tr.project(
            sp.means,
            sp.quats,
            sp.scales,
            sp.opacities,
            coeffs,
            splats.sh_degree,
            vm,
            K,
            camera.width,
            camera.height,
        )
        pairs = tr.count_pairs(p, camera.width, camera.height)
    visible = int(p.ids.numel())
    return {"visible": visible, "pairs": pairs, "pairs_per_visible": round(pairs / max(visible, 1), 1)}


def _run_cpu_case(name: str, repeats: int, threads: int) -> dict:
    import torch

    from bench.synthetic import default_view, random_splats
    from reconstruction.render import render
    from reconstruction.splats import FIELDS

    torch.set_num_threads(threads)
    cfg = CPU_CASES[name]
    splats = random_splats(cfg["n"], seed=0, sh_degree=3, **(DENSE if cfg.get("dense") else {}))
    camera, pose = default_view(cfg["width"], cfg["height"])
    stats = _count_pairs(splats, camera, pose)
    sp = splats.to_torch()
    del splats
    gc.collect()
    rss_scene = _vm_hwm_mib() if _reset_hwm() else None

    def once() -> float:
        t0 = time.perf_counter()
        if cfg["backward"]:
            for f in FIELDS:
                getattr(sp, f).requires_grad_(True)
                getattr(sp, f).grad = None
            out = render(sp, camera, pose)
            loss = out.rgb.mean() + out.alpha.mean() + 0.01 * out.depth.mean()
            loss.backward()
        else:
            with torch.no_grad():
                out = render(sp, camera, pose)
        dt = time.perf_counter() - t0
        del out
        return dt

    first = once()
    times = [once() for _ in range(repeats)]
    peak = _vm_hwm_mib()
    import resource

    return {
        "case": name,
        **cfg,
        **stats,
        "threads": threads,
        "first_s": round(first, 3),
        "median_s": round(statistics.median(times), 3),
        "min_s": round(min(times), 3),
        "times_s": [round(t, 3) for t in times],
        "rss_after_scene_mib": None if rss_scene is None else round(rss_scene, 1),
        "peak_rss_render_mib": None if peak is None or rss_scene is None else round(peak, 1),
        "peak_rss_process_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
    }


def _run_gpu_case(name: str, repeats: int) -> dict:
    import torch

    from bench.synthetic import default_view, random_splats
    from reconstruction.render import render

    cfg = GPU_CASES[name]
    splats = random_splats(cfg["n"], seed=0, sh_degree=3)
    camera, pose = default_view(cfg["width"], cfg["height"])
    sp = splats.to_torch("cuda")
    out = {"case": name, **cfg, "device": torch.cuda.get_device_name()}
    with torch.no_grad():
        if name == "gpu_fwd_1m_1080p":
            render(sp, camera, pose, backend="gsplat")
            torch.cuda.synchronize()
            ms = []
            for _ in range(max(repeats, 5)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                render(sp, camera, pose, backend="gsplat")
                end.record()
                torch.cuda.synchronize()
                ms.append(start.elapsed_time(end))
            out.update(median_ms=round(statistics.median(ms), 2), min_ms=round(min(ms), 2))
        else:
            gpu = render(sp, camera, pose, backend="gsplat")
            cpu = render(splats, camera, pose, backend="torch")
            for key in ("rgb", "alpha", "depth"):
                d = (getattr(gpu, key).cpu() - getattr(cpu, key)).abs()
                if key == "depth":
                    d = d[(gpu.alpha.cpu() > 0.05) & (cpu.alpha > 0.05)]
                out[f"{key}_max_abs_diff"] = float(d.max())
                out[f"{key}_mean_abs_diff"] = float(d.mean())
    return out


# -- driver ------------------------------------------------------------------------------------------
def _spawn(case: str, repeats: int, threads: int, engine: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.bench_render",
        "--worker",
        case,
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
           "IDU_CPU_RASTERIZER": engine}  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"case": case, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(results: list[dict]) -> str:
    lines = [
        f"{'case':<18} {'N':>9} {'image':>10} {'pairs':>11} {'median':>10} {'first':>8} {'peak RSS':>10}  "
        "target"
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['case']:<18} error: {r['error']}")
            continue
        image = f"{r['width']}x{r['height']}"
        if r["case"] == "gpu_vs_cpu":
            lines.append(
                f"{r['case']:<18} {r['n']:>9} {image:>10}  rgb max {r['rgb_max_abs_diff']:.2e} "
                f"mean {r['rgb_mean_abs_diff']:.2e}; alpha max {r['alpha_max_abs_diff']:.2e}; "
                f"depth max {r['depth_max_abs_diff']:.2e}"
            )
            continue
        if "median_ms" in r:
            lines.append(f"{r['case']:<18} {r['n']:>9} {image:>10} {'':>11} {r['median_ms']:>8.1f}ms")
            continue
        target = TARGETS.get(r["case"])
        rss = r.get("peak_rss_process_mib")
        rss_s = f"{rss / 1024:.2f}GiB" if rss else "?"
        if target is None:
            verdict = "-"
        else:
            ok = r["median_s"] <= target and (
                r["case"] != "cpu_fwd_1m" or (rss or 0) / 1024 <= TARGETS["cpu_fwd_1m_rss_gib"]
            )
            verdict = (
                f"<= {target:g} s"
                + (f", <= {TARGETS['cpu_fwd_1m_rss_gib']:g} GiB" if r["case"] == "cpu_fwd_1m" else "")
                + (" ok" if ok else " MISSED")
            )
        lines.append(
            f"{r['case']:<18} {r['n']:>9} {image:>10} {r['pairs']:>11} {r['median_s']:>9.3f}s "
            f"{r['first_s']:>7.3f}s {rss_s:>10}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_render", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ap.add_argument(
        "--repeats", type=int, default=3, help="timed runs per case after one warm-up (default 3)"
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    ap.add_argument("--cases", nargs="*", default=None, help="subset of cases to run")
    ap.add_argument(
        "--engine", choices=ENGINES, default=None, help="CPU compositing (default: compiled if numba imports)"
    )
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        res = (
            _run_cpu_case(args.worker, args.repeats, args.threads)
            if args.worker in CPU_CASES
            else _run_gpu_case(args.worker, args.repeats)
        )
        print(json.dumps(res))
        return 0

    import torch

    engine = args.engine or default_engine()
    cases = list(CPU_CASES) + (list(GPU_CASES) if torch.cuda.is_available() else [])
    if args.cases:
        unknown = set(args.cases) - set(CPU_CASES) - set(GPU_CASES)
        if unknown:
            print(f"error: unknown case(s) {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c in args.cases]
    results = []
    for case in cases:
        print(f"running {case} ...", file=sys.stderr, flush=True)
        results.append(_spawn(case, args.repeats, args.threads, engine))
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "cpu_engine": engine,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "targets": TARGETS,
        "results": results,
    }
    table = _table(results)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(doc, indent=2))
    else:
        print(table)
    failed = [r["case"] for r in results if "error" in r]
    if failed:
        print(f"error: case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
