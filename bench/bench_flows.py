"""Orchestration timings: the update flow on a real Prefect server (embedded, as `idu serve` starts it).

On the small benchmark world (seed 0; its after-capture into its before-scene):
- services up (Prefect server, runner with IDU's deployments, review API);
- an update run from its start to its first review (photos copied, registered, compared, assets made);
- a decision to the run's end (the run re-executes from cached results, merges and reports);
- the same update auto-approved, end to end, and the time per task.

    python -m bench.bench_flows [--json]
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _task_seconds(run_id) -> dict[str, float]:
    from flows.runs import task_runs

    out: dict[str, float] = {}
    for t in task_runs(run_id):
        if t.state.name == "Completed" and t.total_run_time:
            name = t.name.rsplit("-", 1)[0]
            out[name] = round(out.get(name, 0.0) + t.total_run_time.total_seconds(), 2)
    return out


def run_benchmark() -> dict:
    from bench.fixtures import fixture_world_and_scene
    from flows import runs
    from flows.services import services
    from flows.update_scene import UpdateOptions
    from review_ui.service import decide

    world, source = fixture_world_and_scene()
    photos = world / "after" / "images"
    tmp = Path(tempfile.mkdtemp(prefix="idu-bench-flows-"))
    store = tmp / "store"
    for name in ("reviewed", "auto"):
        source.copy_to(store, name, caches=False)
    report: dict = {"world": str(world), "photos": len(list(photos.iterdir()))}
    try:
        t0 = time.perf_counter()
        with services(store) as s:
            report["services_up_s"] = round(time.perf_counter() - t0, 2)

            def start(name: str, **opts):
                params = {"scene": str(store / name), "images": str(photos),
                          "options": UpdateOptions(**opts).model_dump()}  # fmt: skip
                return runs.start("update-scene", params)

            def wait_state(run_id, pred):
                from prefect.client.orchestration import get_client

                with get_client(sync_client=True) as client:
                    while True:
                        r = client.read_flow_run(run_id)
                        if pred(r):
                            return r
                        time.sleep(0.2)

            t0 = time.perf_counter()
            run = start("reviewed")
            r = wait_state(run.id, lambda r: r.state.is_paused() or r.state.is_final())
            report["start_to_first_review_s"] = round(time.perf_counter() - t0, 2)
            t1 = time.perf_counter()
            decide(run.id, r.state.state_details.pause_key, {"action": "approve", "reviewer": "bench"})
            done = wait_state(run.id, lambda r: r.state.is_final())
            report["decision_to_end_s"] = round(time.perf_counter() - t1, 2)
            report["reviewed_outcome"] = runs.result(done)["outcome"]
            report["reviewed_tasks_s"] = _task_seconds(run.id)

            t0 = time.perf_counter()
            auto = start("auto", auto_approve=True)
            done = wait_state(auto.id, lambda r: r.state.is_final())
            report["auto_approved_update_s"] = round(time.perf_counter() - t0, 2)
            out = runs.result(done)
            report["auto_outcome"] = out["outcome"]
            report["auto_tasks_s"] = _task_seconds(auto.id)
            report["flow_run_s"] = round(done.total_run_time.total_seconds(), 2)
            report["api"] = s.api_url
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


if __name__ == "__main__":
    rep = run_benchmark()
    print(
        json.dumps(rep, indent=2) if "--json" in sys.argv else "\n".join(f"{k}: {v}" for k, v in rep.items())
    )
