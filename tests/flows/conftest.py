"""A real Prefect server, IDU's served deployments and the review API, in subprocesses, once per session;
scenes are copies of the fixture world's before-scene (the small benchmark world, seed 0)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from uuid import UUID

import pytest


@pytest.fixture(scope="session")
def idu_services(tmp_path_factory):
    from flows.services import services

    store = tmp_path_factory.mktemp("flows") / "store"
    with services(store) as s:
        yield s


def signed_in(base: str, name: str, password: str):
    """An httpx client of the review app signed in as ``name`` (review_ui.client.sign_in)."""
    from review_ui.client import sign_in

    return sign_in(base, name, password, timeout=60)


@pytest.fixture(scope="session")
def ana(idu_services):
    """The review app signed in as ana, a reviewer."""
    from review_ui.users import UserStore

    UserStore(idu_services.store).add("ana", "reviewer", "ana-Review-7731", replace=True)
    c = signed_in(idu_services.ui_url, "ana", "ana-Review-7731")
    yield c
    c.close()


def copy_scene(src, store: Path, name: str):
    """A copy of scene ``src`` as ``store/name`` (without its caches: the copy builds its own)."""

    return src.copy_to(store, name, caches=False)


@pytest.fixture
def new_scene(idu_services, bench_world, request):
    """A fresh copy of the fixture scene in the services' store, named after the test."""
    _, scene = bench_world
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    return copy_scene(scene, idu_services.store, name)


#: The after-photos the flow tests update with: two that see the moved planter, the added crate and the
#: person, so that a run finds a few changes and builds few assets (the whole capture is judged by
#: bench/: every photo registers, and its changes would make each flow test build several assets).
UPDATE_PHOTOS = ("after_004.png", "after_005.png")


def update_photos(world: Path, out: Path, prefix: str = "") -> Path:
    """Copies of :data:`UPDATE_PHOTOS` in ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in UPDATE_PHOTOS:
        shutil.copy2(world / "after" / "images" / name, out / f"{prefix}{name}")
    return out


@pytest.fixture
def after_photos(bench_world, tmp_path):
    """A batch of :data:`UPDATE_PHOTOS` (the moved planter)."""
    world, _ = bench_world

    def batch(name: str = "batch", prefix: str = "") -> Path:
        return update_photos(world, tmp_path / name, prefix)

    return batch


def read_run(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(run_id)))


def wait_for(run_id, pred, timeout: float = 300.0):
    """The run once ``pred(run)`` holds (AssertionError naming its state after ``timeout``)."""
    t0 = time.monotonic()
    while True:
        run = read_run(run_id)
        if pred(run):
            return run
        if time.monotonic() - t0 > timeout:
            raise AssertionError(
                f"run {run.name}: still {run.state.name} after {timeout:.0f} s: {run.state.message}"
            )
        time.sleep(0.5)


def suspended(key: str | None = None):
    def pred(run):
        st = run.state
        if st.is_final():
            raise AssertionError(f"run {run.name} ended {st.name}: {st.message}")
        return st.is_paused() and (key is None or st.state_details.pause_key == key)

    return pred


def final(run) -> bool:
    return run.state.is_final()


#: The decision :func:`settle` gives the changes a test does not look at.
REJECT_REST = {"action": "reject", "reviewer": "ana", "comment": "not under test"}


def settle(run_id, decision: dict | None = None, after: str | None = None, limit: int = 8):
    """The run once final, every further review it waits for (any key but ``after``, the one just
    decided) answered with ``decision`` (default: :data:`REJECT_REST`). The update photos show several
    changes, and how many of them detection finds is detection's business (judged in bench/): a flow test
    decides the first and settles the rest."""
    from review_ui.service import decide

    decision = decision or REJECT_REST

    def moved_on(k):
        return lambda r: final(r) or (r.state.is_paused() and r.state.state_details.pause_key != k)

    r = wait_for(run_id, moved_on(after))
    for _ in range(limit):
        if final(r):
            return r
        key = r.state.state_details.pause_key
        decide(run_id, key, decision)
        r = wait_for(run_id, moved_on(key))
    return wait_for(run_id, final)


def task_states(run_id) -> dict[str, list[str]]:
    """State names of the run's task runs by task name (e.g. {"register": ["Completed", "Cached"]})."""
    from flows.runs import task_runs

    out: dict[str, list[str]] = {}
    for t in task_runs(run_id):
        out.setdefault(t.name.rsplit("-", 1)[0], []).append(t.state.name)
    return out
