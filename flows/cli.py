"""The ``idu`` command line (contract: DESIGN.md, "Command line contract").

Commands that take ``--json`` print one JSON document on stdout; human output and logs go to stderr.
Failures exit non-zero with one line ``error: <reason>`` on stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="IDU: keep 3D Gaussian Splatting scenes up to date from new photos.",
)
scene_app = typer.Typer(no_args_is_help=True, help="Import, inspect, render, export and roll back scenes.")
app.add_typer(scene_app, name="scene")

log = logging.getLogger("idu")


def _setup_logging() -> None:
    level = os.environ.get("IDU_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the Prefect client's every request


def _emit(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def command(fn):
    """Run a command with IDU's error contract: one line on stderr, exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from reconstruction.errors import IDUError

        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except IDUError as e:
            typer.echo(f"error: {' '.join(str(e).split())}", err=True)
            raise typer.Exit(1) from None
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            typer.echo(f"error: {where}{e.strerror or e}", err=True)
            raise typer.Exit(1) from None
        except Exception as e:  # an unexpected failure still gets one line
            if os.environ.get("IDU_DEBUG"):
                raise
            msg = " ".join(str(e).split())
            typer.echo(
                f"error: internal {type(e).__name__}: {msg} (set IDU_DEBUG=1 for a traceback)", err=True
            )
            raise typer.Exit(1) from None

    return wrapper


SceneRef = Annotated[str, typer.Argument(metavar="STORE/NAME", help="The scene: its store folder and name.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ServedStore = Annotated[Path, typer.Option(help="Store folder (for a running `idu serve`).")]
VersionOpt = Annotated[int | None, typer.Option("--version", "-v", help="Scene version (default: current).")]


def _scene(ref: str):
    from reconstruction.store import SceneStore

    return SceneStore.from_ref(ref)


@scene_app.command("import")
@command
def scene_import(
    src: Annotated[Path, typer.Argument(help="Dataset or training output folder.")],
    store: Annotated[Path, typer.Option(help="Store folder (created if missing).")],
    name: Annotated[str, typer.Option(help="Scene name; an existing name gets a new version.")],
    format: Annotated[str, typer.Option("--format", help="auto|inria|nerfstudio|colmap")] = "auto",
    ply: Annotated[Path | None, typer.Option(help="Splats for --format colmap (INRIA PLY).")] = None,
    source: Annotated[Path | None, typer.Option(help="COLMAP dataset of an inria/nerfstudio output.")] = None,
    json_out: JsonFlag = False,
):
    """Import a 3DGS scene (COLMAP dataset + PLY, INRIA output, nerfstudio splatfacto output)."""
    from reconstruction.importers import import_scene
    from reconstruction.store import SceneStore

    scene = SceneStore(store).scene(name)
    v = import_scene(scene, src, format, ply, source)
    info = scene.version(v).info()
    typer.echo(
        f"imported {src} as {scene.ref} version {v} ({info['num_gaussians']} Gaussians, "
        f"{len(info['images'])} images)",
        err=True,
    )
    if json_out:
        _emit(
            {k: info[k] for k in ("scene", "version", "num_gaussians", "sh_degree", "lineage")}
            | {"num_images": len(info["images"])}
        )


@scene_app.command("bootstrap")
@command
def scene_bootstrap(
    images_dir: Annotated[Path, typer.Argument(metavar="IMAGES_DIR", help="Folder of photos of the place.")],
    store: Annotated[Path, typer.Option(help="Store folder (created if missing).")],
    name: Annotated[str, typer.Option(help="Scene name; an existing name gets a new version.")],
    preset: Annotated[str, typer.Option(help="Training preset: fast|default|quality.")] = "default",
    iterations: Annotated[
        int | None, typer.Option(help="Training steps (the preset's schedule is stretched to fit).")
    ] = None,
    max_side: Annotated[int | None, typer.Option(help="Downscale photos to this longer side.")] = None,
    trainer: Annotated[str, typer.Option(help="cpu-gsplat|nerfstudio (IDU_NERFSTUDIO_BIN).")] = "cpu-gsplat",
    align_to: Annotated[
        Path | None, typer.Option(help="Ground-truth JSON (benchmark gt.json): align to its cameras.")
    ] = None,
    poses: Annotated[
        Path | None,
        typer.Option(help="Known poses and intrinsics (gt.json or {views: [...]}): triangulate, no mapping."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Run in this process, without Prefect (no server, no run record).")
    ] = False,
    json_out: JsonFlag = False,
):
    """Build a scene from photos alone: SfM (pycolmap) + 3DGS training -> a new version.

    Runs the bootstrap-scene deployment on the Prefect server of PREFECT_API_URL or of a running `idu serve`
    (with neither, an embedded one for the duration of the command); --local runs it here."""
    from reconstruction.sfm import list_images
    from reconstruction.store import SceneStore
    from reconstruction.train import preset as train_preset

    scene = SceneStore(store).scene(name)
    train_preset(preset, iterations=iterations, max_side=max_side)  # refuse a bad preset before starting
    list_images(images_dir)  # ... or a missing folder
    from reconstruction.bootstrap import TRAINERS
    from reconstruction.errors import IDUError

    if trainer not in TRAINERS:
        raise IDUError(f"--trainer {trainer}: expected one of {', '.join(TRAINERS)}")
    if local:
        from reconstruction.bootstrap import BootstrapConfig, bootstrap_scene

        config = BootstrapConfig(
            train=train_preset(preset, iterations=iterations, max_side=max_side),
            trainer=trainer,
            progress=not json_out and sys.stderr.isatty(),
        )
        if iterations is not None:
            config.nerfstudio_iterations = iterations
        v = bootstrap_scene(images_dir, scene, config, align_to, poses=poses)
    else:
        from flows import runs
        from flows.bootstrap import BootstrapOptions

        options = BootstrapOptions(
            preset=preset, iterations=iterations, max_side=max_side, trainer=trainer,
            align_to=str(align_to.resolve()) if align_to else None,
            poses=str(poses.resolve()) if poses else None,
        )  # fmt: skip
        with runs.connect(store) as conn:
            run = runs.start("bootstrap-scene", {"scene": str(Path(scene.ref).resolve()),
                                                 "images": str(images_dir.resolve()),
                                                 "options": options.model_dump()})  # fmt: skip
            typer.echo(f"started bootstrap run {run.name} ({run.id}) on {conn.api_url}", err=True)
            v = runs.result(runs.wait(run.id))["version"]
    ver = scene.version(v)
    meta = ver.meta
    lin = meta.get("lineage", {})
    sfm = lin.get("sfm", {})
    psnr = meta.get("test_psnr")
    typer.echo(
        f"bootstrapped {scene.ref} version {v}: {sfm.get('num_registered')}/{sfm.get('num_images')} photos "
        f"registered, {meta['num_gaussians']} Gaussians"
        + (f", held-out PSNR {psnr:.2f} dB" if psnr is not None else ""),
        err=True,
    )
    if json_out:
        _emit(
            {
                "scene": scene.ref,
                "version": v,
                "num_gaussians": meta["num_gaussians"],
                "num_images": sfm.get("num_images"),
                "num_registered": sfm.get("num_registered"),
                "unregistered": sfm.get("unregistered", []),
                "num_points3D": meta.get("num_points3D"),
                "test_psnr": psnr,
                "test_ssim": meta.get("test_ssim"),
                "trainer": lin.get("trainer"),
                "seconds": lin.get("seconds"),
                "alignment": lin.get("alignment"),
            }
        )


@scene_app.command("info")
@command
def scene_info(ref: SceneRef, version: VersionOpt = None, json_out: JsonFlag = False):
    """Describe a scene version, including its images and their poses."""
    info = _scene(ref).version(version).info()
    if json_out:
        _emit(info)
        return
    typer.echo(f"{info['scene']} version {info['version']}{' (current)' if info['current'] else ''}")
    for k in ("parent", "created_at", "reason", "num_gaussians", "sh_degree", "num_points3D"):
        typer.echo(f"  {k}: {info[k]}")
    typer.echo(f"  images: {len(info['images'])}")


@scene_app.command("versions")
@command
def scene_versions(ref: SceneRef, json_out: JsonFlag = False):
    """List the versions of a scene."""
    scene = _scene(ref)
    versions = scene.versions()
    current = scene.current_version()
    if json_out:
        _emit({"current": current, "versions": versions})
        return
    for v in versions:
        mark = "*" if v["version"] == current else " "
        typer.echo(f"{mark} v{v['version']:<4} parent={v['parent']!s:<5} {v['created_at']}  {v['reason']}")


@scene_app.command("rollback")
@command
def scene_rollback(
    ref: SceneRef,
    to: Annotated[int, typer.Option(help="Version to make current.")],
    json_out: JsonFlag = False,
):
    """Make an older version current again (nothing is deleted)."""
    scene = _scene(ref)
    prev = scene.current_version()
    scene.rollback(to)
    typer.echo(f"{scene.ref}: current moved from version {prev} to {to}", err=True)
    if json_out:
        _emit({"scene": scene.ref, "previous": prev, "current": to})


@scene_app.command("merge")
@command
def scene_merge(
    ref: SceneRef,
    decisions: Annotated[Path, typer.Option(help="Decisions JSON (format: reconstruction/merge.py).")],
    seams: Annotated[
        int, typer.Option(help="Seam refinement steps against the new photos (0: off, a pure edit).")
    ] = 0,
    json_out: JsonFlag = False,
):
    """Apply the approved changes of a review to the version they were detected on: the next version."""
    from reconstruction.merge import merge, read_decisions
    from reconstruction.seams import SeamConfig

    doc, base_dir = read_decisions(decisions)
    out = merge(_scene(ref), doc, base_dir, seams=SeamConfig(steps=seams) if seams > 0 else None)
    added = sum(d["added"] for d in out["diff"].values())
    removed = sum(d["removed"] for d in out["diff"].values())
    n_new = out["model"]["new_images"]
    typer.echo(f"{out['scene']}: version {out['version']} from {out['parent']} ({len(out['diff'])} "
               f"change(s): +{added} / -{removed} Gaussians, {n_new} new photo(s))", err=True)  # fmt: skip
    if json_out:
        _emit(out)


@scene_app.command("render")
@command
def scene_render(
    ref: SceneRef,
    out: Annotated[Path, typer.Option(help="PNG to write.")],
    image: Annotated[str | None, typer.Option(help="Render at the pose of this registered image.")] = None,
    pose_json: Annotated[Path | None, typer.Option(help="JSON with cam_from_world and camera.")] = None,
    version: VersionOpt = None,
    backend: Annotated[str, typer.Option(help="auto|torch|gsplat")] = "auto",
    background: Annotated[str, typer.Option(help="Background colour r,g,b in 0..1.")] = "0,0,0",
    json_out: JsonFlag = False,
):
    """Render a scene version at a registered image's pose or a given pose (undistorted pinhole)."""
    import time

    import numpy as np
    import torch
    from PIL import Image

    from reconstruction.cameras import ImageEntry
    from reconstruction.errors import IDUError
    from reconstruction.render import render

    if (image is None) == (pose_json is None):
        raise IDUError("give exactly one of --image NAME or --pose-json FILE")
    v = _scene(ref).version(version)
    if image is not None:
        entry = v.image(image).entry
    else:
        try:
            d = json.loads(Path(pose_json).read_text())
        except json.JSONDecodeError as e:
            raise IDUError(f"{pose_json}: not valid JSON ({e.msg} at line {e.lineno})") from None
        entry = ImageEntry.from_json(d, str(pose_json))
    try:
        bg = [float(x) for x in background.split(",")]
        assert len(bg) == 3
    except (ValueError, AssertionError):
        raise IDUError(f"--background {background!r}: expected three numbers r,g,b") from None
    device = "cuda" if backend != "torch" and torch.cuda.is_available() else "cpu"
    splats = v.load_splats().to_torch(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = render(splats, entry.camera, entry.cam_from_world, background=bg, backend=backend)
    seconds = time.perf_counter() - t0
    rgb = (res.rgb.clamp(0, 1) * 255 + 0.5).byte().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out)
    cov = float((res.alpha > 0.5).float().mean())
    typer.echo(
        f"rendered {v.scene.ref} v{v.number} at {entry.camera.width}x{entry.camera.height} "
        f"in {seconds:.2f} s -> {out}",
        err=True,
    )
    if json_out:
        _emit(
            {
                "scene": v.scene.ref,
                "version": v.number,
                "out": str(out),
                "width": entry.camera.width,
                "height": entry.camera.height,
                "seconds": seconds,
                "coverage": cov,
                "mean_rgb": [float(x) for x in np.asarray(rgb, float).reshape(-1, 3).mean(0) / 255],
            }
        )


@scene_app.command("export")
@command
def scene_export(
    ref: SceneRef,
    out: Annotated[Path, typer.Option(help="File to write.")],
    format: Annotated[str, typer.Option("--format", help="ply|splat|spz")] = "ply",
    version: VersionOpt = None,
    crop_box: Annotated[
        str | None,
        typer.Option(
            help='JSON oriented box {"center":[..],"size":[..],"rotation_wxyz":[..]}; keep splats inside.'
        ),
    ] = None,
    json_out: JsonFlag = False,
):
    """Export a scene version's splats (INRIA PLY, .splat, .spz), optionally cropped to a box."""
    from reconstruction.errors import IDUError
    from reconstruction.formats import crop, export

    box = None
    if crop_box is not None:
        try:
            b = json.loads(crop_box)
            box = (b["center"], b["size"], b.get("rotation_wxyz", [1, 0, 0, 0]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise IDUError(f"--crop-box: expected JSON with center, size[, rotation_wxyz] ({e})") from None
    v = _scene(ref).version(version)
    splats = v.load_splats()
    if box is not None:
        splats = crop(splats, box)
    export(splats, out, format)
    n = len(splats)
    typer.echo(f"exported {v.scene.ref} v{v.number} as {format} -> {out}", err=True)
    if json_out:
        _emit(
            {
                "scene": v.scene.ref,
                "version": v.number,
                "format": format,
                "out": str(out),
                "num_gaussians": n,
                "bytes": out.stat().st_size,
            }
        )


# -- idu bench -----------------------------------------------------------------------------------
@app.command("register")
@command
def register(
    ref: SceneRef,
    images: Annotated[Path, typer.Option(help="Folder of new photos.")],
    version: VersionOpt = None,
    camera: Annotated[
        str, typer.Option(help="auto|scene|exif|unknown: where the intrinsics come from.")
    ] = "auto",
    candidates: Annotated[int, typer.Option(help="Scene photos each new photo is matched against.")] = 12,
    min_inliers: Annotated[int, typer.Option(help="Inlier 2D-3D matches a photo needs.")] = 30,
    retrieval: Annotated[
        str, typer.Option(help="bow (offline, default) | dinov2 (needs its weights).")
    ] = "bow",
    retrieval_model: Annotated[
        str, typer.Option(help="Registered model name or local folder for --retrieval dinov2.")
    ] = "dinov2-small",
    json_out: JsonFlag = False,
):
    """Register new photos against a scene version (poses only; the store is not changed)."""
    from reconstruction.registration import RegistrationConfig, register_photos

    config = RegistrationConfig(
        camera=camera, num_candidates=candidates, min_inliers=min_inliers, retrieval=retrieval,
        retrieval_model=retrieval_model,
    )  # fmt: skip
    scene = _scene(ref)
    doc = register_photos(
        scene.version(version), images, config, progress=not json_out and sys.stderr.isatty()
    )
    s = doc["summary"]
    typer.echo(f"{s['registered']} registered, {s['rejected']} rejected in {s['seconds']:.1f} s", err=True)
    for r in doc["images"]:
        if r["status"] != "registered":
            typer.echo(f"  {r['name']}: rejected ({r['reason']})", err=True)
    if json_out:
        _emit(doc)


@app.command("detect")
@command
def detect(
    ref: SceneRef,
    images: Annotated[Path, typer.Option(help="Folder of new photos.")],
    out: Annotated[Path, typer.Option(help="Output folder: candidates.json, masks/, crops/, overview/.")],
    registration: Annotated[
        Path | None,
        typer.Option(help="An `idu register --json` document for these photos (default: register)."),
    ] = None,
    version: VersionOpt = None,
    backend: Annotated[
        str, typer.Option(help="ssim (offline, default) | dinov2 (needs its weights).")
    ] = "ssim",
    model: Annotated[
        str, typer.Option(help="Registered model name or local folder for --backend dinov2.")
    ] = "dinov2-small",
    threshold: Annotated[
        float,
        typer.Option(help="Changed-pixel threshold in robust standard deviations of the comparison noise."),
    ] = 5.0,
    json_out: JsonFlag = False,
):
    """Find what appeared, vanished or moved: render the scene at each registered photo, compare, lift to 3D
    (the store is not changed)."""
    from reconstruction.changes import DetectConfig, detect_changes

    config = DetectConfig(backend=backend, model=model, k_mad=threshold)
    scene = _scene(ref)
    doc = detect_changes(scene.version(version), images, out, registration, config)
    kinds = [c["kind"] for c in doc["candidates"]]
    summary = (
        ", ".join(f"{kinds.count(k)} {k}" for k in ("added", "removed", "moved") if k in kinds) or "none"
    )
    compared = sum(1 for s in doc["photos"].values() if s == "compared")
    secs = doc["seconds"]
    typer.echo(
        f"{len(kinds)} candidates ({summary}) from {compared} photos in {secs:.1f} s -> {out}", err=True
    )
    if json_out:
        _emit(doc)


@app.command("assets")
@command
def assets(
    ref: SceneRef,
    detect_dir: Annotated[Path, typer.Option("--detect", help="An `idu detect` output folder.")],
    images: Annotated[Path, typer.Option(help="The folder of the photos it compared.")],
    out: Annotated[Path, typer.Option(help="Output folder: <id>.ply, <id>.json, <id>_previews/.")],
    registration: Annotated[
        Path | None,
        typer.Option(help="`idu register --json` document (default: the detect folder's registration.json)."),
    ] = None,
    version: VersionOpt = None,
    candidate: Annotated[
        list[str] | None,
        typer.Option(help="Only these candidate ids (repeatable; default: every added one)."),
    ] = None,
    backend: Annotated[
        str, typer.Option(help="multiview (offline, default) | hull | triplane | triposr | trellis.")
    ] = "multiview",
    single_view_backend: Annotated[
        str | None, typer.Option(help="Image-to-3D generator for objects seen in fewer than 2 photos.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Generator weights: registered name or folder.")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps of the multiview backend.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed (another seed, another asset).")] = 0,
    json_out: JsonFlag = False,
):
    """Build an asset (Gaussians + placement, metrics, previews) for each added object a detection found
    (the store is not changed)."""
    from generation.assets import AssetConfig, asset_for_candidate
    from generation.multiview import MultiViewConfig
    from reconstruction.errors import IDUError

    scene = _scene(ref)
    cands_path = detect_dir / "candidates.json"
    reg_path = registration or detect_dir / "registration.json"
    docs = {}
    for path, what in ((cands_path, "candidates.json"), (reg_path, "registration")):
        try:
            docs[what] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise IDUError(f"{path}: cannot read the {what} ({e})") from None
    wanted = [c for c in docs["candidates.json"].get("candidates", []) if c.get("kind") == "added"
              and (not candidate or c["id"] in candidate)]  # fmt: skip
    missing = sorted(set(candidate or ()) - {c["id"] for c in wanted})
    if missing:
        raise IDUError(f"{cands_path}: no added candidate {', '.join(missing)}")
    config = AssetConfig(backend=backend, single_view_backend=single_view_backend, model=model, seed=seed,
                         multiview=MultiViewConfig(steps=steps, seed=seed))  # fmt: skip
    stored = scene.version(version)
    splats, scene_points = stored.load_splats(), None
    results = []
    for c in wanted:
        if scene_points is None and config.routes_to_person(c):
            scene_points = stored.load_points()
        reg = docs["registration"]
        doc = asset_for_candidate(detect_dir, c, reg, images, out, splats, config, scene_points)
        m = doc["metrics"]
        typer.echo(f"{c['id']}: {doc['backend']} asset of {doc['num_gaussians']} Gaussians, silhouette IoU "
                   f"{m['silhouette_iou']:.3f}, PSNR in the masks {m['psnr_mask']:.2f} dB -> {out}",
                   err=True)  # fmt: skip
        results.append(doc)
    if not wanted:
        typer.echo("no added objects to build assets for", err=True)
    if json_out:
        _emit({"scene": scene.ref, "assets": results})


def _store_of(ref: str) -> Path:
    from reconstruction.store import parse_scene_ref

    return parse_scene_ref(ref)[0]


def _review_hint(conn, run) -> None:
    key = run.state.state_details.pause_key
    page = f" at {conn.ui_url}/reviews/{run.id}/{key}" if conn.ui_url else ""
    typer.echo(
        f"review waiting: change {key} of run {run.name}: review it in the browser{page}, or decide with "
        f"`idu review decide {run.id} {key} --action approve --reviewer NAME`",
        err=True,
    )


@app.command("update")
@command
def update(
    ref: SceneRef,
    images: Annotated[Path, typer.Option(help="Folder of new photos.")],
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Approve every change.")] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the run to finish (and its reviews).")
    ] = False,
    review_timeout_hours: Annotated[float, typer.Option(help="How long each review may wait.")] = 168.0,
    timeout: Annotated[float | None, typer.Option(help="Give up waiting after this many seconds.")] = None,
    json_out: JsonFlag = False,
):
    """Update a scene from new photos: register, detect, make assets, review each change, merge.

    Uses the Prefect server of PREFECT_API_URL or of a running `idu serve`; with neither, starts an embedded
    one for the duration of the command (which then waits for the run)."""
    from flows import runs
    from flows.update_scene import UpdateOptions

    _scene(ref).version()  # the scene must exist: fail before starting anything
    if not images.is_dir():
        raise FileNotFoundError(2, "no such folder of photos", str(images))
    with runs.connect(_store_of(ref)) as conn:
        options = UpdateOptions(
            auto_approve=auto_approve, review_timeout_hours=review_timeout_hours, review_url=conn.ui_url
        )
        run = runs.start(
            "update-scene",
            {
                "scene": str(Path(ref).resolve()),
                "images": str(images.resolve()),
                "options": options.model_dump(),
            },
        )
        typer.echo(f"started update run {run.name} ({run.id}) on {conn.api_url}", err=True)
        if conn.embedded and not wait:
            typer.echo("no `idu serve` is running for this store: waiting here for the run", err=True)
        if not (wait or conn.embedded):
            if json_out:
                _emit(
                    {
                        "run_id": str(run.id),
                        "run_name": run.name,
                        "state": "scheduled",
                        "review_url": conn.ui_url,
                    }
                )
            return
        done = runs.wait(run.id, on_pause=lambda r: _review_hint(conn, r), timeout=timeout)
        res = runs.result(done)
    typer.echo(
        f"update of {ref}: {res['outcome']}" + (f", version {res['version']}" if res.get("version") else ""),
        err=True,
    )
    if json_out:
        _emit({**res, "run_name": done.name})


@app.command("runs")
@command
def runs_cmd(
    store: ServedStore = Path("store"),
    json_out: JsonFlag = False,
):
    """Recent IDU runs and the reviews waiting for a decision."""
    from flows import runs
    from review_ui.service import pending_reviews, recent_runs

    with runs.connect(store) as conn:
        if conn.embedded:
            typer.echo("(no server was running: started one; it has no runs of its own)", err=True)
        doc = {
            "runs": recent_runs(),
            "reviews": [{k: v for k, v in r.items() if k != "proposal"} for r in pending_reviews()],
        }
    for r in doc["runs"]:
        typer.echo(
            f"{r['started'] or '-':32} {r['flow']:16} {r['state']:12} {r['name']} {r['scene'] or ''}",
            err=True,
        )
    for r in doc["reviews"]:
        typer.echo(
            f"review waiting: {r['scene']} change {r['key']} (run {r['run_id']}, since {r['since']})",
            err=True,
        )
    if json_out:
        _emit(doc)


@contextlib.contextmanager
def _served(store: Path):
    """The Prefect server of PREFECT_API_URL or of a running `idu serve` (never an embedded one: a review
    needs the server that holds the run)."""
    from flows import runs
    from flows.services import prefect_home

    if not os.environ.get("PREFECT_API_URL") and not (prefect_home(store) / "serve.json").is_file():
        raise runs.RunError(f"no Prefect server is running for {store} (start `idu serve --store {store}`)")
    with runs.connect(store) as conn:
        if conn.embedded:
            raise runs.RunError(f"the `idu serve` of {store} is not answering (start it again)")
        yield conn


review_app = typer.Typer(no_args_is_help=True, help="Decide on the changes waiting for review.")
app.add_typer(review_app, name="review")


def _floats(text: str | None, n: int, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise typer.BadParameter(f"expected {n} comma-separated numbers, got {text!r}", param_hint=option)
    return vals


@review_app.command("decide")
@command
def review_decide(
    run_id: Annotated[str, typer.Argument(help="The suspended update run.")],
    key: Annotated[str, typer.Argument(help="The change it waits for (its pause key, e.g. v1-c1-r0).")],
    action: Annotated[str, typer.Option(help="approve|reject|relabel|adjust|regenerate")],
    reviewer: Annotated[str, typer.Option(help="Who decides.")],
    comment: Annotated[str, typer.Option(help="Why.")] = "",
    label: Annotated[
        str | None, typer.Option(help="person|vehicle|object|structure|vegetation|other")
    ] = None,
    translation: Annotated[str | None, typer.Option(help="Move by x,y,z metres (scene frame).")] = None,
    rotation: Annotated[str | None, typer.Option(help="Turn by a quaternion w,x,y,z.")] = None,
    scale: Annotated[float | None, typer.Option(help="Scale by this factor.")] = None,
    store: ServedStore = Path("store"),
    json_out: JsonFlag = False,
):
    """Resume a suspended update run with a decision (the server validates it)."""
    from review_ui.service import decide

    d: dict[str, Any] = {"action": action, "reviewer": reviewer, "comment": comment}
    for k, v in (
        ("label", label),
        ("translation", _floats(translation, 3, "--translation")),
        ("rotation_wxyz", _floats(rotation, 4, "--rotation")),
        ("scale", scale),
    ):
        if v is not None:
            d[k] = v
    with _served(store):
        out = decide(run_id, key, d)
    typer.echo(f"run {run_id}: {action} on {key} sent", err=True)
    if json_out:
        _emit(out)


@review_app.command("list")
@command
def review_list(
    store: ServedStore = Path("store"),
    json_out: JsonFlag = False,
):
    """Changes waiting for a decision, oldest first."""
    from review_ui.service import pending_reviews

    with _served(store):
        revs = pending_reviews()
    for r in revs:
        c = (r.get("proposal") or {}).get("change") or {}
        typer.echo(
            f"{r['since']} {r['scene']} {r['key']}: {c.get('kind')} (confidence {c.get('confidence')}) "
            f"run {r['run_id']}",
            err=True,
        )
    if json_out:
        _emit({"reviews": revs})


users_app = typer.Typer(no_args_is_help=True, help="Accounts of the review UI (STORE/.review/users.json).")
app.add_typer(users_app, name="users")
UsersStore = Annotated[Path, typer.Option(help="Store folder the review UI serves.")]


def _password(name: str, from_stdin: bool) -> str:
    """The new password: one line of stdin with --password-stdin, else asked twice on the terminal."""
    import getpass

    if from_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise typer.BadParameter("no terminal to ask for the password on; pass --password-stdin")
        pw = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != pw:
            raise typer.BadParameter("the two passwords differ")
    return pw


@users_app.command("add")
@command
def users_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    role: Annotated[
        str, typer.Option(help="viewer (looks), reviewer (decides), operator (also updates and rolls back).")
    ],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="Change an existing user's role and password.")
    ] = False,
    store: UsersStore = Path("store"),
    json_out: JsonFlag = False,
):
    """Create a review-UI account (the password is stored as an argon2id hash, never in clear)."""
    from review_ui.users import UserStore

    user = UserStore(store).add(name, role, _password(name, password_stdin), replace=replace)
    typer.echo(f"{'changed' if replace else 'added'} {user.name} ({user.role}) in {store}", err=True)
    if json_out:
        _emit({"user": user.name, "role": user.role})


@users_app.command("list")
@command
def users_list(store: UsersStore = Path("store"), json_out: JsonFlag = False):
    """The accounts and their roles."""
    from review_ui.users import UserStore

    users = UserStore(store).list()
    for u in users:
        typer.echo(f"{u.name}\t{u.role}", err=True)
    if json_out:
        _emit({"users": [{"user": u.name, "role": u.role} for u in users]})


@users_app.command("remove")
@command
def users_remove(name: Annotated[str, typer.Argument(help="User name.")], store: UsersStore = Path("store")):
    """Delete an account (its sessions end at their next request)."""
    from review_ui.users import UserStore

    UserStore(store).remove(name)
    typer.echo(f"removed {name}", err=True)


@app.command("serve")
@command
def serve_cmd(
    store: Annotated[Path, typer.Option(help="Store folder.")] = Path("store"),
    host: Annotated[str, typer.Option(help="Review UI address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Review UI port.")] = 8080,
):
    """Run IDU on this machine: a Prefect server (embedded, SQLite under STORE/.prefect, unless
    PREFECT_API_URL names one), the deployments (update-scene, refresh-scenes, bootstrap-scene) and the
    review UI. Ctrl-C stops everything."""
    import signal
    import threading

    from flows.services import services

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with services(store, host, port) as s:
        typer.echo(
            f"IDU serving {store.resolve()}\n  Prefect API: {s.api_url}\n  Prefect UI:  "
            f"{s.api_url.removesuffix('/api')}\n  review:      {s.ui_url}\nCtrl-C to stop",
            err=True,
        )
        from review_ui.users import UserStore

        if not UserStore(store).list():
            typer.echo(
                f"no review accounts yet: `idu users add NAME --role reviewer --store {store}` makes one",
                err=True,
            )
        while not stop.is_set():
            for p in list(s.processes.values()):
                if p.proc is not None and p.proc.poll() is not None:
                    raise RuntimeError(f"{p.name} exited with code {p.proc.returncode} (log: {p.log_path})")
            stop.wait(1.0)
        typer.echo("stopping ...", err=True)


bench_app = typer.Typer(no_args_is_help=True, help="Benchmark worlds with ground truth.")
app.add_typer(bench_app, name="bench")


@bench_app.command("world")
@command
def bench_world(
    seed: Annotated[int, typer.Option(help="World seed: the same seed gives the same world.")],
    out: Annotated[Path, typer.Option(help="World folder to write (a world already there is replaced).")],
    size: Annotated[
        str, typer.Option(help="small (30+6 views, 320x240) | medium (80+12 views, 640x480)")
    ] = "small",
    changes: Annotated[
        bool,
        typer.Option(
            "--changes/--no-changes",
            help="--no-changes: the after-capture of an unchanged "
            "place (after light and exposures, same poses): the no-false-alarm benchmark",
        ),
    ] = True,
    json_out: JsonFlag = False,
):
    """Generate a benchmark world: before/after captures, masks, meshes, gt.json, contact sheet."""
    import dataclasses
    import time

    from bench.worlds import WORLD_PRESETS, generate_world

    t0 = time.perf_counter()
    preset = WORLD_PRESETS.get(size)  # an unknown size is refused by generate_world
    config = None if changes or preset is None else dataclasses.replace(preset, changes=False)
    world = generate_world(seed, out, size, config)
    seconds = time.perf_counter() - t0
    gt = json.loads((world / "gt.json").read_text())
    nb, na = len(gt["before"]["images"]), len(gt["after"]["images"])
    typer.echo(
        f"world seed {seed} ({size}): {nb} before + {na} after views, {len(gt['changes'])} changes, "
        f"person {'yes' if gt['person'] else 'no'}, {seconds:.1f} s -> {world}",
        err=True,
    )
    if json_out:
        _emit(
            {
                "world": str(world),
                "seed": seed,
                "size": size,
                "generator_version": gt["generator_version"],
                "num_before": nb,
                "num_after": na,
                "changes": [
                    {"id": c["id"], "kind": c["kind"], "category": c["category"]} for c in gt["changes"]
                ],
                "person": gt["person"] is not None,
                "contact_sheet": str(world / "contact_sheet.png"),
                "seconds": round(seconds, 3),
            }
        )


@bench_app.command("run")
@command
def bench_run(
    world: Annotated[Path, typer.Argument(metavar="WORLD_DIR", help="A world made by `idu bench world`.")],
    preset: Annotated[str, typer.Option(help="Bootstrap training preset: fast|default|quality.")] = "default",
    iterations: Annotated[int | None, typer.Option(help="Override the preset's training steps.")] = None,
    baseline: Annotated[str | None, typer.Option(help="Also run a baseline: full-rebuild.")] = None,
    bootstrap_poses: Annotated[
        str,
        typer.Option(help="known: triangulate with the ground-truth before-cameras; sfm: SfM, then align."),
    ] = "known",
    stages: Annotated[
        str | None,
        typer.Option(help="Comma-separated stages to run (default: all); the others say 'not run'."),
    ] = None,
    update_photos: Annotated[
        str,
        typer.Option(help="even: the even after-photos update, the odd are held out; all: all update."),
    ] = "even",
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    json_out: JsonFlag = False,
):
    """Judge every stage on a benchmark world (bootstrap cached per world); missing stages are listed."""
    from bench.runner import format_table, run_benchmark

    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages else None
    report = run_benchmark(world, preset, baseline, iterations, bootstrap_poses, chosen, update_photos)
    typer.echo(format_table(report), err=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    if json_out:
        _emit(report)


if __name__ == "__main__":
    app()
