"""Image-to-3D: a coloured mesh of an object seen in a photo, from its crop, behind a registry of backends.

The one public function is :func:`generate`. Backends are the registry :data:`GENERATORS` (STYLE.md
item 5; plugins add theirs through the ``idu.image_to_3d`` entry-point group): each names its default
weights in ``reconstruction.models.MODELS``, its licence, and how to load and run it. Weights are never
downloaded: ``reconstruction.models.resolve`` finds them (a folder, ``$IDU_MODEL_DIR/<name>``, the
Hugging Face cache) or says where to put them. Only licences that allow every use are registered (MIT,
Apache-2.0, BSD; DESIGN.md "Licences"): not Stable Fast 3D or SV3D, whose community licences restrict it.

- ``triplane``: IDU's own small implicit-field format (:class:`TriplaneField`, a folder with
  ``config.json`` + ``model.safetensors``), so that the whole path runs and is tested offline.
- ``triposr``: TripoSR (MIT, ``stabilityai/TripoSR``) through its ``tsr`` package (from its repository,
  not on PyPI).
- ``trellis``: TRELLIS (MIT, ``microsoft/TRELLIS-image-large``) through its ``trellis`` package (CUDA).

IDU's object frame, which every backend returns: centred at the origin (the centre of the bounding box),
largest extent 1, +Z up, the input camera looking along +Y (so +X is the image's right and -Z its down).
Each adapter converts from its model's native frame.

    mesh = generate("triposr", crop_rgba)                # crop [H, W, 4] uint8, the mask in alpha
    splats = mesh_to_splats(mesh, spacing=0.01)           # generation/surface.py
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reconstruction.models import MODELS, ModelNotAvailable, config_file, resolve

from .assets import AssetError
from .surface import Mesh

log = logging.getLogger(__name__)

#: Licences a registered generator may have: they allow every use, defence simulation included.
ALLOWED_LICENCES = ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause")
ENTRY_POINT_GROUP = "idu.image_to_3d"
MASK_LEVEL = 128
"""Alpha at or above this is the object."""


def licence_allowed(licence: str) -> bool:
    """Whether a generator under ``licence`` may be registered (MIT, Apache-2.0, BSD-*)."""
    return licence in ALLOWED_LICENCES or licence.startswith("BSD-")


# -- images and frames -------------------------------------------------------------------------
def check_image(image_rgba: Any) -> np.ndarray:
    """The crop as [H, W, 4] uint8 with a non-empty mask (alpha >= 128), else AssetError."""
    if not isinstance(image_rgba, np.ndarray):
        raise AssetError(f"image-to-3D: the crop must be a numpy array, got {type(image_rgba).__name__}")
    if image_rgba.ndim != 3 or image_rgba.shape[2] != 4 or image_rgba.dtype != np.uint8:
        raise AssetError(
            f"image-to-3D: the crop is {image_rgba.dtype} {image_rgba.shape}, expected [H, W, 4] uint8 "
            "(RGB and the object's mask in alpha)"
        )
    if not (image_rgba[..., 3] >= MASK_LEVEL).any():
        raise AssetError("image-to-3D: the crop's mask (alpha >= 128) is empty")
    return image_rgba


def square_crop(image_rgba: np.ndarray, fill: float = 0.85) -> np.ndarray:
    """The object centred in a square [S, S, 4] float32 image in [0, 1]: RGB premultiplied by alpha, the
    mask's bounding box ``fill`` of the side, zero (transparent) around."""
    img = check_image(image_rgba)
    ys, xs = np.nonzero(img[..., 3] >= MASK_LEVEL)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = img[y0:y1, x0:x1].astype(np.float32) / 255.0
    crop[..., :3] *= crop[..., 3:]
    h, w = crop.shape[:2]
    side = max(int(np.ceil(max(h, w) / fill)), 1)
    out = np.zeros((side, side, 4), np.float32)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = crop
    return out


def to_object_frame(mesh: Mesh, rotation: np.ndarray | None = None) -> Mesh:
    """The mesh in IDU's object frame: ``rotation`` [3, 3] (object frame from the model's native one)
    applied, the bounding box's centre moved to the origin, the largest extent scaled to 1."""
    v = np.asarray(mesh.vertices, np.float64)
    if rotation is not None:
        v = v @ np.asarray(rotation, np.float64).T
    lo, hi = v.min(0), v.max(0)
    extent = float((hi - lo).max())
    if not extent > 0:
        raise AssetError(f"mesh {mesh.name!r}: has no extent (every vertex at one point)")
    v = (v - (lo + hi) / 2) / extent
    return Mesh(v, mesh.faces, mesh.vertex_colors, mesh.uv, mesh.texture, mesh.name)


# -- mesh extraction shared by the field models ------------------------------------------------
FieldFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""points [M, 3] float32 (CPU) -> density [M] and RGB [M, 3] in [0, 1] (any device)."""


@torch.no_grad()
def extract_mesh(
    field_fn: FieldFn,
    resolution: int,
    threshold: float,
    bound: float = 1.0,
    chunk: int = 1 << 16,
    name: str = "field",
) -> Mesh:
    """The surface ``density == threshold`` of a field over the cube [-bound, bound]^3 as a coloured mesh.

    Density is queried on a ``resolution``^3 grid in chunks of ``chunk`` points and meshed by marching
    cubes (scikit-image; the grid is closed at the cube's faces, so the mesh is watertight); the vertex
    colours are the field's RGB at the vertices. Normals ((v1 - v0) x (v2 - v0)) point to lower density.
    Raises AssetError when the field has no surface at ``threshold``.
    """
    from skimage.measure import marching_cubes

    r = int(resolution)
    if r < 2:
        raise AssetError(f"{name}: marching-cubes resolution must be at least 2, got {r}")
    lin = torch.linspace(-bound, bound, r)
    grid = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)
    dens = np.concatenate(
        [
            field_fn(grid[i : i + chunk])[0].detach().float().cpu().numpy().reshape(-1)
            for i in range(0, len(grid), chunk)
        ]
    ).reshape(r, r, r)
    if not np.isfinite(dens).all():
        raise AssetError(f"{name}: the field's density holds NaN or Inf values")
    lo, hi = float(dens.min()), float(dens.max())
    if hi <= threshold:
        raise AssetError(
            f"{name}: the field is empty (density at most {hi:.3g}, the surface threshold is {threshold:g})"
        )
    if lo >= threshold:
        raise AssetError(
            f"{name}: the field fills the whole cube [-{bound:g}, {bound:g}]^3 (density at least {lo:.3g} "
            f">= threshold {threshold:g})"
        )
    step = 2.0 * bound / (r - 1)
    vol = np.pad(dens, 1, constant_values=min(lo, threshold) - 1.0)
    verts, faces, _, _ = marching_cubes(
        vol, level=threshold, spacing=(step,) * 3, gradient_direction="ascent"
    )
    verts = verts.astype(np.float64) - step - bound
    pts = torch.from_numpy(verts.astype(np.float32))
    rgb = np.concatenate(
        [
            field_fn(pts[i : i + chunk])[1].detach().float().cpu().numpy().reshape(-1, 3)
            for i in range(0, len(pts), chunk)
        ]
    )
    return Mesh(verts, faces.astype(np.int64), vertex_colors=np.clip(rgb, 0, 1).astype(np.float64), name=name)


# -- IDU's own format: triplane fields ---------------------------------------------------------
TRIPLANE_TYPE = "idu-triplane"


@dataclass
class TriplaneConfig:
    """The architecture of a :class:`TriplaneField` (saved as ``config.json``)."""

    image_size: int = 64
    """The square RGBA crop is resized to this side before encoding."""
    encoder_channels: int = 32
    """Channels of the image encoder's convolutions."""
    encoder_layers: int = 3
    """Number of stride-2 3x3 convolutions in the encoder."""
    plane_res: int = 32
    """Side of each feature plane (XY, XZ, YZ)."""
    plane_channels: int = 16
    """Channels of each feature plane."""
    hidden: int = 64
    """Width of the MLP that decodes summed plane features."""
    threshold: float = 5.0
    """Density of the surface (marching cubes level)."""
    bound: float = 1.0
    """The field lives in the cube [-bound, bound]^3 (IDU's object frame axes)."""


class TriplaneField(nn.Module):
    """An image-conditioned implicit field: RGBA crop -> three feature planes -> MLP -> density, RGB.

    The encoder (strided convolutions) maps the crop [B, 4, S, S] to features that are resized to
    ``plane_res`` and projected to three planes [B, 3, C, P, P] (XY, XZ, YZ), plus a learned bias plane
    that holds what does not depend on the image. A point x in [-bound, bound]^3 samples each plane
    bilinearly at its two coordinates; the MLP decodes the sum to density (softplus) and RGB (sigmoid).
    The field's axes are IDU's object frame (Z up, the camera looking along +Y).

        field = TriplaneField(TriplaneConfig(plane_res=16, hidden=16))
        planes = field.planes_for(crop_rgba)                     # [3, C, P, P]
        density, rgb = field.query(planes, points)               # [M], [M, 3]
        field.save_pretrained(folder)                            # config.json + model.safetensors
    """

    def __init__(self, config: TriplaneConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or TriplaneConfig()
        layers: list[nn.Module] = []
        c_in = 4
        for _ in range(config.encoder_layers):
            layers += [nn.Conv2d(c_in, config.encoder_channels, 3, stride=2, padding=1), nn.ReLU()]
            c_in = config.encoder_channels
        self.encoder = nn.Sequential(*layers)
        c, p = config.plane_channels, config.plane_res
        self.to_planes = nn.Conv2d(c_in, 3 * c, 1)
        self.plane_bias = nn.Parameter(0.1 * torch.randn(3, c, p, p))
        self.mlp = nn.Sequential(
            nn.Linear(c, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 4),
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Feature planes [B, 3, C, P, P] of square crops [B, 4, S, S] (RGB premultiplied, in [0, 1])."""
        cfg = self.config
        x = F.interpolate(
            images, size=(cfg.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
        )
        x = self.encoder(x)
        x = F.interpolate(x, size=(cfg.plane_res,) * 2, mode="bilinear", align_corners=False)
        planes = self.to_planes(x).view(len(images), 3, cfg.plane_channels, cfg.plane_res, cfg.plane_res)
        return planes + self.plane_bias

    def planes_for(self, image_rgba: np.ndarray) -> torch.Tensor:
        """Feature planes [3, C, P, P] of a crop [H, W, 4] uint8 (see :func:`square_crop`)."""
        crop = torch.from_numpy(square_crop(image_rgba)).permute(2, 0, 1)[None]
        return self.encode(crop.to(self.plane_bias.device))[0]

    def query(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density [M] (>= 0) and RGB [M, 3] at points [M, 3] from one object's planes [3, C, P, P]."""
        x = points.to(planes) / self.config.bound
        uv = torch.stack([x[:, [0, 1]], x[:, [0, 2]], x[:, [1, 2]]])[:, None]  # [3, 1, M, 2]
        feats = F.grid_sample(planes, uv, mode="bilinear", padding_mode="border", align_corners=False)
        out = self.mlp(feats.sum(0)[:, 0].T)  # [M, 4]
        return F.softplus(out[:, 0]), torch.sigmoid(out[:, 1:])

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` (``"model_type": "idu-triplane"``) and ``model.safetensors``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {"model_type": TRIPLANE_TYPE, **asdict(self.config)}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))  # fmt: skip
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> TriplaneField:
        """Load a folder written by :meth:`save_pretrained`; ModelNotAvailable when it is not one."""
        from safetensors.torch import load_file

        folder = Path(folder)
        try:
            cfg = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ModelNotAvailable(f"{folder}: cannot read config.json ({type(e).__name__}: {e})") from None
        if not isinstance(cfg, dict) or cfg.get("model_type") != TRIPLANE_TYPE:
            got = cfg.get("model_type") if isinstance(cfg, dict) else None
            raise ModelNotAvailable(f"{folder}: not a triplane model (config.json model_type {got!r}, "
                                    f"expected {TRIPLANE_TYPE!r})")  # fmt: skip
        names = {f.name for f in fields(TriplaneConfig)}
        try:
            model = cls(TriplaneConfig(**{k: v for k, v in cfg.items() if k in names}))
            model.load_state_dict(load_file(str(folder / "model.safetensors")))
        except Exception as e:
            raise ModelNotAvailable(
                f"{folder}: cannot load a triplane model ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from None
        return model.eval()


def _load_triplane(path: Path, device: torch.device) -> TriplaneField:
    return TriplaneField.from_pretrained(path).to(device)


@torch.no_grad()
def _run_triplane(model: TriplaneField, image_rgba: np.ndarray, resolution: int, seed: int) -> Mesh:
    planes = model.planes_for(image_rgba)
    cfg = model.config
    mesh = extract_mesh(
        lambda p: model.query(planes, p), resolution, cfg.threshold, cfg.bound, name="triplane"
    )
    return to_object_frame(mesh)  # the field's axes are already the object frame's


# -- TripoSR ------------------------------------------------------------------------------------
TRIPOSR_INSTALL = (
    "backend 'triposr' needs TripoSR's `tsr` package (MIT; not on PyPI): `git clone "
    "https://github.com/VAST-AI-Research/TripoSR`, `pip install -r TripoSR/requirements.txt`, and put the "
    "clone on PYTHONPATH"
)
TRIPOSR_THRESHOLD = 25.0
"""Density of TripoSR's surface (its ``extract_mesh`` default)."""
#: IDU's object frame from TripoSR's (tsr/utils.py ``get_spherical_cameras``: x towards the input camera,
#: y right, z up): X = y, Y = -x, Z = z.
TRIPOSR_TO_OBJECT = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _load_triposr(path: Path, device: torch.device):
    missing = [f for f in ("config.yaml", "model.ckpt") if not (path / f).is_file()]
    if missing:
        raise ModelNotAvailable(
            f"{path}: a TripoSR folder needs config.yaml and model.ckpt (missing {', '.join(missing)}; both "
            "are in stabilityai/TripoSR on the Hugging Face hub)"
        )
    try:
        from tsr.system import TSR
    except ImportError as e:
        raise ModelNotAvailable(f"{TRIPOSR_INSTALL} ({e})") from None
    try:
        model = TSR.from_pretrained(str(path), config_name="config.yaml", weight_name="model.ckpt")
    except Exception as e:
        raise ModelNotAvailable(f"{path}: cannot load TripoSR ({type(e).__name__}: {e})") from None
    model.renderer.set_chunk_size(8192)
    return model.to(device).eval()


@torch.no_grad()
def _run_triposr(model, image_rgba: np.ndarray, resolution: int, seed: int) -> Mesh:
    # As TripoSR's run.py feeds it: the object over mid grey, 85 % of a square image.
    crop = square_crop(image_rgba, fill=0.85)
    rgb = np.ascontiguousarray(crop[..., :3] + (1.0 - crop[..., 3:]) * 0.5, dtype=np.float32)
    device = next(model.parameters()).device
    code = model([rgb], device=str(device))[0]  # the scene code (triplanes) of the one image

    def field(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.renderer.query_triplane(model.decoder, p.to(code.device), code)
        return out["density_act"][..., 0], out["color"]

    radius = float(model.renderer.cfg.radius)
    mesh = extract_mesh(field, resolution, TRIPOSR_THRESHOLD, bound=radius, chunk=8192, name="triposr")
    return to_object_frame(mesh, TRIPOSR_TO_OBJECT)


# -- TRELLIS -----------------------------------------------------------------------------------
TRELLIS_INSTALL = (
    "backend 'trellis' needs Microsoft's `trellis` package (MIT; CUDA only): `git clone --recurse-submodules "
    "https://github.com/microsoft/TRELLIS`, run its setup.sh (spconv, kaolin, nvdiffrast, ...), and put the "
    "clone on PYTHONPATH"
)


def _load_trellis(path: Path, device: torch.device):
    try:
        from trellis.pipelines import TrellisImageTo3DPipeline
    except ImportError as e:
        raise ModelNotAvailable(f"{TRELLIS_INSTALL} ({e})") from None
    try:
        pipe = TrellisImageTo3DPipeline.from_pretrained(str(path))
    except Exception as e:
        raise ModelNotAvailable(
            f"{path}: cannot load TRELLIS ({type(e).__name__}: {e}); it also loads DINOv2 with torch.hub "
            f"('facebookresearch/dinov2'), which must be in the torch hub cache ({torch.hub.get_dir()}) "
            "when offline"
        ) from None
    pipe.to(device)
    return pipe


def _run_trellis(pipe, image_rgba: np.ndarray, resolution: int, seed: int) -> Mesh:
    from PIL import Image

    # As TRELLIS's preprocess_image does it: the mask's box 1/1.2 of a square, 518 px, RGB premultiplied.
    crop = square_crop(image_rgba, fill=1 / 1.2)
    rgb = Image.fromarray(np.clip(np.rint(crop[..., :3] * 255), 0, 255).astype(np.uint8))
    rgb = rgb.resize((518, 518), Image.Resampling.LANCZOS)
    with torch.no_grad():
        out = pipe.run(rgb, seed=seed, formats=["mesh"], preprocess_image=False)
    m = out["mesh"][0]
    verts = m.vertices.detach().float().cpu().numpy().astype(np.float64)
    faces = m.faces.detach().cpu().numpy().astype(np.int64)
    attrs = getattr(m, "vertex_attrs", None)
    colours = None
    if attrs is not None and attrs.shape[-1] >= 3:
        colours = np.clip(attrs[:, :3].detach().float().cpu().numpy(), 0, 1).astype(np.float64)
    # TRELLIS's frame is Z up (its GLB export turns it to Y up) with the object's front towards -Y; the yaw
    # is the model's canonical one, not necessarily the photo's (placement estimates it).
    return to_object_frame(Mesh(verts, faces, vertex_colors=colours, name="trellis"))


# -- the registry ------------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorSpec:
    """One image-to-3D backend."""

    kind: str
    """The model kind it loads (``reconstruction.models.ModelSpec.kind``): says which config file marks
    its folder."""
    default_model: str | None
    """Name in ``reconstruction.models.MODELS`` of the weights used when :func:`generate` gets no model;
    None: a folder must be given."""
    licence: str
    """Licence of the model and its code (must be in :data:`ALLOWED_LICENCES` or BSD-*)."""
    load: Callable[[Path, torch.device], Any]
    """(model folder, device) -> the loaded model (cached per process); raises ModelNotAvailable."""
    run: Callable[[Any, np.ndarray, int, int], Mesh]
    """(model, crop [H, W, 4] uint8, marching-cubes resolution, seed) -> mesh in IDU's object frame."""


#: name -> backend. Add one with :func:`register` (or the ``idu.image_to_3d`` entry-point group).
GENERATORS: dict[str, GeneratorSpec] = {}


def register(name: str, spec: GeneratorSpec) -> GeneratorSpec:
    """Add a backend; AssetError when its licence (or its default weights') is not one that allows every
    use."""
    licences = {spec.licence}
    if spec.default_model is not None:
        if spec.default_model not in MODELS:
            raise AssetError(f"generator {name!r}: default model {spec.default_model!r} is not in MODELS")
        licences.add(MODELS[spec.default_model].licence)
    bad = sorted(lic for lic in licences if not licence_allowed(lic))
    if bad:
        raise AssetError(
            f"generator {name!r}: licence {', '.join(bad)} is not allowed (expected one of "
            f"{', '.join(ALLOWED_LICENCES)} or BSD-*)"
        )
    GENERATORS[name] = spec
    return spec


register("triplane", GeneratorSpec("triplane", None, "Apache-2.0", _load_triplane, _run_triplane))
register("triposr", GeneratorSpec("triposr", "triposr", "MIT", _load_triposr, _run_triposr))
register("trellis", GeneratorSpec("trellis", "trellis-image-large", "MIT", _load_trellis, _run_trellis))

_plugins_loaded = False


def load_plugins() -> None:
    """Register the backends of the ``idu.image_to_3d`` entry-point group (each a GeneratorSpec), once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(ep.name, ep.load())
        except Exception as e:  # a broken plugin must not take the built-in backends down
            log.warning("image-to-3D plugin %s not registered: %s", ep.name, e)


def get_generator(backend: str) -> GeneratorSpec:
    """The registered backend, or AssetError listing the known ones."""
    load_plugins()
    if backend not in GENERATORS:
        raise AssetError(f"image-to-3D backend {backend!r}: expected one of {', '.join(sorted(GENERATORS))}")
    return GENERATORS[backend]


_LOADED: dict[tuple[str, str, str], Any] = {}


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def generate(
    backend: str,
    image_rgba: np.ndarray,  # [H, W, 4] uint8: the crop, the object's mask in alpha
    *,
    model: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    resolution: int = 128,
    seed: int = 0,
) -> Mesh:
    """A coloured mesh of the object in a crop, in IDU's object frame (see the module docstring).

    Args:
        backend: a name in :data:`GENERATORS` (``triplane``, ``triposr``, ``trellis``, plugins).
        image_rgba: [H, W, 4] uint8 crop of the photo; alpha >= 128 marks the object.
        model: a registered model name or a folder; None uses the backend's default weights.
        device: where the model runs; None: CUDA when available, else the CPU.
        resolution: marching-cubes grid side for the field models (TRELLIS meshes at its own resolution).
        seed: for the sampling backends (TRELLIS); ask another for another result.

    Returns:
        Mesh with vertices [V, 3] (centred, largest extent 1, +Z up, the camera looking along +Y), faces
        [F, 3] and vertex colours [V, 3] (None when the backend gives none).

    Raises:
        AssetError: unknown backend, a crop that is not [H, W, 4] uint8 or has an empty mask, an empty
            result.
        ModelNotAvailable: the weights or the backend's package are missing (the message says where to put
            them or what to install).
    """
    spec = get_generator(backend)
    image = check_image(image_rgba)
    if int(resolution) < 8:
        raise AssetError(f"image-to-3D: resolution must be at least 8, got {resolution}")
    name = model if model is not None else spec.default_model
    if name is None:
        raise ModelNotAvailable(
            f"backend {backend!r} has no registered weights: pass model=<a folder with "
            f"{config_file(spec.kind)} and its weights>"
        )
    path = resolve(name, kind=spec.kind)
    dev = _device(device)
    key = (backend, str(path.resolve()), str(dev))
    if key not in _LOADED:
        _LOADED[key] = spec.load(path, dev)
    mesh = spec.run(_LOADED[key], image, int(resolution), int(seed))
    mesh.name = backend
    return mesh.validate()


__all__ = [
    "ALLOWED_LICENCES", "ENTRY_POINT_GROUP", "GENERATORS", "GeneratorSpec", "TRIPOSR_TO_OBJECT",
    "TriplaneConfig", "TriplaneField", "check_image", "extract_mesh", "generate", "get_generator",
    "licence_allowed", "load_plugins", "register", "square_crop", "to_object_frame",
]  # fmt: skip
