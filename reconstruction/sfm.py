"""Structure-from-motion for a new scene: pycolmap SIFT, matching chosen by image count, then mapping.

A plain stage over files (hloc style): :func:`run_sfm` writes into ``out_dir``::

    out_dir/
      database.db      COLMAP database (features, matches); an interrupted run resumes from it
      vocab_tree.bin   retrieval index built from the photos' own descriptors (vocabulary-tree matching)
      mapping/N/       every model the mapper produced
      mapping/trialK/  the models mapped again on pruned view graphs (SfMConfig.graph_trials)
      sparse/0/        the largest model (COLMAP binary), what the next stages read
      sfm.json         what was done: images, matcher, registered count, timings
      colmap.log       COLMAP's own chatter

and returns the model. :func:`align_to_reference` moves a model (and splats) onto reference camera centres
with a similarity (Umeyama), e.g. to compare with a benchmark's ground truth.

Example::

    rec = run_sfm("photos/", "work/sfm", SfMConfig(max_image_size=1024))
    sim3, rec, splats = align_to_reference(rec, splats, {"0001.jpg": [0, 0, 1.5], ...})
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pycolmap

from .cameras import Camera, Pose
from .errors import SfMError
from .splat_ops import transform
from .splats import Splats

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
MATCHERS = ("auto", "exhaustive", "sequential", "vocabtree")
MAPPERS = ("incremental", "global")


@dataclass
class SfMConfig:
    """How :func:`run_sfm` reconstructs a set of photos."""

    max_image_size: int = 1600
    """Longer image side SIFT works at (larger photos are downscaled for extraction only)."""
    max_num_features: int = 8192
    """SIFT features kept per image."""
    peak_threshold: float = 0.004
    """SIFT detector peak threshold (COLMAP's default is 0.0067); lower finds more features in soft images."""
    domain_size_pooling: bool = False
    """DSP-SIFT descriptors (pooled over several scales): more reliable matches, slower extraction."""
    estimate_affine_shape: bool = False
    """Affine-covariant SIFT regions: matches across larger viewpoint changes, slower extraction."""
    camera_model: str = "SIMPLE_RADIAL"
    """COLMAP camera model estimated for the photos (SIMPLE_RADIAL, OPENCV, PINHOLE, ...)."""
    camera_params: str = ""
    """Initial intrinsics in ``camera_model``'s parameter order (e.g. "272,160,120,0" for SIMPLE_RADIAL:
    f, cx, cy, k), like an EXIF focal length: a prior that bundle adjustment still refines. Empty: COLMAP
    guesses (EXIF, else 1.2 x the longer side)."""
    single_camera: bool | None = None
    """One camera shared by all photos; None: shared when all photos have the same size."""
    matcher: str = "auto"
    """auto | exhaustive | sequential | vocabtree. auto: exhaustive up to ``exhaustive_max_images`` photos,
    then sequential for an ordered capture (``ordered``), else vocabulary-tree retrieval."""
    exhaustive_max_images: int = 40
    """Largest photo count matched exhaustively by ``matcher="auto"``."""
    ordered: bool = False
    """The photos' sorted names follow the capture path (a video or a walk): sequential matching applies."""
    sequential_overlap: int = 10
    """Sequential matching: each photo is matched with this many following ones."""
    vocabtree_num_images: int = 30
    """Vocabulary-tree matching: each photo is matched with its this many most similar photos."""
    vocabtree_max_descriptors: int = 200_000
    """Descriptors sampled from the photos to build the vocabulary tree."""
    guided_matching: bool = True
    """Re-match each verified pair guided by its two-view geometry: many more inliers on small photos (a
    30-photo 320x240 walk-around registers fully with it, in fragments without)."""
    init_min_num_inliers: int = 100
    """Inliers the mapper's initial pair needs (COLMAP default; it relaxes this itself when it fails)."""
    abs_pose_min_num_inliers: int = 30
    """2D-3D inliers a photo needs to register."""
    mapper: str = "global"
    """global (GLOMAP in pycolmap: rotation averaging, then global positioning) | incremental (COLMAP's
    mapper). On seven 30-photo benchmark worlds at 320x240, global kept every camera within 1.7 m (median
    1.5-23 cm) where incremental misplaced whole stretches of the walk by 5-15 m in four of them."""
    graph_trials: tuple[tuple[int, int], ...] = ((8, 100), (10, 120), (6, 150))
    """Mapping again on pruned view graphs, each (top_k, keep_above): every photo's ``top_k`` pairs with the
    most inliers and any pair with at least ``keep_above``. Weak pairs (tens of inliers between small photos,
    or repeated bricks and windows) can bend a model that still reprojects to a fraction of a pixel: on the
    30-photo 320x240 benchmark world the full graph's model failed to close its walk-around loop by 1.9
    degrees of yaw. Of the full graph's model and these, the one whose poses explain the most matched
    observations (all matches triangulated again with each model's poses, reprojecting within 1 px) is
    kept; sfm.json lists them. Empty: map once."""
    graph_trials_max_images: int = 150
    """Photo count above which mapping runs once (each trial maps the whole set again)."""
    min_registered: int = 3
    """Fail (SfMError) when fewer photos than this register ..."""
    min_registered_fraction: float = 0.5
    """... or fewer than this fraction of the photos."""
    min_num_matches: int = 15
    """Verified matches a photo pair needs to count in mapping."""
    num_threads: int = -1
    """CPU threads for extraction, matching and mapping (-1: all)."""
    device: str = "auto"
    """auto | cpu | cuda for SIFT extraction and matching (auto: CUDA when pycolmap was built with it)."""
    seed: int = 0
    """Random seed for RANSAC and mapping (repeatable models)."""


class Sim3(NamedTuple):
    """A similarity ``x -> scale * R @ x + t`` (new world from old world)."""

    scale: float
    R: np.ndarray  # [3, 3]
    t: np.ndarray  # [3]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Transform points [..., 3]."""
        return self.scale * np.asarray(x, np.float64) @ self.R.T + self.t

    def to_json(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "rotation": self.R.tolist(), "translation": self.t.tolist()}

    def to_pycolmap(self) -> pycolmap.Sim3d:
        return pycolmap.Sim3d(float(self.scale), pycolmap.Rotation3d(self.R), np.asarray(self.t, np.float64))


# -- helpers ---------------------------------------------------------------------------------------
def list_images(image_dir: Path) -> list[str]:
    """Photo file names directly in ``image_dir`` (sorted; jpg, png, tif, bmp)."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise SfMError(f"{image_dir}: image folder does not exist")
    return sorted(p.name for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _image_sizes(image_dir: Path, names: Sequence[str]) -> dict[str, tuple[int, int]]:
    from PIL import Image, UnidentifiedImageError

    out = {}
    for n in names:
        try:
            with Image.open(image_dir / n) as im:
                out[n] = im.size
        except (OSError, UnidentifiedImageError) as e:
            raise SfMError(f"{image_dir / n}: cannot be read as an image ({e})") from None
    return out


@contextlib.contextmanager
def colmap_log(path: Path) -> Iterator[None]:
    """Send everything written to the process's stderr (COLMAP's glog chatter) to ``path`` (appended).

    A file-descriptor redirect, as hloc's ``OutputCapture``: C++ logging bypasses ``sys.stderr``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _log_tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    bad = [ln for ln in lines if ln[:1] in "EF" and "]" in ln]
    pick = bad[-n:] if bad else lines[-n:]
    return " | ".join(ln.split("] ", 1)[-1] for ln in pick)


def choose_matcher(num_images: int, config: SfMConfig) -> str:
    """The matching method for ``num_images`` photos under ``config`` (see :attr:`SfMConfig.matcher`)."""
    if config.matcher not in MATCHERS:
        raise SfMError(f"SfM matcher {config.matcher!r}: expected one of {', '.join(MATCHERS)}")
    if config.matcher != "auto":
        return config.matcher
    if num_images <= config.exhaustive_max_images:
        return "exhaustive"
    return "sequential" if config.ordered else "vocabtree"


def _device(config: SfMConfig) -> pycolmap.Device:
    try:
        return getattr(pycolmap.Device, config.device)
    except AttributeError:
        raise SfMError(f"SfM device {config.device!r}: expected auto, cpu or cuda") from None


def build_vocab_tree(database: Path, out: Path, config: SfMConfig) -> Path:
    """A retrieval index (vocabulary tree) built from the database's own SIFT descriptors.

    No pretrained tree can be downloaded on our machines; one built from the photos being matched works
    for retrieval among them. Descriptors are subsampled evenly per image to ``vocabtree_max_descriptors``.
    """
    db = pycolmap.Database.open(str(database))
    try:
        images = db.read_all_images()
        per_image = max(1, config.vocabtree_max_descriptors // max(1, len(images)))
        rng = np.random.default_rng(config.seed)
        chunks = []
        for im in images:
            d = np.asarray(db.read_descriptors(im.image_id).data)
            if len(d) > per_image:
                d = d[np.sort(rng.choice(len(d), per_image, replace=False))]
            chunks.append(d)
    finally:
        db.close()
    descs = np.concatenate(chunks) if chunks else np.zeros((0, 128), np.uint8)
    if len(descs) < 64:
        raise SfMError(
            f"{database}: only {len(descs)} SIFT descriptors in all, too few for a vocabulary tree"
        )
    # COLMAP trains trees with ~100 descriptors per visual word; keep a power of two.
    words = int(2 ** np.clip(np.floor(np.log2(len(descs) / 50)), 4, 16))
    index = pycolmap.VisualIndex.create(128, 64)
    opts = pycolmap.VisualIndex.BuildOptions()
    opts.num_visual_words = words
    opts.num_iterations = 30
    opts.num_rounds = 1
    opts.num_threads = config.num_threads
    feats = pycolmap.FeatureDescriptors(pycolmap.FeatureExtractorType.SIFT, np.ascontiguousarray(descs))
    index.build(opts, feats.to_float())
    index.write(str(out))
    log.info("vocabulary tree: %d visual words from %d descriptors -> %s", words, len(descs), out)
    return out


def _sfm_key(
    names: Sequence[str], config: SfMConfig, known: dict[str, tuple[Pose, Camera]] | None = None
) -> dict[str, Any]:
    key: dict[str, Any] = {"images": list(names), "config": asdict(config)}
    if known is not None:
        key["known_poses"] = {n: [known[n][0].to_json(), known[n][1].to_json()] for n in names}
    return json.loads(json.dumps(key))  # as sfm.json holds it (tuples become lists)


def _apply_known_cameras(database: Path, known: dict[str, tuple[Pose, Camera]]) -> None:
    """Give every photo in the database its known intrinsics (before matching: verification uses them)."""
    db = pycolmap.Database.open(str(database))
    try:
        cams: dict[int, Camera] = {}
        for im in db.read_all_images():
            cam = known[im.name][1]
            if cams.setdefault(im.camera_id, cam) != cam:
                raise SfMError(
                    f"{im.name}: known intrinsics differ from another photo sharing its camera; "
                    "set single_camera=False"
                )
        for cid, cam in cams.items():
            db.update_camera(cam.to_pycolmap(cid))
    finally:
        db.close()


def _triangulate_known(
    database: Path, image_dir: Path, out: Path, known: dict[str, tuple[Pose, Camera]], config: SfMConfig
) -> pycolmap.Reconstruction:
    """A model with the known poses and intrinsics, its points triangulated from the verified matches and
    refined with the cameras held fixed (COLMAP's "reconstruct from known camera poses")."""
    rec = pycolmap.Reconstruction()
    db = pycolmap.Database.open(str(database))
    try:
        for cam in db.read_all_cameras():
            rec.add_camera_with_trivial_rig(cam)
        for im in db.read_all_images():
            image = pycolmap.Image(name=im.name, camera_id=im.camera_id, image_id=im.image_id)
            rec.add_image_with_trivial_frame(image, known[im.name][0].to_pycolmap())
    finally:
        db.close()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = config.num_threads
    opts.random_seed = config.seed
    opts.triangulation.random_seed = config.seed
    return pycolmap.triangulate_points(rec, database, image_dir, out, options=opts, refine_intrinsics=False)


def _map(
    database: Path, image_dir: Path, out: Path, config: SfMConfig, n_min: int, device: pycolmap.Device
) -> dict[int, pycolmap.Reconstruction]:
    """Every model ``config.mapper`` builds from the database's verified pairs."""
    out.mkdir(parents=True, exist_ok=True)
    if config.mapper == "global":
        gopts = pycolmap.GlobalPipelineOptions()
        gopts.num_threads = config.num_threads
        gopts.min_num_matches = config.min_num_matches
        gopts.random_seed = config.seed
        gopts.mapper.random_seed = config.seed
        gopts.mapper.global_positioning.use_gpu = device != pycolmap.Device.cpu
        return pycolmap.global_mapping(database, image_dir, out, gopts)
    popts = pycolmap.IncrementalPipelineOptions()
    popts.num_threads = config.num_threads
    popts.min_num_matches = config.min_num_matches
    popts.min_model_size = min(10, n_min)
    popts.random_seed = config.seed
    popts.mapper.init_min_num_inliers = config.init_min_num_inliers
    popts.mapper.abs_pose_min_num_inliers = config.abs_pose_min_num_inliers
    popts.mapper.random_seed = config.seed
    popts.triangulation.random_seed = config.seed
    return pycolmap.incremental_mapping(database, image_dir, out, popts)


def prune_view_graph(src: Path, dst: Path, top_k: int, keep_above: int) -> tuple[int, int]:
    """Copy the database ``src`` to ``dst`` keeping, of its verified pairs, those with at least
    ``keep_above`` inliers and each photo's ``top_k`` best; returns (kept, dropped) pair counts."""
    shutil.copyfile(src, dst)
    db = pycolmap.Database.open(str(dst))
    try:
        pair_ids, geometries = db.read_two_view_geometries()
        inliers = {pid: int(g.inlier_matches.shape[0]) for pid, g in zip(pair_ids, geometries, strict=True)}
        by_image: dict[int, list[tuple[int, int]]] = {}
        for pid, n in inliers.items():
            for image_id in pycolmap.pair_id_to_image_pair(pid):
                by_image.setdefault(image_id, []).append((n, pid))
        keep = {pid for pid, n in inliers.items() if n >= keep_above}
        for pairs in by_image.values():
            keep.update(pid for _, pid in sorted(pairs, reverse=True)[:top_k])
        dropped = [pid for pid in inliers if pid not in keep]
        for pid in dropped:
            db.delete_two_view_geometry(*pycolmap.pair_id_to_image_pair(pid))
    finally:
        db.close()
    return len(keep), len(dropped)


def explained_observations(
    rec: pycolmap.Reconstruction,
    database: Path,
    image_dir: Path,
    work: Path,
    config: SfMConfig,
    max_error: float = 1.0,
) -> int:
    """How many feature observations of the database's verified matches the model's poses explain: its
    points triangulated again from all matches (poses and intrinsics held), then the observations that
    reproject within ``max_error`` pixels counted (the triangulator itself accepts rays 2 degrees off)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = config.num_threads
    opts.random_seed = config.seed
    opts.triangulation.random_seed = config.seed
    tri = pycolmap.triangulate_points(
        pycolmap.Reconstruction(rec), database, image_dir, work, clear_points=True, options=opts,
        refine_intrinsics=False,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    explained = 0
    for point in tri.points3D.values():
        for el in point.track.elements:
            image = tri.image(el.image_id)
            uv = image.project_point(point.xyz)
            if uv is not None and np.hypot(*(uv - image.points2D[el.point2D_idx].xy)) <= max_error:
                explained += 1
    return explained


def _graph_trials(
    rec: pycolmap.Reconstruction,
    database: Path,
    image_dir: Path,
    mapping: Path,
    config: SfMConfig,
    n_min: int,
    device: pycolmap.Device,
) -> tuple[pycolmap.Reconstruction, list[dict[str, Any]]]:
    """Map again on pruned view graphs (``config.graph_trials``) and keep, of these models and ``rec``, the
    one whose poses explain the most matched observations (most photos registered first)."""
    candidates = [(rec, {"top_k": None, "keep_above": None, "pairs_kept": None, "pairs_dropped": 0})]
    for i, (top_k, keep_above) in enumerate(config.graph_trials):
        trial = mapping / f"trial{i}"
        trial.mkdir(parents=True, exist_ok=True)
        kept, dropped = prune_view_graph(database, trial / "database.db", top_k, keep_above)
        info = {"top_k": top_k, "keep_above": keep_above, "pairs_kept": kept, "pairs_dropped": dropped}
        try:
            if not dropped:
                continue  # the same graph as the full run
            models = _map(trial / "database.db", image_dir, trial, config, n_min, device)
        except Exception as e:  # a pruned graph may not map; the full one did
            log.info("SfM: view-graph trial %s failed (%s)", info, e)
            continue
        finally:
            (trial / "database.db").unlink()  # a copy of the features: large for many photos
        if models:
            best = max(models.values(), key=lambda r: (r.num_reg_images(), r.num_points3D()))
            candidates.append((best, info))
    scored = []
    for k, (model, info) in enumerate(candidates):
        explained = explained_observations(model, database, image_dir, mapping / "score", config)
        scored.append((model.num_reg_images(), explained, -k))
        info.update(registered=model.num_reg_images(), explained_observations=explained)
    best = max(range(len(candidates)), key=lambda k: scored[k])
    for k, (_, info) in enumerate(candidates):
        info["chosen"] = k == best
    log.info(
        "SfM: %d view graphs mapped; kept %s (%d observations explained, the full graph's %d)",
        len(candidates), "the full graph" if best == 0 else candidates[best][1],
        scored[best][1], scored[0][1],
    )  # fmt: skip
    return candidates[best][0], [info for _, info in candidates]


# -- the stage -------------------------------------------------------------------------------------
def run_sfm(
    image_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: SfMConfig | None = None,
    image_names: Sequence[str] | None = None,
    known: dict[str, tuple[Pose, Camera]] | None = None,
) -> pycolmap.Reconstruction:
    """Reconstruct the photos in ``image_dir``: SIFT, matching, mapping; the largest model.

    Args:
        image_dir: folder of photos (jpg/png/tif/bmp; the image names in the model are the file names).
        out_dir: stage folder (see the module docstring). A finished run with the same photos and config
            is returned as it is; an interrupted one resumes from ``database.db`` (COLMAP skips images
            already extracted and pairs already matched).
        config: :class:`SfMConfig` (default: ``SfMConfig()``).
        image_names: the photos to use (default: every image file in ``image_dir``).
        known: ``{name: (cam_from_world, camera)}`` for every photo when the poses and intrinsics are
            known (a surveyed capture, a benchmark's ground truth): no mapping, the points are triangulated
            with those cameras held fixed, and the model is in their frame.
    Returns:
        The largest model (``out_dir/sparse/0``), in COLMAP's arbitrary frame and scale (``known``: theirs).
    Raises:
        SfMError: too few photos, unreadable photos, no model, or fewer registered photos than
            ``config.min_registered`` / ``config.min_registered_fraction`` (the message says how many).
    """
    config = config or SfMConfig()
    image_dir, out_dir = Path(image_dir), Path(out_dir)
    names = sorted(image_names) if image_names is not None else list_images(image_dir)
    if len(names) < 2:
        raise SfMError(f"{image_dir}: SfM needs at least 2 photos, found {len(names)}")
    missing = [n for n in names if not (image_dir / n).is_file()]
    if missing:
        raise SfMError(f"{image_dir}: {len(missing)} photo(s) missing, e.g. {missing[0]}")
    out_dir.mkdir(parents=True, exist_ok=True)
    sparse = out_dir / "sparse" / "0"
    stats_path = out_dir / "sfm.json"
    if known is not None and (unknown := [n for n in names if n not in known]):
        raise SfMError(f"{image_dir}: {len(unknown)} photo(s) have no known pose, e.g. {unknown[0]}")
    key = _sfm_key(names, config, known)
    if stats_path.is_file() and (sparse / "images.bin").is_file():
        done = json.loads(stats_path.read_text())
        if done.get("key") == key:
            log.info("SfM: reusing the finished model in %s", sparse)
            return pycolmap.Reconstruction(str(sparse))

    sizes = _image_sizes(image_dir, names)  # unreadable photos are named before anything else
    n_min = max(2, config.min_registered, math.ceil(config.min_registered_fraction * len(names)))
    if n_min > len(names):
        raise SfMError(
            f"{image_dir}: {len(names)} photos, but SfM is asked to register at least {n_min} "
            "(min_registered)"
        )
    single = config.single_camera if config.single_camera is not None else len(set(sizes.values())) == 1
    if known is not None and config.single_camera is None:
        single = len({json.dumps(known[n][1].to_json()) for n in names}) == 1
    method = choose_matcher(len(names), config)
    if config.mapper not in MAPPERS:
        raise SfMError(f"SfM mapper {config.mapper!r}: expected one of {', '.join(MAPPERS)}")
    database = out_dir / "database.db"
    logfile = out_dir / "colmap.log"
    pycolmap.set_random_seed(config.seed)
    device = _device(config)
    timings: dict[str, float] = {}
    log.info(
        "SfM: %d photos, %s camera model %s, %s matching (COLMAP log: %s)",
        len(names), "one shared" if single else "per-photo",
        "known (poses too)" if known is not None else config.camera_model, method, logfile,
    )  # fmt: skip

    t0 = time.perf_counter()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = config.camera_model
    reader.camera_params = config.camera_params
    ext = pycolmap.FeatureExtractionOptions()
    ext.max_image_size = config.max_image_size
    ext.num_threads = config.num_threads
    ext.sift.max_num_features = config.max_num_features
    ext.sift.peak_threshold = config.peak_threshold
    ext.sift.domain_size_pooling = config.domain_size_pooling
    ext.sift.estimate_affine_shape = config.estimate_affine_shape
    mode = pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.PER_IMAGE
    try:
        with colmap_log(logfile):
            pycolmap.extract_features(
                database, image_dir, image_names=names, camera_mode=mode, reader_options=reader,
                extraction_options=ext, device=device,
            )  # fmt: skip
    except Exception as e:
        raise SfMError(f"{image_dir}: SIFT extraction failed ({e}; see {logfile})") from None
    if known is not None:
        _apply_known_cameras(database, known)
    timings["extract_s"] = time.perf_counter() - t0
    num_features = _feature_counts(database)
    featureless = [n for n in names if num_features.get(n, 0) == 0]
    if featureless and len(featureless) > len(names) - n_min:
        raise SfMError(
            f"{image_dir}: {len(featureless)} of {len(names)} photos have no SIFT features "
            f"(e.g. {featureless[0]}); blank, blurred or unreadable photos?"
        )

    t0 = time.perf_counter()
    mopts = pycolmap.FeatureMatchingOptions()
    mopts.num_threads = config.num_threads
    mopts.guided_matching = config.guided_matching
    verify = pycolmap.TwoViewGeometryOptions()
    verify.min_num_inliers = config.min_num_matches
    verify.ransac.random_seed = config.seed
    try:
        with colmap_log(logfile):
            if method == "exhaustive":
                pycolmap.match_exhaustive(
                    database, matching_options=mopts, verification_options=verify, device=device
                )
            elif method == "sequential":
                pairing = pycolmap.SequentialPairingOptions()
                pairing.overlap = config.sequential_overlap
                pycolmap.match_sequential(
                    database, matching_options=mopts, pairing_options=pairing, verification_options=verify,
                    device=device,
                )  # fmt: skip
            else:
                tree = build_vocab_tree(database, out_dir / "vocab_tree.bin", config)
                pairing = pycolmap.VocabTreePairingOptions()
                pairing.vocab_tree_path = str(tree)
                pairing.num_images = min(config.vocabtree_num_images, len(names))
                pairing.num_threads = config.num_threads
                pycolmap.match_vocabtree(
                    database, matching_options=mopts, pairing_options=pairing, verification_options=verify,
                    device=device,
                )  # fmt: skip
    except SfMError:
        raise
    except Exception as e:
        raise SfMError(f"{image_dir}: {method} matching failed ({e}; see {logfile})") from None
    timings["match_s"] = time.perf_counter() - t0
    db = pycolmap.Database.open(str(database))
    try:
        verified_pairs = int(db.num_verified_image_pairs())
    finally:
        db.close()

    t0 = time.perf_counter()
    mapping = out_dir / "mapping"
    shutil.rmtree(mapping, ignore_errors=True)
    mapping.mkdir()
    try:
        with colmap_log(logfile):
            if known is not None:
                models = {0: _triangulate_known(database, image_dir, mapping, known, config)}
            else:
                models = _map(database, image_dir, mapping, config, n_min, device)
    except Exception as e:
        what = "triangulation with known poses" if known is not None else f"{config.mapper} mapping"
        raise SfMError(f"{image_dir}: {what} failed ({e}; see {logfile})") from None
    timings["map_s"] = time.perf_counter() - t0
    if not models:
        raise SfMError(
            f"{image_dir}: SfM built no model from {len(names)} photos ({verified_pairs} verified pairs; "
            f"{_log_tail(logfile) or 'see ' + str(logfile)})"
        )
    best_id, rec = max(models.items(), key=lambda kv: (kv[1].num_reg_images(), kv[1].num_points3D()))
    trials: list[dict[str, Any]] = []
    if known is None and config.graph_trials and len(names) <= config.graph_trials_max_images:
        t0 = time.perf_counter()
        with colmap_log(logfile):
            rec, trials = _graph_trials(rec, database, image_dir, mapping, config, n_min, device)
        timings["graph_trials_s"] = time.perf_counter() - t0
    registered = rec.num_reg_images()
    if registered < n_min:
        raise SfMError(
            f"{image_dir}: only {registered} of {len(names)} photos registered in the largest SfM model "
            f"(need {n_min}; {len(models)} model(s), {verified_pairs} verified pairs); the photos may not "
            "overlap enough"
        )
    tmp = out_dir / "sparse" / ".0.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rec.write_binary(str(tmp))
    shutil.rmtree(sparse, ignore_errors=True)
    os.replace(tmp, sparse)
    reg_names = {rec.image(i).name for i in rec.reg_image_ids()}
    stats = {
        "key": key,
        "num_images": len(names),
        "num_registered": registered,
        "unregistered": [n for n in names if n not in reg_names],
        "num_models": len(models),
        "model": int(best_id),
        "graph_trials": trials,
        "matcher": method,
        "mapper": "known-poses" if known is not None else config.mapper,
        "single_camera": single,
        "num_features_mean": float(np.mean([num_features.get(n, 0) for n in names])),
        "num_verified_pairs": verified_pairs,
        "num_points3D": int(rec.num_points3D()),
        "mean_reprojection_error": float(rec.compute_mean_reprojection_error()),
        **timings,
        "seconds": sum(timings.values()),
    }
    stats_path.write_text(json.dumps(stats, indent=2) + "\n")
    log.info(
        "SfM: %d/%d photos registered, %d points, %.2f px reprojection error, %.1f s",
        registered, len(names), stats["num_points3D"], stats["mean_reprojection_error"], stats["seconds"],
    )  # fmt: skip
    return rec


def read_sfm_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """What :func:`run_sfm` recorded in ``out_dir/sfm.json`` (without the cache key)."""
    d = json.loads((Path(out_dir) / "sfm.json").read_text())
    d.pop("key", None)
    return d


def _feature_counts(database: Path) -> dict[str, int]:
    db = pycolmap.Database.open(str(database))
    try:
        return {im.name: int(db.num_keypoints_for_image(im.image_id)) for im in db.read_all_images()}
    finally:
        db.close()


# -- alignment -------------------------------------------------------------------------------------
def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Sim3:
    """The similarity minimising ``sum |scale R src_i + t - dst_i|^2`` (Umeyama 1991).

    Args:
        src, dst: corresponding points [N, 3], N >= 3 and not all on one line.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise SfMError(f"alignment: point sets have shapes {src.shape} and {dst.shape}, expected [N, 3] both")
    if len(src) < 3:
        raise SfMError(f"alignment: needs at least 3 corresponding camera centres, got {len(src)}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1
    if var_s < 1e-18 or D[1] < 1e-9 * max(D[0], 1e-300):
        raise SfMError(
            "alignment: the camera centres are (nearly) collinear or coincide; cannot fix a rotation"
        )
    R = U @ S @ Vt
    scale = float(np.trace(np.diag(D) @ S) / var_s) if with_scale else 1.0
    t = mu_d - scale * R @ mu_s
    return Sim3(scale, R, t)


def robust_umeyama(
    src: np.ndarray, dst: np.ndarray, k: float = 3.0, rounds: int = 5
) -> tuple[Sim3, np.ndarray]:
    """:func:`umeyama` that leaves out gross outliers (a misregistered camera would tilt the whole fit).

    Fit all pairs, then refit on those whose residual is at most ``k`` times the median residual, until
    nothing changes. Returns the similarity and the inlier mask [N].
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    sim3 = umeyama(src, dst)
    inl = np.ones(len(src), bool)
    spread = float(np.sqrt(((dst - dst.mean(0)) ** 2).sum(1).mean())) or 1.0
    for _ in range(rounds):
        r = np.linalg.norm(sim3.apply(src) - dst, axis=1)
        new = r <= max(k * float(np.median(r[inl])), 1e-6 * spread)
        if new.sum() < 3 or np.array_equal(new, inl):
            break
        inl = new
        sim3 = umeyama(src[inl], dst[inl])
    return sim3, inl


def align_to_reference(
    rec: pycolmap.Reconstruction,
    splats: Splats | None,
    reference_centres: dict[str, Sequence[float]],  # image name -> camera centre [3] in the reference frame
) -> tuple[Sim3, pycolmap.Reconstruction, Splats | None]:
    """Move a model (and splats in its frame) onto reference camera centres with a similarity.

    Args:
        rec: an SfM model (left unchanged).
        splats: Gaussians in ``rec``'s frame, or None.
        reference_centres: camera centres in the reference frame by image name; the images registered
            in ``rec`` with a reference (at least 3, not collinear) fix the similarity. Misregistered
            images (far off after a first fit) are left out of the final fit (:func:`robust_umeyama`);
            :func:`alignment_residuals` names them.
    Returns:
        ``(sim3, aligned model copy, aligned splats or None)`` where ``sim3 = (scale, R, t)`` maps the
        model frame to the reference frame, ``x_ref = scale R x + t``; the splats' rotations, SH and
        log-scales follow (``splat_ops.transform``).
    Raises:
        SfMError: fewer than 3 registered images have a reference, or their centres are collinear.
    """
    src, dst, names = [], [], []
    for image_id in rec.reg_image_ids():
        im = rec.image(image_id)
        if im.name in reference_centres:
            src.append(np.asarray(im.projection_center(), np.float64))
            dst.append(np.asarray(reference_centres[im.name], np.float64).reshape(3))
            names.append(im.name)
    if len(src) < 3:
        raise SfMError(
            f"alignment: only {len(src)} registered image(s) have a reference centre (need 3); do the "
            f"reference names match the photo file names? (model has e.g. "
            f"{rec.image(next(iter(rec.reg_image_ids()))).name!r}, reference has e.g. "
            f"{next(iter(reference_centres), None)!r})"
        )
    sim3, _ = robust_umeyama(np.stack(src), np.stack(dst))
    out = pycolmap.Reconstruction(rec)
    out.transform(sim3.to_pycolmap())
    moved = None
    if splats is not None:
        moved = transform(splats, rotation=sim3.R, translation=sim3.t, scale=sim3.scale)
    return sim3, out, moved


def alignment_residuals(
    rec: pycolmap.Reconstruction, reference_centres: dict[str, Sequence[float]], k: float = 3.0
) -> dict[str, Any]:
    """Distances between the model's camera centres and the reference ones (same frame).

    Returns ``n``, ``rms``, ``median``, ``max`` (over every compared image) and ``outliers``: the images
    farther than ``k`` times the median (misregistered), name -> distance.
    """
    d = {
        n: float(
            np.linalg.norm(np.asarray(rec.image(i).projection_center()) - np.asarray(reference_centres[n]))
        )
        for i in rec.reg_image_ids()
        if (n := rec.image(i).name) in reference_centres
    }
    if not d:
        return {"n": 0, "rms": None, "median": None, "max": None, "outliers": {}}
    v = np.array(list(d.values()))
    med = float(np.median(v))
    return {
        "n": len(v),
        "rms": float(np.sqrt(np.mean(v**2))),
        "median": med,
        "max": float(v.max()),
        "outliers": {n: x for n, x in sorted(d.items()) if x > max(k * med, 1e-9)},
    }


__all__ = [
    "MATCHERS", "SfMConfig", "Sim3", "align_to_reference", "alignment_residuals", "build_vocab_tree",
    "choose_matcher", "colmap_log", "list_images", "read_sfm_stats", "robust_umeyama", "run_sfm", "umeyama",
]  # fmt: skip
