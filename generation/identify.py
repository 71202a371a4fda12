"""What a change is (person, vehicle, object, ...): a classifier backend when one is configured, otherwise
the reviewer labels it.

Backends are a registry (STYLE.md item 5). ``clip`` is zero-shot CLIP (transformers ``CLIPModel``; the
registered weights are OpenAI's ViT-B/32, MIT): each label is a text prompt, a change's crops vote with
their image-text probabilities, and the label needs ``min_probability`` to be set (else it stays for the
reviewer). Weights are never downloaded: reconstruction.models.resolve finds them or says where to put them.

    label, scores = identify([crop_rgb, ...], "clip-vit-b32")     # ("person", {"person": 0.91, ...})
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from reconstruction.models import ModelNotAvailable, resolve

LABELS = ("person", "vehicle", "object", "structure", "vegetation", "other")
PROMPTS = {
    "person": "a photo of a person",
    "vehicle": "a photo of a vehicle, a car, a van or a truck",
    "object": "a photo of an object, a crate, a box, a bench or a planter",
    "structure": "a photo of a building, a wall or a fence",
    "vegetation": "a photo of a tree, a bush or a plant",
    "other": "a photo of something",
}

_LOADED: dict[str, Any] = {}


def _load_clip(name_or_path: str | os.PathLike):
    from transformers import CLIPModel, CLIPTokenizer

    path = resolve(name_or_path)
    key = str(path.resolve())
    if key not in _LOADED:
        try:
            model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
            tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            raise ModelNotAvailable(f"{path}: cannot load a CLIP model ({type(e).__name__}: {e})") from None
        _LOADED[key] = (model, tok)
    return _LOADED[key]


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@torch.no_grad()
def clip_scores(crops: list[np.ndarray], model_name: str | os.PathLike) -> dict[str, float]:
    """Mean over the crops of CLIP's probabilities of each label's prompt."""
    import torch.nn.functional as F

    model, tok = _load_clip(model_name)
    side = int(model.config.vision_config.image_size)
    text = tok([PROMPTS[k] for k in LABELS], padding=True, return_tensors="pt")
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    xs = []
    for c in crops:
        x = torch.from_numpy(np.array(np.asarray(c)[..., :3], np.float32)).permute(2, 0, 1)[None] / 255.0
        xs.append(F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True))
    pixels = (torch.cat(xs) - mean) / std
    out = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels)
    probs = out.logits_per_image.softmax(-1).mean(0)
    return {k: float(p) for k, p in zip(LABELS, probs, strict=True)}


#: name -> scoring function (crops, model) -> {label: probability}
CLASSIFIERS: dict[str, Callable[[list[np.ndarray], str], dict[str, float]]] = {"clip": clip_scores}


def identify(crops: list[np.ndarray], model: str | os.PathLike, backend: str = "clip",
             min_probability: float = 0.5) -> tuple[str | None, dict[str, float]]:  # fmt: skip
    """The label of a change from its crops [H, W, 3] uint8, or None when no label is likely enough."""
    if backend not in CLASSIFIERS:
        raise ModelNotAvailable(f"classifier {backend!r}: expected one of {', '.join(CLASSIFIERS)}")
    if not crops:
        return None, {}
    scores = CLASSIFIERS[backend](crops, model)
    best = max(scores, key=scores.get)
    return (best if scores[best] >= min_probability else None), scores


__all__ = ["CLASSIFIERS", "LABELS", "PROMPTS", "clip_scores", "identify"]
