"""2D keypoints of a person in a photo, when a keypoint model is configured (nothing is downloaded).

The registry (``reconstruction.models.MODELS``) names ViTPose (transformers ``VitPoseForPoseEstimation``,
Apache-2.0): a top-down model that takes the person's crop and returns one heatmap per COCO keypoint.
:func:`detect_keypoints` crops the photo around the person's mask (grown by 25 %, at the model's aspect),
runs the model, and maps each heatmap's peak (refined to sub-pixel by the neighbours' quadratic fit)
back to photo pixels, with the peak's height as the confidence. Photos turned by 90 degrees need no
special care: the fit compares the keypoints with the body projected through each photo's own camera.

    model = load_keypoint_model("vitpose-base")                      # or a folder: config.json + weights
    kps = detect_keypoints(model, rgb, mask)                          # [17, 3]: x, y, confidence

The default pipeline runs without one: the body is then fitted to the silhouettes alone.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reconstruction.models import IMAGENET_MEAN, IMAGENET_STD, resolve

#: The COCO keypoints, in the order of anny's regressor and of COCO-trained keypoint models.
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")  # fmt: skip

_LOADED: dict[str, Any] = {}


def load_keypoint_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A ViTPose model from a registered name or a folder (config.json + weights), cached per process."""
    from transformers import VitPoseForPoseEstimation

    path = resolve(name_or_path, "vitpose")
    key = f"{path.resolve()}|{device}"
    if key not in _LOADED:
        _LOADED[key] = VitPoseForPoseEstimation.from_pretrained(str(path)).to(device).eval()
    return _LOADED[key]


def _crop_box(mask: np.ndarray, aspect: float, grow: float = 1.25) -> tuple[float, float, float, float]:
    """(x0, y0, w, h) around the mask's pixels, grown by ``grow``, widened to ``aspect`` (w / h)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("detect_keypoints: the mask is empty")
    cx, cy = 0.5 * (xs.min() + xs.max() + 1), 0.5 * (ys.min() + ys.max() + 1)
    w, h = (xs.max() + 1 - xs.min()) * grow, (ys.max() + 1 - ys.min()) * grow
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    return cx - w / 2, cy - h / 2, w, h


def _peaks(heat: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peak (x, y) [K, 2] in heatmap pixel centres and its value [K] of heatmaps [K, h, w]."""
    k, h, w = heat.shape
    flat = heat.reshape(k, -1)
    conf, idx = flat.max(1)
    y, x = (idx // w).float(), (idx % w).float()
    out = torch.stack([x, y], 1)
    for j in range(k):
        xi, yi = int(x[j]), int(y[j])
        if 0 < xi < w - 1:
            a, b, c = heat[j, yi, xi - 1], heat[j, yi, xi], heat[j, yi, xi + 1]
            d = a - 2 * b + c
            if d < 0:
                out[j, 0] += 0.5 * (a - c) / d
        if 0 < yi < h - 1:
            a, b, c = heat[j, yi - 1, xi], heat[j, yi, xi], heat[j, yi + 1, xi]
            d = a - 2 * b + c
            if d < 0:
                out[j, 1] += 0.5 * (a - c) / d
    return (out + 0.5).numpy(), conf.clamp(0, 1).numpy()


@torch.no_grad()
def detect_keypoints(model, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """COCO keypoints [17, 3] (x, y in the photo's pixels, pixel centres at +0.5; confidence in 0..1) of
    the person whose mask [H, W] is given, in an RGB photo [H, W, 3] uint8."""
    size = model.config.backbone_config.image_size
    ih, iw = (size, size) if isinstance(size, int) else tuple(size)
    x0, y0, w, h = _crop_box(np.asarray(mask) > 0, iw / ih)
    H, W = rgb.shape[:2]
    img = torch.from_numpy(np.asarray(rgb[..., :3], np.float32) / 255.0).permute(2, 0, 1)[None]
    # the crop as a sampling grid (zeros outside the photo)
    gx = (x0 + (torch.arange(iw) + 0.5) * w / iw) / W * 2 - 1
    gy = (y0 + (torch.arange(ih) + 0.5) * h / ih) / H * 2 - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None].float()
    crop = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    dev = next(model.parameters()).device
    kwargs = {}
    if getattr(model.config.backbone_config, "num_experts", 1) > 1:
        kwargs["dataset_index"] = torch.zeros(1, dtype=torch.long, device=dev)
    heat = model(pixel_values=((crop - mean) / std).to(dev), **kwargs).heatmaps[0].float().cpu()
    hh, hw = heat.shape[-2:]
    xy, conf = _peaks(heat[: len(COCO17)])
    out = np.zeros((len(COCO17), 3))
    out[:, 0] = x0 + xy[:, 0] * w / hw
    out[:, 1] = y0 + xy[:, 1] * h / hh
    out[:, 2] = conf
    return out
