"""Load on the review app: concurrent reviewers browsing and deciding, against `idu serve`'s processes.

Set-up: the small benchmark world's before-scene copied RUNS times into a fresh store, the services up
(Prefect server, runner, review app on 127.0.0.1), one update run per copy with the world's after-photos,
each suspended on its change; REVIEWERS accounts.

Each reviewer (a thread with its own signed-in HTTP client) repeats ROUNDS times: the queue page, the
pending list (JSON), one pending change's page, its pictures (crop, after, before, asset composite of one
photo), the 3D view's data, and a decision on it (approve or reject at random); once nothing is pending,
a scene's history page and an already decided change instead. Reviewers arrive as soon as the runs
suspend (the app is still rendering the pictures). Several reviewers race for the same change: the Prefect
server accepts one decision per review and refuses the rest (409). Afterwards every run must have
ended, and for every change exactly one decision was accepted
and is the one the scene shows (approved: the new version names its reviewer; rejected: no new version).

    python -m bench.bench_review_ui [--reviewers 20] [--runs 6] [--rounds 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

PASSWORD = "bench-Reviewer-2026"


def _client(base: str, name: str):
    from review_ui.client import sign_in

    return sign_in(base, name, PASSWORD)


def _percentiles(xs: list[float]) -> dict[str, float]:
    import numpy as np

    if not xs:
        return {"n": 0}
    a = np.asarray(xs) * 1000
    return {"n": len(xs), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}  # fmt: skip


def run_benchmark(reviewers: int = 20, runs_n: int = 6, rounds: int = 6, seed: int = 0) -> dict:
    from bench.fixtures import fixture_world_and_scene
    from flows import runs
    from flows.services import services
    from flows.update_scene import UpdateOptions
    from review_ui.users import UserStore

    world, source = fixture_world_and_scene()
    photos = world / "after" / "images"
    tmp = Path(tempfile.mkdtemp(prefix="idu-bench-review-"))
    store = tmp / "store"
    names = [f"scene{i}" for i in range(runs_n)]
    for n in names:
        source.copy_to(store, n, caches=False)
    users = UserStore(store)
    for i in range(reviewers):
        users.add(f"r{i:02d}", "reviewer", PASSWORD)
    report: dict = {"reviewers": reviewers, "runs": runs_n, "rounds": rounds}
    try:
        with services(store) as s:
            from prefect.client.orchestration import get_client

            t0 = time.perf_counter()
            started = []
            for n in names:
                opts = UpdateOptions(review_url=s.ui_url).model_dump()
                started.append(runs.start("update-scene", {"scene": str(store / n), "images": str(photos),
                                                           "options": opts}))  # fmt: skip
            with get_client(sync_client=True) as client:
                while True:
                    states = [client.read_flow_run(r.id).state for r in started]
                    if all(st.is_paused() for st in states):
                        break
                    bad = [st for st in states if st.is_final()]
                    if bad:
                        raise RuntimeError(f"an update run ended before its review: {bad[0].message}")
                    time.sleep(1)
            report["runs_to_review_s"] = round(time.perf_counter() - t0, 1)

            lat: dict[str, list[float]] = defaultdict(list)
            accepted: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
            refused: dict[int, int] = defaultdict(int)
            errors: list[str] = []
            lock = threading.Lock()

            def timed(kind: str, c, method: str, url: str, **kw):
                t = time.perf_counter()
                r = c.request(method, url, **kw)
                with lock:
                    lat[kind].append(time.perf_counter() - t)
                return r

            def reviewer(i: int) -> None:
                rng = random.Random(seed * 1000 + i)
                name = f"r{i:02d}"
                try:
                    c = _client(s.ui_url, name)
                    seen: list[tuple[str, str, str, str]] = []  # run, key, photo, scene
                    for _ in range(rounds):
                        assert timed("page", c, "GET", "/").status_code == 200
                        pending = timed("api", c, "GET", "/api/reviews").json()
                        if pending:
                            p = rng.choice(pending)
                            photo = next(iter(p["proposal"]["change"]["masks"]))
                            target = (p["run_id"], p["key"], photo, p["scene"].rsplit("/", 1)[1])
                            seen.append(target)
                        elif seen:  # nothing left to decide: a scene's history and a decided change
                            target = rng.choice(seen)
                            assert timed("page", c, "GET", f"/scenes/{target[3]}").status_code == 200
                        else:
                            continue
                        run_id, key, photo, _ = target
                        assert timed("page", c, "GET", f"/reviews/{run_id}/{key}").status_code == 200
                        for kind in ("crop", "after", "before", "composite"):
                            r = timed("media", c, "GET", f"/media/{run_id}/{key}/{photo}/{kind}.jpg")
                            assert r.status_code == 200, (kind, r.status_code)
                        assert (
                            timed("viewer", c, "GET", f"/viewer/{run_id}/{key}/splats.bin").status_code == 200
                        )
                        if not pending:
                            continue
                        action = rng.choice(["approve", "reject"])
                        r = timed("decide", c, "POST", f"/api/runs/{run_id}/reviews/{key}",
                                  json={"action": action, "comment": f"{name} says {action}"})  # fmt: skip
                        with lock:
                            if r.status_code == 200:
                                accepted[(run_id, key)].append((name, action))
                            else:
                                refused[r.status_code] += 1
                    c.close()
                except Exception as e:  # noqa: BLE001 - reported, and fails the benchmark below
                    with lock:
                        errors.append(f"{name}: {type(e).__name__}: {e}")

            t1 = time.perf_counter()
            threads = [threading.Thread(target=reviewer, args=(i,)) for i in range(reviewers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            report["load_s"] = round(time.perf_counter() - t1, 1)

            # every run ends, with the one decision the server accepted
            with get_client(sync_client=True) as client:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    runs_now = [client.read_flow_run(r.id) for r in started]
                    if all(r.state.is_final() for r in runs_now):
                        break
                    time.sleep(1)
            check = []
            from reconstruction.store import SceneStore

            for r, n in zip(runs_now, names, strict=True):
                keys = [k for k in accepted if k[0] == str(r.id)]
                decisions = [d for k in keys for d in accepted[k]]
                scene = SceneStore(store).scene(n)
                ok = r.state.is_completed() and len(keys) == 1 and len(decisions) == 1
                if ok:
                    who, action = decisions[0]
                    if action == "approve":
                        meta = scene.version(2).meta if 2 in scene.version_numbers() else {}
                        ok = scene.current_version() == 2 and meta.get("reviewers") == [who]
                    else:
                        ok = scene.version_numbers() == [1]
                check.append({"scene": n, "state": r.state.name, "accepted": decisions, "ok": ok})
            report.update(
                latency={k: _percentiles(v) for k, v in sorted(lat.items())},
                latency_all=_percentiles([x for v in lat.values() for x in v]),
                requests=sum(len(v) for v in lat.values()),
                decisions_accepted=sum(len(v) for v in accepted.values()),
                decisions_refused=dict(refused),
                runs_checked=check,
                errors=errors,
                consistent=all(c["ok"] for c in check) and not errors,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reviewers", type=int, default=20)
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rep = run_benchmark(a.reviewers, a.runs, a.rounds)
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        print(f"{rep['reviewers']} reviewers, {rep['runs']} runs ({rep['runs_to_review_s']} s to review)")
        print(f"{rep['requests']} requests in {rep['load_s']} s; all: {rep['latency_all']}")
        for k, v in rep["latency"].items():
            print(f"  {k:8s} {v}")
        print(f"decisions accepted {rep['decisions_accepted']}, refused {rep['decisions_refused']}")
        print(f"consistent: {rep['consistent']} {rep['errors'] or ''}")
    return 0 if rep["consistent"] else 1


if __name__ == "__main__":
    sys.exit(main())
