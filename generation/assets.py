"""Assets for added objects: Gaussians in the object's own frame plus the transform that places them.

The default backend (``hull``) needs no model: it turns a candidate's supporting points (the visual hull
that change detection carved from the new photos, ``support/<id>_points.npy``) into Gaussians and colours
each from the photos that see it (a per-photo z-buffer over the points decides who sees what; the colour
is the median over those photos; points no photo sees take their nearest coloured neighbour's colour).
It is the starting point the multi-view optimisation refines (issue "assets": optimise against the
photos inside the masks with the scene frozen).

    asset, placement = hull_asset(points, views)        # views: [(rgb, camera, pose, mask)]
    write_asset(out_dir, "c1", asset, placement)         # c1.ply + c1.json (the merge's "asset"/"transform")

The asset's frame: the box centre is the origin, axes are the scene's; ``placement`` maps it back
(``x -> scale R x + translation``), which is what a reviewer adjusts.
"""

from __future__ import annotations

import json
import logging
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


def _spacing(X: np.ndarray) -> float:
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(X.astype(np.float64)))
    d = np.asarray(pc.compute_nearest_neighbor_distance())
    d = d[d > 0]
    return float(np.median(d)) if len(d) else 0.05


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
    if len(X) > config.max_points:
        X = X[np.sort(rng.choice(len(X), config.max_points, replace=False))]
    spacing = _spacing(X)
    col, seen = _colours(X, views, spacing)
    if not seen.any():
        raise AssetError(f"{name}: none of the {len(views)} photo(s) sees the object's points")
    if not seen.all():  # unseen points: their nearest seen neighbour's colour
        import open3d as o3d

        seen_idx = np.nonzero(seen > 0)[0]
        tree = o3d.geometry.KDTreeFlann(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(X[seen_idx])))
        for i in np.nonzero(seen == 0)[0]:
            _, nn, _ = tree.search_knn_vector_3d(X[i], 1)
            col[i] = col[seen_idx[nn[0]]]
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


def asset_for_candidate(
    detect_dir: str | Path,
    candidate: dict[str, Any],
    registration: dict[str, Any],
    images: str | Path,
    out: str | Path,
    config: HullConfig | None = None,
) -> dict[str, Any]:
    """The asset of one *added* candidate of an ``idu detect`` output folder, written to ``out``.

    Args:
        detect_dir: the detect output folder (``candidates.json``, ``masks/``, ``support/``).
        candidate: its entry in ``candidates.json``.
        registration: the ``idu register --json`` document of the photos.
        images: the photo folder.
    Returns:
        ``write_asset``'s document (paths relative to ``out``).
    """
    from reconstruction.registration import RegistrationConfig, load_rgb

    detect_dir, images = Path(detect_dir), Path(images)
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
    asset, placement = hull_asset(points, views, config, name=cid)
    return write_asset(
        out,
        cid,
        asset,
        placement,
        {"backend": "hull", "views": [v.name for v in views], "seed": (config or HullConfig()).seed},
    )


__all__ = ["AssetError", "HullConfig", "View", "asset_for_candidate", "hull_asset", "write_asset"]
