"""Import a nerfstudio ``splatfacto`` output folder without importing nerfstudio.

A run folder (``outputs/<experiment>/splatfacto/<timestamp>/``) holds::

    config.yml                        # the TrainerConfig, dumped by PyYAML with !!python/object tags
    dataparser_transforms.json        # {"transform": [3x4], "scale": s}
    nerfstudio_models/step-*.ckpt     # torch.save({"step", "pipeline": state_dict, "optimizers", ...})

Gaussians live in ``ckpt["pipeline"]`` under ``_model.gauss_params.{means [N,3], scales [N,3] (log),
quats [N,4] (wxyz, unnormalised), opacities [N,1] (logit), features_dc [N,3], features_rest [N,K,3]}``,
in nerfstudio's frame.

**Frames (derivation, checked against nerfstudio's source).** ``ColmapDataParser`` (and
``NerfstudioDataParser`` for ``ns-process-data`` output) build the frame as follows:

1. With ``assume_colmap_world_coordinate_convention`` (default True) the camera poses are moved by the
   axis swap ``S = [[1,0,0],[0,0,1],[0,-1,0]]`` (``c2w = c2w[[0,2,1,3], :]; c2w[2, :] *= -1``; COLMAP's
   "down" -y becomes nerfstudio's up +z), and ``meta["applied_transform"] = S`` is recorded.
   ``ns-process-data`` does the same swap itself and writes ``applied_transform`` into transforms.json.
2. ``auto_orient_and_center_poses`` returns the swapped poses re-oriented and centred, and the 3x4
   transform ``T0`` it applied (rotation + translation).
3. ``transform_matrix = T0 @ [[applied_transform], [0,0,0,1]]`` (both dataparsers compose it), the
   scale ``s`` is computed, and ``DataparserOutputs(dataparser_transform=transform_matrix,
   dataparser_scale=s)`` is what ``save_dataparser_transform`` writes to dataparser_transforms.json.
   The seed points are mapped with the same pair: ``p_ns = s * (T[:, :3] @ p + T[:, 3])``.

So the saved ``transform`` already contains the axis swap whenever it was applied: for a COLMAP world
point ``p``, ``p_ns = s * (A @ p + t)`` with ``[A | t]`` the saved transform, and inverting it does not
need ``S`` again (applying ``S`` on top would turn the scene a quarter turn). ``A`` is a rotation
(``S`` has det +1, and the orient step is a rotation). The inverse, applied here:

- means ``A^T (m / s - t)``; quats ``q(A^T) * q`` (the Gaussian's axes turn with the frame);
- log scales ``- log s``; shN rotated by ``A^T`` (:func:`reconstruction.sh.rotate_sh`);
- opacities and sh0 unchanged.

Splatfacto with ``sh_degree: 0`` (features_rest [N,0,3]) stores ``features_dc = logit(rgb)`` rather than
SH coefficients (``"use color only optimization with sigmoid activation"``); it is converted to
``sh0 = (sigmoid(features_dc) - 0.5) / SH_C0``.

Example::

    splats = read_splatfacto("outputs/garden/splatfacto/2025-01-01_000000")   # COLMAP frame
    run = inspect_splatfacto("outputs/garden/splatfacto/2025-01-01_000000")
    run.data, run.assume_colmap_world_coordinate_convention
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import SceneFormatError
from .splat_ops import transform
from .splats import SH_C0, Splats

logger = logging.getLogger(__name__)

# COLMAP world -> nerfstudio world axis swap (ColmapDataParser, assume_colmap_world_coordinate_convention).
COLMAP_TO_NERFSTUDIO = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
_GAUSS_KEYS = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")
_PREFIXES = ("_model.gauss_params.", "_model.")  # nerfstudio >= 1.0.3, and earlier splatfacto
_STEP_RE = re.compile(r"step-(\d+)\.ckpt")


# -- config.yml ----------------------------------------------------------------------------------------
class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that reads PyYAML's python tags as plain data: objects become dicts (with their class
    in ``"__class__"``), ``pathlib`` paths become ``Path``, tuples and other applies become lists, and
    ``!!python/name:x.y ''`` becomes the string ``"x.y"``. Nothing is imported or executed."""


def _construct_python(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    kind, _, name = suffix.partition(":")
    if isinstance(node, yaml.MappingNode):
        d = loader.construct_mapping(node, deep=True)
        out = dict(d)
        if name:
            out.setdefault("__class__", name)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = loader.construct_sequence(node, deep=True)
        if kind == "object/apply" and name.startswith("pathlib.") and all(isinstance(i, str) for i in items):
            return Path(*items) if items else Path()
        return list(items)
    value = loader.construct_scalar(node)
    return name if kind == "name" else value


_ConfigLoader.add_multi_constructor("tag:yaml.org,2002:python/", _construct_python)
_ConfigLoader.add_multi_constructor("!", _construct_python)


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a nerfstudio ``config.yml`` into plain dicts/lists/strings without importing nerfstudio."""
    path = Path(path)
    if not path.is_file():
        raise SceneFormatError(f"{path}: nerfstudio config.yml does not exist")
    try:
        cfg = yaml.load(path.read_text(encoding="utf-8"), Loader=_ConfigLoader)  # noqa: S506 - safe subclass
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split())
        raise SceneFormatError(f"{path}: config.yml is not valid YAML ({msg[:200]})") from None
    if not isinstance(cfg, dict):
        raise SceneFormatError(f"{path}: config.yml does not hold a nerfstudio TrainerConfig mapping")
    return cfg


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


@dataclass
class SplatfactoRun:
    """What a splatfacto output folder says about itself."""

    folder: Path
    config_path: Path
    method_name: str | None
    dataparser: str | None
    """Class of the dataparser config, e.g. ``...colmap_dataparser.ColmapDataParserConfig``."""
    data: Path | None
    """The dataset the run was trained on (``--data``), as written in the config (may be relative)."""
    assume_colmap_world_coordinate_convention: bool | None
    """The colmap dataparser's axis-swap flag (None when the dataparser has no such setting)."""
    orientation_method: str | None
    center_method: str | None
    sh_degree: int | None
    checkpoint: Path | None
    """The checkpoint with the highest step, or None when there is none."""
    step: int | None
    transforms_path: Path


def _find_checkpoint(model_dir: Path) -> tuple[Path | None, int | None]:
    if not model_dir.is_dir():
        return None, None
    found = [(int(m.group(1)), p) for p in model_dir.iterdir() if (m := _STEP_RE.fullmatch(p.name))]
    if not found:
        return None, None
    step, path = max(found)
    return path, step


def inspect_splatfacto(folder: str | os.PathLike) -> SplatfactoRun:
    """Read ``config.yml`` of a splatfacto run folder (or the config file itself) and locate its files."""
    folder = Path(folder)
    config_path = folder if folder.is_file() else folder / "config.yml"
    folder = config_path.parent
    if not folder.is_dir():
        raise SceneFormatError(f"{folder}: splatfacto output folder does not exist")
    cfg = load_config(config_path)
    dp = _get(cfg, "pipeline", "datamanager", "dataparser")
    # Priority as in nerfstudio: TrainerConfig.data > datamanager.data > dataparser.data.
    data = _get(cfg, "data") or _get(cfg, "pipeline", "datamanager", "data") or _get(dp, "data")
    flag = _get(dp, "assume_colmap_world_coordinate_convention")
    sh_degree = _get(cfg, "pipeline", "model", "sh_degree")
    model_dir = folder / str(_get(cfg, "relative_model_dir") or "nerfstudio_models")
    ckpt, step = _find_checkpoint(model_dir)
    return SplatfactoRun(
        folder=folder,
        config_path=config_path,
        method_name=_get(cfg, "method_name"),
        dataparser=_get(dp, "__class__"),
        data=Path(data) if data else None,
        assume_colmap_world_coordinate_convention=None if flag is None else bool(flag),
        orientation_method=_get(dp, "orientation_method"),
        center_method=_get(dp, "center_method"),
        sh_degree=None if sh_degree is None else int(sh_degree),
        checkpoint=ckpt,
        step=step,
        transforms_path=folder / "dataparser_transforms.json",
    )


def splatfacto_data_path(folder: str | os.PathLike) -> Path | None:
    """The dataset folder a splatfacto run was trained on, resolved to an existing folder when possible.

    nerfstudio records ``--data`` as given, usually relative to the directory ``ns-train`` ran in, and
    writes runs to ``<that directory>/<output_dir>/<experiment_name>/<method_name>/<timestamp>``; a
    relative path is looked up from the current directory, then from that training directory (found by
    walking up from the run folder). A ``transforms.json`` file stands for its folder. None when the
    config names no data; the path as written when no candidate exists.
    """
    run = inspect_splatfacto(folder)
    if run.data is None:
        return None
    data = run.data
    candidates = [data] if data.is_absolute() else [Path.cwd() / data]
    if not data.is_absolute():
        cfg = load_config(run.config_path)
        depth = 3 + len(Path(str(_get(cfg, "output_dir") or "outputs")).parts)
        parents = run.folder.resolve().parents
        if len(parents) >= depth:
            candidates.append(parents[depth - 1] / data)
    for c in candidates:
        if c.is_file():
            c = c.parent
        if c.is_dir():
            return c
    return data


# -- checkpoint ----------------------------------------------------------------------------------------
def _numpy_safe_globals() -> list[Any]:
    """numpy objects that nerfstudio checkpoints pickle (optimizer/scheduler states hold numpy scalars),
    under their numpy 1 and numpy 2 module paths."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct, scalar  # type: ignore[no-redef]
    out: list[Any] = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(scalar, f"{mod}.scalar"), (_reconstruct, f"{mod}._reconstruct")]
    out += [
        type(np.dtype(t)) for t in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "?")
    ]
    return out


def _load_checkpoint(path: Path) -> dict[str, Any]:
    def load(mmap: bool) -> Any:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            ckpt = load(mmap=True)  # tensors stay on disk until used (optimizer states are large)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            ckpt = load(mmap=False)  # legacy (non-zip) serialization
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        if m:
            raise SceneFormatError(
                f"{path}: checkpoint cannot be loaded with weights_only=True "
                f"(unsupported global {m.group(1)}); is it a nerfstudio checkpoint?"
            ) from None
        detail = str(e).partition("WeightsUnpickler error:")[2].strip().splitlines()
        why = detail[0][:160] if detail else "unpickling failed"
        raise SceneFormatError(f"{path}: cannot be read as a torch checkpoint ({why})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise SceneFormatError(f"{path}: cannot be read as a torch checkpoint ({msg})") from None
    if not isinstance(ckpt, dict):
        raise SceneFormatError(
            f"{path}: checkpoint is a {type(ckpt).__name__}, expected a dict with 'pipeline'"
        )
    return ckpt


def _gauss_params(path: Path, ckpt: dict[str, Any]) -> dict[str, np.ndarray]:
    state = ckpt.get("pipeline")
    if not isinstance(state, dict):
        raise SceneFormatError(
            f"{path}: checkpoint has no 'pipeline' state dict; is it a nerfstudio checkpoint?"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    for prefix in _PREFIXES:
        if all(prefix + k in state for k in _GAUSS_KEYS):
            break
    else:
        raise SceneFormatError(
            f"{path}: checkpoint has no splatfacto Gaussians (no _model.gauss_params."
            f"{{{','.join(_GAUSS_KEYS)}}} in 'pipeline'); is it a splatfacto run?"
        )
    out = {}
    for k in _GAUSS_KEYS:
        v = state[prefix + k]
        if not isinstance(v, torch.Tensor):
            raise SceneFormatError(f"{path}: {prefix + k} is a {type(v).__name__}, expected a tensor")
        out[k] = np.array(v.detach().to(torch.float32).numpy(), dtype=np.float32)  # copy off the mmap
    n = out["means"].shape[0] if out["means"].ndim == 2 else -1
    if out["opacities"].ndim == 2 and out["opacities"].shape[1:] == (1,):
        out["opacities"] = out["opacities"][:, 0]
    want = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "features_dc": (n, 3)}
    for k, shape in want.items():
        if out[k].shape != shape or n < 0:
            got = out[k].shape
            raise SceneFormatError(
                f"{path}: {prefix}{k} has shape {tuple(got)}, expected {shape if n >= 0 else '[N, 3]'}"
            )
    rest = out["features_rest"]
    if rest.ndim != 3 or rest.shape[0] != n or rest.shape[2] != 3 or rest.shape[1] not in (0, 3, 8, 15):
        raise SceneFormatError(
            f"{path}: {prefix}features_rest has shape {tuple(rest.shape)}, "
            f"expected ({n}, K, 3) with K in 0, 3, 8, 15"
        )
    return out


# -- dataparser_transforms.json ------------------------------------------------------------------------
def read_dataparser_transform(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """``(transform [3, 4], scale)`` from ``dataparser_transforms.json``: nerfstudio's frame is
    ``p_ns = scale * (transform[:, :3] @ p + transform[:, 3])`` of the dataset's (COLMAP) frame."""
    path = Path(path)
    if not path.is_file():
        raise SceneFormatError(f"{path}: dataparser_transforms.json does not exist")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        T = np.asarray(d["transform"], dtype=np.float64)
        scale = float(d["scale"])
    except (ValueError, KeyError, TypeError) as e:
        raise SceneFormatError(
            f"{path}: expected {{'transform': 3x4 list, 'scale': number}} ({type(e).__name__}: {e})"
        ) from None
    if T.shape == (4, 4):
        T = T[:3]
    if T.shape != (3, 4) or not np.isfinite(T).all():
        raise SceneFormatError(
            f"{path}: transform has shape {T.shape} or non-finite values, expected a finite 3x4"
        )
    if not (np.isfinite(scale) and scale > 0):
        raise SceneFormatError(f"{path}: scale is {scale}, expected a positive number")
    A = T[:, :3]
    if not np.allclose(A @ A.T, np.eye(3), atol=1e-4) or np.linalg.det(A) <= 0:
        raise SceneFormatError(f"{path}: transform's 3x3 part is not a rotation (det {np.linalg.det(A):.6g})")
    return T, scale


def _nearest_rotation(A: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(A)
    R = U @ Vt
    if np.linalg.det(R) < 0:  # pragma: no cover - excluded by read_dataparser_transform
        U[:, -1] *= -1
        R = U @ Vt
    return R


def _check_frame(run: SplatfactoRun, A: np.ndarray) -> None:
    """Warn when the saved rotation does not match what the config implies (only decidable without
    auto-orientation): a sign of a nerfstudio version whose saved transform omits the axis swap."""
    if run.orientation_method != "none" or run.assume_colmap_world_coordinate_convention is None:
        return
    want = COLMAP_TO_NERFSTUDIO if run.assume_colmap_world_coordinate_convention else np.eye(3)
    if not np.allclose(A, want, atol=1e-4):
        logger.warning(
            "%s: orientation_method is none and assume_colmap_world_coordinate_convention is %s, but the "
            "saved rotation is %s (expected %s); importing with the saved transform",
            run.transforms_path,
            run.assume_colmap_world_coordinate_convention,
            A.round(4).tolist(),
            want.tolist(),
        )


# -- import --------------------------------------------------------------------------------------------
def read_splatfacto(folder: str | os.PathLike, colmap_frame: bool = True) -> Splats:
    """Gaussians of a splatfacto run folder as float32 numpy Splats.

    Args:
        folder: the run folder (holding config.yml, dataparser_transforms.json, nerfstudio_models/), or
            its config.yml.
        colmap_frame: True (default): map them back to the frame of the dataset nerfstudio was trained on
            (the COLMAP model's frame for the colmap dataparser and ns-process-data datasets) by
            inverting dataparser_transforms.json (see the module docstring). False: nerfstudio's frame.
    Returns:
        Splats [N] with SH degree from features_rest (K = 0, 3, 8, 15).
    Raises:
        SceneFormatError naming the missing or malformed file.
    """
    run = inspect_splatfacto(folder)
    if run.checkpoint is None:
        raise SceneFormatError(
            f"{run.folder}: no nerfstudio_models/step-*.ckpt checkpoint in the splatfacto folder"
        )
    p = _gauss_params(run.checkpoint, _load_checkpoint(run.checkpoint))
    k = p["features_rest"].shape[1]
    if run.sh_degree is not None and (run.sh_degree + 1) ** 2 - 1 != k:
        raise SceneFormatError(
            f"{run.checkpoint}: features_rest has {k} coefficients per channel but config.yml says "
            f"sh_degree {run.sh_degree}"
        )
    sh0 = p["features_dc"]
    if k == 0:  # splatfacto sh_degree 0 optimises logit colours, not SH
        sh0 = ((1.0 / (1.0 + np.exp(-sh0.astype(np.float64))) - 0.5) / SH_C0).astype(np.float32)
    splats = Splats(
        means=p["means"], quats=p["quats"], scales=p["scales"], opacities=p["opacities"], sh0=sh0,
        shN=p["features_rest"],
    )  # fmt: skip
    splats.validate(str(run.checkpoint))
    if not colmap_frame:
        return splats
    T, scale = read_dataparser_transform(run.transforms_path)
    _check_frame(run, T[:, :3])
    R = _nearest_rotation(T[:, :3]).T  # nerfstudio -> dataset frame
    logger.info(
        "%s: %d Gaussians, SH degree %d, step %s; mapping nerfstudio frame -> dataset frame (scale %.6g)",
        run.folder, len(splats), splats.sh_degree, run.step, scale,
    )  # fmt: skip
    return transform(splats, rotation=R, translation=-R @ T[:, 3], scale=1.0 / scale).validate(
        str(run.checkpoint)
    )


# -- test fixture --------------------------------------------------------------------------------------
_CONFIG_TEMPLATE = """\
!!python/object:nerfstudio.engine.trainer.TrainerConfig
_target: !!python/name:nerfstudio.engine.trainer.Trainer ''
data: null
experiment_name: {experiment}
load_checkpoint: null
load_config: null
load_dir: null
load_step: null
logging: !!python/object:nerfstudio.configs.base_config.LoggingConfig
  local_writer: !!python/object:nerfstudio.configs.base_config.LocalWriterConfig
    _target: !!python/name:nerfstudio.utils.writer.LocalWriter ''
    enable: true
    max_log_size: 10
    stats_to_track: !!python/tuple
    - !!python/object/apply:nerfstudio.utils.writer.EventName
      - Train Iter (time)
    - !!python/object/apply:nerfstudio.utils.writer.EventName
      - Test PSNR
  max_buffer_size: 20
  profiler: basic
  relative_log_dir: !!python/object/apply:pathlib.PosixPath []
  steps_per_log: 10
machine: !!python/object:nerfstudio.configs.base_config.MachineConfig
  device_type: cuda
  num_devices: 1
  seed: 42
max_num_iterations: 30000
method_name: splatfacto
mixed_precision: false
optimizers:
  means:
    optimizer: !!python/object:nerfstudio.engine.optimizers.AdamOptimizerConfig
      _target: &id001 !!python/name:torch.optim.adam.Adam ''
      eps: 1.0e-15
      lr: 0.00016
      max_norm: null
      weight_decay: 0
    scheduler: !!python/object:nerfstudio.engine.schedulers.ExponentialDecaySchedulerConfig
      _target: !!python/name:nerfstudio.engine.schedulers.ExponentialDecayScheduler ''
      lr_final: 1.6e-06
      max_steps: 30000
  opacities:
    optimizer: !!python/object:nerfstudio.engine.optimizers.AdamOptimizerConfig
      _target: *id001
      eps: 1.0e-15
      lr: 0.05
    scheduler: null
output_dir: !!python/object/apply:pathlib.PosixPath
- outputs
pipeline: !!python/object:nerfstudio.pipelines.base_pipeline.VanillaPipelineConfig
  _target: !!python/name:nerfstudio.pipelines.base_pipeline.VanillaPipeline ''
  datamanager: !!python/object:nerfstudio.data.datamanagers.full_images_datamanager.FullImageDatamanagerConfig
    _target: !!python/name:nerfstudio.data.datamanagers.full_images_datamanager.FullImageDatamanager ''
    cache_images: cpu
    cache_images_type: uint8
    camera_res_scale_factor: 1.0
    data: null
    dataparser: !!python/object:nerfstudio.data.dataparsers.colmap_dataparser.ColmapDataParserConfig
      _target: !!python/name:nerfstudio.data.dataparsers.colmap_dataparser.ColmapDataParser ''
      assume_colmap_world_coordinate_convention: {assume}
      auto_scale_poses: true
      center_method: {center}
      colmap_path: !!python/object/apply:pathlib.PosixPath
      - colmap
      - sparse
      - '0'
      data: !!python/object/apply:pathlib.PosixPath
{data_parts}
      depth_unit_scale_factor: 0.001
      depths_path: null
      downscale_factor: null
      downscale_rounding_mode: floor
      eval_interval: 8
      eval_mode: interval
      images_path: !!python/object/apply:pathlib.PosixPath
      - images
      load_3D_points: true
      masks_path: null
      max_2D_matches_per_3D_point: 0
      orientation_method: {orientation}
      scale_factor: 1.0
      scene_scale: 1.0
      train_split_fraction: 0.9
    eval_image_indices: !!python/tuple
    - 0
    images_on_gpu: false
    masks_on_gpu: false
  model: !!python/object:nerfstudio.models.splatfacto.SplatfactoModelConfig
    _target: !!python/name:nerfstudio.models.splatfacto.SplatfactoModel ''
    background_color: random
    camera_optimizer: !!python/object:nerfstudio.cameras.camera_optimizers.CameraOptimizerConfig
      _target: !!python/name:nerfstudio.cameras.camera_optimizers.CameraOptimizer ''
      mode: 'off'
    cull_alpha_thresh: 0.1
    num_random: 50000
    rasterize_mode: classic
    sh_degree: {sh_degree}
    sh_degree_interval: 1000
project_name: nerfstudio-project
relative_model_dir: !!python/object/apply:pathlib.PosixPath
- nerfstudio_models
save_only_latest_checkpoint: true
steps_per_save: 2000
timestamp: 2025-01-01_000000
vis: viewer
"""


def write_splatfacto_fixture(
    folder: str | os.PathLike,
    splats: Splats,
    transform_matrix: Any,
    scale: float,
    *,
    assume_colmap_world_coordinate_convention: bool = True,
    orientation_method: str = "up",
    center_method: str = "poses",
    data: str = "data/scene",
    step: int = 29999,
) -> Path:
    """Write a splatfacto run folder holding ``splats`` (given in the COLMAP frame), as nerfstudio would.

    ``transform_matrix`` [3, 4] (or [4, 4]) is the rigid orient-and-centre transform nerfstudio's
    ``auto_orient_and_center_poses`` would return (in the axis-swapped frame); as in
    ``ColmapDataParser``, the saved transform is ``transform_matrix @ S`` when
    ``assume_colmap_world_coordinate_convention`` (S = :data:`COLMAP_TO_NERFSTUDIO`), else
    ``transform_matrix``. The checkpoint holds the Gaussians mapped by ``scale * saved transform``
    (SH rotated, log scales shifted), opacities as [N, 1], optimizer state with numpy scalars, and for
    SH degree 0 logit colours as splatfacto stores them. Returns the folder.
    """
    folder = Path(folder)
    T0 = np.eye(4)
    T0[: np.asarray(transform_matrix).shape[0]] = np.asarray(transform_matrix, np.float64)
    if assume_colmap_world_coordinate_convention:
        applied = np.eye(4)
        applied[:3, :3] = COLMAP_TO_NERFSTUDIO
        T0 = T0 @ applied
    T = T0[:3]
    s = splats.to_numpy()
    ns = transform(s, rotation=_nearest_rotation(T[:, :3]), translation=scale * T[:, 3], scale=scale)
    k = s.shN.shape[1]
    features_dc = ns.sh0
    if k == 0:
        rgb = np.clip(0.5 + SH_C0 * s.sh0.astype(np.float64), 1e-6, 1 - 1e-6)
        features_dc = np.log(rgb / (1 - rgb)).astype(np.float32)
    prefix = "_model.gauss_params."
    tensors = {
        "means": ns.means, "scales": ns.scales, "quats": ns.quats, "opacities": ns.opacities[:, None],
        "features_dc": features_dc, "features_rest": ns.shN,
    }  # fmt: skip
    state: dict[str, Any] = {
        prefix + key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in tensors.items()
    }
    state["_model.camera_optimizer.pose_adjustment"] = torch.zeros((0, 6))
    state["datamanager.train_camera_optimizer.pose_adjustment"] = torch.zeros((0, 6))
    ckpt = {
        "step": step,
        "pipeline": state,
        "optimizers": {
            "means": {"state": {}, "param_groups": [{"lr": np.float64(1.6e-6), "eps": 1e-15, "params": [0]}]},
        },
        "schedulers": {
            "means": {"base_lrs": [0.00016], "last_epoch": step, "_last_lr": [np.float64(1.6e-6)]}
        },
        "scalers": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
    }
    model_dir = folder / "nerfstudio_models"
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, model_dir / f"step-{step:09d}.ckpt")
    (folder / "dataparser_transforms.json").write_text(
        json.dumps({"transform": T.tolist(), "scale": float(scale)}, indent=4), encoding="utf-8"
    )
    parts = [p for p in Path(data).parts] or ["."]
    (folder / "config.yml").write_text(
        _CONFIG_TEMPLATE.format(
            experiment=Path(data).name or "scene",
            assume="true" if assume_colmap_world_coordinate_convention else "false",
            center=center_method,
            orientation=orientation_method,
            data_parts="\n".join(f"      - {json.dumps(p)}" for p in parts),
            sh_degree={0: 0, 3: 1, 8: 2, 15: 3}[k],
        ),
        encoding="utf-8",
    )
    return folder


__all__ = [
    "COLMAP_TO_NERFSTUDIO", "SplatfactoRun", "inspect_splatfacto", "load_config", "read_dataparser_transform",
    "read_splatfacto", "splatfacto_data_path", "write_splatfacto_fixture",
]  # fmt: skip
