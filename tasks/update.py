"""Prefect tasks of an update run: thin wrappers of the stages (reconstruction/, generation/).

Each cached task is keyed by its inputs (the scene, the version it reads, the content hash of the photo
batch, the options) and its source, and persists its result, so a run that resumes after a review that
took days, or after the server or the worker restarted, recomputes nothing. The files a task writes live
in the batch's work folder (``STORE/.updates/NAME/<batch>/``), named by the version they were computed
against; a task's result is the small JSON document that names them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE
from prefect.transactions import get_transaction

from reconstruction.store import SceneStore, StagedVersion, file_sha256, parse_scene_ref

CACHED = INPUTS + TASK_SOURCE
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}


def scene_of(ref: str):
    store, name = parse_scene_ref(ref)
    return SceneStore(store).scene(name)


def work_folder(ref: str, batch: str) -> Path:
    store, name = parse_scene_ref(ref)
    return Path(store).resolve() / ".updates" / name / batch[:16]


def batch_hash(files: list[Path]) -> str:
    """Content hash of a photo batch: names and bytes, independent of where the folder is."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f.name.encode() + b"\0" + file_sha256(f).encode() + b"\n")
    return h.hexdigest()


@task(name="snapshot photos", cache_policy=NO_CACHE)
def snapshot_photos(scene: str, images: str) -> dict[str, Any]:
    """Copy the batch into its work folder (the run then no longer depends on the inbox); the batch is
    named by its content hash. Hidden files are skipped; everything else is passed on (registration
    rejects what is not a photo, with the reason)."""
    from reconstruction.registration import list_photos

    folder = Path(images)
    files = list_photos(folder)
    h = batch_hash(files)
    dst = work_folder(scene, h) / "photos"
    if not dst.is_dir():
        tmp = dst.with_name(f".photos.{h[:8]}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, tmp / f.name)
        tmp.rename(dst)
    get_run_logger().info("batch %s: %d file(s) from %s", h[:16], len(files), folder)
    return {"hash": h, "photos": str(dst), "files": [f.name for f in files], "source": str(folder)}


@task(name="register", cache_policy=CACHED, persist_result=True)
def register(scene: str, version: int, batch: dict[str, Any]) -> dict[str, Any]:
    """Poses of the batch's photos in the scene frame (reconstruction.registration)."""
    from reconstruction.registration import register_photos

    out = work_folder(scene, batch["hash"]) / f"v{version}"
    out.mkdir(parents=True, exist_ok=True)
    doc = register_photos(scene_of(scene).version(version), batch["photos"])
    (out / "registration.json").write_text(json.dumps(doc, indent=1) + "\n")
    n = sum(r["status"] == "registered" for r in doc["images"])
    get_run_logger().info("registered %d of %d photo(s) against version %d", n, len(doc["images"]), version)
    return doc


@task(name="detect changes", cache_policy=CACHED, persist_result=True)
def detect(
    scene: str,
    version: int,
    batch: dict[str, Any],
    registration: dict[str, Any],
    detect_options: dict[str, Any],
) -> dict[str, Any]:
    """Change candidates (reconstruction.changes) with masks, crops and overviews in the work folder."""
    from reconstruction.changes import DetectConfig, detect_changes

    out = work_folder(scene, batch["hash"]) / f"v{version}" / "detect"
    if out.exists():
        shutil.rmtree(out)
    doc = detect_changes(
        scene_of(scene).version(version), batch["photos"], out, registration, DetectConfig(**detect_options)
    )
    doc["folder"] = str(out)
    get_run_logger().info(
        "%d candidate(s): %s",
        len(doc["candidates"]),
        ", ".join(f"{c['id']} {c['kind']}" for c in doc["candidates"]) or "none",
    )
    return doc


@task(name="identify", cache_policy=CACHED, persist_result=True)
def identify_changes(scene: str, version: int, batch: dict[str, Any], detection: dict[str, Any],
                     classifier: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    """A label per change from its crops (generation.identify), or None where the classifier is unsure."""
    import numpy as np
    from PIL import Image

    from generation.identify import identify

    out = {}
    for c in detection["candidates"]:
        crops = [np.asarray(Image.open(Path(detection["folder"]) / rel).convert("RGB"))
                 for rel in (c.get("crops") or {}).values()]  # fmt: skip
        label, scores = identify(crops, classifier)
        out[c["id"]] = {"label": label, "scores": scores}
        get_run_logger().info(
            "%s: %s %s", c["id"], label or "unsure", {k: round(v, 2) for k, v in scores.items()}
        )
    return out


@task(name="make asset", cache_policy=CACHED, persist_result=True)
def make_asset(
    scene: str,
    version: int,
    batch: dict[str, Any],
    detection: dict[str, Any],
    candidate: dict[str, Any],
    registration: dict[str, Any],
    options: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Gaussians for an added object (generation.assets); ``seed`` > 0 when a reviewer asked to regenerate;
    ``options``: the flow's AssetOptions."""
    from generation.assets import AssetConfig, asset_for_candidate
    from generation.multiview import MultiViewConfig

    opts = dict(options or {})
    steps = opts.pop("steps", None)
    config = AssetConfig(**opts, seed=seed)
    if steps is not None:
        config.multiview = MultiViewConfig(steps=steps, seed=seed)
    backend = "person" if config.routes_to_person(candidate) else config.backend
    out = work_folder(scene, batch["hash"]) / f"v{version}" / "assets" / f"{backend}-seed{seed}"
    stored = scene_of(scene).version(version)
    doc = asset_for_candidate(
        detection["folder"], candidate, registration, batch["photos"], out, stored.load_splats(), config,
        stored.load_points() if backend == "person" else None,
    )  # fmt: skip
    m = doc["metrics"]
    get_run_logger().info(
        "%s: %s asset, %d Gaussians, silhouette IoU %.3f, PSNR in the masks %.2f dB",
        candidate["id"], doc["backend"], doc["num_gaussians"], m["silhouette_iou"], m["psnr_mask"],
    )  # fmt: skip
    doc["path"] = str(out / doc["asset"])
    return doc


@task(name="review pictures", cache_policy=NO_CACHE)
def review_pictures(proposal: dict[str, Any], key: str) -> int:
    """The review page's pictures of a change (before/after/composite per photo; review_ui.media), made
    before the run asks for the review so that the reviewer does not wait for renders."""
    from review_ui.media import prepare

    return prepare(proposal, key)


@task(name="stage merge", cache_policy=NO_CACHE)
def stage_merge(writer, decisions: dict[str, Any], base_dir: str, flow_run_id: str | None) -> dict[str, Any]:
    """Write the new version into the store's staging area (not visible until published)."""
    from reconstruction.merge import merge

    res = merge(writer.scene, decisions, base_dir, flow_run_id=flow_run_id, writer=writer, publish=False)
    txn = get_transaction()
    txn.set("writer", writer)  # the flow still holds its lock when a rollback runs
    txn.set("staged", res["staged"])
    get_run_logger().info("staged version %d (parent %d)", res["version"], res["parent"])
    return res


@stage_merge.on_rollback
def _discard_staged(txn) -> None:
    from prefect.logging import get_logger

    staged = txn.get("staged", None)
    if staged is not None:
        st = StagedVersion.from_json(staged)
        txn.get("writer").discard(st)
        get_logger("idu.update").warning("rolled back: removed staged version %d", st.number)


@task(name="publish version", cache_policy=NO_CACHE)
def publish(writer, staged: dict[str, Any]) -> int:
    """Move ``current`` to the staged version (atomic rename); refused if ``current`` moved meanwhile."""
    number = writer.publish(StagedVersion.from_json(staged))
    get_run_logger().info("published version %d", number)
    return number


__all__ = [
    "batch_hash",
    "detect",
    "identify_changes",
    "make_asset",
    "publish",
    "register",
    "scene_of",
    "snapshot_photos",
    "stage_merge",
    "work_folder",
]
