"""Pretrained models from a hub, behind one registry; nothing is ever downloaded implicitly.

Every optional learned component (DINOv2 for retrieval and change features, image-to-3D models, people's
keypoint detectors) is named in :data:`MODELS` with its hub id and licence. :func:`resolve` finds its
weights offline: a local folder given directly, ``$IDU_MODEL_DIR/<name>``, or the Hugging Face cache;
otherwise it fails with one line saying where to put them. The default pipeline downloads none of
these: its one default among them, ``mediapipe-pose`` (people's 2D keypoints), ships inside its pip wheel.
A model folder is recognised by its config file: ``config.json`` (transformers, IDU's own formats), or
the file its kind uses instead (:data:`CONFIG_FILES`: TripoSR's ``config.yaml``, TRELLIS's
``pipeline.json``).

Example::

    model = load_dinov2("dinov2-small")              # or a folder holding config.json + weights
    desc = global_descriptors(model, [rgb_uint8])    # [1, 2 * hidden] L2-normalised
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import IDUError

MODEL_DIR_ENV = "IDU_MODEL_DIR"


class ModelNotAvailable(IDUError):
    """A registered model's weights are not on this machine."""


@dataclass(frozen=True)
class ModelSpec:
    hub_id: str
    kind: str  # dinov2 | clip | triposr | trellis | triplane (IDU's image-to-3D format) | vitpose | mediapipe
    licence: str


#: The registry: name -> where it comes from and under which licence (DESIGN.md, "Licences").
MODELS: dict[str, ModelSpec] = {
    "dinov2-small": ModelSpec("facebook/dinov2-small", "dinov2", "Apache-2.0"),
    "dinov2-base": ModelSpec("facebook/dinov2-base", "dinov2", "Apache-2.0"),
    "dinov2-large": ModelSpec("facebook/dinov2-large", "dinov2", "Apache-2.0"),
    "clip-vit-b32": ModelSpec("openai/clip-vit-base-patch32", "clip", "MIT"),
    # Image-to-3D (generation/image_to_3d.py). Not Stable Fast 3D / SV3D: their community licences
    # restrict use.
    "triposr": ModelSpec("stabilityai/TripoSR", "triposr", "MIT"),
    "trellis-image-large": ModelSpec("microsoft/TRELLIS-image-large", "trellis", "MIT"),
    # 2D keypoints of people (generation/human/keypoints.py)
    "vitpose-base": ModelSpec("usyd-community/vitpose-base-simple", "vitpose", "Apache-2.0"),
    # ...the default: BlazePose GHUM (full), whose weights the mediapipe wheel ships (no hub)
    "mediapipe-pose": ModelSpec(
        "pip:mediapipe==0.10.21 (pose_landmark_full.tflite)", "mediapipe", "Apache-2.0"
    ),
}

#: kind -> the file that marks a model folder of that kind (every other kind: ``config.json``).
CONFIG_FILES: dict[str, str] = {"triposr": "config.yaml", "trellis": "pipeline.json"}


def config_file(kind: str | None) -> str:
    """The file that marks a model folder of ``kind`` (``config.json`` unless :data:`CONFIG_FILES` says)."""
    return CONFIG_FILES.get(kind or "", "config.json")


def resolve(name_or_path: str | os.PathLike, kind: str | None = None) -> Path:
    """The local folder holding a model's config file and weights (see the module docstring).

    ``kind`` (a :class:`ModelSpec` kind) says which config file a folder must hold; None accepts any known
    one for a folder and the registered kind for a name."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        marks = [config_file(kind)] if kind else ["config.json", *sorted(set(CONFIG_FILES.values()))]
        if not any((p / m).is_file() for m in marks):
            raise ModelNotAvailable(f"{p}: not a model folder (no {' or '.join(marks)})")
        return p
    name = str(name_or_path)
    spec = MODELS.get(name)
    if spec is None:
        raise ModelNotAvailable(
            f"model {name!r}: neither a folder nor a registered name ({', '.join(sorted(MODELS))})"
        )
    root = os.environ.get(MODEL_DIR_ENV)
    if root and (Path(root) / name / config_file(kind or spec.kind)).is_file():
        return Path(root) / name
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.hub_id, local_files_only=True))
    except Exception:
        pass
    raise ModelNotAvailable(
        f"model {name!r} ({spec.hub_id}, {spec.licence}) is not on this machine: put it in "
        f"${MODEL_DIR_ENV}/{name} (e.g. `huggingface-cli download {spec.hub_id} --local-dir ...` where a "
        "network is available) or pass the folder instead of the name"
    )


_LOADED: dict[tuple[str, str], Any] = {}


def load_dinov2(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A DINOv2 backbone (transformers ``Dinov2Model``) in eval mode, cached per process."""
    from transformers import Dinov2Model

    path = resolve(name_or_path)
    key = (str(path.resolve()), str(device))
    if key not in _LOADED:
        try:
            model = Dinov2Model.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            raise ModelNotAvailable(f"{path}: cannot load a DINOv2 model ({type(e).__name__}: {e})") from None
        _LOADED[key] = model.eval().to(device)
    return _LOADED[key]


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def global_descriptors(model, images: list[np.ndarray], side: int = 224) -> np.ndarray:
    """One descriptor per image [N, 2 * hidden]: the class token and the GeM-pooled (p = 3) patch tokens,
    each L2-normalised, then concatenated and normalised. Images [H, W, 3] uint8 (or [H, W] grey) are
    resized so that the shorter side is ``side`` (both sides multiples of the patch size)."""
    import torch.nn.functional as F

    patch = int(model.config.patch_size)
    out = []
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    dev = next(model.parameters()).device
    for im in images:
        a = np.asarray(im)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, -1)
        x = torch.from_numpy(np.array(a[..., :3], np.float32)).permute(2, 0, 1)[None] / 255.0
        h, w = x.shape[-2:]
        s = side / min(h, w)
        th, tw = max(patch, round(h * s / patch) * patch), max(patch, round(w * s / patch) * patch)
        x = F.interpolate(x, size=(th, tw), mode="bilinear", align_corners=False, antialias=True)
        x = ((x - mean) / std).to(dev)
        tokens = model(pixel_values=x).last_hidden_state[0]  # [1 + patches, hidden]
        cls = F.normalize(tokens[0], dim=0)
        gem = tokens[1:].clamp_min(1e-6).pow(3).mean(0).pow(1 / 3)
        d = torch.cat([cls, F.normalize(gem, dim=0)])
        out.append(F.normalize(d, dim=0).cpu().numpy())
    return np.stack(out).astype(np.float32)


__all__ = [
    "CONFIG_FILES", "MODELS", "MODEL_DIR_ENV", "ModelNotAvailable", "ModelSpec", "config_file",
    "global_descriptors", "load_dinov2", "resolve",
]  # fmt: skip
