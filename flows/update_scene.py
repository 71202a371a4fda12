"""``update_scene``: new photos in, a reviewed new scene version out.

    photos -> register -> detect -> identify -> assets -> review each change -> merge (transaction) -> report

Review suspends the run (``suspend_flow_run``, typed ``ReviewDecision``, one change at a time): the
process exits, the decision arrives through the API (the review UI, ``idu`` or any Prefect client) and the
run is scheduled again; it re-executes from the top, every earlier task answering from its persisted
cache and every earlier review from its stored input, so nothing is recomputed however long the review
took or whatever restarted meanwhile. Publishing holds the scene (a Prefect concurrency limit per scene,
then the store's lock) and runs in a transaction: the version is staged, then ``current`` moves; a failure
rolls back and removes the staged version. If another update landed since detection, the run detects
again against the new version (decisions carry over to the same changes) instead of overwriting it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.context import get_run_context
from prefect.flow_runs import suspend_flow_run
from prefect.input import RunInput
from prefect.input.actions import create_flow_run_input, read_flow_run_input
from prefect.transactions import transaction
from pydantic import BaseModel, ConfigDict, Field

from generation.identify import LABELS
from reconstruction.errors import SceneLockedError
from tasks.update import (
    detect,
    identify_changes,
    make_asset,
    publish,
    register,
    review_pictures,
    scene_of,
    snapshot_photos,
    stage_merge,
    work_folder,
)

PROPOSAL_PREFIX = "idu-proposal-"


class DetectOptions(BaseModel):
    """Change detection settings (reconstruction.changes.DetectConfig)."""

    backend: Literal["ssim", "dinov2"] = Field(
        "ssim", description="ssim (offline) or dinov2 (needs weights)."
    )
    model: str = Field("dinov2-small", description="Model name or local folder for the dinov2 backend.")
    k_mad: float = Field(5.0, gt=0, description="Changed-pixel threshold in robust standard deviations.")


class AssetOptions(BaseModel):
    """How added objects get their assets (generation.assets.AssetConfig)."""

    backend: Literal["multiview", "hull", "triplane", "triposr", "trellis"] = Field(
        "multiview",
        description="multiview (offline default: optimised against the photos), hull (no optimisation), "
        "or an image-to-3D generator (needs its weights).",
    )
    single_view_backend: Literal["triplane", "triposr", "trellis"] | None = Field(
        None, description="Image-to-3D generator for objects seen in fewer than 2 photos."
    )
    model: str | None = Field(None, description="Generator weights: registered name or local folder.")
    steps: int = Field(100, ge=0, description="Optimisation steps of the multiview backend.")


class UpdateOptions(BaseModel):
    """How an update runs (the CLI and the deployment share this model; Prefect renders it as a form)."""

    auto_approve: bool = Field(False, description="Approve every change without review (benchmarks, demo).")
    review_timeout_hours: float = Field(
        7 * 24.0, gt=0, description="How long a change waits for its review; then nothing is merged."
    )
    detect: DetectOptions = Field(default_factory=DetectOptions)
    assets: AssetOptions = Field(default_factory=AssetOptions)
    max_redetects: int = Field(3, ge=0, description="Re-detections when other updates land meanwhile.")
    classifier: str | None = Field(
        None,
        description="Model (registered name or folder) that labels the changes; none: the reviewer does.",
    )
    grow_model: bool = Field(True, description="Add the registered photos to the new version's COLMAP model.")
    review_url: str | None = Field(None, description="Base URL of the review UI (links in the report).")


class ReviewDecision(RunInput):
    """A reviewer's decision on one change. The server checks it against this schema (invalid input is
    refused and the run stays suspended)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"action": {"const": "relabel"}}},
                    "then": {"required": ["label"], "properties": {"label": {"type": "string"}}},
                },
                {
                    "if": {"properties": {"action": {"const": "adjust"}}},
                    "then": {
                        "anyOf": [
                            {"required": [k], "properties": {k: {"type": t}}}
                            for k, t in (
                                ("translation", "array"),
                                ("rotation_wxyz", "array"),
                                ("scale", "number"),
                            )
                        ]
                    },
                },
            ]
        },
    )

    action: Literal["approve", "reject", "relabel", "adjust", "regenerate"]
    reviewer: str = Field(min_length=1, max_length=64)
    comment: str = Field("", max_length=2000)
    label: Literal[LABELS] | None = None  # type: ignore[valid-type]
    translation: list[float] | None = Field(
        None, min_length=3, max_length=3, description="metres, scene frame"
    )
    rotation_wxyz: list[float] | None = Field(None, min_length=4, max_length=4)
    scale: float | None = Field(None, gt=0.01, lt=100)


def _placement(base: dict[str, Any], d: ReviewDecision) -> dict[str, Any]:
    """A reviewer's adjustment: translation added, rotation composed (about the object), scale multiplied."""
    import numpy as np

    from reconstruction.cameras import quat_multiply

    out = dict(base)
    if d.rotation_wxyz is not None:
        unit = [np.asarray(q, float) / np.linalg.norm(q) for q in (d.rotation_wxyz, base["rotation_wxyz"])]
        out["rotation_wxyz"] = [float(v) for v in quat_multiply(*unit)]
    if d.translation is not None:
        out["translation"] = [a + b for a, b in zip(base["translation"], d.translation, strict=True)]
    if d.scale is not None:
        out["scale"] = float(base.get("scale", 1.0)) * d.scale
    return out


def _propose(key: str, proposal: dict[str, Any]) -> None:
    """What the review UI shows for the change (a flow-run input next to the decision's keys), its
    pictures rendered first; once per review (the run re-executes from the top after each resume)."""
    if read_flow_run_input(PROPOSAL_PREFIX + key) is not None:
        return
    try:
        review_pictures(proposal, key)
    except Exception as e:  # noqa: BLE001 - the review app renders them on demand then
        get_run_logger().warning("%s: the review pictures could not be made (%s)", key, e)
    create_flow_run_input(PROPOSAL_PREFIX + key, proposal)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _decided_at(key: str) -> str:
    """When the reviewer's input for ``key`` reached the server (the flow re-runs from the top after
    each resume, so the time it reads the input is not the decision's)."""
    from prefect.client.orchestration import get_client

    run_id = get_run_context().flow_run.id
    with get_client(sync_client=True) as client:
        found = client.filter_flow_run_input(run_id, f"suspended-{key}-response", 1, set())
    return found[0].created.isoformat(timespec="seconds") if found and found[0].created else _now()


def _same_change(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import numpy as np

    if a["kind"] != b["kind"]:
        return False
    diag = max(np.linalg.norm(a["box"]["size"]), np.linalg.norm(b["box"]["size"]), 1e-6)
    return float(np.linalg.norm(np.subtract(a["box"]["center"], b["box"]["center"]))) <= 0.5 * diag


def _carried(c: dict[str, Any], earlier: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A decision on the same change made against an earlier version of the scene."""
    for e in reversed(earlier):
        if e["action"] in ("approve", "reject") and _same_change(c, e["candidate"]):
            return e
    return None


def review_change(
    scene: str,
    base: int,
    batch,
    detection,
    reg,
    c: dict[str, Any],
    asset: dict | None,
    options: UpdateOptions,
    earlier: list[dict[str, Any]],
) -> dict[str, Any]:
    """One change, reviewed until approved or rejected; returns the final decision record."""
    logger = get_run_logger()
    label, seed, rounds = c.get("label"), 0, []
    placement = dict(asset["transform"]) if asset else None
    carried = _carried(c, earlier)
    for rnd in range(20):
        key = f"v{base}-{c['id']}-r{rnd}"
        stored = not options.auto_approve and carried is None  # a reviewer's input on the server
        when = _now() if carried is None else (carried.get("rounds") or [{}])[-1].get("decided_at", _now())
        if options.auto_approve:
            d = ReviewDecision(action="approve", reviewer="auto-approve")
        elif carried is not None:
            d = ReviewDecision(
                action=carried["action"],
                reviewer=carried["reviewer"],
                comment=f"carried over from version {carried['base']}: {carried['comment']}",
            )
            label = label or carried.get("label")
        else:
            proposal = {
                "change": c,
                "asset": asset,
                "placement": placement,
                "label": label,
                "base": base,
                "scene": scene,
                "batch": batch["hash"],
                "detect_folder": detection["folder"],
                "photos": batch["photos"],
                "round": rnd,
            }
            _propose(key, proposal)
            d = suspend_flow_run(
                wait_for_input=ReviewDecision, key=key, timeout=int(options.review_timeout_hours * 3600)
            )
        rounds.append(
            d.model_dump(
                include={"action", "reviewer", "comment", "label", "translation", "rotation_wxyz", "scale"}
            )
            | {"decided_at": _decided_at(key) if stored else when}
        )
        logger.info("%s: %s by %s%s", c["id"], d.action, d.reviewer, f" ({d.comment})" if d.comment else "")
        if d.label:
            label = d.label
        moves = any(v is not None for v in (d.translation, d.rotation_wxyz, d.scale))
        if moves and placement is not None:
            placement = _placement(placement, d)
        elif moves:
            logger.warning("%s: a %s change has no placement to adjust; ignored", c["id"], c["kind"])
        if d.action in ("approve", "reject"):
            return {
                "change_id": c["id"],
                "kind": c["kind"],
                "action": d.action,
                "reviewer": d.reviewer,
                "comment": d.comment,
                "label": label,
                "placement": placement,
                "asset": asset,
                "rounds": rounds,
                "base": base,
                "candidate": c,
            }
        if d.action == "regenerate" and c["kind"] == "added":
            seed += 1
            asset = make_asset(scene, base, batch, detection, c, reg, options.assets.model_dump(), seed=seed)
            placement = dict(asset["transform"])
        if (
            d.action == "relabel"
            and c["kind"] == "added"
            and (label == "person") != (c.get("label") == "person")
        ):
            c = {**c, "label": label}  # into or out of the person branch: the asset is built again
            asset = make_asset(scene, base, batch, detection, c, reg, options.assets.model_dump(), seed=seed)
            placement = dict(asset["transform"])
            logger.info("%s: labelled %s; %s asset rebuilt", c["id"], label, asset["backend"])
        carried = None
    raise RuntimeError(f"{c['id']}: no approve/reject after 20 review rounds")


def _merge_entry(r: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    c = r["candidate"]
    e = {
        "change_id": r["change_id"],
        "action": r["action"],
        "kind": r["kind"],
        "reviewer": r["reviewer"],
        "comment": r["comment"] or None,
        "label": r["label"],
        "decided_at": r["rounds"][-1]["decided_at"] if r.get("rounds") else None,
        "rounds": r.get("rounds", [])[:-1],
    }
    if r["action"] != "approve":
        return e
    folder = Path(r["detect_folder"])
    if c["kind"] in ("removed", "moved"):
        e["gaussian_ids"] = str(folder / c["gaussian_ids"])
    if c["kind"] == "added":
        e["asset"], e["transform"] = r["asset"]["path"], r["placement"]
    if c["kind"] == "moved":
        shift = np.subtract(c["box"]["center"], c["box_before"]["center"])
        e["transform"] = {"rotation_wxyz": [1.0, 0.0, 0.0, 0.0], "translation": shift.tolist()}
    return e


def _published_by(scene, run_id: str) -> int | None:
    for n in reversed(scene.version_numbers()):
        if scene.version(n).meta.get("flow_run_id") == run_id:
            return n
    return None


def _limit_name(scene: str) -> str:
    return "idu-merge-" + hashlib.sha256(str(Path(scene).resolve()).encode()).hexdigest()[:16]


def _ensure_limit(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass


def merge_approved(
    scene: str,
    base: int,
    decisions: list[dict[str, Any]],
    batch,
    reg_path: Path,
    options: UpdateOptions,
    run_id: str,
) -> dict[str, Any] | None:
    """Stage and publish the approved changes; None if ``current`` moved since detection (re-detect)."""
    logger = get_run_logger()
    doc: dict[str, Any] = {"base_version": base, "decisions": [_merge_entry(d) for d in decisions]}
    if options.grow_model:
        doc["photos"] = {"registration": str(reg_path), "images": batch["photos"]}
    name = _limit_name(scene)
    _ensure_limit(name)
    sc = scene_of(scene)
    with concurrency(name, occupy=1, strict=True, timeout_seconds=3600):
        for attempt in range(60):  # the store's lock: another writer (a CLI merge, a rollback) may hold it
            try:
                with sc.writer() as w:
                    if sc.current_version() != base:
                        logger.warning(
                            "version %s landed since detection against %d: detecting again",
                            sc.current_version(),
                            base,
                        )
                        return None
                    with transaction(key=f"publish-{run_id}-v{base}"):
                        staged = stage_merge(w, doc, str(work_folder(scene, batch["hash"])), run_id)
                        number = publish(w, staged["staged"])
                    return {**staged, "version": number}
            except SceneLockedError:
                if attempt == 59:
                    raise
                time.sleep(2)
    return None


def _report(scene: str, result: dict[str, Any], reg: dict[str, Any], options: UpdateOptions) -> None:
    ui = (options.review_url or "").rstrip("/")
    lines = [f"# Update of `{scene}`", ""]
    v = result.get("version")
    lines += [
        f"**New version: {v}** (parent {result['base_version']})"
        if v
        else f"**No new version** ({result['outcome']}); current stays {result['base_version']}",
        "",
    ]
    lines += ["## Photos", "", "| photo | status | reason | inliers |", "|---|---|---|---|"]
    for r in reg["images"]:
        lines.append(
            f"| {r['name']} | {r['status']} | {r.get('reason') or ''} | {r.get('num_inliers') or ''} |"
        )
    lines += ["", "## Changes", ""]
    rows = []
    for d in result["decisions"]:
        c = d["candidate"]
        crop = next(iter((c.get("crops") or {}).values()), None)
        thumb = f"![{c['id']}]({ui}/files/{result['run_id']}/{c['id']}/crop)" if ui and crop else ""
        diff = (result.get("diff") or {}).get(d["change_id"], {})
        lines.append(
            f"- **{c['id']}** {c['kind']} ({d['label'] or 'unlabelled'}, confidence {c['confidence']}):"
            f" {d['action']} by {d['reviewer']}{' — ' + d['comment'] if d['comment'] else ''} {thumb}"
        )
        rows.append(
            {
                "change": c["id"],
                "kind": c["kind"],
                "label": d["label"] or "",
                "confidence": c["confidence"],
                "decision": d["action"],
                "reviewer": d["reviewer"],
                "comment": d["comment"],
                "gaussians_removed": diff.get("removed", 0),
                "gaussians_added": diff.get("added", 0),
            }
        )
    if not rows:
        lines.append("No change found.")
    key = "update-" + "".join(ch if ch.isalnum() else "-" for ch in Path(scene).name.lower())
    create_markdown_artifact("\n".join(lines) + "\n", key=key, description=f"Update of {scene}")
    create_table_artifact(rows, key=key + "-changes", description=f"Changes in {scene}")


class RunLedger:
    """What one run saw across its re-executions (a JSON file in the batch's work folder): the versions it
    detected against, and the decisions made against each (carried over to the same changes when another
    update lands meanwhile and the run detects again)."""

    def __init__(self, path: Path):
        self.path = path
        doc = json.loads(path.read_text()) if path.is_file() else {}
        self.bases: list[int] = doc.get("bases", [])
        self.decisions: list[dict[str, Any]] = doc.get("decisions", [])

    def _save(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"bases": self.bases, "decisions": self.decisions}, indent=1) + "\n")
        tmp.replace(self.path)

    def detecting_against(self, base: int) -> None:
        if base not in self.bases:
            self.bases.append(base)
            self._save()

    def decided(self, d: dict[str, Any]) -> None:
        if not any(e["base"] == d["base"] and e["change_id"] == d["change_id"] for e in self.decisions):
            self.decisions.append(json.loads(json.dumps(d)))
            self._save()


@flow(name="update-scene", persist_result=True, log_prints=True)
def update_scene(scene: str, images: str, options: UpdateOptions | None = None) -> dict[str, Any]:
    """Update ``scene`` (STORE/NAME) from the photos in ``images``; returns what happened (also as
    Prefect artifacts: a markdown report and a table of changes)."""
    options = options or UpdateOptions()
    logger = get_run_logger()
    run_id = str(get_run_context().flow_run.id)
    sc = scene_of(scene)
    batch = snapshot_photos(scene, images)
    ledger = RunLedger(work_folder(scene, batch["hash"]) / f"run-{run_id}.json")
    result: dict[str, Any] = {"scene": scene, "run_id": run_id, "batch": batch["hash"]}
    if (done := _published_by(sc, run_id)) is not None:  # re-executed after publishing (a crash, a restart)
        meta = sc.version(done).meta
        logger.info("this run already published version %d", done)
        return {
            **result,
            "version": done,
            "base_version": meta.get("parent"),
            "outcome": "merged",
            "decisions": [],
            "diff": meta.get("diff"),
            "detected_against": ledger.bases,
            "redetections": max(0, len(ledger.bases) - 1),
        }
    reg: dict[str, Any] = {"images": []}
    while True:
        base = sc.current_version()
        ledger.detecting_against(base)
        result.update(base_version=base, decisions=[], detected_against=ledger.bases,
                      redetections=len(ledger.bases) - 1)  # fmt: skip
        if len(ledger.bases) > options.max_redetects + 1:
            result["outcome"] = (
                f"gave up after {options.max_redetects} re-detections (the scene keeps changing)"
            )
            break
        earlier = [d for d in ledger.decisions if d["base"] != base]
        reg = register(scene, base, batch)
        detection = detect(scene, base, batch, reg, options.detect.model_dump())
        if options.classifier:
            labels = identify_changes(scene, base, batch, detection, options.classifier)
            for c in detection["candidates"]:
                c["label"] = labels[c["id"]]["label"]
                c["label_scores"] = labels[c["id"]]["scores"]
        assets = {
            c["id"]: make_asset(scene, base, batch, detection, c, reg, options.assets.model_dump())
            for c in detection["candidates"]
            if c["kind"] == "added"
        }
        decisions = []
        for c in detection["candidates"]:
            d = review_change(scene, base, batch, detection, reg, c, assets.get(c["id"]), options, earlier)
            decisions.append({**d, "detect_folder": detection["folder"]})
            ledger.decided(decisions[-1])
        result.update(decisions=decisions, photos={r["name"]: r["status"] for r in reg["images"]})
        if not any(d["action"] == "approve" for d in decisions):
            result["outcome"] = "nothing approved" if decisions else "no change found"
            break
        reg_path = work_folder(scene, batch["hash"]) / f"v{base}" / "registration.json"
        merged = merge_approved(scene, base, decisions, batch, reg_path, options, run_id)
        if merged is not None:
            result.update(
                version=merged["version"],
                diff=merged["diff"],
                outcome="merged",
                num_gaussians=merged["num_gaussians"],
            )
            break
    _report(scene, result, reg, options)
    result["decisions"] = [
        {k: v for k, v in d.items() if k not in ("candidate", "asset")}
        | {"box": d["candidate"]["box"], "label_scores": d["candidate"].get("label_scores")}
        for d in result["decisions"]
    ]
    logger.info(
        "update of %s: %s%s",
        scene,
        result["outcome"],
        f", version {result['version']}" if result.get("version") else "",
    )
    return json.loads(json.dumps(result))


__all__ = ["LABELS", "PROPOSAL_PREFIX", "DetectOptions", "ReviewDecision", "UpdateOptions", "update_scene"]
