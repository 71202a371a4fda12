"""``refresh_scenes``: a scheduled scan of an inbox of new photo batches, one update run per batch.

Inbox layout (a folder or any fsspec URL, e.g. ``s3://bucket/inbox``)::

    INBOX/<scene name>/<batch>/<photos>

A batch is taken once its files have not changed for ``settle_seconds`` (an upload in progress is left
for the next scan). It is copied to ``STORE/.inbox/<scene>/<content hash>/`` and an ``update-scene`` run
is started with the idempotency key ``<scene>:<content hash>``: the same photos are never processed twice,
whether the batch is scanned again, re-uploaded under another name, or the scan itself is retried.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from flows.deployments import full_name
from flows.update_scene import UpdateOptions
from tasks.update import PHOTO_SUFFIXES, batch_hash


def _mtime(info: dict[str, Any]) -> float:
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return 0.0


def list_batches(inbox: str) -> list[dict[str, Any]]:
    """Every ``<scene>/<batch>/`` folder of the inbox with its photo files (name, size, mtime)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(inbox)
    if not fs.exists(root):
        return []
    out = []
    for sdir in sorted(fs.ls(root, detail=True), key=lambda i: i["name"]):
        if sdir["type"] != "directory" or Path(sdir["name"]).name.startswith("."):
            continue
        for bdir in sorted(fs.ls(sdir["name"], detail=True), key=lambda i: i["name"]):
            if bdir["type"] != "directory" or Path(bdir["name"]).name.startswith("."):
                continue
            files = [
                f
                for f in fs.ls(bdir["name"], detail=True)
                if f["type"] == "file" and Path(f["name"]).suffix.lower() in PHOTO_SUFFIXES
            ]
            if files:
                out.append(
                    {
                        "scene": Path(sdir["name"]).name,
                        "batch": Path(bdir["name"]).name,
                        "path": bdir["name"],
                        "files": files,
                        "fs": fs,
                    }
                )
    return out


@task(name="fetch batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_batch(b: dict[str, Any], store: str) -> dict[str, Any]:
    """Copy a batch to the store's inbox area, named by its content hash."""
    staging = Path(store) / ".inbox" / b["scene"] / f".fetch-{b['batch']}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for f in b["files"]:
        b["fs"].get(f["name"], str(staging / Path(f["name"]).name))
    h = batch_hash(sorted(staging.iterdir()))
    dst = staging.parent / h[:16]
    if dst.exists():
        shutil.rmtree(staging)
    else:
        staging.rename(dst)
    return {"scene": b["scene"], "batch": b["batch"], "hash": h, "images": str(dst)}


@flow(name="refresh-scenes", log_prints=True)
def refresh_scenes(
    inbox: str, store: str, settle_seconds: float = 30.0, options: UpdateOptions | None = None
) -> list[dict[str, Any]]:
    """Start one update run per new batch in ``inbox`` for the scenes of ``store``; returns the batches
    seen this time with their run (``"new": False`` when the batch had been started before)."""
    from reconstruction.store import SceneStore

    logger = get_run_logger()
    options = options or UpdateOptions()
    ledger_path = Path(store) / ".inbox" / "seen.json"
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {"batches": {}, "runs": {}}
    now, out = time.time(), []
    for b in list_batches(inbox):
        where = f"{b['scene']}/{b['batch']}"
        if not SceneStore(store).scene(b["scene"]).exists:
            logger.warning("%s: no scene %r in %s; skipped", where, b["scene"], store)
            continue
        if now - max(_mtime(f) for f in b["files"]) < settle_seconds:
            logger.info("%s: still changing; next scan", where)
            continue
        signature = sorted([Path(f["name"]).name, f.get("size"), _mtime(f)] for f in b["files"])
        seen = ledger["batches"].get(where)
        if seen and seen["signature"] == signature:
            continue  # listed before and unchanged: its run exists
        got = fetch_batch(b, store)
        key = f"{b['scene']}:{got['hash']}"
        new = key not in ledger["runs"]
        run = run_deployment(
            full_name("update-scene"),
            timeout=0,
            idempotency_key=key,
            as_subflow=False,
            parameters={
                "scene": f"{store}/{b['scene']}",
                "images": got["images"],
                "options": options.model_dump(),
            },
        )
        ledger["batches"][where] = {"signature": signature, "hash": got["hash"], "run": str(run.id)}
        ledger["runs"][key] = str(run.id)
        out.append({**got, "run": str(run.id), "new": new})
        logger.info(
            "%s: batch %s -> update run %s%s",
            where,
            got["hash"][:16],
            run.name,
            "" if new else " (these photos were started before)",
        )
    ledger_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = ledger_path.with_name(".seen.json.tmp")
    tmp.write_text(json.dumps(ledger, indent=1) + "\n")
    tmp.replace(ledger_path)
    return out


__all__ = ["fetch_batch", "list_batches", "refresh_scenes"]
