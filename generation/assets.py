"""Assets for added objects: Gaussians in the object's own frame plus the transform that places them.

    doc = asset_for_candidate(detect_dir, candidate, registration, photos, out, scene_splats, AssetConfig())

Backends (:class:`AssetConfig`), one entry point for all (:func:`build_asset`):

- ``multiview`` (default, offline): generation/multiview.py — the hull below, optimised against the new
  photos inside the candidate's masks with the scene frozen around it (occlusions right), silhouette loss,
  densify and prune, kept inside the box.
- ``hull``: the candidate's supporting points (the visual hull change detection carved,
  ``support/<id>_points.npy``), surface only, as Gaussians coloured from the photos that see them (a
  per-photo z-buffer over the points decides who sees what; the colour is the median over those photos;
  points no photo sees take their nearest coloured neighbour's colour). No optimisation.
- an image-to-3D generator (generation/image_to_3d.py: ``triplane``, ``triposr``, ``trellis``) for objects
  seen in one or two photos: the best crop becomes a mesh, the mesh Gaussians (generation/surface.py),
  and generation/placement.py fits its scale, turn and position to the masks, upright, resting on the
  ground.

Outputs per candidate: ``<cid>.ply`` (the asset, INRIA PLY, in its own frame), ``<cid>.json`` (the
transform into the scene, the backend's report, silhouette IoU and PSNR inside the mask per photo) and
``<cid>_previews/`` (the asset alone from 4 sides; composited into each photo) for the review UI.

The asset's frame: for the multi-view backends the box centre is the origin and the axes are the scene's;
``placement`` maps it back (``x -> scale R x + translation``), which is what a reviewer adjusts.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reconstruction.cameras import Camera, Pose, project_points
from reconstruction.errors import IDUError
from reconstruction.ply import write_ply
from reconstruction.splats import Splats

log = logging.getLogger(__name__)

C0 = 0.28209479177387814


class AssetError(IDUError):
    """An asset that cannot be made (names the candidate and the problem)."""


@dataclass
class View:
    """One registered photo: RGB [H, W, 3] uint8, its camera, its pose and the candidate's mask [H, W]."""

    name: str
    rgb: np.ndarray
    camera: Camera
    pose: Pose
    mask: np.ndarray


@dataclass
class HullConfig:
    max_points: int = 20000
    """Subsample the support points to at most this many Gaussians."""
    opacity: float = 0.95
    """Opacity of every Gaussian."""
    scale_factor: float = 0.7
    """Gaussian radius as a fraction of the median nearest-neighbour spacing."""
    seed: int = 0
    """Subsampling seed (``regenerate`` asks for another)."""


def nearest(
    X: np.ndarray, Y: np.ndarray, exclude_self: bool = False, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """For each point of X [N, 3] its nearest point of Y [M, 3]: (index [N], distance [N]); with
    ``exclude_self`` (X is Y) a point is not its own neighbour."""
    import torch

    x, y = torch.from_numpy(np.asarray(X, np.float32)), torch.from_numpy(np.asarray(Y, np.float32))
    idx, dist = [], []
    for i in range(0, len(x), chunk):
        v, j = torch.cdist(x[i : i + chunk], y).min(1)
        idx.append(j)
        dist.append(v)
    return torch.cat(idx).numpy(), torch.cat(dist).double().numpy()


def _spacing(X: np.ndarray, sample: int = 2000) -> float:
    """Median distance from a point to its nearest other point (over at most ``sample`` points)."""
    import torch

    if len(X) < 2:
        return 0.05
    q = X[np.random.default_rng(0).choice(len(X), sample, replace=False)] if len(X) > sample else X
    d = torch.cdist(torch.from_numpy(np.asarray(q, np.float32)), torch.from_numpy(np.asarray(X, np.float32)))
    d[d <= 0] = float("inf")  # the point itself (and duplicates)
    d = d.min(1).values.double().numpy()
    d = d[np.isfinite(d)]
    return float(np.median(d)) if len(d) else 0.05


def hull_surface(X: np.ndarray, spacing: float) -> np.ndarray:
    """Indices of the points [N, 3] of a carved hull that lie on its surface: on a grid of ``spacing``, the
    occupied cells with an empty cell among their 6 neighbours (the inside is never seen)."""
    ijk = np.floor((X - X.min(0)) / spacing + 0.5).astype(np.int64) + 1
    grid = np.zeros(ijk.max(0) + 2, bool)
    grid[tuple(ijk.T)] = True
    inner = np.ones(len(X), bool)
    for axis in range(3):
        for d in (-1, 1):
            nb = ijk.copy()
            nb[:, axis] += d
            inner &= grid[tuple(nb.T)]
    return np.flatnonzero(~inner)


def _colours(X: np.ndarray, views: list[View], spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Median colour [N, 3] in [0, 1] over the photos that see each point (inside the mask, in front of
    the other points there), and how many photos saw it [N]."""
    samples: list[list[np.ndarray]] = [[] for _ in range(len(X))]
    for v in views:
        uv, z = project_points(v.camera, v.pose, X)
        h, w = v.mask.shape
        px = np.floor(uv).astype(np.int64)
        ok = (z > 1e-6) & (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        idx = np.nonzero(ok)[0]
        if len(idx) == 0:
            continue
        # a coarse z-buffer: the nearest point per 2x2 pixel cell sees the photo there
        cell = (px[idx, 1] // 2) * ((w + 1) // 2) + px[idx, 0] // 2
        near = np.full(((h + 1) // 2) * ((w + 1) // 2), np.inf)
        np.minimum.at(near, cell, z[idx])
        front = z[idx] <= near[cell] + 2 * spacing
        inside = v.mask[px[idx, 1], px[idx, 0]] > 0
        keep = idx[front & inside]
        rgb = v.rgb[px[keep, 1], px[keep, 0]].astype(np.float64) / 255.0
        for i, c in zip(keep, rgb, strict=True):
            samples[i].append(c)
    seen = np.array([len(s) for s in samples])
    col = np.full((len(X), 3), np.nan)
    for i, s in enumerate(samples):
        if s:
            col[i] = np.median(np.stack(s), 0)
    return col, seen


def hull_asset(
    points: np.ndarray, views: list[View], config: HullConfig | None = None, name: str = "candidate"
) -> tuple[Splats, dict[str, Any]]:
    """Gaussians for an added object from its support points [N, 3] (scene frame) and the photos.

    Returns:
        (asset in its own frame, placement ``{"rotation_wxyz", "translation", "scale"}`` into the scene),
    Raises:
        AssetError: no points, non-finite points, or no photo sees the object.
    """
    config = config or HullConfig()
    X = np.asarray(points, np.float64).reshape(-1, 3)
    if len(X) == 0:
        raise AssetError(f"{name}: no supporting points to build an asset from")
    if not np.isfinite(X).all():
        raise AssetError(f"{name}: supporting points hold NaN or Inf")
    rng = np.random.default_rng(config.seed)
    X = X[hull_surface(X, _spacing(X))]
    if len(X) > config.max_points:
        X = X[np.sort(rng.choice(len(X), config.max_points, replace=False))]
    spacing = _spacing(X)
    col, seen = _colours(X, views, spacing)
    if not seen.any():
        raise AssetError(f"{name}: none of the {len(views)} photo(s) sees the object's points")
    if not seen.all():  # unseen points: their nearest seen neighbour's colour
        seen_idx, unseen = np.flatnonzero(seen > 0), np.flatnonzero(seen == 0)
        col[unseen] = col[seen_idx[nearest(X[unseen], X[seen_idx])[0]]]
    centre = 0.5 * (X.min(0) + X.max(0))
    sp = Splats.empty(len(X))
    sp.means = (X - centre).astype(np.float32)
    sp.scales = np.full((len(X), 3), np.log(max(spacing * config.scale_factor, 1e-4)), np.float32)
    sp.opacities = np.full(len(X), np.log(config.opacity / (1 - config.opacity)), np.float32)
    sp.sh0 = ((np.clip(col, 0, 1) - 0.5) / C0).astype(np.float32)
    placement = {
        "rotation_wxyz": [1.0, 0.0, 0.0, 0.0],
        "translation": [float(c) for c in centre],
        "scale": 1.0,
    }
    log.info(
        "%s: hull asset of %d Gaussians (spacing %.3f, %d%% seen by a photo)",
        name,
        len(X),
        spacing,
        round(100 * float((seen > 0).mean())),
    )
    return sp.validate(f"{name} asset"), placement


def write_asset(
    out: str | Path, cid: str, asset: Splats, placement: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``out/<cid>.ply`` (INRIA PLY) and ``out/<cid>.json``; returns the JSON document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_ply(out / f"{cid}.ply", asset)
    doc = {
        "id": cid,
        "asset": f"{cid}.ply",
        "num_gaussians": len(asset),
        "transform": placement,
        **(extra or {}),
    }
    (out / f"{cid}.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


@dataclass
class AssetConfig:
    """How :func:`asset_for_candidate` builds an added object's asset."""

    backend: str = "multiview"
    """``multiview`` (default, offline: the hull optimised against the photos with the scene frozen,
    generation/multiview.py), ``hull`` (the hull coloured from the photos, no optimisation), or an
    image-to-3D generator of generation.image_to_3d.GENERATORS (``triplane``, ``triposr``, ``trellis``)
    whose mesh is placed by its silhouettes (generation/placement.py)."""
    single_view_backend: str | None = None
    """An image-to-3D generator for candidates seen in fewer than ``min_views`` photos (None: the
    ``backend`` above does what it can from one photo)."""
    min_views: int = 2
    """Photos a candidate needs for the multi-view backends when ``single_view_backend`` is set."""
    model: str | None = None
    """Weights of the image-to-3D generator: a registered name or a folder (None: its default)."""
    gaussians: int = 20000
    """Gaussians sampled on a generated mesh."""
    multiview: Any = None
    """generation.multiview.MultiViewConfig of the multiview backend (None: its defaults, this seed)."""
    people: bool = True
    """A candidate labelled ``person`` (a classifier or a reviewer) goes to the person branch
    (generation/human: the anny body fitted to its silhouettes, the photos' pixels on it)."""
    keypoint_model: str | None = "auto"
    """2D keypoints for the person branch (generation/human/keypoints.py): a registered name
    (``mediapipe-pose``, ``vitpose-base``) or a ViTPose folder; ``auto``: ``mediapipe-pose`` when the
    mediapipe package is installed (its wheel ships the weights), else none; None: the silhouettes alone."""
    previews: bool = True
    """Write preview renders: the asset alone from 4 sides, and composited into each photo."""
    seed: int = 0
    """Seed of every random choice (``regenerate`` asks for another)."""

    def routes_to_person(self, candidate: dict[str, Any]) -> bool:
        """Whether ``candidate`` goes to the person branch whatever ``backend`` says."""
        return self.people and candidate.get("label") == "person"


def person_keypoints(views: list[View], box: dict[str, Any], model: str | None) -> dict[str, Any] | None:
    """COCO keypoints [17, 3] per photo that shows the person (photo name -> x, y, confidence), from the
    keypoint ``model`` (AssetConfig.keypoint_model); None without one. Each photo's crop is turned so that
    the scene's up points up (:func:`generation.human.keypoints.image_up`)."""
    from generation.human.keypoints import detect_keypoints, image_up, load_keypoint_model
    from reconstruction.models import ModelNotAvailable

    if model == "auto":
        try:
            kp_model = load_keypoint_model("mediapipe-pose")
        except ModelNotAvailable as e:
            log.info("no keypoint model (%s): the person is fitted to its silhouettes alone", e)
            return None
    elif model is None:
        return None
    else:
        kp_model = load_keypoint_model(model)
    centre, up = np.asarray(box["center"], np.float64), _up(box)
    out = {}
    for v in views:
        if (np.asarray(v.mask) > 0).any():
            d = image_up(v.camera, v.pose, centre, up)
            out[v.name] = detect_keypoints(kp_model, v.rgb, v.mask, d)
    return out


def _up(box: dict[str, Any]) -> np.ndarray:
    """The scene's up: change detection's boxes stand upright (their z axis is the cameras' up)."""
    from reconstruction.cameras import quat_to_matrix

    return quat_to_matrix(np.asarray(box.get("rotation_wxyz", [1, 0, 0, 0]), np.float64))[:, 2]


def best_crop(views: list[View]) -> tuple[np.ndarray, str]:
    """The RGBA crop [h, w, 4] (mask in alpha) of the photo where the object shows largest, and its name."""
    v = max(views, key=lambda v: int((np.asarray(v.mask) > 0).sum()))
    m = np.asarray(v.mask) > 0
    ys, xs = np.nonzero(m)
    pad = max(4, int(0.1 * max(np.ptp(ys), np.ptp(xs))))
    y0, y1 = max(0, ys.min() - pad), min(m.shape[0], ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(m.shape[1], xs.max() + pad + 1)
    rgba = np.concatenate([v.rgb[y0:y1, x0:x1, :3], (m[y0:y1, x0:x1] * 255).astype(np.uint8)[..., None]], -1)
    return rgba, v.name


def write_previews(out: Path, cid: str, asset: Splats, placement: dict[str, Any], windows, up: np.ndarray
                   ) -> dict[str, Any]:  # fmt: skip
    """``out/<cid>_previews/sides.jpg`` (the asset alone from 4 sides, turned about ``up``) and
    ``<photo>.jpg`` (the asset composited into each photo, the scene's occluders in front of it)."""
    import torch
    from PIL import Image

    from reconstruction.render import render
    from reconstruction.splat_ops import transform

    from .multiview import composite

    folder = out / f"{cid}_previews"
    folder.mkdir(parents=True, exist_ok=True)
    placed = transform(asset, placement["rotation_wxyz"], placement["translation"], placement["scale"])
    X = np.asarray(placed.means, np.float64)
    centre = 0.5 * (X.min(0) + X.max(0))
    radius = 0.5 * float(np.linalg.norm(np.ptp(X, 0))) or 1.0
    side, fov = 192, math.radians(40)
    f = 0.5 * side / math.tan(fov / 2)
    cam = Camera.pinhole(f, f, side / 2, side / 2, side, side)
    up = up / np.linalg.norm(up)
    a = np.cross(up, [1.0, 0, 0] if abs(up[0]) < 0.9 else [0, 1.0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    dist = 1.15 * radius / math.sin(fov / 2)
    tiles = []
    t = placed.to_torch()
    for k in range(4):
        ang = k * math.pi / 2
        d = (
            math.cos(math.radians(20)) * (math.cos(ang) * a + math.sin(ang) * b)
            + math.sin(math.radians(20)) * up
        )
        with torch.no_grad():
            img = render(t, cam, Pose.look_at(centre + dist * d, centre, up), background=(0.5, 0.5, 0.5)).rgb
        tiles.append((img.clamp(0, 1).numpy() * 255).astype(np.uint8))
    Image.fromarray(np.concatenate(tiles, 1)).save(folder / "sides.jpg", quality=90)
    files = {"sides": f"{cid}_previews/sides.jpg", "photos": {}}
    for w in windows:
        with torch.no_grad():
            _, cover = composite(w, t)
            alone = render(t, w.camera, w.pose, backend="torch")
        colour = alone.rgb / alone.alpha.clamp_min(1e-3)[..., None]
        x0, y0 = w.offset
        photo = w.photo.clone()
        h, wd = cover.shape
        win = photo[y0 : y0 + h, x0 : x0 + wd]
        photo[y0 : y0 + h, x0 : x0 + wd] = (
            win * (1 - cover[..., None]) + colour.clamp(0, 1) * cover[..., None]
        )
        name = f"{Path(w.name).stem}.jpg"
        Image.fromarray((photo.numpy() * 255).astype(np.uint8)).save(folder / name, quality=90)
        files["photos"][w.name] = f"{cid}_previews/{name}"
    return files


def _window_metrics(windows, asset: Splats, placement: dict[str, Any]) -> dict[str, Any]:
    from reconstruction.splat_ops import transform

    from .multiview import window_metrics

    placed = transform(asset, placement["rotation_wxyz"], placement["translation"], placement["scale"])
    per = {w.name: window_metrics(w, placed.to_torch()) for w in windows}
    keys = ("silhouette_iou", "psnr_mask")
    return {"views": per, **{k: float(np.mean([m[k] for m in per.values()])) for k in keys}}


def build_asset(
    scene: Splats,
    candidate: dict[str, Any],
    views: list[View],
    points: np.ndarray,
    config: AssetConfig | None = None,
    scene_points: np.ndarray | None = None,
) -> tuple[Splats, dict[str, Any], dict[str, Any], list]:
    """An added candidate's asset with the configured backend (see :class:`AssetConfig`). ``points``: the
    candidate's supporting points; ``scene_points``: the scene's own 3D points (``SceneVersion.load_points``:
    the ground under a person; None: measured on the splats).

    Returns:
        (asset in its own frame, placement into the scene, the backend's report, the photo windows).
    """
    from .image_to_3d import GENERATORS, generate
    from .multiview import MultiViewConfig, aligned_views, multiview_asset, prepare_windows
    from .placement import place_asset
    from .surface import mesh_to_splats

    config = config or AssetConfig()
    cid, box = candidate["id"], candidate["box"]
    backend = config.backend
    if (
        config.single_view_backend
        and sum(int((np.asarray(v.mask) > 0).any()) for v in views) < config.min_views
    ):
        backend = config.single_view_backend
    if config.routes_to_person(candidate):
        backend = "person"
    known = ("multiview", "hull", "person", *GENERATORS)
    if backend not in known:
        raise AssetError(f"{cid}: unknown asset backend {backend!r} (expected one of {', '.join(known)})")
    mv = config.multiview or MultiViewConfig(seed=config.seed)
    windows = prepare_windows(scene, views, mv, box)
    if not windows:
        raise AssetError(f"{cid}: none of the {len(views)} photo(s) has a mask to fit the asset to")
    report: dict[str, Any] = {"backend": backend, "seed": config.seed}
    if backend == "multiview":
        asset, placement, stats = multiview_asset(scene, points, box, views, mv, name=cid, windows=windows)
        report["optimisation"] = {k: v for k, v in stats.items() if k not in ("before", "after")}
        report["before_optimisation"] = stats["before"]["mean"]
        return asset, placement, report, windows
    if backend == "person":
        from .human.fit import PersonFitConfig, fit_person
        from .human.person import person_asset

        kps = person_keypoints(views, box, config.keypoint_model)
        fit = fit_person(windows, box, _up(box), scene, PersonFitConfig(seed=config.seed), keypoints=kps,
                         points=scene_points)  # fmt: skip
        if kps is not None:
            report["keypoints_2d"] = {n: int((k[:, 2] > 0.5).sum()) for n, k in kps.items()}
        asset, placement, person = person_asset(fit, windows, seed=config.seed)  # its own Gaussian count
        return asset, placement, report | person, windows
    if backend == "hull":
        asset, placement = hull_asset(points, aligned_views(windows), HullConfig(seed=config.seed), name=cid)
        return asset, placement, report, windows
    rgba, photo = best_crop(views)
    mesh = generate(backend, rgba, model=config.model, seed=config.seed)
    asset = mesh_to_splats(mesh, num=config.gaussians, seed=config.seed)
    placement, residuals = place_asset(asset, box, windows, _up(box), scene, name=cid)
    report |= {"model": config.model, "crop_from": photo, "placement_residuals": residuals}
    return asset, placement, report, windows


def asset_for_candidate(
    detect_dir: str | Path,
    candidate: dict[str, Any],
    registration: dict[str, Any],
    images: str | Path,
    out: str | Path,
    scene: Splats,
    config: AssetConfig | None = None,
    scene_points: np.ndarray | None = None,
) -> dict[str, Any]:
    """The asset of one *added* candidate of an ``idu detect`` output folder, written to ``out``.

    Args:
        detect_dir: the detect output folder (``candidates.json``, ``masks/``, ``support/``).
        candidate: its entry in ``candidates.json``.
        registration: the ``idu register --json`` document of the photos.
        images: the photo folder.
        scene: the scene version's Gaussians (frozen: they occlude the object and show behind it).
        scene_points: the scene version's 3D points (``SceneVersion.load_points``), for the ground under a
            person (None: the splats').
    Returns:
        ``write_asset``'s document (paths relative to ``out``): ``asset``, ``transform``, ``backend``,
        ``metrics`` (silhouette IoU and PSNR inside the mask per photo and mean), ``previews`` and the
        backend's report.
    """
    from reconstruction.registration import RegistrationConfig, load_rgb

    config = config or AssetConfig()
    detect_dir, images, out = Path(detect_dir), Path(images), Path(out)
    cid = candidate["id"]
    if candidate.get("kind") != "added":
        raise AssetError(f"{cid}: only added objects get an asset (this one is {candidate.get('kind')})")
    regs = {r["name"]: r for r in registration["images"] if r.get("status") == "registered"}
    views = []
    for name, rel in candidate.get("masks", {}).items():
        if name not in regs:
            continue
        camera = Camera.from_json(regs[name]["camera"], f"{name} camera")
        rgb = load_rgb(images / name, max(camera.width, camera.height), RegistrationConfig().max_pixels)
        from PIL import Image

        mask = np.asarray(Image.open(detect_dir / rel).convert("L"))
        if mask.shape != rgb.shape[:2]:
            raise AssetError(f"{detect_dir / rel}: mask is {mask.shape[::-1]}, photo is {rgb.shape[1::-1]}")
        views.append(View(name, rgb, camera, Pose.from_json(regs[name]["cam_from_world"]), mask))
    try:
        points = np.load(detect_dir / candidate["points"])
    except (OSError, KeyError, ValueError) as e:
        raise AssetError(f"{cid}: cannot read its supporting points ({e})") from None
    asset, placement, report, windows = build_asset(scene, candidate, views, points, config, scene_points)
    extra = {
        **report,
        "views": [v.name for v in views],
        "metrics": _window_metrics(windows, asset, placement),
    }
    if config.previews and windows:
        extra["previews"] = write_previews(out, cid, asset, placement, windows, _up(candidate["box"]))
    return write_asset(out, cid, asset, placement, extra)


__all__ = [
    "AssetConfig", "AssetError", "HullConfig", "View", "asset_for_candidate", "best_crop", "build_asset",
    "hull_asset", "hull_surface", "write_asset", "write_previews",
]  # fmt: skip
