"""Benchmark of the INRIA PLY reader/writer: time and peak memory for N random Gaussians.

    python -m bench.bench_ply [--json] [--sizes 1000000,5000000] [--sh-degree 3] [--dir /tmp] [--repeat 3]

For each size: one warm-up write+read, then ``--repeat`` timed writes (each to a new file, the previous
one deleted outside the timing) and reads of the file just written (page cache warm), reporting medians.
Peak memory is ``tracemalloc``'s peak during one more read and one more write, divided by the payload
(the sum of the splat arrays' nbytes): the read's peak includes the arrays it returns (ideal 1.0), the
write's is what it allocates beyond its input (ideal 0.0). The table goes to stderr; ``--json`` prints one
JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from reconstruction.ply import read_ply, write_ply
from reconstruction.splats import Splats

# Targets on the 2-core build machine (seconds; peak memory as a multiple of the payload).
TARGETS = {1_000_000: {"write_s": 0.3, "read_s": 0.5}, 5_000_000: {"read_s": 2.5}}
PEAK_TARGET = 1.5


def random_splats(n: int, sh_degree: int = 3, seed: int = 0) -> Splats:
    """N random Gaussians (float32), generated in blocks to keep the generator's temporaries small."""
    r = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2 - 1
    s = Splats(
        means=np.empty((n, 3), np.float32), quats=np.empty((n, 4), np.float32),
        scales=np.empty((n, 3), np.float32), opacities=np.empty((n,), np.float32),
        sh0=np.empty((n, 3), np.float32), shN=np.empty((n, k, 3), np.float32),
    )  # fmt: skip
    for a in (s.means, s.quats, s.scales, s.opacities, s.sh0, s.shN):
        flat = a.reshape(-1)
        for i in range(0, flat.size, 1 << 22):
            flat[i : i + (1 << 22)] = r.standard_normal(min(1 << 22, flat.size - i), dtype=np.float32)
    s.quats[:, 0] += 4.0  # keep quaternions well away from zero
    return s


def bench_size(n: int, sh_degree: int, folder: Path, repeat: int) -> dict:
    s = random_splats(n, sh_degree)
    payload = s.nbytes()
    files: list[Path] = []

    def fresh() -> Path:
        if files:
            files[-1].unlink(missing_ok=True)
        files.append(folder / f"bench-{n}-{len(files)}.ply")
        return files[-1]

    # warm-up (also checks the round trip)
    p = write_ply(fresh(), s)
    if not read_ply(p).equal(s):
        raise SystemExit("error: PLY round trip is not exact")
    writes, reads = [], []
    for _ in range(repeat):
        target = fresh()
        t = time.perf_counter()
        write_ply(target, s)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        back = read_ply(target)
        reads.append(time.perf_counter() - t)
        del back
    file_bytes = files[-1].stat().st_size

    tracemalloc.start()
    back = read_ply(files[-1])
    read_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del back
    tracemalloc.start()
    write_ply(fresh(), s)
    write_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    files[-1].unlink(missing_ok=True)

    row = {
        "n": n,
        "sh_degree": sh_degree,
        "payload_bytes": payload,
        "file_bytes": file_bytes,
        "write_s": statistics.median(writes),
        "read_s": statistics.median(reads),
        "write_s_all": writes,
        "read_s_all": reads,
        "write_peak_over_payload": write_peak / payload,
        "read_peak_over_payload": read_peak / payload,
    }
    targets = dict(TARGETS.get(n, {})) if sh_degree == 3 else {}
    checks = [row[k] <= v for k, v in targets.items()]
    checks += [row["read_peak_over_payload"] <= PEAK_TARGET, row["write_peak_over_payload"] <= PEAK_TARGET]
    row["targets"] = {**targets, "peak_over_payload": PEAK_TARGET}
    row["meets_targets"] = all(checks)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_ply", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    ap.add_argument("--sizes", default="1000000,5000000", help="comma-separated Gaussian counts")
    ap.add_argument("--sh-degree", type=int, default=3, choices=[0, 1, 2, 3])
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument("--dir", type=Path, default=None, help="folder for the files (default: a temporary one)")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        print(f"error: --sizes must be comma-separated integers, got {args.sizes!r}", file=sys.stderr)
        return 2

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_ply-") as tmp:
        for n in sizes:
            rows.append(bench_size(n, args.sh_degree, Path(tmp), args.repeat))
            r = rows[-1]
            print(
                f"{r['n']:>10,d}  SH{r['sh_degree']}  payload {r['payload_bytes'] / 2**20:8.1f} MiB  "
                f"write {r['write_s']:6.3f} s  read {r['read_s']:6.3f} s  "
                f"peak write {r['write_peak_over_payload']:.3f}x  read {r['read_peak_over_payload']:.3f}x  "
                f"{'ok' if r['meets_targets'] else 'MISSES TARGET'}",
                file=sys.stderr,
            )
    if args.json:
        json.dump({"benchmark": "ply", "repeat": args.repeat, "results": rows}, sys.stdout, indent=2)
        print()
    return 0 if all(r["meets_targets"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
