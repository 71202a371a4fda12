"""What the review UI and the CLI ask of Prefect: pending reviews, decisions, runs.

A pending review is an ``update-scene`` run in the *Suspended* state; its pause key names the change
(``v<base>-<change id>-r<round>``) and the flow stored the proposal next to it (a flow-run input,
``idu-proposal-<key>``). A decision resumes the run with typed input that the server validates against
``flows.update_scene.ReviewDecision``; everything the server refuses comes back as a ReviewError with its
reason, and the run stays suspended.

    for r in pending_reviews():
        decide(r["run_id"], r["key"], {"action": "approve", "reviewer": "ana"})
"""

from __future__ import annotations

import datetime as _dt
from typing import Any
from uuid import UUID

from reconstruction.errors import IDUError

UPDATE_FLOW = "update-scene"
IDU_FLOWS = ("update-scene", "refresh-scenes", "bootstrap-scene")


class ReviewError(IDUError):
    """A decision the server or the run refused (invalid, already decided, timed out, another run's)."""


class DecisionRefused(ReviewError):
    """The server refused the decision itself (it does not fit ReviewDecision); the run still waits."""


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _run_id(run_id: str | UUID) -> UUID:
    try:
        return UUID(str(run_id))
    except ValueError:
        raise ReviewError(f"{run_id!r}: not a flow run id") from None


def _read_run(client, rid: UUID):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(rid)
    except ObjectNotFound:
        raise ReviewError(f"run {rid}: no such flow run") from None


def _flow_names(client, runs) -> dict:
    return {fid: client.read_flow(fid).name for fid in {r.flow_id for r in runs}}


def _timeout(state) -> tuple[str | None, bool]:
    t = state.state_details.pause_timeout
    if t is None:
        return None, False
    return t.isoformat(), t < _dt.datetime.now(_dt.UTC)


def _proposal(client, run_id: UUID, key: str) -> dict[str, Any] | None:
    """What the flow stored for the change it waits for (None if it stored nothing)."""
    import orjson
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.update_scene import PROPOSAL_PREFIX

    try:
        return orjson.loads(client.read_flow_run_input(run_id, PROPOSAL_PREFIX + key))
    except PrefectHTTPStatusError as e:
        if e.response.status_code == 404:
            return None
        raise


def pending_reviews(limit: int = 200) -> list[dict[str, Any]]:
    """Suspended update runs waiting for a decision, oldest first, with what the flow proposed."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    out = []
    with _client() as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
            sort=FlowRunSort.START_TIME_ASC,
            limit=limit,
        )
        names = _flow_names(client, runs)
        for r in runs:
            if names.get(r.flow_id) != UPDATE_FLOW or not r.state.state_details.pause_key:
                continue
            key = r.state.state_details.pause_key
            proposal = _proposal(client, r.id, key)
            timeout, expired = _timeout(r.state)
            out.append(
                {
                    "run_id": str(r.id),
                    "run_name": r.name,
                    "key": key,
                    "change_id": (proposal or {}).get("change", {}).get("id"),
                    "scene": r.parameters.get("scene"),
                    "since": r.state.timestamp.isoformat(),
                    "timeout": timeout,
                    "expired": expired,
                    "proposal": proposal,
                }
            )
    out.sort(key=lambda d: d["since"])
    return out


def decide(run_id: str | UUID, key: str, decision: dict[str, Any]) -> dict[str, Any]:
    """Resume run ``run_id`` with ``decision`` on the change it waits for (``key``, its pause key).

    Raises:
        ReviewError: no such run; it is not waiting (already decided, finished); it waits for another
        change; the review timed out (the run then fails and nothing is merged); the server refused the
        decision (the reason names the field) — the run stays suspended.
    """
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus

    rid = _run_id(run_id)
    with _client() as client:
        state = _read_run(client, rid).state
        if _pause_expired(state):
            raise ReviewError(f"run {rid}: the review of {key} timed out; nothing was merged")
        if state is None or state.type != StateType.PAUSED:
            raise ReviewError(
                f"run {rid} is not waiting for a review (it is {state.name if state else 'new'})"
            )
        if state.state_details.pause_key != key:
            raise ReviewError(f"run {rid} waits for a decision on {state.state_details.pause_key}, not {key}")
        res = client.resume_flow_run(rid, run_input=decision)
        if res.status == SetStateStatus.ACCEPT:
            return {"run_id": str(rid), "key": key, "status": "resumed"}
        reason = getattr(res.details, "reason", None) or str(res.status)
        after = client.read_flow_run(rid).state
        if _pause_expired(after):
            raise ReviewError(f"run {rid}: the review of {key} timed out; nothing was merged ({reason})")
        if after is None or not after.is_paused() or after.state_details.pause_key != key:
            # another reviewer's decision got there first
            raise ReviewError(f"run {rid} is not waiting for a review of {key} any more (already decided)")
        raise DecisionRefused(f"run {rid}: decision on {key} refused: {' '.join(reason.split())}")


def _pause_expired(state) -> bool:
    """Whether ``state`` is the failure the server gives a suspended run whose review timed out."""
    return state is not None and state.is_failed() and "never resumed" in (state.message or "")


def _run_summary(r, flow: str | None) -> dict[str, Any]:
    return {
        "run_id": str(r.id),
        "name": r.name,
        "flow": flow,
        "state": r.state.name if r.state else None,
        "state_type": r.state.type.value if r.state else None,
        "scene": r.parameters.get("scene"),
        "started": r.start_time.isoformat() if r.start_time else None,
        "ended": r.end_time.isoformat() if r.end_time else None,
    }


def proposal(run_id: str | UUID, key: str) -> dict[str, Any]:
    """What run ``run_id`` proposed for the review ``key`` (kept after the decision). ReviewError if none."""
    rid = _run_id(run_id)
    from prefect.exceptions import ObjectNotFound

    with _client() as client:
        try:
            p = _proposal(client, rid, key)
        except ObjectNotFound:
            p = None
    if p is None:
        raise ReviewError(f"run {rid} proposed no change under {key!r}")
    return p


def run_info(run_id: str | UUID) -> dict[str, Any]:
    """One IDU run: name, flow, state, scene, times, the review it waits for, the version it published."""
    from reconstruction.store import SceneStore

    rid = _run_id(run_id)
    with _client() as client:
        r = _read_run(client, rid)
        flow = client.read_flow(r.flow_id).name
    paused = r.state is not None and r.state.is_paused()
    out = {
        **_run_summary(r, flow),
        "waiting_for": r.state.state_details.pause_key if paused else None,
        "version": None,
    }
    if flow == UPDATE_FLOW and out["scene"]:
        try:
            scene = SceneStore.from_ref(out["scene"])
            for n in reversed(scene.version_numbers()):
                if scene.version(n).meta.get("flow_run_id") == str(rid):
                    out["version"] = n
                    break
        except IDUError:
            pass
    return out


def _proposals(run_id: UUID) -> list[dict[str, Any]]:
    """What an update run showed its reviewers: the pending proposal and the decided changes (its ledger)."""
    import json
    from pathlib import Path

    from prefect.exceptions import ObjectNotFound

    from reconstruction.store import parse_scene_ref

    out = []
    with _client() as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return out
        key = run.state.state_details.pause_key if run.state is not None and run.state.is_paused() else None
        if key and (p := _proposal(client, run_id, key)):
            out.append(p)
    scene = run.parameters.get("scene")
    if not scene:
        return out
    store, name = parse_scene_ref(scene)
    for ledger in (Path(store) / ".updates" / name).glob(f"*/run-{run_id}.json"):
        for d in json.loads(ledger.read_text()).get("decisions", []):
            out.append({"change": d["candidate"], "detect_folder": d["detect_folder"]})
    return out


def crop_path(run_id: str | UUID, change_id: str):
    """The first crop of a change of an update run (a file inside the run's detect folder), or None."""
    from pathlib import Path

    rid = _run_id(run_id)
    for p in _proposals(rid):
        c = p.get("change") or {}
        if c.get("id") != change_id or not c.get("crops"):
            continue
        folder = Path(p["detect_folder"]).resolve()
        f = (folder / next(iter(c["crops"].values()))).resolve()
        if folder in f.parents and f.is_file():
            return f
    return None


def recent_runs(limit: int = 50) -> list[dict[str, Any]]:
    """IDU flow runs, newest first: name, flow, state, scene, start and end."""
    from prefect.client.schemas.sorting import FlowRunSort

    out = []
    with _client() as client:
        runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
        names = _flow_names(client, runs)
        for r in runs:
            flow = names.get(r.flow_id)
            if flow not in IDU_FLOWS:
                continue
            out.append(
                {
                    **_run_summary(r, flow),
                    "deployment_id": str(r.deployment_id) if r.deployment_id else None,
                }
            )
    return out


__all__ = [
    "DecisionRefused",
    "ReviewError",
    "crop_path",
    "decide",
    "pending_reviews",
    "proposal",
    "recent_runs",
    "run_info",
]
