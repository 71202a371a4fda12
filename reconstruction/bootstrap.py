"""Bootstrap a scene from photos alone: SfM, (alignment), 3DGS training, version 1 of a scene.

One stage call per line (STYLE.md 1)::

    rec = run_sfm(image_dir, work / "sfm", config.sfm)
    splats, stats = train_splats(rec, image_dir, config.train)          # or nerfstudio's splatfacto
    sim3, rec, splats = align_to_reference(rec, splats, centres)       # with align_to=gt.json
    scene.writer().add_version(splats, rec, images, files, reason="bootstrap", ...)

Everything is written into a work folder under the scene (``<scene>/.work/bootstrap-<hash>``, the hash of
the photos' contents and the SfM settings), so an interrupted run resumes its SfM.

The nerfstudio trainer (``trainer="nerfstudio"``) runs a separate nerfstudio installation's own commands
(``ns-train splatfacto`` on the COLMAP dataset, ``ns-export gaussian-splat``); its pins conflict with ours,
so it lives in its own environment, found through ``IDU_NERFSTUDIO_BIN`` (the folder holding ``ns-train``
and ``ns-export``) or ``BootstrapConfig.nerfstudio_bin``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap

from .cameras import Camera, Pose, model_images
from .errors import IDUError, SceneFormatError, SfMError
from .sfm import SfMConfig, align_to_reference, alignment_residuals, list_images, read_sfm_stats, run_sfm
from .splats import Splats
from .store import Scene, file_sha256
from .train import PRESETS, TrainConfig, train_splats

log = logging.getLogger(__name__)

TRAINERS = ("cpu-gsplat", "nerfstudio")
NERFSTUDIO_ENV = "IDU_NERFSTUDIO_BIN"


@dataclass
class BootstrapConfig:
    """How :func:`bootstrap_scene` turns photos into a scene."""

    sfm: SfMConfig = field(default_factory=SfMConfig)
    """Structure-from-motion settings."""
    train: TrainConfig = field(default_factory=lambda: dataclasses.replace(PRESETS["default"]))
    """Training settings for the built-in trainer (see ``reconstruction.train.PRESETS``)."""
    trainer: str = "cpu-gsplat"
    """cpu-gsplat: the built-in trainer (gsplat on CUDA, the CPU rasterizer otherwise); nerfstudio: a
    separate nerfstudio installation's splatfacto (GPU workers)."""
    nerfstudio_bin: str | None = None
    """Folder holding ns-train and ns-export (default: the IDU_NERFSTUDIO_BIN environment variable)."""
    nerfstudio_iterations: int = 30_000
    """splatfacto training steps."""
    nerfstudio_args: list[str] = field(default_factory=list)
    """Extra ns-train method arguments (e.g. ["--pipeline.model.sh-degree", "3"])."""
    device: str | None = None
    """Torch device for the built-in trainer (default: CUDA when available)."""
    progress: bool = True
    """Show training progress on stderr."""


# -- ground truth ----------------------------------------------------------------------------------
def _views_of(doc: Any) -> list[dict]:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        if isinstance(doc.get("views"), list):
            return doc["views"]
        before = doc.get("before")
        if isinstance(before, list):
            return before
        if isinstance(before, dict):
            for key in ("images", "views"):
                if isinstance(before.get(key), list):
                    return before[key]
    return []


def _read_reference(path: str | os.PathLike, option: str) -> tuple[Path, Any, list[dict]]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise IDUError(f"{path}: ground-truth file does not exist ({option})") from None
    except json.JSONDecodeError as e:
        raise IDUError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    views = _views_of(doc)
    for i, v in enumerate(views):
        if not isinstance(v, dict) or "name" not in v or "cam_from_world" not in v:
            raise IDUError(f"{path}: view {i} needs 'name' and 'cam_from_world'")
    if not views:
        raise IDUError(f"{path}: no views found (expected {{'views': [{{'name', 'cam_from_world'}}, ...]}})")
    return path, doc, views


def read_reference_centres(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Camera centres by image name from a ground-truth JSON.

    Accepted: the benchmark worlds' gt.json (``{"before": {"images": [{"name", "cam_from_world": {...}}]}}``,
    bench/README.md), ``{"views": [{"name", "cam_from_world": {"rotation_wxyz", "translation"}}, ...]}`` and
    a bare list of such views. A name given twice keeps its first pose.
    """
    path, _, views = _read_reference(path, "--align-to")
    out: dict[str, np.ndarray] = {}
    for v in views:
        name = Path(str(v["name"])).name
        if name not in out:
            out[name] = Pose.from_json(v["cam_from_world"], f"{path} view {name}").center()
    return out


def read_reference_poses(path: str | os.PathLike) -> dict[str, tuple[Pose, Camera]]:
    """Known poses and intrinsics by image name (``--poses``), from the same files as
    :func:`read_reference_centres`; each view's ``camera``, else the file's ``cameras.before`` (gt.json)."""
    path, doc, views = _read_reference(path, "--poses")
    shared = doc.get("cameras", {}).get("before") if isinstance(doc, dict) else None
    out: dict[str, tuple[Pose, Camera]] = {}
    for v in views:
        name = Path(str(v["name"])).name
        cam = v.get("camera", shared)
        if cam is None:
            raise IDUError(f"{path}: view {name} has no camera (and the file no cameras.before)")
        if name not in out:
            src = f"{path} view {name}"
            out[name] = (Pose.from_json(v["cam_from_world"], src), Camera.from_json(cam, src))
    return out


# -- work folder -----------------------------------------------------------------------------------
def work_folder(
    scene: Scene,
    image_dir: Path,
    names: list[str],
    sfm: SfMConfig,
    known: dict[str, tuple[Pose, Camera]] | None = None,
) -> Path:
    """``<scene>/.work/bootstrap-<hash>``: the hash of the photos (names and contents), the SfM config and
    the known poses if any."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0" + file_sha256(image_dir / n).encode() + b"\0")
    h.update(json.dumps(dataclasses.asdict(sfm), sort_keys=True).encode())
    if known is not None:
        h.update(json.dumps({n: [p.to_json(), c.to_json()] for n, (p, c) in sorted(known.items())}).encode())
    return scene.root / ".work" / f"bootstrap-{h.hexdigest()[:16]}"


# -- nerfstudio ------------------------------------------------------------------------------------
def find_nerfstudio(config: BootstrapConfig) -> Path:
    """The folder holding ``ns-train`` and ``ns-export``, or IDUError naming the environment variable."""
    where = config.nerfstudio_bin or os.environ.get(NERFSTUDIO_ENV)
    if not where:
        raise IDUError(
            f"--trainer nerfstudio: no nerfstudio installation configured; set {NERFSTUDIO_ENV} to the "
            "folder holding ns-train and ns-export of a nerfstudio environment (e.g. /opt/nerfstudio/bin)"
        )
    folder = Path(where).expanduser()
    missing = [b for b in ("ns-train", "ns-export") if not os.access(folder / b, os.X_OK)]
    if missing:
        raise IDUError(
            f"--trainer nerfstudio: {', '.join(missing)} not found (or not executable) in {folder} "
            f"(from {'the config' if config.nerfstudio_bin else NERFSTUDIO_ENV}); point {NERFSTUDIO_ENV} at "
            "the bin folder of a nerfstudio environment"
        )
    return folder


def nerfstudio_commands(
    ns_bin: Path, data: Path, output: Path, iterations: int = 30_000, extra: list[str] | tuple = ()
) -> tuple[list[str], list[str], Path]:
    """The ``ns-train splatfacto`` and ``ns-export gaussian-splat`` command lines for a COLMAP dataset.

    Args:
        ns_bin: folder holding the nerfstudio executables.
        data: dataset folder with ``images/`` and ``sparse/0`` (see :func:`write_nerfstudio_dataset`).
        output: where ns-train writes; the run folder is ``output/bootstrap/splatfacto/run``.
        iterations: training steps.
        extra: more ns-train method arguments (placed before the dataparser subcommand).
    Returns:
        (train command, export command, run folder).
    """
    run_dir = output / "bootstrap" / "splatfacto" / "run"
    train = [
        str(ns_bin / "ns-train"), "splatfacto",
        "--data", str(data),
        "--output-dir", str(output),
        "--experiment-name", "bootstrap",
        "--timestamp", "run",
        "--max-num-iterations", str(int(iterations)),
        "--vis", "tensorboard",
        "--viewer.quit-on-train-completion", "True",
        *extra,
        "colmap",
        "--colmap-path", "sparse/0",
        "--images-path", "images",
        "--load-3D-points", "True",
        "--downscale-factor", "1",
        "--eval-mode", "interval",
        "--eval-interval", "8",
    ]  # fmt: skip
    export = [
        str(ns_bin / "ns-export"), "gaussian-splat",
        "--load-config", str(run_dir / "config.yml"),
        "--output-dir", str(run_dir / "export"),
    ]  # fmt: skip
    return train, export, run_dir


def write_nerfstudio_dataset(rec: pycolmap.Reconstruction, image_dir: Path, data: Path) -> Path:
    """The COLMAP dataset layout nerfstudio's ``colmap`` dataparser reads: ``images/`` (links to the photos)
    and ``sparse/0`` (the model, binary)."""
    (data / "images").mkdir(parents=True, exist_ok=True)
    for e in model_images(rec):
        dst = data / "images" / e.name
        if not dst.exists():
            try:
                dst.symlink_to((image_dir / e.name).resolve())
            except OSError:
                shutil.copyfile(image_dir / e.name, dst)
    sparse = data / "sparse" / "0"
    sparse.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(sparse))
    return data


def train_nerfstudio(
    rec: pycolmap.Reconstruction, image_dir: Path, work: Path, config: BootstrapConfig
) -> tuple[Splats, dict[str, Any]]:
    """Train with a separate nerfstudio installation and import its splatfacto run (in ``rec``'s frame)."""
    from .nerfstudio import read_splatfacto

    ns_bin = find_nerfstudio(config)
    data = write_nerfstudio_dataset(rec, image_dir, work / "nerfstudio" / "data")
    output = work / "nerfstudio" / "outputs"
    train_cmd, export_cmd, run_dir = nerfstudio_commands(
        ns_bin, data, output, config.nerfstudio_iterations, config.nerfstudio_args
    )
    logfile = work / "nerfstudio" / "nerfstudio.log"
    t0 = time.perf_counter()
    for cmd in (train_cmd, export_cmd):
        log.info("running %s (log: %s)", " ".join(cmd), logfile)
        with open(logfile, "ab") as f:
            res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
        if res.returncode != 0:
            tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise IDUError(
                f"nerfstudio: {Path(cmd[0]).name} {cmd[1]} exited with status {res.returncode}: {tail[0]} "
                f"(see {logfile})"
            )
    splats = read_splatfacto(run_dir)
    stats = {
        "trainer": "nerfstudio",
        "run": str(run_dir),
        "iterations": config.nerfstudio_iterations,
        "seconds": time.perf_counter() - t0,
        "num_gaussians": len(splats),
        "test_psnr": None,
        "test_ssim": None,
    }
    return splats, stats


# -- the stage -------------------------------------------------------------------------------------
def bootstrap_scene(
    image_dir: str | os.PathLike,
    scene: Scene,
    config: BootstrapConfig | None = None,
    align_to: str | os.PathLike | None = None,
    flow_run_id: str | None = None,
    poses: str | os.PathLike | None = None,
) -> int:
    """Build a scene version from photos alone: SfM, training, optional alignment, ``add_version``.

    Args:
        image_dir: the photos (their file names become the image names).
        scene: the scene to write (a new scene gets version 1; an existing one a new version).
        config: :class:`BootstrapConfig` (default: SfM defaults, the "default" training preset).
        align_to: a ground-truth JSON (benchmark gt.json) with camera poses by image name: the model and
            the splats are moved into its frame with the similarity that best maps the SfM camera centres
            onto the ground-truth ones.
        flow_run_id: recorded in the version's meta when a flow runs this.
        poses: a JSON of known poses and intrinsics by image name (:func:`read_reference_poses`): no SfM
            mapping, points triangulated with those cameras fixed, the scene in their frame. Benchmarks use
            it so that later stages are measured against ground truth without SfM's own error.
    Returns:
        The new version number.
    Raises:
        SfMError: SfM failed or registered too few photos; IDUError: bad ``align_to`` file, nerfstudio not
        configured or failing; SceneFormatError: unreadable photos.
    """
    config = config or BootstrapConfig()
    if config.trainer not in TRAINERS:
        raise IDUError(f"--trainer {config.trainer}: expected one of {', '.join(TRAINERS)}")
    image_dir = Path(image_dir)
    names = list_images(image_dir)
    if not names:
        raise SfMError(f"{image_dir}: no photos (jpg, png, tif, bmp) in the folder")
    if align_to is not None and poses is not None:
        raise IDUError("--align-to and --poses exclude each other: known poses already fix the frame")
    reference = read_reference_centres(align_to) if align_to is not None else None
    known = read_reference_poses(poses) if poses is not None else None
    if known is not None and (unknown := [n for n in names if n not in known]):
        raise IDUError(f"{poses}: no pose for {len(unknown)} photo(s) of {image_dir}, e.g. {unknown[0]}")
    if config.trainer == "nerfstudio":
        find_nerfstudio(config)  # fail before the long SfM
    work = work_folder(scene, image_dir, names, config.sfm, known)
    work.mkdir(parents=True, exist_ok=True)
    log.info(
        "%s: bootstrapping from %d photos in %s (work folder %s)", scene.ref, len(names), image_dir, work
    )

    t0 = time.perf_counter()
    rec = run_sfm(image_dir, work / "sfm", config.sfm, names, known)
    sfm_stats = read_sfm_stats(work / "sfm")
    sfm_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    if config.trainer == "nerfstudio":
        splats, train_stats = train_nerfstudio(rec, image_dir, work, config)
    else:
        splats, train_stats = train_splats(
            rec, image_dir, config.train, device=config.device, progress=config.progress
        )
    train_seconds = time.perf_counter() - t0

    alignment = None
    if reference is not None:
        sim3, rec, splats = align_to_reference(rec, splats, reference)
        alignment = {
            "reference": str(Path(align_to).resolve()),
            "sim3": sim3.to_json(),
            "residuals": alignment_residuals(rec, reference),
        }
        log.info(
            "aligned to %s: scale %.4g, camera-centre rms %.4g over %d images",
            align_to, sim3.scale, alignment["residuals"]["rms"], alignment["residuals"]["n"],
        )  # fmt: skip

    images = model_images(rec)
    files = {e.name: image_dir / e.name for e in images}
    if not all(p.is_file() for p in files.values()):
        raise SceneFormatError(f"{image_dir}: photos disappeared during the bootstrap")
    train_summary = {k: v for k, v in train_stats.items() if k not in ("refinements", "test_views")}
    lineage = {
        "source": {"format": "bootstrap", "images": str(image_dir.resolve()), "num_photos": len(names)},
        "trainer": config.trainer,
        "sfm_config": dataclasses.asdict(config.sfm),
        "train_config": dataclasses.asdict(config.train) if config.trainer == "cpu-gsplat" else None,
        "sfm": sfm_stats,
        "training": train_summary,
        "alignment": alignment,
        "known_poses": None if poses is None else str(Path(poses).resolve()),
        "work": str(work),
        "seconds": {"sfm": sfm_seconds, "train": train_seconds},
    }
    if config.trainer == "nerfstudio":
        lineage["nerfstudio"] = {
            "iterations": config.nerfstudio_iterations,
            "args": list(config.nerfstudio_args),
        }
    with scene.writer() as w:
        version = w.add_version(
            splats, rec, images, files,
            reason="bootstrap",
            flow_run_id=flow_run_id,
            lineage=lineage,
            extra_meta={
                "test_psnr": train_stats.get("test_psnr"),
                "test_ssim": train_stats.get("test_ssim"),
                "test_views": train_stats.get("test_views"),
            },
        )  # fmt: skip
    return version


__all__ = [
    "NERFSTUDIO_ENV", "TRAINERS", "BootstrapConfig", "bootstrap_scene", "find_nerfstudio",
    "nerfstudio_commands", "read_reference_centres", "read_reference_poses", "train_nerfstudio",
    "work_folder", "write_nerfstudio_dataset",
]  # fmt: skip
