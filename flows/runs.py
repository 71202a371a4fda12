"""Starting and following IDU's flow runs from the command line (``idu update``, ``idu scene bootstrap``
through the server, ``idu runs``).

``connect(store)`` finds the Prefect server: ``PREFECT_API_URL`` if set, else an ``idu serve`` running on
this store (``STORE/.prefect/serve.json``), else it starts the embedded services for the duration of the
command (then the command waits for its run: nothing would be left to execute it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from reconstruction.errors import IDUError

log = logging.getLogger("idu")


class RunError(IDUError):
    """A flow run that failed, crashed, was cancelled or could not be started."""


@dataclass
class Connection:
    api_url: str
    ui_url: str | None
    embedded: bool  # started by this command: it ends with it


@contextlib.contextmanager
def connect(store: str | os.PathLike) -> Iterator[Connection]:
    from flows.services import embedded_env, healthy, prefect_home, services, use_environment

    if os.environ.get("PREFECT_API_URL"):
        yield Connection(os.environ["PREFECT_API_URL"], os.environ.get("IDU_REVIEW_URL"), False)
        return
    state = prefect_home(store) / "serve.json"
    if state.is_file():
        s = json.loads(state.read_text())
        if healthy(s["api_url"]):
            with use_environment(embedded_env(store, s["api_url"])):
                yield Connection(s["api_url"], s.get("ui_url"), False)
            return
    with services(store) as s:
        yield Connection(s.api_url, s.ui_url, True)


def start(deployment: str, parameters: dict[str, Any], idempotency_key: str | None = None):
    """A new run of one of IDU's deployments (flows/deployments.py); returns the FlowRun."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    from flows.deployments import full_name

    try:
        return run_deployment(
            full_name(deployment),
            parameters=parameters,
            timeout=0,
            idempotency_key=idempotency_key,
            as_subflow=False,
        )
    except ObjectNotFound:
        raise RunError(
            f"deployment {full_name(deployment)} is not served by the Prefect server at "
            f"{os.environ.get('PREFECT_API_URL')} (start `idu serve` or a worker)"
        ) from None


def wait(
    run_id: str | UUID,
    on_pause: Callable[[Any], None] | None = None,
    timeout: float | None = None,
    poll: float = 1.0,
):
    """Follow a run to a final state; ``on_pause(state)`` once per new pause (a review waiting)."""
    from prefect.client.orchestration import get_client

    t0, last_key, last_state = time.monotonic(), None, None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(UUID(str(run_id)))
            st = run.state
            if st is not None and st.name != last_state:
                last_state = st.name
                log.info("run %s: %s", run.name, st.name)
            if st is not None and st.is_final():
                return run
            if st is not None and st.is_paused() and st.state_details.pause_key != last_key:
                last_key = st.state_details.pause_key
                if on_pause:
                    on_pause(run)
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise RunError(
                    f"run {run.name} ({run.id}) is still {st.name if st else 'pending'} after {timeout:.0f} s"
                )
            time.sleep(poll)


def result(run) -> Any:
    """The return value of a completed run (from its persisted result); RunError for any other end."""
    st = run.state
    if st is None or not st.is_completed():
        msg = " ".join((st.message or "").split()) if st else ""
        raise RunError(
            f"run {run.name} ({run.id}) ended {st.name if st else 'without a state'}"
            + (f": {msg}" if msg else "")
        )
    return st.result()


def task_runs(run_id: str | UUID) -> list:
    """The task runs of a flow run (every execution of it), newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(str(run_id))])),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )


def artifact_markdown(run_id: str | UUID) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(run_id))]),
                type=ArtifactFilterType(any_=["markdown"]),
            ),
            sort=ArtifactSort.CREATED_DESC,
            limit=10,
            offset=0,
        )
    return arts[0].data if arts else None


__all__ = ["Connection", "RunError", "artifact_markdown", "connect", "result", "start", "task_runs", "wait"]
