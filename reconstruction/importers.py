"""Bring existing 3DGS scenes into the store: COLMAP dataset + PLY, INRIA 3DGS output, nerfstudio splatfacto.

Every importer returns a :class:`ImportedScene` (splats in the COLMAP frame, the COLMAP model, the
registered images and where their photo files are); :func:`import_scene` writes it as a new version.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from .cameras import ImageEntry, find_sparse_model, model_images, model_points, read_colmap_model
from .errors import SceneFormatError
from .ply import read_ply
from .splats import SH_C0, Splats
from .store import Scene

log = logging.getLogger(__name__)

FORMATS = ("auto", "colmap", "inria", "nerfstudio")


@dataclass
class ImportedScene:
    splats: Splats
    model: pycolmap.Reconstruction
    images: list[ImageEntry]
    image_files: dict[str, Path] = field(default_factory=dict)
    lineage: dict = field(default_factory=dict)


def splats_from_points(xyz: np.ndarray, rgb: np.ndarray, opacity: float = 0.1) -> Splats:
    """3DGS initialisation from sparse points: isotropic Gaussians sized by the 3 nearest neighbours."""
    import torch

    pts = torch.as_tensor(np.asarray(xyz), dtype=torch.float32)
    n = len(pts)
    if n == 0:
        raise SceneFormatError("sparse model has no 3D points to initialise splats from")
    k = min(3, n - 1)
    dist = torch.empty(n)
    for s in range(0, n, 4096):
        d = torch.cdist(pts[s : s + 4096], pts)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        dist[s : s + 4096] = d.topk(k, largest=False).values.pow(2).mean(-1).sqrt() if k else 0.01
    scale = np.log(np.clip(dist.numpy(), 1e-7, None)).astype(np.float32)
    out = Splats.empty(n)
    out.means = np.asarray(xyz, np.float32)
    out.scales = np.repeat(scale[:, None], 3, axis=1)
    out.opacities[:] = np.log(opacity / (1 - opacity))
    out.sh0 = ((np.asarray(rgb, np.float32) / 255.0 - 0.5) / SH_C0).astype(np.float32)
    return out


def _image_files(images: list[ImageEntry], folder: Path | None) -> dict[str, Path]:
    if folder is None or not folder.is_dir():
        log.warning("no photo folder found (%s): the scene's images are not stored", folder)
        return {}
    files, missing = {}, []
    for e in images:
        p = folder / e.name
        (files.__setitem__(e.name, p) if p.is_file() else missing.append(e.name))
    if missing:
        log.warning(
            "%d of %d photos missing under %s (e.g. %s)", len(missing), len(images), folder, missing[0]
        )
    return files


def _colmap_dataset(dataset: Path, images_subdir: str = "images") -> tuple[pycolmap.Reconstruction, Path]:
    sparse = find_sparse_model(dataset)
    return read_colmap_model(sparse), sparse


def load_colmap(src: Path, ply: Path | None = None) -> ImportedScene:
    """A COLMAP dataset folder (``images/`` + ``sparse/0`` or ``sparse/``) and the splats in ``ply``.

    Without ``ply`` the splats are initialised from the sparse points (as 3DGS training starts).
    """
    src = Path(src)
    if not src.is_dir():
        raise SceneFormatError(f"{src}: COLMAP dataset folder does not exist")
    model, sparse = _colmap_dataset(src)
    images = model_images(model)
    if ply is not None:
        splats = read_ply(Path(ply))
        origin = {"format": "colmap", "dataset": str(src.resolve()), "ply": str(Path(ply).resolve())}
    else:
        xyz, rgb = model_points(model)
        splats = splats_from_points(xyz, rgb)
        log.warning("no --ply given: splats initialised from %d sparse points", len(splats))
        origin = {"format": "colmap", "dataset": str(src.resolve()), "ply": None, "init": "sparse points"}
    return ImportedScene(splats, model, images, _image_files(images, src / "images"), {"source": origin})


def _cfg_arg(cfg: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=(['\"])(.*?)\1", cfg)
    return m.group(2) if m else None


def load_inria(src: Path, source: Path | None = None) -> ImportedScene:
    """An INRIA 3DGS output folder: ``point_cloud/iteration_*/point_cloud.ply`` (highest iteration) and
    ``cfg_args`` naming the source dataset (or ``source``)."""
    src = Path(src)
    its = sorted(
        (int(p.name.split("_")[-1]), p)
        for p in (src / "point_cloud").glob("iteration_*")
        if p.name.split("_")[-1].isdigit() and (p / "point_cloud.ply").is_file()
    )
    if not its:
        raise SceneFormatError(
            f"{src}: no point_cloud/iteration_*/point_cloud.ply (not an INRIA 3DGS output)"
        )
    iteration, folder = its[-1]
    images_subdir = "images"
    if source is None:
        cfg_path = src / "cfg_args"
        if not cfg_path.is_file():
            raise SceneFormatError(f"{cfg_path}: missing; pass --source DATASET to name the COLMAP dataset")
        cfg = cfg_path.read_text(errors="replace")
        sp = _cfg_arg(cfg, "source_path")
        if not sp:
            raise SceneFormatError(f"{cfg_path}: no source_path; pass --source DATASET")
        images_subdir = _cfg_arg(cfg, "images") or "images"
        source = Path(sp)
        if not source.is_absolute() and not source.exists():
            source = src / sp
    if not Path(source).is_dir():
        raise SceneFormatError(
            f"{source}: source dataset named by the INRIA output does not exist (use --source)"
        )
    model, _ = _colmap_dataset(Path(source))
    images = model_images(model)
    splats = read_ply(folder / "point_cloud.ply")
    lineage = {
        "source": {
            "format": "inria",
            "output": str(src.resolve()),
            "iteration": iteration,
            "dataset": str(Path(source).resolve()),
        }
    }
    return ImportedScene(splats, model, images, _image_files(images, Path(source) / images_subdir), lineage)


def load_nerfstudio(src: Path, source: Path | None = None) -> ImportedScene:
    """A nerfstudio splatfacto output folder, mapped back into the COLMAP frame of its dataset."""
    from .nerfstudio import read_splatfacto, splatfacto_data_path

    src = Path(src)
    splats = read_splatfacto(src)
    if source is None:
        source = splatfacto_data_path(src)
        if source is None or not Path(source).is_dir():
            raise SceneFormatError(f"{src}/config.yml: dataset {source} not found; pass --source DATASET")
    model, _ = _colmap_dataset(Path(source))
    images = model_images(model)
    lineage = {
        "source": {
            "format": "nerfstudio",
            "output": str(src.resolve()),
            "dataset": str(Path(source).resolve()),
        }
    }
    return ImportedScene(splats, model, images, _image_files(images, Path(source) / "images"), lineage)


def detect_format(src: Path) -> str:
    src = Path(src)
    if (src / "config.yml").is_file() and (src / "nerfstudio_models").is_dir():
        return "nerfstudio"
    if (src / "point_cloud").is_dir():
        return "inria"
    if (src / "sparse").is_dir():
        return "colmap"
    raise SceneFormatError(
        f"{src}: cannot tell the scene format (no config.yml+nerfstudio_models, point_cloud/ or sparse/); "
        "pass --format"
    )


def load_scene(
    src: Path, fmt: str = "auto", ply: Path | None = None, source: Path | None = None
) -> ImportedScene:
    src = Path(src)
    if not src.exists():
        raise SceneFormatError(f"{src}: does not exist")
    if fmt not in FORMATS:
        raise SceneFormatError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    fmt = detect_format(src) if fmt == "auto" else fmt
    if fmt == "colmap":
        return load_colmap(src, ply)
    if fmt == "inria":
        return load_inria(src, source)
    return load_nerfstudio(src, source)


def import_scene(
    scene: Scene,
    src: Path,
    fmt: str = "auto",
    ply: Path | None = None,
    source: Path | None = None,
    reason: str | None = None,
) -> int:
    """Load ``src`` completely (everything is checked before the store is touched), then add a version."""
    imp = load_scene(src, fmt, ply, source)
    imp.splats.validate(str(ply or src))
    with scene.writer() as w:
        return w.add_version(
            imp.splats,
            imp.model,
            imp.images,
            imp.image_files,
            reason=reason or f"import {imp.lineage['source']['format']} from {Path(src).name}",
            lineage=imp.lineage,
        )
