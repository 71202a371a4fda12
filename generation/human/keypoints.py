"""2D keypoints of a person in a photo, from a keypoint model (nothing is downloaded).

Two kinds are registered (``reconstruction.models.MODELS``), both Apache-2.0:

- ``mediapipe-pose``: BlazePose GHUM (full), the pose landmarker whose weights the ``mediapipe`` wheel
  ships (``mediapipe/modules/pose_landmark/pose_landmark_full.tflite`` and its person detector): the
  default, offline. :class:`MediaPipePose` crops the photo around the person's mask, turned so that the
  scene's up points up in the crop (tilted or rotated photos), at a few framings, with and without the
  background outside the mask greyed out (the detector takes a planter or a bollard beside a person seen
  from behind for the body), keeps the readings whose limbs fall inside the mask and takes each
  keypoint's median over them. 17 of its 33 landmarks are COCO's.
- ``vitpose-base``: ViTPose (transformers ``VitPoseForPoseEstimation``), a top-down model that takes the
  person's crop and returns one heatmap per COCO keypoint; each heatmap's peak (refined to sub-pixel by the
  neighbours' quadratic fit) is mapped back to photo pixels, with the peak's height as the confidence.

    model = load_keypoint_model("mediapipe-pose")                   # or "vitpose-base", or a folder
    kps = detect_keypoints(model, rgb, mask, up=(0.0, -1.0))        # [17, 3]: x, y, confidence

Without a model (``mediapipe`` not installed, none configured) the body is fitted to the silhouettes alone.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reconstruction.models import IMAGENET_MEAN, IMAGENET_STD, MODELS, ModelNotAvailable, resolve

#: The COCO keypoints, in the order of anny's regressor and of COCO-trained keypoint models.
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")  # fmt: skip

_LOADED: dict[str, Any] = {}


#: COCO17's keypoints among BlazePose's 33 landmarks.
BLAZEPOSE_COCO = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
#: The limbs' keypoints (shoulders to ankles): what a reading must place inside the person's mask.
_LIMBS = tuple(range(5, 17))


class MediaPipePose:
    """BlazePose GHUM (full) through the ``mediapipe`` wheel's pose solution, which ships its weights.

    ``side``: the crop's size in pixels; ``grows``: framings (the crop's side over the mask's longer side);
    ``grey``: also run each framing with the background outside the mask set to this grey (None: not);
    ``inside``: share of the limbs' keypoints a reading must place within ``tolerance`` person heights of
    the mask to count. A keypoint's confidence is its visibility, lowered where the readings disagree
    (by ``exp(-(spread / (tolerance * height))^2)``, the spread their median distance from the median);
    people under ``min_height`` pixels get none (the small worlds' person 24 pixels tall: 9 pixels mean
    error)."""

    def __init__(self, side: int = 256, grows: tuple[float, ...] = (1.6, 2.0), grey: int | None = 128,
                 inside: float = 0.75, tolerance: float = 0.05, min_height: int = 40):  # fmt: skip
        try:
            import mediapipe as mp
        except ImportError as e:
            raise ModelNotAvailable(
                f"model 'mediapipe-pose': the mediapipe package is not installed ({e}); "
                "`pip install --no-deps mediapipe==0.10.21` (deploy/install.sh does)"
            ) from None
        self.side, self.grows, self.grey, self.inside, self.tolerance = side, grows, grey, inside, tolerance
        self.min_height = min_height
        # one image at a time (no tracking between calls), the full landmark model (the one the wheel ships)
        pose = mp.solutions.pose
        self._pose = pose.Pose(static_image_mode=True, model_complexity=1, min_detection_confidence=0.1)
        self._lock = threading.Lock()

    def _read(self, rgb: np.ndarray, A: np.ndarray) -> np.ndarray | None:
        """One reading: BlazePose on the crop ``A`` (photo -> crop, 2x3) maps to, in photo pixels [17, 3]."""
        import cv2

        # A maps pixel-centre-at-+0.5 coordinates; OpenCV puts pixel centres at integers
        cv = A.copy()
        cv[:, 2] += A[:, :2] @ [0.5, 0.5] - 0.5
        crop = cv2.warpAffine(rgb, cv, (self.side, self.side), flags=cv2.INTER_CUBIC,
                              borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        with self._lock:
            res = self._pose.process(np.ascontiguousarray(crop))
        if res.pose_landmarks is None:
            return None
        lm = res.pose_landmarks.landmark
        uv = np.array([[lm[i].x * self.side, lm[i].y * self.side, 1.0] for i in BLAZEPOSE_COCO])
        inv = cv2.invertAffineTransform(A)
        out = np.zeros((len(COCO17), 3))
        out[:, :2] = uv @ inv.T
        out[:, 2] = np.clip([lm[i].visibility for i in BLAZEPOSE_COCO], 0, 1)
        return out

    def detect(self, rgb: np.ndarray, mask: np.ndarray, up: tuple[float, float] | None = None) -> np.ndarray:
        import cv2

        mask = np.asarray(mask) > 0
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            raise ValueError("detect_keypoints: the mask is empty")
        rgb = np.ascontiguousarray(np.asarray(rgb)[..., :3], np.uint8)
        cx, cy = 0.5 * (xs.min() + xs.max() + 1), 0.5 * (ys.min() + ys.max() + 1)
        size = float(max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()))
        # the turn that brings the scene's up onto the crop's up (-y)
        ux, uy = (0.0, -1.0) if up is None else up
        along = xs * ux + ys * uy  # the person's height in the photo: its extent along the scene's up
        if along.max() + 1 - along.min() < self.min_height:
            return np.zeros((len(COCO17), 3))  # too small to trust: confidence 0 throughout
        angle = math.atan2(ux, -uy)
        c, s = math.cos(angle), math.sin(angle)
        R = np.array([[c, s], [-s, c]])
        # distance of each pixel from the mask (the readings' check) and a soft mask (the grey background)
        far = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 3)
        tol = max(2.0, self.tolerance * size)
        images = [rgb]
        if self.grey is not None:
            soft = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
            soft = cv2.GaussianBlur(soft, (0, 0), 1.5)[..., None]
            images.append((rgb * soft + self.grey * (1 - soft)).astype(np.uint8))
        readings = []
        for grow in self.grows:
            k = self.side / (grow * size)
            A = np.concatenate(
                [k * R, (np.array([self.side / 2, self.side / 2]) - k * R @ [cx, cy])[:, None]], 1
            )
            for img in images:
                r = self._read(img, A)
                if r is None:
                    continue
                xy = np.round(r[list(_LIMBS), :2] - 0.5).astype(int)
                ok = (
                    (xy[:, 0] >= 0)
                    & (xy[:, 0] < mask.shape[1])
                    & (xy[:, 1] >= 0)
                    & (xy[:, 1] < mask.shape[0])
                )
                d = np.full(len(xy), np.inf)
                d[ok] = far[xy[ok, 1], xy[ok, 0]]
                if float((d <= tol).mean()) >= self.inside:
                    readings.append(r)
        if not readings:
            return np.zeros((len(COCO17), 3))  # no reading agrees with the mask: confidence 0 throughout
        stack = np.stack(readings)
        out = np.median(stack, 0)
        spread = np.median(np.linalg.norm(stack[:, :, :2] - out[None, :, :2], axis=2), 0)
        out[:, 2] *= np.exp(-((spread / (self.tolerance * size)) ** 2))
        return out


def load_keypoint_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A keypoint model from a registered name (``mediapipe-pose``: the weights the mediapipe wheel ships;
    ``vitpose-base``) or a ViTPose folder (config.json + weights), cached per process."""
    key = f"{name_or_path}|{device}"
    spec = MODELS.get(str(name_or_path))
    if spec is not None and spec.kind == "mediapipe":
        if key not in _LOADED:
            _LOADED[key] = MediaPipePose()
        return _LOADED[key]
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


def image_up(camera, pose, point: np.ndarray, up: np.ndarray, length: float = 0.5) -> tuple[float, float]:
    """The unit direction (x, y in pixels) in which the scene's ``up`` points in a photo at ``point``."""
    from reconstruction.cameras import project_points

    X = np.asarray(point, np.float64).reshape(1, 3)
    uv, _ = project_points(camera, pose, np.concatenate([X, X + length * np.asarray(up, np.float64)]))
    d = uv[1] - uv[0]
    n = float(np.linalg.norm(d))
    return (0.0, -1.0) if not np.isfinite(n) or n < 1e-9 else (float(d[0] / n), float(d[1] / n))


@torch.no_grad()
def detect_keypoints(
    model, rgb: np.ndarray, mask: np.ndarray, up: tuple[float, float] | None = None
) -> np.ndarray:
    """COCO keypoints [17, 3] (x, y in the photo's pixels, pixel centres at +0.5; confidence in 0..1) of
    the person whose mask [H, W] is given, in an RGB photo [H, W, 3] uint8. ``up``: the scene's up in the
    photo at the person (:func:`image_up`; None: the photo's own up), which MediaPipe's crops turn upright
    (ViTPose's crops stay axis-aligned)."""
    if isinstance(model, MediaPipePose):
        return model.detect(rgb, mask, up)
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
