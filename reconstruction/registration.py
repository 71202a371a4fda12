"""Register new photos against an existing scene version, which never moves.

Three steps, each a plain function over files and arrays (hloc's localisation recipe, with pycolmap):

    index = scene_index(version)                        # once per scene version, kept with the store
    photo = load_photo(path, config)                    # decoded, oriented, 8-bit, downscaled
    result = register_photo(index, photo, config)      # retrieval -> matching -> 2D-3D -> pose -> gates

:func:`register_photos` runs them over a folder with progress on stderr. Nothing in the store changes:
the index lives in the scene's cache folder (``<scene>/.cache/registration/v<N>-<key>/``) and the
photos' features (the scene's and the new ones) are cached there by content hash, as COLMAP's own
uint8 descriptors: cached or fresh, a photo's features are the same, so the index of a merged version
extracts only the features no earlier run left.

The index holds SIFT features of the scene's photos and their 3D points: the photos are matched among
themselves and the points triangulated **with the version's cameras held fixed** (the SfM stage's
known-poses path), so every keypoint that sees a point knows which one. A new photo is matched against its
top-k scene photos by a global descriptor (a bag of visual words built from the scene's own descriptors;
no pretrained vocabulary is needed), correspondences are gathered through the tracks, and
``pycolmap.estimate_and_refine_absolute_pose`` (LO-RANSAC + refinement) gives its ``cam_from_world`` in
the scene frame. Quality gates reject what cannot be trusted, with a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch

from .cameras import Camera, Pose, model_images, project_points
from .errors import IDUError, SceneFormatError
from .pose_check import PoseCheckConfig, best_pose, check_pose, turned
from .sfm import SfMConfig, colmap_log, run_sfm
from .splats import Splats

log = logging.getLogger(__name__)

CAMERA_MODES = ("auto", "scene", "exif", "unknown")
RETRIEVALS = ("bow", "dinov2")
INDEX_VERSION = "idu-registration-index-5"


@dataclass
class RegistrationConfig:
    """How new photos are registered (every threshold is a quality gate with its own reason)."""

    max_image_size: int = 1024
    """Photos are downscaled so that the longer side is at most this (features, matching, pose; hloc's
    SIFT setting is 1600: slower, rarely more accurate for registration)."""
    max_pixels: int = 150_000_000
    """Photos with more pixels than this are refused before decoding (memory)."""
    max_num_features: int = 4096
    """SIFT features per photo (scene photos and new ones alike; matching time grows with its square)."""
    peak_threshold: float = 0.002
    """SIFT detector threshold (COLMAP's default is 0.0067): low, for many features in small photos."""
    upsample_below: int = 800
    """Photos whose processing size is smaller than this (longer side) are upsampled 2x inside SIFT
    (COLMAP's first octave -1: more small features); larger ones are not (4x faster extraction)."""
    affine_sift: bool = False
    """Affine-covariant SIFT with domain-size pooling, for scene and new photos alike (COLMAP's advice
    for large viewpoint changes); several times slower extraction."""
    num_candidates: int = 12
    """Scene photos a new photo is matched against (top-k by retrieval)."""
    retrieval: str = "bow"
    """bow: a bag of visual words built from the scene's own SIFT descriptors (works offline, no model);
    dinov2: a DINOv2 global descriptor (``retrieval_model``, see reconstruction.models)."""
    retrieval_model: str = "dinov2-small"
    """Registered model name or a local folder (config.json + weights) for ``retrieval="dinov2"``."""
    ratio: float = 0.85
    """Lowe's ratio test on descriptor distances (mutual nearest neighbours only)."""
    camera: str = "auto"
    """auto | scene | exif | unknown. scene: the scene's camera (scaled to the photo); exif: the EXIF focal
    length as a prior, refined; unknown: focal length estimated per photo. auto: scene when the photo has a
    scene camera's aspect and size class, else exif when present, else unknown."""
    ransac_max_error: float = 6.0
    """RANSAC inlier threshold in pixels (at the processing size)."""
    min_inliers: int = 30
    """Fewer inlier 2D-3D matches than this: rejected."""
    min_inlier_ratio: float = 0.15
    """Inliers over all 2D-3D matches below this: rejected (repeated textures, wrong retrieval) unless
    the inliers are many (at least ``confident_inliers``): a changed place or another light make many
    wrong matches beside many right ones."""
    confident_inliers: int = 90
    """Inlier count above which a low inlier ratio is accepted (3 x ``min_inliers``)."""
    max_reprojection_error: float = 2.0
    """Mean reprojection error of the inliers above this (pixels): rejected."""
    min_inlier_spread: float = 0.02
    """Inliers covering less than this fraction of the photo (their bounding box): rejected."""
    max_distance: float = 3.0
    """Camera farther from the scene's centre than this many scene radii: rejected (outside the scene)."""
    tracks: str = "auto"
    """Where the index's 2D-3D tracks come from. model: the version's own COLMAP model (each scene keypoint
    takes the 3D point observed within ``track_radius`` pixels: no matching, seconds per photo);
    triangulate: match the scene's photos among themselves and triangulate with their cameras fixed;
    auto: model when it has observations for most photos, else triangulate."""
    track_radius: float = 1.5
    """Pixels between a scene keypoint and a model observation for them to share the 3D point."""
    scene_matcher: str = "auto"
    """How the scene's photos are matched among themselves when ``tracks`` triangulates."""
    retry_candidates: int = 30
    """A photo whose pose the support gates reject (inlier count, ratio, reprojection error) is matched
    again against this many scene photos."""
    min_checked_inliers: int = 6
    """A pose that fails the support gates but has at least this many inliers is registered when the
    scene rendered at it looks like the photo (``pose_check``; 0: never)."""
    pose_check: PoseCheckConfig = field(default_factory=PoseCheckConfig)
    """How the render check judges a weakly supported pose (``reconstruction.pose_check``)."""
    refine_above_deg: float = 0.1
    """A registered pose whose rotation is less certain than this (degrees: one standard deviation, from
    its inliers' geometry and residuals) is refined by guided matching (0: never)."""
    guided_radii: tuple[float, ...] = (0.02, 0.01, 0.005)
    """Search radii of guided matching, as fractions of the photo's longer side, one round each."""
    guided_min_radius_px: float = 3.0
    """...but never below this many pixels (keypoints and scene points are each off by about a pixel)."""
    guided_ratio: float = 0.8
    """Ratio test of guided matching: against the best descriptor of another point within the radius."""
    guided_max_distance: float = 0.75
    """Descriptor distance (L2, normalised) above which a guided match is not taken."""
    guided_directions: int = 2
    """Guided matching also starts from the pose moved along this many of its least certain directions
    (those that turn it most), ``guided_starts`` standard deviations both ways (0: from the pose only)."""
    guided_starts: tuple[float, ...] = (1.0, 2.0)
    """How far (standard deviations of the pose) the further starts of guided matching lie."""
    guided_evidence: float = 5.0
    """A further start's guided matching replaces the pose's own when it explains the correspondences
    all runs found better by this log-likelihood ratio (Gaussian pixel noise, truncated at the RANSAC
    threshold): poses the data cannot tell apart do not replace each other by chance."""
    vocabulary_size: int = 0
    """Visual words of the retrieval vocabulary (0: from the number of scene descriptors)."""
    seed: int = 0


@dataclass
class Photo:
    """A new photo, decoded: ``gray`` [H, W] uint8 at the processing size, and where it came from."""

    name: str
    path: Path
    gray: np.ndarray
    width: int  # full size, after EXIF orientation
    height: int
    scale: float  # processing size / full size
    sha256: str  # of the decoded, oriented pixels (duplicates; the feature cache key)
    exif_focal_px: float | None
    thumb: np.ndarray | None = None  # [h, w, 3] uint8, longer side <= 448: for learned global descriptors


@dataclass
class Result:
    """One photo's outcome; ``to_json`` is the ``idu register --json`` entry (DESIGN.md)."""

    name: str
    status: str  # registered | rejected
    reason: str | None = None
    cam_from_world: Pose | None = None
    camera: Camera | None = None
    num_inliers: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "cam_from_world": None if self.cam_from_world is None else self.cam_from_world.to_json(),
            "camera": None if self.camera is None else self.camera.to_json(),
            "num_inliers": self.num_inliers,
            "seconds": round(self.seconds, 3),
            **self.details,
        }


# -- photos --------------------------------------------------------------------------------------------
def _exif_focal_px(im, width: int, height: int) -> float | None:
    try:
        exif = im.getexif()
        sub = exif.get_ifd(0x8769)
    except Exception:
        return None
    f35 = sub.get(0xA405) or exif.get(0xA405)  # FocalLengthIn35mmFilm
    if f35:
        return float(f35) / 36.0 * max(width, height)
    return None


@contextlib.contextmanager
def _decoding(path: Path):
    """Turn a decoder's failure into one line naming the file and the problem."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except SceneFormatError:
        raise
    except UnidentifiedImageError:
        raise SceneFormatError(f"{path}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise SceneFormatError(f"{path}: corrupt or truncated image ({e})") from None


def _open_checked(path: Path, max_pixels: int, draft_side: int):
    """PIL image of ``path``, its size checked against ``max_pixels`` before decoding (call inside
    :func:`_decoding`); JPEGs are decoded at a reduced size near ``draft_side`` straight away."""
    from PIL import Image

    if path.stat().st_size == 0:
        raise SceneFormatError(f"{path}: empty file (0 bytes)")
    Image.MAX_IMAGE_PIXELS = None  # we check the size ourselves, before decoding
    im = Image.open(path)
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise SceneFormatError(
            f"{path}: {w}x{h} pixels ({w * h / 1e6:.0f} MP) is more than the {max_pixels / 1e6:.0f} MP limit"
        )
    if im.format == "JPEG":
        im.draft("RGB", (draft_side, draft_side))
    im.load()
    return im


def load_rgb(path: str | os.PathLike, max_side: int, max_pixels: int = 150_000_000) -> np.ndarray:
    """A photo as RGB [H, W, 3] uint8, EXIF orientation applied, grayscale/RGBA/16-bit made 8-bit RGB,
    downscaled so that the longer side is at most ``max_side``. Raises SceneFormatError like
    :func:`load_photo`."""
    from PIL import Image, ImageOps

    path = Path(path)
    with _decoding(path), _open_checked(path, max_pixels, max_side) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode.startswith("I") or im.mode == "F":
            im = Image.fromarray(_to_gray8(im))
        im = im.convert("RGBA").convert("RGB") if "A" in im.mode or "transparency" in im.info else im
        im = im.convert("RGB")
        s = min(1.0, max_side / max(im.size))
        if s < 1:
            im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))),
                           Image.Resampling.BILINEAR)  # fmt: skip
        return np.array(im, np.uint8)


def load_photo(path: str | os.PathLike, config: RegistrationConfig | None = None) -> Photo:
    """Decode a photo for registration: EXIF orientation applied, grayscale/RGBA/palette/16-bit turned into
    8-bit, downscaled to ``max_image_size``.

    Raises:
        SceneFormatError: one line naming the file and the problem (empty, not an image, truncated,
            too large).
    """
    from PIL import Image, ImageOps

    config = config or RegistrationConfig()
    path = Path(path)
    with _decoding(path), _open_checked(path, config.max_pixels, config.max_image_size) as im:
        w, h = im.size
        exif_focal = _exif_focal_px(im, w, h)
        try:
            swapped = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF orientation: a quarter turn
        except Exception:
            swapped = False
        im = ImageOps.exif_transpose(im)
        full_w, full_h = (h, w) if swapped else (w, h)
        sha = hashlib.sha256(f"{im.mode} {im.size}".encode() + im.tobytes()).hexdigest()
        arr = _to_gray8(im)
        thumb = _thumbnail(im)
    gray = Image.fromarray(arr)
    s = min(1.0, config.max_image_size / max(full_w, full_h))
    tw, th = max(1, round(full_w * s)), max(1, round(full_h * s))
    if gray.size != (tw, th):
        gray = gray.resize((tw, th), Image.Resampling.BILINEAR if s < 1 else Image.Resampling.BICUBIC)
    return Photo(path.name, path, np.ascontiguousarray(np.asarray(gray)), full_w, full_h, tw / full_w, sha,
                 exif_focal, thumb)  # fmt: skip


def _thumbnail(im, side: int = 448) -> np.ndarray:
    from PIL import Image

    if im.mode not in ("RGB", "L"):
        im = (
            Image.fromarray(_to_gray8(im)) if im.mode.startswith("I") or im.mode == "F" else im.convert("RGB")
        )
    im = im.convert("RGB")
    s = min(1.0, side / max(im.size))
    if s < 1:
        im = im.resize(
            (max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.Resampling.BILINEAR
        )
    return np.asarray(im, np.uint8)


def _to_gray8(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")
    return np.asarray(im.convert("L"), np.uint8)


# -- features -----------------------------------------------------------------------------------------
def _feature_settings(config: RegistrationConfig) -> list:
    """Everything that changes a photo's features (cache keys)."""
    return [INDEX_VERSION, config.max_image_size, config.max_num_features, config.peak_threshold,
            config.affine_sift, config.upsample_below]  # fmt: skip


_EXTRACTORS: dict[str, Any] = {}


def _extractor(config: RegistrationConfig, first_octave: int = -1):
    """One pycolmap SIFT extractor per settings and process (created once: it logs and allocates)."""
    key = json.dumps([*_feature_settings(config), first_octave])
    if key not in _EXTRACTORS:
        opts = pycolmap.FeatureExtractionOptions()
        opts.max_image_size = config.max_image_size
        opts.num_threads = 1
        opts.sift.max_num_features = config.max_num_features
        opts.sift.peak_threshold = config.peak_threshold
        opts.sift.estimate_affine_shape = config.affine_sift
        opts.sift.domain_size_pooling = config.affine_sift
        opts.sift.first_octave = first_octave
        with colmap_log(Path(os.devnull)):
            _EXTRACTORS[key] = pycolmap.FeatureExtractor.create(opts, pycolmap.Device.cpu)
    return _EXTRACTORS[key]


def extract(
    photo: Photo, config: RegistrationConfig, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints [N, 2] (pixel centres at +0.5, processing size) and L2-normalised descriptors
    [N, 128] float32; cached by the photo's pixel hash and the settings."""
    xy, raw = extract_raw(photo, config, cache)
    return xy, _descriptors(raw)


def extract_raw(
    photo: Photo, config: RegistrationConfig, cache: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints [N, 2] and COLMAP's own uint8 descriptors [N, 128]. The cache keeps exactly these,
    so a photo's cached features give the same matches as fresh ones."""
    key = hashlib.sha256((photo.sha256 + json.dumps(_feature_settings(config))).encode()).hexdigest()[:24]
    f = None if cache is None else cache / f"{key}.npz"
    if f is not None and f.is_file():
        d = np.load(f)
        return d["xy"], d["desc"]
    octave = -1 if max(photo.gray.shape) < config.upsample_below else 0
    kp, desc = _extractor(config, octave).extract_from_uint8_array(np.ascontiguousarray(photo.gray))
    xy = np.array([(k.x, k.y) for k in kp], np.float32).reshape(-1, 2)
    raw = np.asarray(desc.data, np.uint8).reshape(-1, 128)
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, xy=xy, desc=raw)
        os.replace(tmp, f)
    return xy, raw


def _descriptors(raw: np.ndarray) -> np.ndarray:
    """COLMAP's uint8 SIFT descriptors [N, 128] as the L2-normalised float32 ones everything matches with:
    the one conversion, whether they were just extracted, cached or read back with an index."""
    return _l2(raw.astype(np.float32))


def _l2(d: np.ndarray) -> np.ndarray:
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def match_descriptors(a: np.ndarray, b: np.ndarray, ratio: float = 0.8, block: int = 256) -> np.ndarray:
    """Mutual nearest neighbours passing Lowe's ratio test: [M, 2] index pairs (a, b).

    ``a`` [N, D], ``b`` [M, D]: L2-normalised descriptors. The similarities are computed ``block`` rows of
    ``a`` at a time (a block stays in cache: a third faster than one [N, M] product on 2 cores), each
    block giving its rows' best and second-best and its share of every column's best.
    """
    if len(a) < 2 or len(b) < 2:
        return np.zeros((0, 2), np.int64)
    ta, tb = (
        torch.from_numpy(np.ascontiguousarray(a, np.float32)),
        torch.from_numpy(np.ascontiguousarray(b, np.float32)),
    )
    n, tbt = ta.shape[0], tb.T
    best, second = torch.empty(n), torch.empty(n)
    nn_ab = torch.empty(n, dtype=torch.int64)
    col_best = torch.full((tb.shape[0],), -3.0)
    nn_ba = torch.zeros(tb.shape[0], dtype=torch.int64)
    for s in range(0, n, block):
        sim = ta[s : s + block] @ tbt
        v, i = sim.max(1)  # two max passes: much faster than topk(2) on CPU
        best[s : s + block], nn_ab[s : s + block] = v, i
        cv, ci = sim.max(0)
        better = cv > col_best  # the earliest row wins a tie, as one argmax over all rows
        col_best = torch.where(better, cv, col_best)
        nn_ba = torch.where(better, ci + s, nn_ba)
        sim.scatter_(1, i[:, None], -2.0)
        second[s : s + block] = sim.max(1).values
    d1 = torch.sqrt(torch.clamp(2 - 2 * best, min=0))
    d2 = torch.sqrt(torch.clamp(2 - 2 * second, min=0))
    cand = torch.nonzero(d1 < ratio * d2).squeeze(1)
    i = cand[nn_ba[nn_ab[cand]] == cand]
    return torch.stack([i, nn_ab[i]], 1).numpy().astype(np.int64)


# -- the scene index ------------------------------------------------------------------------------------
@dataclass
class SceneIndex:
    """Features, tracks and retrieval vocabulary of one scene version (see the module docstring)."""

    names: list[str]
    cameras: list[Camera]  # per scene photo
    poses: list[Pose]
    xy: list[np.ndarray]  # per photo [Ni, 2], pixel coordinates of the photo's camera
    desc: list[np.ndarray]  # per photo [Ni, 128] float32, L2-normalised
    point_ids: list[np.ndarray]  # per photo [Ni] index into ``points`` or -1
    points: np.ndarray  # [P, 3] in the scene frame
    vocabulary: np.ndarray  # [K, 128]
    idf: np.ndarray  # [K]
    bow: np.ndarray  # [num photos, K] tf-idf, L2-normalised
    centre: np.ndarray  # [3]
    radius: float
    path: Path | None = None
    retrieval: str = "bow"
    global_desc: np.ndarray | None = None  # [num photos, D] for learned retrieval
    point3D_ids: np.ndarray | None = None  # [P] the model's point3D_id of each point (-1: triangulated here)
    observations: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    """(descriptors, point indices) of every keypoint with a 3D point, for guided matching (built lazily)."""

    def bag_of_words(self, desc: np.ndarray) -> np.ndarray:
        """tf-idf histogram [K] (L2-normalised) of descriptors [N, 128] over the vocabulary."""
        return _bow(desc, self.vocabulary, self.idf)

    def retrieve(self, desc: np.ndarray, k: int, query: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The ``k`` scene photos most similar to a photo: (index, score), best first. ``desc`` [N, 128]:
        its SIFT descriptors (bag of words); ``query`` [D]: its global descriptor (learned retrieval)."""
        if self.retrieval == "bow":
            s = self.bow @ self.bag_of_words(desc)
        else:
            if query is None or self.global_desc is None:
                raise IDUError(f"retrieval {self.retrieval!r} needs the photo's global descriptor")
            s = self.global_desc @ query
        order = np.argsort(-s, kind="stable")[: max(1, k)]
        return [(int(i), float(s[i])) for i in order]


def _assign(desc: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(desc, np.float32))
    v = torch.from_numpy(np.ascontiguousarray(vocab, np.float32))
    return torch.cat([(c @ v.T).argmax(1) for c in t.split(8192)]).numpy()


def _words(desc: np.ndarray, vocab: np.ndarray) -> np.ndarray:
    """The visual word of each descriptor [N]."""
    return _assign(desc, vocab) if len(desc) else np.zeros(0, np.int64)


def _tfidf(words: np.ndarray, size: int, idf: np.ndarray) -> np.ndarray:
    h = np.bincount(words, minlength=size).astype(np.float64) * idf
    return (h / max(np.linalg.norm(h), 1e-12)).astype(np.float32)


def _bow(desc: np.ndarray, vocab: np.ndarray, idf: np.ndarray) -> np.ndarray:
    return _tfidf(_words(desc, vocab), len(vocab), idf)


def build_vocabulary(
    descs: Sequence[np.ndarray], size: int = 0, seed: int = 0, iterations: int = 10
) -> np.ndarray:
    """Visual words [K, 128] (spherical k-means on a subsample of the scene's descriptors)."""
    alld = np.concatenate([d for d in descs if len(d)]) if descs else np.zeros((0, 128), np.float32)
    if len(alld) < 16:
        raise IDUError(f"only {len(alld)} SIFT descriptors in the scene's photos: too few to index them")
    k = size or int(np.clip(2 ** round(math.log2(max(len(alld) / 60, 1))), 64, 4096))
    k = min(k, len(alld))
    rng = np.random.default_rng(seed)
    sample = alld[rng.choice(len(alld), min(len(alld), 200 * k, 200_000), replace=False)]
    x = torch.from_numpy(np.ascontiguousarray(sample, np.float32))
    c = x[torch.from_numpy(rng.choice(len(x), k, replace=False))].clone()
    for _ in range(iterations):
        a = torch.cat([(p @ c.T).argmax(1) for p in x.split(8192)])
        s = torch.zeros_like(c).index_add_(0, a, x)
        empty = s.norm(dim=1) < 1e-9
        if empty.any():  # restart empty words on random descriptors
            s[empty] = x[torch.from_numpy(rng.choice(len(x), int(empty.sum()), replace=False))]
        c = torch.nn.functional.normalize(s, dim=1)
    return c.numpy()


def _scene_sfm(config: RegistrationConfig) -> SfMConfig:
    """SfM settings for the scene's photos: the same SIFT as the new photos get."""
    return SfMConfig(
        max_image_size=config.max_image_size, max_num_features=config.max_num_features,
        peak_threshold=config.peak_threshold, matcher=config.scene_matcher, seed=config.seed,
        estimate_affine_shape=config.affine_sift, domain_size_pooling=config.affine_sift,
    )  # fmt: skip


def _retrieval_key(config: RegistrationConfig) -> Any:
    if config.retrieval not in RETRIEVALS:
        raise IDUError(f"retrieval {config.retrieval!r}: expected one of {', '.join(RETRIEVALS)}")
    if config.retrieval == "bow":
        return "bow"
    from .models import resolve

    folder = resolve(config.retrieval_model)
    return [
        config.retrieval,
        str(folder.resolve()),
        hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
    ]


def _global_query(photo: Photo, config: RegistrationConfig) -> np.ndarray | None:
    if config.retrieval == "bow":
        return None
    from .models import global_descriptors, load_dinov2

    return global_descriptors(load_dinov2(config.retrieval_model), [photo.thumb])[0]


def _index_key(version, config: RegistrationConfig) -> str:
    h = hashlib.sha256()
    h.update(INDEX_VERSION.encode())
    h.update((version.path / "images.json").read_bytes())
    settings = [asdict(_scene_sfm(config)), config.vocabulary_size, _retrieval_key(config), config.seed,
                config.tracks, config.track_radius, _feature_settings(config)]  # fmt: skip
    h.update(json.dumps(settings).encode())
    return h.hexdigest()[:16]


class _Tracks:
    """Scene photos' keypoints and the model's 3D points they see, gathered photo by photo."""

    def __init__(self, rec: pycolmap.Reconstruction):
        self.rec = rec
        self.index: dict[int, int] = {}
        self.points: list[np.ndarray] = []
        self.photos: list[tuple] = []

    def point(self, point3D_id: int) -> int:
        """Our index of a model point (added on first sight)."""
        if point3D_id not in self.index:
            self.index[point3D_id] = len(self.points)
            self.points.append(np.asarray(self.rec.point3D(point3D_id).xyz, np.float64))
        return self.index[point3D_id]

    def add(self, entry, xy: np.ndarray, desc: np.ndarray, ids: np.ndarray) -> None:
        self.photos.append((entry.name, entry.camera, entry.cam_from_world, xy, desc, ids))

    def result(self, how: str):
        cols = list(zip(*self.photos, strict=True)) if self.photos else [[]] * 6
        ids = np.full(len(self.points), -1, np.int64)
        for model_id, row in self.index.items():
            ids[row] = model_id if how == "model" else -1
        return (*[list(c) for c in cols], self.points, ids, how)


def _tracks_by_triangulation(stored, photos: Path, work: Path, config: RegistrationConfig):
    known = {im.entry.name: (im.entry.cam_from_world, im.entry.camera) for im in stored}
    rec = run_sfm(photos, work, _scene_sfm(config), sorted(known), known)
    db = pycolmap.Database.open(str(work / "database.db"))
    try:
        by_name = {im.name: im for im in db.read_all_images()}
        out = _Tracks(rec)
        for e in model_images(rec):
            dbim = by_name[e.name]
            kp = np.asarray(db.read_keypoints(dbim.image_id), np.float32)[:, :2]
            d = np.asarray(db.read_descriptors(dbim.image_id).data, np.uint8).reshape(-1, 128)
            ids = np.full(len(kp), -1, np.int64)
            for j, p2 in enumerate(rec.image(dbim.image_id).points2D):
                if j < len(ids) and p2.has_point3D():
                    ids[j] = out.point(int(p2.point3D_id))
            out.add(e, kp, d, ids)
    finally:
        db.close()
    return out.result("triangulate")


def _tracks_from_model(version, stored, photos: Path, config: RegistrationConfig, required: bool,
                       progress: bool = False):  # fmt: skip
    """Scene keypoints tied to the version's own 3D points (None when the model has too few observations
    and ``required`` is False). The photos' features come from the scene's feature cache where an
    earlier run left them (registered photos merged into this version, an earlier version's index)."""
    rec = version.load_model()
    obs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in rec.reg_image_ids():
        im = rec.image(i)
        sel = [(p.xy, p.point3D_id) for p in im.points2D if p.has_point3D()]
        if sel:
            obs[im.name] = (
                np.array([x for x, _ in sel], np.float32),
                np.array([j for _, j in sel], np.int64),
            )
    with_obs = sum(1 for im in stored if len(obs.get(im.entry.name, ((), ()))[1]) >= 8)
    if with_obs < max(2, 0.5 * len(stored)):
        if required:
            raise IDUError(
                f"{version.scene.ref} v{version.number}: its COLMAP model has observations for only "
                f"{with_obs} of {len(stored)} photos; use tracks='triangulate'"
            )
        return None
    out = _Tracks(rec)
    with _progress(progress, len(stored), "indexing the scene") as bar:
        task = bar.add_task("index", total=len(stored), info="")
        for im in sorted(stored, key=lambda s: s.entry.name):
            _index_photo(out, im.entry, photos, obs, config, feature_cache(version))
            bar.update(task, advance=1, info=im.entry.name)
    return out.result("model")


def feature_cache(version) -> Path:
    """The scene's cache of photos' SIFT features (by content hash and settings; all versions share it)."""
    return version.scene.root / ".cache" / "registration" / "photos"


def _index_photo(out: _Tracks, e, photos: Path, obs: dict, config: RegistrationConfig,
                 cache: Path | None = None) -> None:  # fmt: skip
    """One scene photo's SIFT features, each tied to the model point observed at its pixel."""
    photo = load_photo(photos / e.name, config)
    xy, d = extract_raw(photo, config, cache)
    xy = xy * np.float32(e.camera.width / photo.gray.shape[1])  # to the camera's pixels
    ids = np.full(len(xy), -1, np.int64)
    if e.name in obs and len(xy):
        oxy, opid = obs[e.name]
        best = torch.cdist(torch.from_numpy(xy), torch.from_numpy(oxy)).min(1)
        for k in np.nonzero((best.values <= config.track_radius).numpy())[0]:
            ids[k] = out.point(int(opid[int(best.indices[k])]))
    out.add(e, xy, d, ids)


def scene_index(version, config: RegistrationConfig | None = None, progress: bool = False) -> SceneIndex:
    """The registration index of a scene version, built once and kept in the scene's cache folder.

    Args:
        version: a :class:`reconstruction.store.SceneVersion` whose photos are in the store.
    Raises:
        IDUError: the version has no photos in the store, or too few features to index.
    """
    config = config or RegistrationConfig()
    key = _index_key(version, config)
    folder = version.scene.root / ".cache" / "registration" / f"v{version.number}-{key}"
    f = folder / "index.npz"
    if f.is_file():
        return _read_index(f)
    stored = version.images()
    missing = [im.entry.name for im in stored if not im.file or not (version.scene.root / im.file).is_file()]
    if missing or not stored:
        raise IDUError(
            f"{version.scene.ref} v{version.number}: registration needs the scene's photos in the store, but "
            f"{len(missing) or 'all'} are missing (e.g. {missing[0] if missing else 'no images'})"
        )
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for im in stored:  # stages read photos by name: link them from the pool
        link = photos / im.entry.name
        if not link.exists():
            os.symlink(os.path.relpath(version.scene.root / im.file, photos), link)
    log.info("%s v%d: building the registration index (%d photos, once per version)", version.scene.ref,
             version.number, len(stored))  # fmt: skip
    t0 = time.perf_counter()
    if config.tracks not in ("auto", "model", "triangulate"):
        raise IDUError(f"tracks {config.tracks!r}: expected auto, model or triangulate")
    built = None
    if config.tracks in ("auto", "model"):
        built = _tracks_from_model(version, stored, photos, config, required=config.tracks == "model",
                                   progress=progress)  # fmt: skip
    if built is None:
        built = _tracks_by_triangulation(stored, photos, folder / "sfm", config)
    names, cams, poses, xys, raw, pids, pts, model_ids, how = built
    descs = [_descriptors(r) for r in raw]
    points = np.stack(pts) if pts else np.zeros((0, 3))
    vocab = build_vocabulary(descs, config.vocabulary_size, config.seed)
    words = [_words(d, vocab) for d in descs]  # assigned once: for the document frequencies and the bags
    df = np.zeros(len(vocab))
    for w in words:
        df[np.unique(w)] += 1
    idf = np.log((len(descs) + 1) / (df + 1)).astype(np.float32) + 1e-3
    bow = np.stack([_tfidf(w, len(vocab), idf) for w in words])
    global_desc = None
    if config.retrieval != "bow":
        from PIL import Image

        from .models import global_descriptors, load_dinov2

        model = load_dinov2(config.retrieval_model)
        thumbs = []
        for n in names:
            with Image.open(photos / n) as im:
                thumbs.append(_thumbnail(im))
        global_desc = global_descriptors(model, thumbs)
    centres = np.stack([p.center() for p in poses])
    sample = np.concatenate([centres, points]) if len(points) else centres
    centre = np.median(sample, 0)
    radius = float(np.percentile(np.linalg.norm(sample - centre, axis=1), 90)) or 1.0
    index = SceneIndex(names, cams, poses, xys, descs, pids, points, vocab, idf, bow, centre, radius, f,
                       config.retrieval, global_desc, model_ids)  # fmt: skip
    _write_index(index, raw, f)
    log.info("registration index: %d photos, %d points (tracks: %s), %d visual words in %.1f s", len(names),
             len(points), how, len(vocab), time.perf_counter() - t0)  # fmt: skip
    return index


def _write_index(index: SceneIndex, raw: list[np.ndarray], f: Path) -> None:
    """The index on disk, with the descriptors as COLMAP's uint8 ones (``raw``, one array per photo):
    read back, they normalise to exactly the float32 ones the index was first used with."""
    arrays: dict[str, Any] = {
        "meta": np.frombuffer(json.dumps({
            "format": INDEX_VERSION, "names": index.names, "cameras": [c.to_json() for c in index.cameras],
            "poses": [p.to_json() for p in index.poses], "radius": index.radius, "retrieval": index.retrieval,
        }).encode(), np.uint8),
        "points": index.points, "vocabulary": index.vocabulary, "idf": index.idf, "bow": index.bow,
        "centre": index.centre,
        "counts": np.array([len(x) for x in index.xy], np.int64),
        "xy": np.concatenate(index.xy) if index.xy else np.zeros((0, 2), np.float32),
        "desc": np.concatenate(raw) if raw else np.zeros((0, 128), np.uint8),
        "point_ids": np.concatenate(index.point_ids) if index.point_ids else np.zeros(0, np.int64),
        "point3D_ids": index.point3D_ids if index.point3D_ids is not None else np.full(len(index.points), -1),
    }  # fmt: skip
    if index.global_desc is not None:
        arrays["global_desc"] = index.global_desc
    tmp = f.with_name(f".index.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, f)


def _read_index(f: Path) -> SceneIndex:
    d = np.load(f)
    meta = json.loads(bytes(d["meta"]).decode())
    if meta.get("format") != INDEX_VERSION:
        raise IDUError(f"{f}: registration index format {meta.get('format')!r}; delete the folder to rebuild")
    splits = np.cumsum(d["counts"])[:-1]
    desc = _descriptors(d["desc"])
    return SceneIndex(
        meta["names"], [Camera.from_json(c) for c in meta["cameras"]],
        [Pose.from_json(p) for p in meta["poses"]], np.split(d["xy"], splits), np.split(desc, splits),
        np.split(d["point_ids"], splits), d["points"], d["vocabulary"], d["idf"], d["bow"], d["centre"],
        float(meta["radius"]), f, meta.get("retrieval", "bow"),
        d["global_desc"] if "global_desc" in d else None, d["point3D_ids"],
    )  # fmt: skip


# -- one photo -----------------------------------------------------------------------------------------
def _initial_camera(photo: Photo, index: SceneIndex, config: RegistrationConfig) -> tuple[Camera, str, bool]:
    """(camera at the processing size, how it was chosen, whether its focal length is estimated)."""
    w, h = photo.gray.shape[1], photo.gray.shape[0]
    mode = config.camera
    if mode not in CAMERA_MODES:
        raise IDUError(f"camera mode {mode!r}: expected one of {', '.join(CAMERA_MODES)}")
    same = [c for c in index.cameras if abs(c.width / c.height - photo.width / photo.height) < 0.01]
    if mode == "scene" or (mode == "auto" and same):
        src = (same or index.cameras)[0]
        return src.scaled(w / src.width), "scene", False
    if mode == "exif" or (mode == "auto" and photo.exif_focal_px):
        if photo.exif_focal_px is None:
            raise IDUError(f"{photo.path}: --camera exif, but the photo has no EXIF focal length")
        f = photo.exif_focal_px * photo.scale
        return Camera("SIMPLE_RADIAL", w, h, [f, w / 2, h / 2, 0.0]), "exif", True
    f = 1.2 * max(w, h)
    return Camera("SIMPLE_RADIAL", w, h, [f, w / 2, h / 2, 0.0]), "unknown", True


def _image_correspondences(index: SceneIndex, desc: np.ndarray, i: int,
                           ratio: float) -> tuple[np.ndarray, np.ndarray, int]:  # fmt: skip
    """2D-3D correspondences of a photo through the tracks of scene photo ``i``: (keypoint indices [M],
    point indices [M], number of 2D-2D matches)."""
    m = match_descriptors(desc, index.desc[i], ratio)
    pid = index.point_ids[i][m[:, 1]]
    return m[pid >= 0, 0].astype(np.int64), pid[pid >= 0].astype(np.int64), len(m)


def _merge(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Correspondences through several scene photos as one set: a keypoint matched to several points takes
    the one most of its matches vote for."""
    votes: dict[int, dict[int, int]] = {}
    for q_idx, p_idx in pairs:
        for q, p in zip(q_idx.tolist(), p_idx.tolist(), strict=True):
            votes.setdefault(q, {}).setdefault(p, 0)
            votes[q][p] += 1
    q_out = np.array(sorted(votes), np.int64)
    return q_out, np.array([max(votes[q].items(), key=lambda kv: kv[1])[0] for q in q_out], np.int64)


@dataclass
class _Solution:
    pose: Pose
    camera: Camera
    metrics: dict[str, Any]  # num_inliers, inlier_ratio, reprojection_error, inlier_spread, distance...
    depth: np.ndarray  # [num inliers] camera z of the inlier points
    covariance: np.ndarray | None = None  # [6, 6] of (turns in degrees, shifts): see pose_covariance


def _solve(index: SceneIndex, photo: Photo, xy: np.ndarray, q_idx: np.ndarray, p_idx: np.ndarray,
           camera: Camera, estimate_focal: bool, config: RegistrationConfig) -> _Solution | None:  # fmt: skip
    """LO-RANSAC + refinement of the photo's pose from its 2D-3D correspondences, with the figures the
    gates judge; None when RANSAC finds no pose."""
    pts2 = xy[q_idx].astype(np.float64)
    pts3 = index.points[p_idx]
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.estimate_focal_length = estimate_focal
    est.ransac.max_error = config.ransac_max_error
    est.ransac.random_seed = config.seed
    ref = pycolmap.AbsolutePoseRefinementOptions()
    ref.refine_focal_length = estimate_focal
    ref.refine_extra_params = estimate_focal
    pc = camera.to_pycolmap()
    with colmap_log(Path(os.devnull)):
        out = pycolmap.estimate_and_refine_absolute_pose(pts2, pts3, pc, est, ref)
    if out is None:
        return None
    inl = np.asarray(out["inlier_mask"], bool)
    n_in = int(inl.sum())
    pose = Pose.from_pycolmap(out["cam_from_world"])
    if estimate_focal:
        camera = Camera.from_pycolmap(pc)
    proj, depth = project_points(camera, pose, pts3[inl])
    err = np.linalg.norm(proj - pts2[inl], axis=1) if n_in else np.zeros(0)
    lo, hi = (pts2[inl].min(0), pts2[inl].max(0)) if n_in else (np.zeros(2), np.zeros(2))
    dist = float(np.linalg.norm(pose.center() - index.centre)) / index.radius
    metrics = {
        "num_inliers": n_in,
        "inlier_ratio": round(n_in / max(1, len(q_idx)), 4),
        "reprojection_error": round(float(err.mean()) if n_in else float("nan"), 4),
        "inlier_spread": round(float(np.prod(hi - lo) / (photo.gray.shape[0] * photo.gray.shape[1])), 4),
        "distance_in_scene_radii": round(dist, 3),
    }
    cov = pose_covariance(camera, pose, pts3[inl], err)
    metrics["rotation_std_deg"] = _finite(_rotation_std(cov))
    return _Solution(pose, camera, metrics, depth, cov)


def moved(pose: Pose, step: np.ndarray) -> Pose:
    """``pose`` turned by ``step[:3]`` (degrees about the camera axes, through its centre: a rotation
    vector), then shifted by ``step[3:]`` (camera frame, scene units): the parameters of
    :func:`pose_covariance`."""
    step = np.asarray(step, np.float64)
    angle = float(np.linalg.norm(step[:3]))
    out = turned(pose, step[:3] / angle, angle) if angle > 0 else pose
    M = out.matrix()
    M[:3, 3] += step[3:]
    return Pose.from_matrix(M)


def pose_covariance(camera: Camera, pose: Pose, X: np.ndarray, residuals: np.ndarray) -> np.ndarray | None:
    """Covariance [6, 6] of a pose's small turns (degrees about the camera axes) and shifts (camera frame)
    from the Jacobian of the projections of its inlier points ``X`` [N, 3], with the pixel noise that
    their reprojection distances ``residuals`` [N] show (per axis, at least 0.25 px). Its largest
    eigenvector is the direction the points constrain least: with points at one depth in one part of the
    photo, a turn traded against a shift. None when fewer than 4 points or singular."""
    if len(X) < 4:
        return None
    sigma = max(0.25, float(np.sqrt(np.mean(np.square(residuals)) / 2)))  # per axis, from 2D distances
    base, _ = project_points(camera, pose, X)
    J = np.zeros((2 * len(X), 6))
    for k in range(6):
        step = np.zeros(6)
        step[k] = 1e-4 if k < 3 else 1e-5
        uv, _ = project_points(camera, moved(pose, step), X)
        J[:, k] = ((uv - base) / step[k]).ravel()
    try:
        return np.linalg.inv(J.T @ J) * sigma**2
    except np.linalg.LinAlgError:
        return None


def _rotation_std(cov: np.ndarray | None) -> float:
    return math.inf if cov is None else float(np.sqrt(max(0.0, np.trace(cov[:3, :3]))))


def rotation_std_deg(camera: Camera, pose: Pose, X: np.ndarray, residuals: np.ndarray) -> float:
    """How certain a pose's rotation is: one standard deviation (degrees, square root of the trace of the
    turns' block of :func:`pose_covariance`). Points that all lie at one depth in one part of the photo
    leave a rotation traded against a translation: a large value, whatever the inlier count. inf when
    fewer than 4 points."""
    return _rotation_std(pose_covariance(camera, pose, X, residuals))


def _finite(x: float, digits: int = 4) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


# -- guided matching -----------------------------------------------------------------------------------
def _observations(index: SceneIndex) -> tuple[np.ndarray, np.ndarray]:
    """Every scene keypoint that sees a 3D point: (descriptors [M, 128], point indices [M]); built once
    per index."""
    if index.observations is None:
        has = [ids >= 0 for ids in index.point_ids]
        desc = [d[h] for d, h in zip(index.desc, has, strict=True)]
        ids = [p[h] for p, h in zip(index.point_ids, has, strict=True)]
        index.observations = (np.concatenate(desc) if desc else np.zeros((0, 128), np.float32),
                              np.concatenate(ids) if ids else np.zeros(0, np.int64))  # fmt: skip
    return index.observations


def pairs_within(a: np.ndarray, b: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """All index pairs (i, j) with ``|a[i] - b[j]| <= radius`` (``a`` [N, 2], ``b`` [M, 2]), through two
    KD-trees (scipy; no all-pairs distance matrix: a wide radius over a scene of many photos makes
    millions of pairs)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    from scipy.spatial import cKDTree

    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius, output_type="ndarray")
    return pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)


def _pair_distances(
    a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 16384
) -> np.ndarray:
    """L2 distances [P] of the unit descriptors ``a[i]`` and ``b[j]``, in chunks: a wide search radius makes
    millions of pairs, and gathering all their descriptors at once costs gigabytes and seconds."""
    dot = np.empty(len(i), np.float32)
    for s in range(0, len(i), chunk):
        dot[s : s + chunk] = np.einsum("ij,ij->i", a[i[s : s + chunk]], b[j[s : s + chunk]])
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * dot))


def guided_correspondences(
    index: SceneIndex, xy: np.ndarray, desc: np.ndarray, camera: Camera, pose: Pose, radius: float,
    ratio: float = 0.8, max_distance: float = 0.75,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """2D-3D correspondences of a photo whose pose is roughly known: each keypoint (``xy`` [N, 2] in
    ``camera``'s pixels, ``desc`` [N, 128]) against every scene observation whose point projects within
    ``radius`` pixels of it, over all scene photos (not only the retrieved ones). A keypoint takes its
    nearest descriptor when that beats the nearest of any other point by ``ratio`` and is closer than
    ``max_distance``; a point keeps its best keypoint. Returns (keypoint indices [M], point indices [M])."""
    odesc, opid = _observations(index)
    uv, z = project_points(camera, pose, index.points[opid])
    inside = (z > 0) & (uv >= 0).all(1) & (uv[:, 0] < camera.width) & (uv[:, 1] < camera.height)
    vis = np.flatnonzero(inside)
    i, jv = pairs_within(np.asarray(xy, np.float64), uv[vis], radius)
    if len(i) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    j = vis[jv]
    d = _pair_distances(desc, odesc, i, j)
    # a pair this far apart can be neither a match nor the second-best point that fails one (the ratio
    # test passes whenever the second-best point is at least max_distance / ratio away): dropped at once
    near = d < max_distance / ratio if ratio > 0 else d < max_distance
    i, j, d = i[near], j[near], d[near]
    pid = opid[j]
    # the nearest observation per (keypoint, point), then per keypoint its best and second-best point
    o = np.lexsort((d, pid, i))
    i, pid, d = i[o], pid[o], d[o]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (pid[1:] != pid[:-1])
    i, pid, d = i[first], pid[first], d[first]
    o = np.lexsort((d, i))
    i, pid, d = i[o], pid[o], d[o]
    head = np.ones(len(i), bool)
    head[1:] = i[1:] != i[:-1]
    nxt = np.full(len(i), np.inf)
    has_next = np.zeros(len(i), bool)
    has_next[:-1] = i[1:] == i[:-1]
    nxt[:-1][has_next[:-1]] = d[1:][has_next[:-1]]
    keep = head & (d < max_distance) & (d < ratio * nxt)
    q, p, dq = i[keep], pid[keep], d[keep]
    o = np.lexsort((dq, p))  # one keypoint per point: the closest descriptor
    q, p = q[o], p[o]
    single = np.ones(len(p), bool)
    single[1:] = p[1:] != p[:-1]
    return q[single].astype(np.int64), p[single].astype(np.int64)


def _guided_rounds(index: SceneIndex, photo: Photo, xy: np.ndarray, desc: np.ndarray, start: _Solution,
                   config: RegistrationConfig) -> list[_Solution]:  # fmt: skip
    """Rounds of guided matching at shrinking radii from ``start``, each around the previous round's pose:
    the solution of every round completed (a round ends the run when its matches or pose fail a gate)."""
    side = max(photo.gray.shape)
    out, current = [], start
    for frac in config.guided_radii:
        radius = max(frac * side, config.guided_min_radius_px)
        q, p = guided_correspondences(index, xy, desc, current.camera, current.pose, radius,
                                      config.guided_ratio, config.guided_max_distance)  # fmt: skip
        if len(q) < config.min_inliers:
            break
        tight = replace(config, ransac_max_error=max(1.0, radius / 2))
        nxt = _solve(index, photo, xy, q, p, current.camera, False, tight)
        if nxt is None or _geometry_gates(nxt, config) or nxt.metrics["num_inliers"] < config.min_inliers:
            break
        nxt.metrics["guided_radius_px"] = round(radius, 2)
        out.append(nxt)
        current = nxt
    return out


def _starts(sol: _Solution, config: RegistrationConfig) -> list[Pose]:
    """Where guided matching starts: the pose, and the pose moved by ``guided_starts`` standard deviations
    both ways along the ``guided_directions`` directions of its covariance that turn it most."""
    starts = [sol.pose]
    if sol.covariance is None or config.guided_directions <= 0:
        return starts
    lam, vec = np.linalg.eigh(sol.covariance)
    steps = vec * np.sqrt(np.maximum(lam, 0.0))  # columns: one standard deviation along each direction
    order = np.argsort(-np.linalg.norm(steps[:3], axis=0))
    for k in order[: config.guided_directions]:
        starts += [moved(sol.pose, sign * m * steps[:, k]) for m in config.guided_starts for sign in (1, -1)]
    return starts


def _refine_guided(index: SceneIndex, photo: Photo, xy: np.ndarray, desc: np.ndarray, sol: _Solution,
                   config: RegistrationConfig) -> _Solution:  # fmt: skip
    """A pose whose rotation is uncertain, refined by rounds of guided matching at shrinking radii, each
    round around the previous round's pose. An uncertain pose may lie in the wrong basin: guided matches
    are chosen near the pose they start from, and from there they confirm it (a pose 0.6 degrees off
    gathered 100 inliers and a rotation certainty of 0.04 degrees). So the rounds start from the pose and
    from poses moved along its least certain directions (``_starts``), and the runs that reach the
    smallest radius are judged on the same data: every correspondence any of them found at that radius,
    scored by the truncated squared reprojection error (MSAC) at each run's final pose; the first of those
    runs (the one from the pose itself when it reached that radius, else the first start's that did) is
    left only for one clearly better (``guided_evidence``). The chosen run's round whose
    rotation is most certain is kept when that certainty is within ``refine_above_deg``; otherwise the
    pose from matches found without a pose stays."""
    runs = [r for r in (_guided_rounds(index, photo, xy, desc, replace(sol, pose=pose), config)
                        for pose in _starts(sol, config)) if r]  # fmt: skip
    if not runs:
        return sol
    deepest = max(len(r) for r in runs)
    runs = [r for r in runs if len(r) == deepest]
    if len(runs) > 1:
        radius = runs[0][-1].metrics["guided_radius_px"]
        found = [guided_correspondences(index, xy, desc, r[-1].camera, r[-1].pose, radius,
                                        config.guided_ratio, config.guided_max_distance)
                 for r in runs]  # fmt: skip
        pairs = np.unique(np.concatenate([np.stack(f, 1) for f in found]), axis=0)
        cut = max(1.0, radius / 2) ** 2  # the final round's RANSAC threshold

        def cost(run: list[_Solution]) -> float:
            uv, _ = project_points(run[-1].camera, run[-1].pose, index.points[pairs[:, 1]])
            return float(np.minimum(np.sum(np.square(uv - xy[pairs[:, 0]]), 1), cut).sum())

        # The first deepest run (the pose's own when it got that deep) stays unless another explains the
        # data better beyond doubt: by a log-likelihood ratio of ``guided_evidence`` under the pixel
        # noise its own inliers show.
        first = runs[0][-1]
        sigma = max(0.25, first.metrics["reprojection_error"] / math.sqrt(2))  # per axis
        costs = [cost(r) for r in runs]
        k = int(np.argmin(costs))
        if (costs[0] - costs[k]) / (2 * sigma**2) > config.guided_evidence:
            runs = [runs[k]]
    best = min(runs[0], key=_std)
    return best if _std(best) <= min(_std(sol), config.refine_above_deg) else sol


def _std(sol: _Solution) -> float:
    std = sol.metrics["rotation_std_deg"]
    return math.inf if std is None else std


def _support_gates(sol: _Solution, config: RegistrationConfig) -> str | None:
    """Why the inliers are too few or too loose to trust the pose on their own (None: they are enough)."""
    m = sol.metrics
    n_in, ratio = m["num_inliers"], m["inlier_ratio"]
    if n_in < config.min_inliers:
        return f"only {n_in} inlier 2D-3D matches (need {config.min_inliers})"
    if ratio < config.min_inlier_ratio and n_in < config.confident_inliers:
        return f"inlier ratio {ratio:.2f} is below {config.min_inlier_ratio:.2f}"
    if m["reprojection_error"] > config.max_reprojection_error:
        limit = config.max_reprojection_error
        return f"reprojection error {m['reprojection_error']:.2f} px is above {limit:.2f} px"
    return None


def _geometry_gates(sol: _Solution, config: RegistrationConfig) -> str | None:
    """Why the pose cannot be right whatever its support (None: it may be)."""
    m = sol.metrics
    if m["inlier_spread"] < config.min_inlier_spread:
        return (f"inliers cover only {100 * m['inlier_spread']:.1f}% of the photo (need "
                f"{100 * config.min_inlier_spread:.0f}%)")  # fmt: skip
    dist = m["distance_in_scene_radii"]
    if dist > config.max_distance or (len(sol.depth) and float(np.median(sol.depth)) <= 0):
        return (f"pose is outside the scene ({dist:.1f} scene radii from its centre, limit "
                f"{config.max_distance:g})")  # fmt: skip
    return None


def register_photo(
    index: SceneIndex,
    photo: Photo,
    config: RegistrationConfig | None = None,
    cache: Path | None = None,
    splats: Splats | Callable[[], Splats] | None = None,
) -> Result:
    """Pose of one decoded photo in the scene frame, or a rejection with its reason (never raises for a
    photo that merely does not fit the scene).

    ``splats`` (the version's splats, or a function that loads them): a pose that fails the support gates
    (``min_inliers``, ``min_inlier_ratio``, ``max_reprojection_error``) but has at least
    ``min_checked_inliers`` inliers is registered when the scene rendered at it looks like the photo
    (``reconstruction.pose_check``); before that, the photo is matched against ``retry_candidates`` scene
    photos. Without splats the support gates decide alone."""
    config = config or RegistrationConfig()
    t0 = time.perf_counter()
    xy, desc = extract(photo, config, cache)
    if len(xy) < config.min_inliers:
        return Result(photo.name, "rejected", f"only {len(xy)} SIFT features (need {config.min_inliers})",
                      seconds=time.perf_counter() - t0)  # fmt: skip
    query = _global_query(photo, config)
    cands = index.retrieve(desc, config.num_candidates, query)
    per = {i: _image_correspondences(index, desc, i, config.ratio) for i, _ in cands}
    q_idx, p_idx = _merge([(q, p) for q, p, _ in per.values()])
    details: dict[str, Any] = {
        "retrieved": [index.names[i] for i, _ in cands],
        "num_matches": sum(n for *_, n in per.values()),
        "num_correspondences": len(q_idx),
    }
    camera, how, estimate_focal = _initial_camera(photo, index, config)
    details["camera_source"] = how

    def reject(reason: str, sol: _Solution | None = None, **extra) -> Result:
        metrics = dict(sol.metrics) if sol is not None else {}
        return Result(photo.name, "rejected", reason, num_inliers=metrics.pop("num_inliers", 0),
                      seconds=time.perf_counter() - t0, details={**details, **metrics, **extra})  # fmt: skip

    def registered(sol: _Solution) -> Result:
        if config.refine_above_deg > 0 and _std(sol) > config.refine_above_deg:
            refined = _refine_guided(index, photo, xy, desc, sol, config)
            if refined is not sol:
                details["before_refinement"] = dict(sol.metrics)
                details["refined_by"] = "guided matching"
                sol = refined
        full = Camera.from_pycolmap(_rescaled(sol.camera, photo.width, photo.height))
        details.update({k: v for k, v in sol.metrics.items() if k != "num_inliers"})
        return Result(photo.name, "registered", None, sol.pose, full, sol.metrics["num_inliers"],
                      time.perf_counter() - t0, details)  # fmt: skip

    sol = _solve(index, photo, xy, q_idx, p_idx, camera, estimate_focal, config) if len(q_idx) >= 4 else None
    weak = _support_gates(sol, config) if sol is not None else "no pose"
    if not weak:
        why = _geometry_gates(sol, config)
        return reject(why, sol) if why else registered(sol)
    if splats is None or config.min_checked_inliers <= 0:
        if sol is None:
            return reject(_no_pose(q_idx, config))
        return reject(weak, sol)
    # Weakly supported: match more scene photos; a pose from all their correspondences and one from each
    # photo's; the one whose render agrees best with the photo is checked against its decoys.
    cands = index.retrieve(desc, max(config.retry_candidates, config.num_candidates), query)
    for i, _ in cands:  # the first photos were matched already
        if i not in per:
            per[i] = _image_correspondences(index, desc, i, config.ratio)
    pairs = [per[i][:2] for i, _ in cands]
    q_all, p_all = _merge(pairs)
    details.update(retrieved=[index.names[i] for i, _ in cands], num_matches=sum(per[i][2] for i, _ in cands),
                   num_correspondences=len(q_all))  # fmt: skip
    solved = [_solve(index, photo, xy, q, p, camera, estimate_focal, config) if len(q) >= 4 else None
              for q, p in [(q_all, p_all), *pairs]]  # fmt: skip
    hyps = [h for h in [sol, *solved] if h is not None]
    most = max(hyps, key=lambda h: h.metrics["num_inliers"], default=None)
    if most is None:
        return reject(_no_pose(q_all, config))
    weak, why = _support_gates(most, config), _geometry_gates(most, config)
    if not weak and not why:
        return registered(most)  # the wider match was enough on its own
    hyps = [h for h in hyps if h.metrics["num_inliers"] >= config.min_checked_inliers
            and not _geometry_gates(h, config)]  # fmt: skip
    if not hyps:
        return reject(f"{weak}, and {why}" if weak and why else weak or why, most)
    weak = weak or why
    scene = splats() if callable(splats) else splats
    k, check = best_pose(scene, photo.gray, [(h.camera, h.pose) for h in hyps], config.pose_check)
    if not check.passed:
        return reject(f"{weak}, and {check.describe()}", hyps[k], pose_check=check.to_json())
    # The checked pose picks the consistent correspondences among all of them; the pose is refined on
    # those and kept when the scene still agrees with the photo at least as well.
    sol = hyps[k]
    refined = _resolve(index, photo, xy, q_all, p_all, sol, estimate_focal, config)
    if refined is not None and refined.metrics["num_inliers"] > sol.metrics["num_inliers"]:
        check2 = check_pose(scene, photo.gray, refined.camera, refined.pose, config.pose_check)
        if check2.passed and check2.agreement >= check.agreement:
            sol, check = refined, check2
    details["pose_check"] = check.to_json()
    details["registered_by"] = "pose check"
    return registered(sol)


def _no_pose(q_idx: np.ndarray, config: RegistrationConfig) -> str:
    if len(q_idx) < config.min_inliers:
        return f"only {len(q_idx)} 2D-3D matches with the scene (need {config.min_inliers})"
    return f"no pose found from {len(q_idx)} 2D-3D matches (RANSAC failed)"


def _resolve(index: SceneIndex, photo: Photo, xy: np.ndarray, q_idx: np.ndarray, p_idx: np.ndarray,
             sol: _Solution, estimate_focal: bool,
             config: RegistrationConfig) -> _Solution | None:  # fmt: skip
    """The pose re-estimated from the correspondences that ``sol`` explains (within the RANSAC error)."""
    if len(q_idx) < 4:
        return None
    proj, depth = project_points(sol.camera, sol.pose, index.points[p_idx])
    near = (np.linalg.norm(proj - xy[q_idx], axis=1) < config.ransac_max_error) & (depth > 0)
    if int(near.sum()) < 4:
        return None
    return _solve(index, photo, xy, q_idx[near], p_idx[near], sol.camera, estimate_focal, config)


def _rescaled(camera: Camera, width: int, height: int) -> pycolmap.Camera:
    pc = camera.to_pycolmap()
    if (pc.width, pc.height) != (width, height):
        pc.rescale(width, height)
    return pc


# -- a folder ------------------------------------------------------------------------------------------
def list_photos(folder: str | os.PathLike) -> list[Path]:
    """Files in ``folder`` to register (every regular file that is not hidden: non-images are rejected
    with a reason rather than silently skipped)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IDUError(f"{folder}: photo folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise IDUError(f"{folder}: no photos in the folder")
    return files


def register_photos(
    version,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    config: RegistrationConfig | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Register every photo of a folder (or a list of files) against a scene version.

    Returns:
        ``{"scene", "version", "images": [Result.to_json()], "summary": {...}}`` (the ``idu register
        --json`` document). The store is not changed; the index and the photos' features are cached.
    """
    config = config or RegistrationConfig()
    files = list_photos(images) if isinstance(images, str | os.PathLike) else [Path(p) for p in images]
    t0 = time.perf_counter()
    index = scene_index(version, config, progress=progress)
    index_s = time.perf_counter() - t0
    cache = feature_cache(version)
    loaded: list[Splats] = []

    def splats() -> Splats:  # loaded once, and only when a weakly supported pose needs the render check
        if not loaded:
            loaded.append(version.load_splats())
        return loaded[0]

    results: list[Result] = []
    seen: dict[str, str] = {}
    with _progress(progress, len(files)) as bar:
        task = bar.add_task("register", total=len(files), info="")
        for p in files:
            t = time.perf_counter()
            try:
                photo = load_photo(p, config)
            except (SceneFormatError, OSError) as e:
                reason = str(e).split(": ", 1)[-1] if str(e).startswith(str(p)) else str(e)
                results.append(Result(p.name, "rejected", reason, seconds=time.perf_counter() - t))
            else:
                if photo.sha256 in seen:
                    results.append(Result(p.name, "rejected", f"duplicate of {seen[photo.sha256]}",
                                          seconds=time.perf_counter() - t))  # fmt: skip
                else:
                    seen[photo.sha256] = p.name
                    results.append(register_photo(index, photo, config, cache, splats))
            r = results[-1]
            bar.update(task, advance=1, info=f"{p.name}: {r.status}")
            log.info("%s: %s%s", p.name, r.status, f" ({r.reason})" if r.reason else
                     f" ({r.num_inliers} inliers, {r.seconds:.1f} s)")  # fmt: skip
    n_reg = sum(r.status == "registered" for r in results)
    return {
        "scene": version.scene.ref,
        "version": version.number,
        "images": [r.to_json() for r in results],
        "summary": {
            "registered": n_reg,
            "rejected": len(results) - n_reg,
            "index_seconds": round(index_s, 3),
            "seconds": round(time.perf_counter() - t0, 3),
        },
    }


def _progress(enabled: bool, total: int, label: str = "registering"):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=Console(file=sys.stderr), disable=not enabled,
    )  # fmt: skip


__all__ = [
    "CAMERA_MODES", "Photo", "RegistrationConfig", "Result", "SceneIndex", "build_vocabulary", "extract",
    "extract_raw", "feature_cache", "list_photos", "load_photo", "load_rgb", "match_descriptors",
    "register_photo", "register_photos", "scene_index",
]  # fmt: skip
