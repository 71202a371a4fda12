"""Detect what changed between a scene version and new photos: render and compare, lifted to 3D.

    doc = detect_changes(store.scene("yard").version(), "new_photos/", out="changes/")

For every registered photo the scene is rendered at its pose with its (undistorted) intrinsics. The
photo is mapped onto the render by per-channel gains (exposure, white balance; a robust fit on blurred
images, so the render's blur does not flatten the photo). Two dissimilarities are computed per pixel:
the log-chromaticity distance (a change of exposure or of the light's strength scales the channels
together and does not move it) and one minus the local normalised cross-correlation of the grey values
(structure; insensitive to brightness and contrast). Each is turned into a robust z-score with the
median and MAD of its values on the confidently rendered pixels of *all* photos together (a photo filled
by a new object cannot hide its change in its own statistics), and the score is their sum: thresholds are
multiples of the comparison's own noise, not constants tuned per scene. A scene renders worse far from
the photos it was fitted to: pixels whose surface no scene photo saw from within 30 degrees are scored
against the noise of pixels as novel as they (``novelty``), never below all pixels'. A DINOv2
patch-feature distance is the learned backend (``backend="dinov2"``, weights from reconstruction.models).

Changed pixels are lifted to 3D by voting in a voxel grid over the region the photos see: a voxel is
changed when at least ``min_views`` photos that see it (in frame, not behind the rendered surface) see it
changed and they are at least ``vote_fraction`` of those photos: a change one photo sees and the others
contradict is dropped. Voxels whose changed votes lie in front of the rendered surface (the photos show
something where the scene has free space) are *added* evidence, the others *removed* evidence; each set is
clustered (open3d DBSCAN).

- An added cluster becomes an object by carving its hull on a finer grid (a voxel stays when at least
  ``hull_fraction`` of the photos that see it in front of the scene's surface see it changed); its mask
  in each photo is the hull's footprint on the changed pixels; a photo supports it when the changed
  pixels cover ``min_coverage`` of the footprint. Nothing added reaches far under the ground in front of the
  photos (``below_ground``: where the scene renders little, a hull seen from a few similar directions
  stretches along their rays, under the ground). A hull floating over the scene's surface below it, level
  with the ground in front of the photos, is extended down to it (``ground_contact``: objects stand on
  something; the legs of a person are often what the change maps miss). The change maps catch an
  object's edges and textured parts, not its plain ones, so that hull is a core: each supporting
  photo's mask is grown from its footprint by GrabCut (the object's colours against the region around
  it), a hull carved again from the grown masks (visual hull), and each mask cut to that hull's
  footprint (the box stays the first hull's, extended: a visual hull of a few photos stretches along
  their rays). An added candidate whose masks do not look alike across its photos (chromaticity
  histograms) is where the rays of unrelated changes cross, not an object. One whose masks lie inside a
  bigger one's is a part of it. One the scene's own photos already show is dropped: in those photos its
  footprint looks like it, clearly more than the ring around the footprint does (the scene renders it
  poorly), or as much as the footprints there look like one another (a shadow moved over the ground:
  nothing new stands there).
- A removed cluster names the scene's Gaussians there that the photos see changed; it is confirmed only
  when rendering the scene without them reveals background (opaque, farther) that agrees better with the
  photos (a shadow or a light change on a wall reveals nothing behind it and is not a removal); its mask
  is where those Gaussians are what the scene shows.
- A removed and an added object of matching size and colour are one *moved* object.

Outputs (``out``): ``candidates.json`` (DESIGN.md's ``idu detect --json`` document, plus per candidate
its views, evidence, Gaussian ids and support points as .npy files), ``masks/<id>/<photo>.png`` (8-bit,
photo-sized), ``crops/<id>/<photo>.jpg`` and ``overview/<photo>.png`` (photo | render | score | masks)
for reviewers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .cameras import Camera, Pose, project_points, undistort_image
from .errors import IDUError
from .render import render
from .splat_ops import in_box, remove
from .splats import Splats
from .train import _gauss_window

log = logging.getLogger(__name__)

BACKENDS = ("ssim", "dinov2")

#: Smallest noise scale of each dissimilarity: a scene that renders a photo almost exactly must not turn
#: sensor noise into changes (2 % in chromaticity, 0.05 in NCC, 0.02 in DINOv2 cosine).
NOISE_FLOOR = {"chroma": 0.02, "struct": 0.05, "dinov2": 0.02}


Stats = dict[str, tuple[float, float]]  # dissimilarity -> (median, robust standard deviation)


@dataclass
class DetectConfig:
    """How photos are compared with the scene and changes lifted to 3D."""

    work_size: int = 320
    """Longer side (pixels) photos and renders are compared at (never upsampled)."""
    backend: str = "ssim"
    """ssim: chromaticity + local structure (NCC) of photo and render (offline default); dinov2: cosine
    distance of DINOv2 patch features (``model``, see reconstruction.models)."""
    model: str = "dinov2-small"
    blur_sigma: float = 2.0
    """Gaussian blur (pixels at 320 px) of photo and render before the chromaticity comparison."""
    ncc_sigma: float = 4.0
    """Window (Gaussian sigma, pixels at 320 px) of the local NCC."""
    k_mad: float = 5.0
    """A pixel is changed when its score (the sum of the dissimilarities' robust z-scores, pooled over
    every photo's confidently rendered pixels) exceeds this ..."""
    k_low: float = 3.0
    """... and belongs to an object's mask when it exceeds this (hysteresis)."""
    min_alpha: float = 0.5
    """Pixels the scene renders with less opacity than this are unknown (no vote either way)."""
    confident_alpha: float = 0.95
    """Pixels used for the colour gains and the noise statistics."""
    open_px: int = 2
    """Morphological opening radius (pixels) that removes isolated changed specks."""
    novelty_bins: tuple[float, ...] = (30.0, 60.0)
    """Edges (degrees) of the bins of novelty: the angle between a pixel's ray and the nearest ray of a
    scene photo to the same surface point. A 3DGS scene renders worse the farther a view is from the
    photos it was fitted to, so each bin's noise (median and robust deviation of each dissimilarity over
    its confidently rendered pixels) is measured apart, and a pixel is scored against the larger of its
    bin's and all pixels': the thresholds rise where the scene is shown to render worse, never fall."""
    novelty_min_pixels: int = 5000
    """A bin with fewer confidently rendered pixels than this (over all photos) uses all pixels' noise."""
    voxels: int = 160
    """Voxels along the longest side of the scene's bounds (the coarse vote)."""
    fine: int = 4
    """An added object's hull is carved on voxels this many times finer."""
    min_views: int = 2
    """Photos that must see a voxel as changed."""
    vote_fraction: float = 0.5
    """Share of the photos seeing a voxel that must see it as changed."""
    depth_tolerance: float = 0.05
    """Relative depth within which a voxel counts as on the rendered surface."""
    min_voxels: int = 6
    """Smaller clusters of changed voxels are dropped (a 1 m crate seen by 4 photos of 320x240 makes two
    clusters of 6 and 7; what more small clusters let in, the added candidates' photo consistency and the
    scene's own photos reject)."""
    hull_fraction: float = 0.8
    """An added object's hull keeps a fine voxel when this share of the photos that see it in front of
    the scene's surface see it changed (visual hull, tolerant to a few missed pixels)."""
    min_coverage: float = 0.3
    """An added object's hull must be seen changed on at least this share of its footprint in a photo
    for that photo to count as supporting it (``min_views`` such photos are needed)."""
    refine_masks: bool = True
    """Grow each added object's masks from its hull's footprint by GrabCut (a colour model of the object
    against the region around it), then carve its hull again from the grown masks (visual hull) so that
    every photo's mask is the same 3D object: the change maps alone catch the object's edges and
    textured parts, not its plain ones."""
    refine_expand: float = 1.0
    """The region a mask may grow into: the footprint's bounding box widened by this share of its size
    on every side."""
    refine_rounds: int = 3
    """Rounds of growing (the region widens around the mask while the mask reaches its edge) ..."""
    refine_max_growth: float = 12.0
    """... stopped before the mask covers more than this many times the footprint (a leak)."""
    refine_quiet: float = 1.0
    """Pixels outside the footprint whose change score is below this (the photo agrees with the render
    as well as unchanged pixels typically do) are certain background: GrabCut's colour model alone leaks
    into background of the object's colours."""
    refine_pad: float = 0.5
    """The hull carved again from the grown masks may reach this share of the first hull's size beyond it
    on every side (a visual hull of a few photos from similar directions stretches along their rays)."""
    ground_contact: bool = True
    """An added object whose hull floats above the scene's surface below it (the ground under a person whose
    legs the change maps miss: grey on grey pavement) by at most ``max_ground_gap`` times its height is
    extended down to that surface: objects stand on something. The extension is where its masks may grow
    (GrabCut) and the box reaches; the photos still decide what of it is the object (the grown masks'
    visual hull)."""
    max_ground_gap: float = 3.0
    """(times the hull's height)"""
    below_ground: float = 0.25
    """Nothing added reaches further below the ground in front of the photos (the median of ``floor_points``)
    than this share of the photographers' median height above it: where the scene renders little (the edge of
    the place), a hull seen from a few similar directions stretches along their rays, under the ground.
    Negative: no limit."""
    max_ground_slope: float = 0.2
    """The surface found under an object is the ground when its height differs from the ground in front of
    the nearest photo (``floor_points``) by at most this share of their horizontal distance: a hull
    stretched along its photos' rays ends below the ground, where a render finds junk under it."""
    min_photo_consistency: float = 0.5
    """An added candidate's masks must look alike across its photos: the median over pairs of photos of the
    Bhattacharyya coefficient of their chromaticity histograms at least this (one object seen from several
    sides: 0.7-0.95 measured on the benchmark worlds; a hull where the rays of unrelated changes in a few
    photos happen to cross: 0.18)."""
    reference_views: int = 4
    """The scene's own photos (nearest first) an added candidate is looked for in ..."""
    min_already_there: float = 0.25
    """... it was already there (the scene just renders it badly) when its footprint there looks more like
    the object than the ring around the footprint does by this much (Bhattacharyya coefficients, median)."""
    same_as_before: float = 0.82
    """... or when the footprints in those photos look as much like the object as they look like one another
    (the place's own agreement across its photos), up to this factor: what the new photos show there is
    what the scene's photos showed (a shadow moved over the ground, a surface the scene renders poorly).
    Measured: the benchmark worlds' true added objects 0.36-0.78 of it, false candidates on them and on
    the fox capture 0.86-1.0."""
    min_revealed: float = 0.5
    """A removal is confirmed when rendering without its Gaussians reveals background (opaque, farther by
    more than ``depth_tolerance``) on at least this share of its pixels ..."""
    min_improvement: float = 1.0
    """... and lowers the mean score there by at least this."""
    moved_size_ratio: float = 4.0
    """A removed and an added object are one moved object when their box sizes (sorted) differ by at
    most this factor on every axis (loose: a hull seen from a few photos stretches along their rays) ..."""
    moved_colour_similarity: float = 0.75
    """... their colour histograms have at least this Bhattacharyya coefficient (same objects measured
    0.80-0.95 on the benchmark worlds, different ones nearby 0.56-0.71) ..."""
    moved_max_distance: float = 8.0
    """... and their centres are at most this many object diagonals apart."""
    overview: bool = True
    """Write the overview PNGs and crops."""


@dataclass
class Evidence:
    """One registered photo compared with the scene (all maps at the work size)."""

    name: str
    camera: Camera  # pinhole, work size
    pose: Pose
    full_size: tuple[int, int]  # (width, height) of the photo
    photo: torch.Tensor  # [H, W, 3] colour-aligned photo
    render: torch.Tensor  # [H, W, 3]
    depth: torch.Tensor  # [H, W]
    alpha: torch.Tensor  # [H, W]
    raw: dict[str, torch.Tensor]  # name -> [H, W] raw dissimilarity
    known: torch.Tensor  # [H, W] bool: the scene renders something here
    score: torch.Tensor | None = None  # [H, W] (score_evidence)
    changed: torch.Tensor | None = None  # [H, W] bool: score > k_mad, opened
    changed_low: torch.Tensor | None = None  # [H, W] bool: score > k_low
    novelty: torch.Tensor | None = None  # [H, W] degrees to the nearest scene photo's ray (see novelty)
    noise: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # per-pixel (median, deviation)
    plain_score: torch.Tensor | None = None  # [H, W] score against all pixels' noise, whatever their novelty


@dataclass
class Candidate:
    id: str
    kind: str  # added | removed | moved
    confidence: float
    box: dict[str, Any]
    masks: dict[str, np.ndarray]  # photo name -> [h, w] bool at the work size
    points: np.ndarray  # [P, 3] supporting points (voxel centres or Gaussian means)
    gaussian_ids: np.ndarray | None = None  # removed / moved: the scene's Gaussians that left
    views: list[str] = field(default_factory=list)
    box_before: dict[str, Any] | None = None
    masks_before: dict[str, np.ndarray] | None = None
    colour: np.ndarray | None = None  # [B] colour histogram of its pixels
    evidence: dict[str, Any] = field(default_factory=dict)  # how well the photos support it


# -- comparison ----------------------------------------------------------------------------------------
def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of [H, W, C] (reflect borders)."""
    if sigma <= 0:
        return img
    r = max(1, math.ceil(3 * sigma))
    r = min(r, img.shape[0] - 1, img.shape[1] - 1)
    g = _gauss_window(2 * r + 1, sigma, dtype=img.dtype)
    c = img.shape[-1]
    t = F.pad(img.permute(2, 0, 1)[None], (r, r, r, r), mode="reflect")
    t = F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    t = F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return t[0].permute(1, 2, 0)


def fit_gains(photo: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, sigma: float = 3.0,
              bandwidth: float = 0.05) -> torch.Tensor:  # fmt: skip
    """The photo [H, W, 3] times the per-channel gains (exposure and white balance) that best take it onto
    ``target`` where ``weight`` [H, W] > 0.

    Fitted on blurred images (a blurry target does not flatten the photo's contrast, as a full affine fit
    does), in log space, at the densest mode of the per-pixel log ratios (mean shift from many starts,
    ``bandwidth`` in log units): the unchanged pixels agree on one ratio while a change spreads its own,
    so a change may even cover most of the frame."""
    pb, tb = _blur(photo, sigma), _blur(target, sigma)
    sel = (weight > 0) & (pb.amin(-1) > 0.02) & (tb.amin(-1) > 0.02) & (pb.amax(-1) < 0.98)
    if int(sel.sum()) < 50:
        return photo
    lr = tb[sel].double().log() - pb[sel].double().log()
    gen = torch.Generator().manual_seed(0)
    if len(lr) > 20_000:
        lr = lr[torch.randperm(len(lr), generator=gen)[:20_000]]
    starts = torch.cat([lr.median(0).values[None], lr[torch.randperm(len(lr), generator=gen)[:63]]])
    for _ in range(15):
        k = torch.exp(-torch.cdist(starts, lr).square() / (2 * bandwidth**2))  # [S, N]
        starts = (k @ lr) / k.sum(1, keepdim=True).clamp_min(1e-12)
    density = torch.exp(-torch.cdist(starts, lr).square() / (2 * bandwidth**2)).mean(1)
    g = starts[int(density.argmax())]
    return (photo * g.exp().float()).clamp(0, 1)


def local_ncc(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """Local normalised cross-correlation [H, W] of the grey values of a and b [H, W, 3] (Gaussian window):
    insensitive to a change of brightness or contrast (a shadow, an exposure), sensitive to structure."""
    a, b = a.mean(-1, keepdim=True), b.mean(-1, keepdim=True)
    ma, mb = _blur(a, sigma), _blur(b, sigma)
    va = (_blur(a * a, sigma) - ma**2).clamp_min(0)
    vb = (_blur(b * b, sigma) - mb**2).clamp_min(0)
    cov = _blur(a * b, sigma) - ma * mb
    return (cov / (va * vb + 1e-6).sqrt())[..., 0]


def _chromaticity(img: torch.Tensor) -> torch.Tensor:
    x = img.clamp_min(0.01)
    return x / x.sum(-1, keepdim=True)


def _log_chroma(img: torch.Tensor) -> torch.Tensor:
    """[H, W, 2]: log(R/G), log(B/G) (of values clamped at 0.02): scaling the light leaves it unchanged."""
    x = img.clamp_min(0.02)
    return torch.stack([(x[..., 0] / x[..., 1]).log(), (x[..., 2] / x[..., 1]).log()], -1)


def dissimilarity(
    photo: torch.Tensor, render_rgb: torch.Tensor, config: DetectConfig
) -> dict[str, torch.Tensor]:
    """Raw per-pixel dissimilarities [H, W] of a colour-aligned photo and the render at its pose.

    ``chroma``: distance of the log-chromaticities (log R/G, log B/G) of the blurred images; a change of
    exposure or of the light's strength scales all three channels and does not move it. ``struct``:
    1 - local NCC of the grey values (window ``ncc_sigma``); the scene's own blur and a change of brightness
    barely move it.
    ``dinov2`` (backend): cosine distance of DINOv2 patch features. Scales are relative to the work size."""
    unit = max(photo.shape[:2]) / 320
    if config.backend == "dinov2":
        return {"dinov2": _dinov2_distance(photo, render_rgb, config)}
    if config.backend != "ssim":
        raise IDUError(f"change backend {config.backend!r}: expected one of {', '.join(BACKENDS)}")
    a, b = _blur(photo, config.blur_sigma * unit), _blur(render_rgb, config.blur_sigma * unit)
    chroma = (_log_chroma(a) - _log_chroma(b)).norm(dim=-1)
    struct = 1 - local_ncc(photo, render_rgb, config.ncc_sigma * unit)
    return {"chroma": chroma, "struct": struct}


def _dinov2_distance(photo: torch.Tensor, render_rgb: torch.Tensor, config: DetectConfig) -> torch.Tensor:
    """Cosine distance [H, W] of the DINOv2 patch tokens of photo and render (one token per ``patch``
    pixels at the work size, upsampled bilinearly)."""
    from .models import IMAGENET_MEAN, IMAGENET_STD, load_dinov2

    model = load_dinov2(config.model)
    patch = int(model.config.patch_size)
    h, w = photo.shape[:2]
    th, tw = max(patch, round(h / patch) * patch), max(patch, round(w / patch) * patch)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    feats = []
    with torch.no_grad():
        for img in (photo, render_rgb):
            x = F.interpolate(img.permute(2, 0, 1)[None], size=(th, tw), mode="bilinear", antialias=True)
            tok = model(pixel_values=(x - mean) / std).last_hidden_state[0, 1:]
            feats.append(F.normalize(tok, dim=-1).reshape(th // patch, tw // patch, -1))
    d = 1 - (feats[0] * feats[1]).sum(-1)
    return F.interpolate(d[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def compare_photo(
    name: str, photo_rgb: np.ndarray, camera: Camera, pose: Pose, splats: Splats, config: DetectConfig,
    views: Sequence[tuple[Camera, Pose]] | None = None,
) -> Evidence:  # fmt: skip
    """Render the scene at the photo's pose and compare (see the module docstring).

    Args:
        photo_rgb: [H, W, 3] uint8 photo taken with ``camera`` (any model: undistorted here).
        camera: the photo's intrinsics at its full size; ``pose``: its ``cam_from_world``.
        views: the scene's own photos (camera, pose): each pixel's novelty is measured against them.
    """
    full = (camera.width, camera.height)
    if (photo_rgb.shape[1], photo_rgb.shape[0]) != full:
        raise IDUError(
            f"{name}: photo is {photo_rgb.shape[1]}x{photo_rgb.shape[0]}, camera {full[0]}x{full[1]}"
        )
    img, pin = (photo_rgb, camera) if camera.is_pinhole else undistort_image(photo_rgb, camera)
    s = min(1.0, config.work_size / max(full))
    cam = pin.scaled(s) if s < 1 else pin
    x = torch.from_numpy(np.asarray(img, np.float32) / 255.0)
    if s < 1:
        x = F.interpolate(x.permute(2, 0, 1)[None], size=(cam.height, cam.width), mode="area")[0]
        x = x.permute(1, 2, 0)
    with torch.no_grad():
        out = render(splats, cam, pose, background=(0.0, 0.0, 0.0))
    rgb, alpha, depth = out.rgb.float().clamp(0, 1), out.alpha.float(), out.depth.float()
    # clipped pixels have lost their colour: unknown, like the pixels the scene renders transparent
    known = (alpha >= config.min_alpha) & ~_dilate(x.amax(-1) >= 0.99, 1)
    aligned = fit_gains(x, rgb, (alpha >= config.confident_alpha).float())
    raw = dissimilarity(aligned, rgb, config)
    stride = max(1, round(4 * max(depth.shape) / 320))  # 4 pixels at 320 px
    nov = None if not views else novelty(cam, pose, depth, views, stride=stride)
    return Evidence(name, cam, pose, full, aligned, rgb, depth, alpha, raw, known, novelty=nov)


def _lift(camera: Camera, pose: Pose, u: torch.Tensor, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """World points [N, 3] (float64) of pixels (``u`` columns, ``v`` rows: integer indices, their centres at
    +0.5) at camera depths ``d`` [N] of a pinhole ``camera`` at ``pose``."""
    K = torch.from_numpy(camera.K()).double()
    d = d.double()
    pc = torch.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * d, (v + 0.5 - K[1, 2]) / K[1, 1] * d, d], -1)
    M = torch.from_numpy(pose.matrix())
    return (pc - M[:3, 3]) @ M[:3, :3]


def novelty(
    camera: Camera, pose: Pose, depth: torch.Tensor, views: Sequence[tuple[Camera, Pose]], stride: int = 1
) -> torch.Tensor:
    """Per pixel [H, W], the angle (degrees) between its ray and the nearest ray of a scene photo to the
    surface point the render puts there (``depth``: camera z); 180 where no scene photo has that point in
    its frame (occlusion is not tested: a photo whose frame holds the point counts as seeing it). With
    ``stride`` > 1 it is measured at the centre pixel of each stride x stride block and holds for the whole
    block (it changes slowly across the image; 80 scene photos cost 1.1 s a 512x384 photo at stride 1)."""
    h, w = depth.shape
    if stride > 1:
        ys, xs = torch.arange(stride // 2, h, stride), torch.arange(stride // 2, w, stride)
        small = _novelty_at(camera, pose, depth, views, ys, xs)
        rows = (torch.arange(h) // stride).clamp_max(len(ys) - 1)
        cols = (torch.arange(w) // stride).clamp_max(len(xs) - 1)
        out = small[rows][:, cols]
        return torch.where(depth > 0, out, torch.full_like(out, 180.0))
    return _novelty_at(camera, pose, depth, views, torch.arange(h), torch.arange(w))


def _novelty_at(camera: Camera, pose: Pose, depth: torch.Tensor, views: Sequence[tuple[Camera, Pose]],
                ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``novelty`` at the pixels of rows ``ys`` and columns ``xs``: [len(ys), len(xs)]."""
    h, w = len(ys), len(xs)
    v, u = torch.meshgrid(ys, xs, indexing="ij")
    d = depth[v, u].double().flatten()
    X = _lift(camera, pose, u.flatten(), v.flatten(), d)
    ray = F.normalize(X - torch.from_numpy(pose.center()), dim=1)
    best = torch.full((h * w,), -1.0, dtype=torch.float64)
    for cam, p in views:
        uv, z = (torch.from_numpy(a) for a in project_points(cam, p, X.numpy()))
        inside = (z > 0) & (uv >= 0).all(1) & (uv[:, 0] < cam.width) & (uv[:, 1] < cam.height)
        cos = (ray * F.normalize(X - torch.from_numpy(p.center()), dim=1)).sum(1)
        best = torch.where(inside, torch.maximum(best, cos), best)
    out = torch.rad2deg(torch.arccos(best.clamp(-1, 1)))
    return torch.where(d > 0, out, torch.full_like(out, 180.0)).reshape(h, w).float()


def noise_statistics(evidence: list[Evidence], config: DetectConfig) -> Stats:
    """Median and robust standard deviation (1.4826 MAD) of each dissimilarity over the confidently
    rendered pixels of all photos together: the comparison's own noise, which sets the thresholds."""
    gen = torch.Generator().manual_seed(0)
    stats = {}
    for key in evidence[0].raw:
        vals = []
        for ev in evidence:
            v = ev.raw[key][ev.alpha >= config.confident_alpha]
            if len(v) > 50_000:
                v = v[torch.randperm(len(v), generator=gen)[:50_000]]
            vals.append(v)
        v = torch.cat(vals) if vals else torch.zeros(1)
        if len(v) < 50:
            v = torch.cat([ev.raw[key].flatten() for ev in evidence])
        stats[key] = _robust(v, key)
    return stats


def _robust(v: torch.Tensor, key: str) -> tuple[float, float]:
    med = float(v.median())
    return med, max(1.4826 * float((v - med).abs().median()), NOISE_FLOOR.get(key, 1e-4))


def novelty_noise(evidence: list[Evidence], config: DetectConfig, stats: Stats) -> None:
    """Each photo's per-pixel noise (``ev.noise``: median and robust deviation maps per dissimilarity)
    from the bins of novelty (``config.novelty_bins``): each bin's statistics over the confidently
    rendered pixels of all photos together, never below all pixels' ``stats``. Photos without a novelty
    map keep ``stats``."""
    for ev in evidence:
        ev.noise = None
    if not config.novelty_bins or any(ev.novelty is None for ev in evidence):
        return
    edges = torch.tensor([0.0, *config.novelty_bins, 181.0])
    gen = torch.Generator().manual_seed(0)
    bins = [torch.bucketize(ev.novelty, edges[1:-1], right=True) for ev in evidence]
    table: dict[str, list[tuple[float, float]]] = {}
    for key in evidence[0].raw:
        rows = []
        for b in range(len(edges) - 1):
            vals = torch.cat([ev.raw[key][(ev.alpha >= config.confident_alpha) & (bb == b)]
                              for ev, bb in zip(evidence, bins, strict=True)])  # fmt: skip
            if len(vals) > 200_000:
                vals = vals[torch.randperm(len(vals), generator=gen)[:200_000]]
            g = stats[key]
            if len(vals) < config.novelty_min_pixels:
                rows.append(g)
            else:
                m, sd = _robust(vals, key)
                rows.append((max(m, g[0]), max(sd, g[1])))
        table[key] = rows
    for ev, bb in zip(evidence, bins, strict=True):
        ev.noise = {k: (torch.tensor([r[0] for r in rows])[bb], torch.tensor([r[1] for r in rows])[bb])
                    for k, rows in table.items()}  # fmt: skip
    log.info("noise by novelty (bins %s deg): %s", list(config.novelty_bins),
             {k: [(round(a, 3), round(b, 3)) for a, b in rows] for k, rows in table.items()})  # fmt: skip


def score_evidence(evidence: list[Evidence], config: DetectConfig, stats: Stats | None = None) -> Stats:
    """Fill each photo's score (the sum of its dissimilarities' robust z-scores against the noise of
    pixels as novel as it, see ``novelty_noise``), changed and changed_low maps; returns the noise
    statistics of all pixels (computed from the photos unless given)."""
    if not evidence:
        return stats or {}
    stats = stats or noise_statistics(evidence, config)
    novelty_noise(evidence, config, stats)
    for ev in evidence:
        ev.score = _score(ev.raw, stats, ev.noise)
        ev.plain_score = ev.score if ev.noise is None else _score(ev.raw, stats)
        changed = (ev.score > config.k_mad) & ev.known
        ev.changed = _dilate(_erode(changed, config.open_px), config.open_px) & ev.known
        ev.changed_low = (ev.score > config.k_low) & ev.known
    return stats


def _score(raw: dict[str, torch.Tensor], stats: Stats,
           noise: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:  # fmt: skip
    ref = stats if noise is None else noise  # (median, deviation) per dissimilarity: scalars or maps
    return sum(((raw[k] - ref[k][0]) / ref[k][1]).clamp_min(0) for k in raw)


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return mask
    return F.max_pool2d(mask[None, None].float(), 2 * r + 1, 1, r)[0, 0] > 0


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    return ~_dilate(~mask, r) if r > 0 else mask


# -- 3D voting -----------------------------------------------------------------------------------------
def scene_bounds(splats: Splats, pad: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box holding most of the scene (1st-99th percentile of opaque Gaussians), padded."""
    means = np.asarray(splats.means, np.float64)
    opa = 1 / (1 + np.exp(-np.asarray(splats.opacities, np.float64)))
    sel = means[opa > 0.3] if (opa > 0.3).sum() > 100 else means
    lo, hi = np.percentile(sel, 1, axis=0), np.percentile(sel, 99, axis=0)
    ext = hi - lo
    return lo - pad * ext, hi + pad * ext


def seen_bounds(evidence: list[Evidence], pad: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box holding most of what the photos see of the scene (2nd-98th percentile of their
    rendered surfaces), padded: the region changes are looked for in."""
    pts = []
    gen = torch.Generator().manual_seed(0)
    for ev in evidence:
        v, u = torch.nonzero(ev.known, as_tuple=True)
        if len(v) > 20_000:
            keep = torch.randperm(len(v), generator=gen)[:20_000]
            v, u = v[keep], u[keep]
        pts.append(_lift(ev.camera, ev.pose, u, v, ev.depth[v, u]))
    P = torch.cat(pts).numpy()
    lo, hi = np.percentile(P, 2, axis=0), np.percentile(P, 98, axis=0)
    ext = hi - lo
    return lo - pad * ext, hi + pad * ext


def _project(ev: Evidence, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel indices (row-major flat), depths and an in-frame mask of world points X [N, 3]."""
    M = torch.from_numpy(ev.pose.matrix()).to(X.dtype)
    pc = X @ M[:3, :3].T + M[:3, 3]
    fx, fy, cx, cy = (float(v) for v in ev.camera.K()[[0, 1, 0, 1], [0, 1, 2, 2]])
    z = pc[:, 2]
    zs = z.clamp_min(1e-6)
    u = fx * pc[:, 0] / zs + cx
    v = fy * pc[:, 1] / zs + cy
    w, h = ev.camera.width, ev.camera.height
    ok = (z > 1e-3) & (u >= 0) & (v >= 0) & (u < w) & (v < h)
    idx = v.clamp(0, h - 1).long() * w + u.clamp(0, w - 1).long()
    return idx, z, ok


def _grid(lo: np.ndarray, hi: np.ndarray, step: float) -> tuple[torch.Tensor, tuple[int, int, int]]:
    shape = tuple(int(max(1, math.ceil((h - l) / step))) for l, h in zip(lo, hi, strict=True))
    axes = [torch.arange(n, dtype=torch.float64) * step + lo[i] + step / 2 for i, n in enumerate(shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3), shape


@dataclass
class Votes:
    centres: torch.Tensor  # [V, 3]
    voxel: float
    changed: torch.Tensor  # [V] photos voting changed
    total: torch.Tensor  # [V] photos voting
    front: torch.Tensor  # [V] changed votes in front of the rendered surface


def vote(evidence: list[Evidence], centres: torch.Tensor, voxel: float, config: DetectConfig,
         low: bool = False, front_only: bool = False) -> Votes:  # fmt: skip
    """Changed / total votes of voxels ``centres`` [V, 3] (see the module docstring). A photo votes on a
    voxel it sees: in frame, where the scene renders something, not behind the rendered surface
    (``front_only``: in front of it)."""
    changed = torch.zeros(len(centres), dtype=torch.int32)
    total = torch.zeros_like(changed)
    front = torch.zeros_like(changed)
    tol = config.depth_tolerance
    for ev in evidence:
        depth = ev.depth.flatten().double()
        known = ev.known.flatten()
        ch = (ev.changed_low if low else ev.changed).flatten()
        for s in range(0, len(centres), 1 << 20):
            X = centres[s : s + (1 << 20)]
            idx, z, ok = _project(ev, X)
            d = depth[idx]
            is_front = z < d * (1 - 2 * tol) - voxel
            vis = ok & known[idx] & ((is_front) if front_only else (z <= d * (1 + tol) + voxel))
            c = vis & ch[idx]
            changed[s : s + len(X)] += c.int()
            total[s : s + len(X)] += vis.int()
            front[s : s + len(X)] += (c & is_front).int()
    return Votes(centres, voxel, changed, total, front)


def _selected(v: Votes, config: DetectConfig, fraction: float | None = None) -> torch.Tensor:
    frac = config.vote_fraction if fraction is None else fraction
    return (v.changed >= config.min_views) & (v.changed.float() >= frac * v.total.float())


def _occupied(splats: Splats, lo: np.ndarray, shape: tuple[int, int, int], voxel: float,
              min_opacity: float = 0.3) -> torch.Tensor:  # fmt: skip
    """[V] bool: the voxels of the grid (``_grid`` order) holding the centre of an opaque Gaussian."""
    means = torch.as_tensor(np.asarray(splats.means), dtype=torch.float64)
    opa = torch.sigmoid(torch.as_tensor(np.asarray(splats.opacities), dtype=torch.float64))
    ijk = ((means[opa >= min_opacity] - torch.from_numpy(lo)) / voxel).floor().long()
    n = torch.tensor(shape)
    ijk = ijk[((ijk >= 0) & (ijk < n)).all(1)]
    occ = torch.zeros(int(n.prod()), dtype=torch.bool)
    occ[(ijk[:, 0] * n[1] + ijk[:, 1]) * n[2] + ijk[:, 2]] = True
    return occ


def _cluster_ids(votes: Votes, ids: torch.Tensor, config: DetectConfig) -> list[torch.Tensor]:
    """The voxel ids ``ids`` grouped into clusters of at least ``min_voxels`` (open3d DBSCAN)."""
    if len(ids) < config.min_voxels:
        return []
    labels = torch.from_numpy(_clusters(votes.centres[ids].numpy(), 1.8 * votes.voxel, 3))
    groups = [ids[labels == k] for k in range(int(labels.max()) + 1)] if len(labels) else []
    return [g for g in groups if len(g) >= config.min_voxels]


def _clusters(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    return np.asarray(pc.cluster_dbscan(eps=eps, min_points=min_points, print_progress=False))


# -- boxes ---------------------------------------------------------------------------------------------
def up_direction(poses: list[Pose], spread: float = 0.02) -> np.ndarray:
    """The scene's up from its cameras, taken as level (no roll, as people and rigs hold them): the direction
    most nearly perpendicular to every camera's x axis (the smallest eigenvector of their scatter), on the
    side of the cameras' mean up axis (-y in OpenCV). Pitch does not tilt it: the mean of the up axes alone
    leans towards wherever the cameras look down (4.6-4.8 degrees on the benchmark worlds' walks, 0 this
    way). When the x axes hardly spread (one photo, or all facing one way: second-smallest eigenvalue under
    ``spread``) they fix only a plane; the mean up axis projected into it is the answer."""
    ups = np.stack([-p.R[1] for p in poses])
    m = ups.mean(0)
    m = m / (np.linalg.norm(m) or 1.0)
    xs = np.stack([p.R[0] for p in poses])
    w, V = np.linalg.eigh(xs.T @ xs / len(xs))  # ascending
    if w[1] >= spread:
        u = V[:, 0]
    else:
        u = m - (m @ V[:, 2]) * V[:, 2]
    n = np.linalg.norm(u)
    if n < 1e-9:
        return m
    u = u / n
    return u if u @ m >= 0 else -u


def upright_box(points: np.ndarray, up: np.ndarray) -> dict[str, Any]:
    """Smallest box around ``points`` [P, 3] that turns only about ``up`` (objects stand upright):
    ``{"center", "size", "rotation_wxyz"}``, the box's z axis along ``up``."""
    from .cameras import matrix_to_quat

    z = up / np.linalg.norm(up)
    a = np.array([1.0, 0, 0]) if abs(z[0]) < 0.9 else np.array([0, 1.0, 0])
    x0 = np.cross(a, z)
    x0 /= np.linalg.norm(x0)
    y0 = np.cross(z, x0)
    p2 = np.stack([points @ x0, points @ y0], 1)
    angles = np.radians(np.arange(0, 90, 1.0))
    areas = [
        np.ptp(p2 @ np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]), axis=0).prod()
        for t in angles
    ]
    ang = float(angles[int(np.argmin(areas))])
    x = np.cos(ang) * x0 + np.sin(ang) * y0
    y = np.cross(z, x)
    R = np.stack([x, y, z], 1)  # box frame -> world
    local = points @ R
    lo, hi = local.min(0), local.max(0)
    return {"center": (R @ ((lo + hi) / 2)).tolist(), "size": (hi - lo).tolist(),
            "rotation_wxyz": matrix_to_quat(R).tolist()}  # fmt: skip


def _diag(box: dict[str, Any]) -> float:
    return float(np.linalg.norm(box["size"]))


# -- candidates ----------------------------------------------------------------------------------------
def _footprint(
    ev: Evidence, X: torch.Tensor, voxel: float, tol: float, front_only: bool = False
) -> torch.Tensor:
    """Pixels [H, W] covered by voxels X seen from this photo (each splatted at its projected size)."""
    idx, z, ok = _project(ev, X)
    d = ev.depth.flatten().double()[idx]
    vis = ok & ((z < d * (1 - 2 * tol) - voxel) if front_only else (z <= d * (1 + tol) + voxel))
    h, w = ev.camera.height, ev.camera.width
    m = torch.zeros(h * w, dtype=torch.bool)
    if not bool(vis.any()):
        return m.reshape(h, w)
    f = float(ev.camera.K()[0, 0])
    radius = (0.5 * voxel * f / z[vis]).round().clamp(0, 15).long()
    for r in torch.unique(radius).tolist():
        mr = torch.zeros(h * w, dtype=torch.bool)
        mr[idx[vis][radius == r]] = True
        m |= _dilate(mr.reshape(h, w), int(r)).flatten()
    return m.reshape(h, w)


def _colour_hist(pixels: torch.Tensor, bins: int = 6) -> np.ndarray:
    if len(pixels) == 0:
        return np.zeros(bins**3)
    q = (pixels.clamp(0, 0.999) * bins).long()
    h = torch.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins**3).double()
    return (h / h.sum()).numpy()


def _similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Bhattacharyya coefficient of two normalised histograms (1: the same, 0: nothing in common)."""
    return float(np.sum(np.sqrt(np.asarray(a, np.float64) * np.asarray(b, np.float64))))


def _confidence(votes: Votes, sel: torch.Tensor, views: int) -> float:
    frac = float((votes.changed[sel].float() / votes.total[sel].clamp_min(1).float()).mean())
    return frac * (1 - math.exp(-views / 2))


def ground_height(splats: Splats, point: np.ndarray, up: np.ndarray, radius: float, size: int = 24,
                  min_alpha: float = 0.5) -> float | None:  # fmt: skip
    """Height along ``up`` of the scene's surface below ``point`` [3]: a small render looking straight down
    from the point (60 degree field of view); the median depth of its opaque pixels within ``radius`` of the
    vertical through the point. None when the scene renders nothing there."""
    u = np.asarray(up, float) / np.linalg.norm(up)
    side = np.cross(u, [1.0, 0, 0] if abs(u[0]) < 0.9 else [0, 1.0, 0])
    f = size / 2 / math.tan(math.radians(30))
    cam = Camera.pinhole(f, f, size / 2, size / 2, size, size)
    with torch.no_grad():
        out = render(splats, cam, Pose.look_at(point, point - u, up=side), background=[0.0, 0.0, 0.0])
    d = out.depth.double()
    r = (torch.arange(size, dtype=torch.float64) + 0.5 - size / 2) / f
    off = torch.sqrt(r[None, :] ** 2 + r[:, None] ** 2) * d  # horizontal distance from the vertical
    ok = (out.alpha > min_alpha) & (off <= radius)
    if int(ok.sum()) < 4:
        return None
    return float(point @ u - d[ok].median())


def floor_points(
    evidence: list[Evidence], up: np.ndarray, rows: float = 0.15
) -> list[tuple[np.ndarray, float]]:
    """Per photo, where the ground in front of the photographer is: the median of the surface points the
    scene renders opaque in the photo's bottom ``rows`` share of rows, and its height along ``up``."""
    u = np.asarray(up, float) / np.linalg.norm(up)
    out = []
    for ev in evidence:
        y0 = int(ev.depth.shape[0] * (1 - rows))
        ok = (ev.alpha[y0:] > 0.5) & (ev.depth[y0:] > 0)
        if int(ok.sum()) < 20:
            continue
        v, x = torch.nonzero(ok, as_tuple=True)
        X = _lift(ev.camera, ev.pose, x.double(), (v + y0).double(), ev.depth[y0:][ok]).numpy()
        out.append((np.median(X, 0), float(np.median(X @ u))))
    return out


def lowest_ground(evidence: list[Evidence], floors: list[tuple[np.ndarray, float]], up: np.ndarray,
                  below: float) -> float | None:  # fmt: skip
    """The height along ``up`` under which nothing added can be: the median of the ``floors`` (some photos'
    bottom rows render junk under the ground) less ``below`` times the photographers' median height above
    it (scale-free); None without floors."""
    if not floors or below < 0:
        return None
    u = np.asarray(up, float) / np.linalg.norm(up)
    floor = float(np.median([g for _, g in floors]))
    eye = float(np.median([ev.pose.center() @ u for ev in evidence])) - floor
    return floor - below * max(eye, 0.0)


def _to_ground(pts: torch.Tensor, up: np.ndarray, ground: float, step: float) -> torch.Tensor:
    """Voxel centres [M, 3] filling each vertical column of ``pts`` [P, 3] (columns ``step`` wide) from
    ``ground`` (height along ``up``) up to the column's lowest point."""
    u = torch.from_numpy(np.asarray(up, float) / np.linalg.norm(up))
    h = pts @ u
    flat = pts - h[:, None] * u
    key = torch.round(flat / step).long()
    _, col = torch.unique(key, dim=0, return_inverse=True)
    low = torch.full((int(col.max()) + 1,), math.inf, dtype=h.dtype).scatter_reduce(0, col, h, "amin")
    rep = torch.zeros_like(low, dtype=torch.long).scatter_(0, col, torch.arange(len(h)))
    n = ((low - ground) / step).floor().clamp_min(0).long()
    if int(n.sum()) == 0:
        return pts[:0]
    which = torch.repeat_interleave(torch.arange(len(n)), n)
    k = torch.arange(len(which)) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    height = ground + (k.double() + 0.5) * step
    return flat[rep[which]] + height[:, None] * u


def _added(X: torch.Tensor, evidence: list[Evidence], votes: Votes, config: DetectConfig,
           up: np.ndarray, splats: Splats | None = None,
           floors: list[tuple[np.ndarray, float]] | None = None,
           lowest: float | None = None) -> Candidate | None:  # fmt: skip
    """An added object from a cluster of changed voxels in front of the rendered surface: its hull is
    carved on a finer grid around the cluster (a voxel stays when the photos that see it in front of
    the scene's surface see it changed), its mask in each photo is the hull's footprint there. With
    ``splats`` and ``ground_contact``, a hull floating over the scene's surface is extended down to it
    first (see ``DetectConfig.ground_contact``) when that surface is level with the ground the photos
    show in front of them (``floors``, see ``floor_points``). Voxels below ``lowest`` (``lowest_ground``) are
    not part of it."""
    fine = votes.voxel / config.fine
    lo = X.min(0).values.numpy() - 2 * votes.voxel
    hi = X.max(0).values.numpy() + 2 * votes.voxel
    centres, _ = _grid(lo, hi, fine)
    fv = vote(evidence, centres, fine, config, low=True, front_only=True)
    keep = _selected(fv, config, config.hull_fraction) & (
        fv.total >= min(len(evidence), config.min_views + 1)
    )
    if int(keep.sum()) < config.min_voxels:
        return None
    pts = centres[keep]
    if lowest is not None:
        pts = pts[torch.from_numpy(pts.numpy() @ (up / np.linalg.norm(up)) >= lowest)]
        if len(pts) < config.min_voxels:
            return None
    labels = _clusters(pts.numpy(), 1.8 * fine, 3)
    if (labels >= 0).any():
        main = np.bincount(labels[labels >= 0]).argmax()
        pts = pts[torch.from_numpy(labels == main)]
    if min(upright_box(pts.numpy(), up)["size"]) < 1.5 * fine:  # a sheet of voxels: a carving artefact
        return None
    body, ground = pts, None
    if config.ground_contact and splats is not None:
        u = up / np.linalg.norm(up)
        h = pts.numpy() @ u
        flat = pts.numpy() - h[:, None] * u
        centre = flat.mean(0)
        radius = max(2 * fine, float(np.linalg.norm(flat - centre, axis=1).max()))
        ground = ground_height(splats, centre + (h.min() + fine) * u, u, radius)
        if ground is not None and lowest is not None and ground < lowest:
            ground = None  # what the scene renders under the ground
        level = None
        if ground is not None and floors:  # the ground in front of the nearest photo
            dist, height = min((float(np.linalg.norm(p - (p @ u) * u - centre)), g) for p, g in floors)
            level = abs(ground - height) <= config.max_ground_slope * dist
        log.info("ground under the hull at %s: %s; in front of the nearest photo %s", np.round(centre, 2),
                 ground, level)  # fmt: skip
        if level and fine < h.min() - ground <= config.max_ground_gap * float(np.ptp(h) + fine):
            body = torch.cat([pts, _to_ground(pts, u, ground, fine)])
    masks: dict[str, torch.Tensor] = {}
    coverage: dict[str, float] = {}
    feet: dict[str, torch.Tensor] = {}
    for ev in evidence:
        foot = _footprint(ev, pts, fine, config.depth_tolerance, front_only=True) & ev.known
        if int(foot.sum()) < 20:
            continue
        near = _dilate(ev.changed_low, 1)
        coverage[ev.name] = float((foot & near).sum()) / float(foot.sum())
        if coverage[ev.name] >= config.min_coverage:
            if body is not pts:  # the extended hull's footprint is where the mask may be
                foot = _footprint(ev, body, fine, config.depth_tolerance, front_only=True) & ev.known
            masks[ev.name], feet[ev.name] = foot & near, foot
    if len(masks) < config.min_views:
        return None
    refined = None
    if config.refine_masks:
        byname = {ev.name: ev for ev in evidence}
        grown = {n: refine_mask(byname[n], feet[n], config) | masks[n] for n in masks}  # never below the maps
        refined = _carve(grown, evidence, body, fine, config)
    box = upright_box(body.numpy(), up)
    support_pts = body
    if refined is not None:  # the box stays the first hull's: the carved one stretches along rays
        masks, carved = refined
        inside = torch.from_numpy(in_box(carved.numpy(), box["center"], box["size"], box["rotation_wxyz"]))
        if int(inside.sum()) >= config.min_voxels:  # what the grown masks hold of the (extended) hull
            support_pts = carved[inside]
    pix = torch.cat([ev.photo[masks[ev.name]] for ev in evidence if ev.name in masks])
    support = {"hull_voxels": len(pts), "ground": None if ground is None else round(ground, 3),
               "extended_to_ground": len(body) - len(pts),
               "coverage": {k: round(v, 3) for k, v in coverage.items()},
               "masks": "grown (GrabCut) and carved" if refined is not None else "change maps"}  # fmt: skip
    log.info("added candidate at %s size %s: coverage %s, ground %s (+%d voxels)",
             np.round(box["center"], 2), np.round(box["size"], 2), support["coverage"], support["ground"],
             len(body) - len(pts))  # fmt: skip
    return Candidate("", "added", _confidence(fv, keep, len(masks)), box,
                     {k: v.numpy() for k, v in masks.items()}, support_pts.numpy(), views=sorted(masks),
                     colour=_colour_hist(pix), evidence=support)  # fmt: skip


def refine_mask(ev: Evidence, footprint: torch.Tensor, config: DetectConfig) -> torch.Tensor:
    """An added object's mask [H, W] in this photo, grown from its hull's footprint by GrabCut (OpenCV's
    colour-model graph cut). Seeds: the footprint's changed core is the object, the footprint probably
    the object; the rest of the footprint's box widened by ``refine_expand`` probably background, and
    outside that box, or where the photo agrees with the render (score below ``refine_quiet``),
    certainly background. The parts connected to the footprint are kept. While the mask
    reaches the box's edge, the box is widened around the mask and the cut made again (``refine_rounds``
    in all), so a mask can grow to an object several times its footprint; it stops growing when it
    would cover more than ``refine_max_growth`` times the footprint (leaking into the background). The
    footprint itself when GrabCut has nothing to work with."""
    import cv2

    f = footprint.numpy()
    h, w = f.shape
    core = (_erode(footprint, 1) & ev.changed).numpy() if ev.changed is not None else np.zeros_like(f)
    img = np.ascontiguousarray((ev.photo.clamp(0, 1).numpy() * 255).astype(np.uint8)[..., ::-1])
    # certain background: the photo agrees with the render as well as unchanged pixels anywhere do (the
    # noise of novel pixels decides what is a change, not how far an object found there extends)
    score = ev.plain_score if ev.plain_score is not None else ev.score
    quiet = None if score is None else (score < config.refine_quiet).numpy()
    mask = f
    for _ in range(config.refine_rounds):
        ys, xs = np.nonzero(mask)
        dy = (ys.max() - ys.min() + 1) * config.refine_expand
        dx = (xs.max() - xs.min() + 1) * config.refine_expand
        y0, y1 = int(max(0, ys.min() - dy)), int(min(h, ys.max() + 1 + dy))
        x0, x1 = int(max(0, xs.min() - dx)), int(min(w, xs.max() + 1 + dx))
        seeds = np.full((h, w), cv2.GC_BGD, np.uint8)
        seeds[y0:y1, x0:x1] = cv2.GC_PR_BGD
        if quiet is not None:
            seeds[quiet] = cv2.GC_BGD
        seeds[mask] = cv2.GC_PR_FGD
        seeds[core] = cv2.GC_FGD
        if not (seeds == cv2.GC_PR_BGD).any():
            break
        cv2.setRNGSeed(0)  # GrabCut's k-means starts: the same masks on every run
        try:
            cv2.grabCut(img, seeds, None, np.zeros((1, 65)), np.zeros((1, 65)), 5, cv2.GC_INIT_WITH_MASK)
        except cv2.error:  # pragma: no cover - degenerate colour models
            break
        grown = (seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)
        _, labels = cv2.connectedComponents(grown.astype(np.uint8), connectivity=8)
        keep = np.unique(labels[grown & f])
        grown = np.isin(labels, keep[keep > 0])
        if not grown.any() or grown.sum() > config.refine_max_growth * f.sum():
            break
        mask = grown
        ys, xs = np.nonzero(mask)
        edge = (ys.min() <= y0 and y0 > 0) or (ys.max() >= y1 - 1 and y1 < h)
        if not (edge or (xs.min() <= x0 and x0 > 0) or (xs.max() >= x1 - 1 and x1 < w)):
            break
    return torch.from_numpy(mask)


def _carve(grown: dict[str, torch.Tensor], evidence: list[Evidence], pts: torch.Tensor, fine: float,
           config: DetectConfig) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:  # fmt: skip
    """Each photo's grown mask cut to the footprint of the grown masks' visual hull around the hull
    ``pts`` (a voxel stays when ``hull_fraction`` of the photos that see it in front of the scene's
    surface have it inside their mask, or near a changed pixel for the photos without one), and that
    hull's voxel centres; None when the grown masks do not agree on a body containing the original hull."""
    lo, hi = pts.min(0).values.numpy(), pts.max(0).values.numpy()
    pad = (hi - lo + fine) * config.refine_pad
    step = fine * max(1.0, (float(np.prod(hi - lo + 2 * pad)) / fine**3 / 2e6) ** (1 / 3))
    centres, shape = _grid(lo - pad, hi + pad, step)
    # photos without a grown mask carve too, where they see no change at all (free space)
    evs = [
        dataclasses.replace(ev, changed_low=grown.get(ev.name, _dilate(ev.changed_low, 2))) for ev in evidence
    ]
    fv = vote(evs, centres, step, config, low=True, front_only=True)
    keep = _selected(fv, config, config.hull_fraction)
    if int(keep.sum()) < config.min_voxels:
        return None
    labels = np.full(len(centres), -1)
    labels[keep.numpy()] = _clusters(centres[keep].numpy(), 1.8 * step, 3)
    # the component(s) holding the original hull's voxels
    ijk = ((pts.numpy() - (lo - pad)) / step).astype(int).clip(0, np.array(shape) - 1)
    ids = np.unique(labels[(ijk[:, 0] * shape[1] + ijk[:, 1]) * shape[2] + ijk[:, 2]])
    ids = ids[ids >= 0]
    if len(ids) == 0:
        return None
    new = centres[torch.from_numpy(np.isin(labels, ids))]
    masks = {}
    for ev in evidence:
        if ev.name not in grown:
            continue
        foot = _footprint(ev, new, step, config.depth_tolerance, front_only=True)
        m = grown[ev.name] & _dilate(foot, 1)
        if int(m.sum()) >= 20:
            masks[ev.name] = m
    return (masks, new) if len(masks) >= config.min_views else None


def _absorb_parts(cands: list[Candidate], overlap: float = 0.5) -> list[Candidate]:
    """Added candidates whose masks lie mostly (``overlap`` of their pixels, over the photos both are seen
    in) inside a bigger added candidate's masks are parts of it (two clusters of changed voxels on one
    object) and are dropped."""
    added = sorted(
        (c for c in cands if c.kind == "added"), key=lambda c: -sum(int(m.sum()) for m in c.masks.values())
    )
    drop: set[int] = set()
    for i, small in enumerate(added):
        for big in added[:i]:
            if id(big) in drop:
                continue
            shared = [n for n in small.masks if n in big.masks]
            inside = sum(int((small.masks[n] & big.masks[n]).sum()) for n in shared)
            if shared and inside >= overlap * sum(int(small.masks[n].sum()) for n in shared):
                log.info("added candidate at %s is part of the one at %s",
                         np.round(small.box["center"], 2), np.round(big.box["center"], 2))  # fmt: skip
                drop.add(id(small))
                break
    return [c for c in cands if id(c) not in drop]


def _removed(X: torch.Tensor, evidence: list[Evidence], votes: Votes, cid: torch.Tensor, splats: Splats,
             stats: Stats, config: DetectConfig, up: np.ndarray) -> Candidate | None:  # fmt: skip
    """A removed object from a cluster of changed voxels on the rendered surface: the Gaussians there that
    the photos see changed, confirmed by rendering the scene without them (see the module docstring)."""
    tol = config.depth_tolerance
    means = torch.as_tensor(np.asarray(splats.means), dtype=torch.float64)
    lo, hi = X.min(0).values - votes.voxel, X.max(0).values + votes.voxel
    ids = torch.nonzero(((means >= lo) & (means <= hi)).all(1)).flatten()
    if len(ids) == 0:
        return None
    inside = torch.zeros(len(ids), dtype=torch.int32)
    seen = torch.zeros(len(ids), dtype=torch.int32)
    for ev in evidence:
        idx, z, ok = _project(ev, means[ids])
        d = ev.depth.flatten().double()[idx]
        vis = ok & ev.known.flatten()[idx] & (z <= d * (1 + tol) + 2 * votes.voxel)
        seen += vis.int()
        inside += (vis & ev.changed_low.flatten()[idx]).int()
    gone = ids[(inside >= config.min_views) & (inside.float() >= config.vote_fraction * seen.float())]
    if len(gone) == 0:
        return None
    gone_at = means[gone]
    drop = np.zeros(len(means), bool)
    drop[gone.numpy()] = True
    rest, only = remove(splats, drop), remove(splats, ~drop)
    revealed, better, weight = 0.0, 0.0, 0.0
    masks: dict[str, torch.Tensor] = {}
    for ev in evidence:
        if not bool(_project(ev, gone_at)[2].any()):  # none of them in this photo's frame
            continue
        with torch.no_grad():
            obj = render(only, ev.camera, ev.pose, background=(0.0, 0.0, 0.0))
            if int((obj.alpha > 0.5).sum()) < 20:  # too little of them to judge here
                continue
            out = render(rest, ev.camera, ev.pose, background=(0.0, 0.0, 0.0))
        # where the removed Gaussians are what the scene shows: opaque and not behind the rest
        m = (obj.alpha > 0.5) & ((out.alpha < config.min_alpha) | (obj.depth <= out.depth * (1 + tol)))
        m &= ev.known
        if int(m.sum()) < 20:
            continue
        masks[ev.name] = m
        rev = (out.alpha >= config.min_alpha) & (out.depth > ev.depth * (1 + tol))
        new = _score(dissimilarity(ev.photo, out.rgb.float().clamp(0, 1), config), stats, ev.noise)
        revealed += float((rev & m).sum())
        better += float((ev.score[m] - new[m]).clamp(-50, 50).sum())
        weight += float(m.sum())
    revealed /= max(weight, 1)
    better /= max(weight, 1)
    log.info("removal candidate at %s: %d Gaussians in %d photos, revealed %.2f, score lower by %.2f",
             np.round(gone_at.mean(0).numpy(), 2), len(gone), len(masks), revealed, better)  # fmt: skip
    if len(masks) < config.min_views or revealed < config.min_revealed or better < config.min_improvement:
        return None
    gpts = gone_at.numpy()
    box = upright_box(gpts, up)
    pix = torch.cat([ev.render[masks[ev.name]] for ev in evidence if ev.name in masks])
    return Candidate("", "removed", _confidence(votes, cid, len(masks)), box,
                     {k: v.numpy() for k, v in masks.items()}, gpts, gaussian_ids=gone.numpy(),
                     views=sorted(masks), colour=_colour_hist(pix))  # fmt: skip


def _pair_moved(cands: list[Candidate], config: DetectConfig) -> list[Candidate]:
    removed = [c for c in cands if c.kind == "removed"]
    added = [c for c in cands if c.kind == "added"]
    pairs = []
    for r in removed:
        for a in added:
            sr, sa = np.maximum(np.sort(r.box["size"]), 1e-6), np.maximum(np.sort(a.box["size"]), 1e-6)
            ratio = float(np.max(np.maximum(sr / sa, sa / sr)))
            colour = _similarity(r.colour, a.colour)
            dist = float(np.linalg.norm(np.subtract(r.box["center"], a.box["center"])))
            log.info("moved? removed at %s, added at %s: sizes %.2f, colours %.2f, %.1f diagonals apart",
                     np.round(r.box["center"], 2), np.round(a.box["center"], 2), ratio, colour,
                     dist / max(_diag(r.box), _diag(a.box)))  # fmt: skip
            if ratio <= config.moved_size_ratio and colour >= config.moved_colour_similarity and \
                    dist <= config.moved_max_distance * max(_diag(r.box), _diag(a.box)):  # fmt: skip
                pairs.append((colour, r, a))
    used: set[int] = set()
    out = list(cands)
    for _, r, a in sorted(pairs, key=lambda t: -t[0]):
        if id(r) in used or id(a) in used:
            continue
        used |= {id(r), id(a)}
        out.remove(r)
        out.remove(a)
        out.append(Candidate("", "moved", min(r.confidence, a.confidence), a.box, a.masks, a.points,
                             gaussian_ids=r.gaussian_ids, views=sorted(set(a.views) | set(r.views)),
                             box_before=r.box, masks_before=r.masks, colour=a.colour))  # fmt: skip
    return out


# -- the scene's own photos: was it already there? ---------------------------------------------------
@dataclass
class Reference:
    """One of the scene version's own photos (what the place looked like when the scene was made)."""

    name: str
    camera: Camera
    pose: Pose
    path: Path


def _chroma_hist(pixels: torch.Tensor, bins: int = 12) -> torch.Tensor:
    c = _chromaticity(pixels)[:, :2]
    q = (c.clamp(0, 0.999) * bins).long()
    h = torch.bincount(q[:, 0] * bins + q[:, 1], minlength=bins * bins).double()
    return h / h.sum().clamp_min(1)


def _mutual_similarity(hists: list[torch.Tensor]) -> float | None:
    """Median Bhattacharyya coefficient over all pairs of histograms; None with fewer than two."""
    pairs = [_similarity(a, b) for i, a in enumerate(hists) for b in hists[i + 1 :]]
    return float(np.median(pairs)) if pairs else None


def photo_consistency(cand: Candidate, evidence: list[Evidence]) -> float | None:
    """How alike an added candidate looks across its photos: the median over pairs of photos of the
    Bhattacharyya coefficient of its masks' chromaticity histograms (colour-aligned photos); None with
    fewer than two photos."""
    hists = [_chroma_hist(ev.photo[torch.from_numpy(cand.masks[ev.name])]) for ev in evidence
             if ev.name in cand.masks and cand.masks[ev.name].any()]  # fmt: skip
    return _mutual_similarity(hists)


def already_there(cand: Candidate, evidence: list[Evidence], refs: list[Reference], splats: Splats,
                  config: DetectConfig, fine: float) -> dict[str, Any] | None:  # fmt: skip
    """Whether an added candidate was already in the scene's own photos (the scene failed to reconstruct it
    well, e.g. a thin or small object seen from a novel pose): in the reference photos that see its hull,
    the hull's footprint must look like the object in the new photos (chromaticity histograms) and clearly
    more so than the ring of pixels around the footprint, or look as much like it as the reference
    footprints look like one another (``same_as_before``: with two references or more). Returns the
    per-reference similarities, or None when no reference photo sees the hull."""
    from .registration import load_rgb

    pts = torch.as_tensor(cand.points, dtype=torch.float64)
    obj = _chroma_hist(torch.cat([ev.photo[torch.from_numpy(cand.masks[ev.name])] for ev in evidence
                                  if ev.name in cand.masks]))  # fmt: skip
    centre = pts.mean(0).numpy()
    ranked = []
    for r in refs:
        pc = r.pose.matrix()[:3, :3] @ centre + r.pose.matrix()[:3, 3]
        if pc[2] <= 0.1:
            continue
        K = r.camera.K()
        u, v = K[0, 0] * pc[0] / pc[2] + K[0, 2], K[1, 1] * pc[1] / pc[2] + K[1, 2]
        if 0 <= u < r.camera.width and 0 <= v < r.camera.height:
            ranked.append((pc[2], r))
    ranked.sort(key=lambda t: t[0])
    sims, feet = {}, []
    for _, r in ranked[: config.reference_views]:
        rgb = load_rgb(r.path, max(r.camera.width, r.camera.height))
        ev = compare_photo(r.name, rgb, r.camera, r.pose, splats, config)
        foot = _footprint(ev, pts, fine, config.depth_tolerance) & ev.known
        area = int(foot.sum())
        if area < 20:
            continue
        ring = _dilate(foot, max(2, round(math.sqrt(area) / 3))) & ~foot & ev.known
        feet.append(_chroma_hist(ev.photo[foot]))
        f, g = _similarity(obj, feet[-1]), _similarity(obj, _chroma_hist(ev.photo[ring]))
        sims[r.name] = {"footprint": round(f, 3), "ring": round(g, 3)}
    if not sims:
        return None
    gain = float(np.median([s["footprint"] - s["ring"] for s in sims.values()]))
    agreement = float(np.median([s["footprint"] for s in sims.values()]))
    consistency = _mutual_similarity(feet)
    same = consistency is not None and agreement >= config.same_as_before * consistency
    return {"references": sims, "gain": round(gain, 3), "agreement": round(agreement, 3),
            "consistency": None if consistency is None else round(consistency, 3),
            "already_there": gain >= config.min_already_there or same}  # fmt: skip


def find_candidates(evidence: list[Evidence], splats: Splats, config: DetectConfig,
                    stats: Stats | None = None,
                    references: list[Reference] | None = None) -> list[Candidate]:  # fmt: skip
    """Lift the photos' changed pixels to 3D candidates (see the module docstring); with ``references``
    (the scene's own photos), added candidates that were already there are dropped."""
    if len(evidence) < config.min_views:
        return []
    if evidence[0].score is None or stats is None:
        stats = score_evidence(evidence, config, stats)
    lo, hi = scene_bounds(splats)
    slo, shi = seen_bounds(evidence)
    lo, hi = np.maximum(lo, slo), np.minimum(hi, shi)
    voxel = float((hi - lo).max()) / config.voxels
    centres, shape = _grid(lo, hi, voxel)
    votes = vote(evidence, centres, voxel, config)
    ids = torch.nonzero(_selected(votes, config)).flatten()
    log.info("changed voxels: %d of %d (voxel %.3f)", len(ids), len(centres), voxel)
    if len(ids) < config.min_voxels:
        return []
    up = up_direction([ev.pose for ev in evidence])
    # the scene's own content (an opaque Gaussian in the voxel) can only have left: removals first
    occupied = _occupied(splats, lo, shape, voxel)
    cands = [
        c
        for cid in _cluster_ids(votes, ids[occupied[ids]], config)
        if (c := _removed(votes.centres[cid], evidence, votes, cid, splats, stats, config, up)) is not None
    ]
    if cands:  # pixels a confirmed removal explains are not evidence of anything new: vote again
        for ev in evidence:
            gone = torch.zeros_like(ev.changed)
            for c in cands:
                if ev.name in c.masks:
                    gone |= _dilate(torch.from_numpy(c.masks[ev.name]), config.open_px)
            ev.changed, ev.changed_low = ev.changed & ~gone, ev.changed_low & ~gone
        votes = vote(evidence, centres, voxel, config)
        ids = torch.nonzero(_selected(votes, config)).flatten()
    floors = floor_points(evidence, up)
    lowest = lowest_ground(evidence, floors, up, config.below_ground)
    contact = floors if config.ground_contact else []
    # free space in front of the rendered surface can only have been filled
    added = ids[(votes.front[ids].float() >= 0.5 * votes.changed[ids].float()) & ~occupied[ids]]
    for cid in _cluster_ids(votes, added, config):
        c = _added(votes.centres[cid], evidence, votes, config, up, splats, contact, lowest)
        if c is None:
            continue
        consistency = photo_consistency(c, evidence)
        c.evidence["photo_consistency"] = None if consistency is None else round(consistency, 3)
        if consistency is not None and consistency < config.min_photo_consistency:
            log.info("added candidate at %s: its photos show unlike things there (%.2f)",
                     np.round(c.box["center"], 2), consistency)  # fmt: skip
            continue
        if references:
            check = already_there(c, evidence, references, splats, config, voxel / config.fine)
            c.evidence["before_photos"] = check
            log.info("added candidate at %s: %s", np.round(c.box["center"], 2), check)
            if check is not None and check["already_there"]:
                continue
        cands.append(c)
    cands = _pair_moved(_absorb_parts(cands), config)
    cands.sort(key=lambda c: -c.confidence)
    for k, c in enumerate(cands, 1):
        c.id = f"c{k}"
    return cands


# -- the stage -----------------------------------------------------------------------------------------
def _full_mask(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(size, Image.Resampling.NEAREST))


def _outline(m: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(m)
    return (_dilate(t, 1) & ~_erode(t, 1)).numpy()


def write_outputs(out: Path, evidence: list[Evidence], cands: list[Candidate], config: DetectConfig) -> dict:
    """Masks, crops and overviews under ``out``; returns the JSON document (also written)."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    byname = {ev.name: ev for ev in evidence}
    doc_cands = []
    colours = {"added": (40, 220, 40), "removed": (230, 40, 40), "moved": (255, 160, 0)}
    for c in cands:
        entry: dict[str, Any] = {"id": c.id, "kind": c.kind, "label": None,
                                 "confidence": round(c.confidence, 4), "box": c.box, "masks": {},
                                 "views": c.views, "evidence": c.evidence}  # fmt: skip
        for key, masks in (("masks", c.masks), ("masks_before", c.masks_before or {})):
            if key == "masks_before" and not masks:
                continue
            entry.setdefault(key, {})
            for name, m in masks.items():
                rel = f"masks/{c.id}/{Path(name).stem}{'__before' if key == 'masks_before' else ''}.png"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_full_mask(m, byname[name].full_size)).save(out / rel)
                entry[key][name] = rel
        if c.box_before is not None:
            entry["box_before"] = c.box_before
        if c.gaussian_ids is not None:
            entry["num_gaussians"] = int(len(c.gaussian_ids))
            rel = f"support/{c.id}_gaussian_ids.npy"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(out / rel, c.gaussian_ids.astype(np.int64))
            entry["gaussian_ids"] = rel
        rel = f"support/{c.id}_points.npy"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(out / rel, c.points.astype(np.float32))
        entry["points"] = rel
        if config.overview:
            entry["crops"] = {}
            for name, m in c.masks.items():
                ys, xs = np.nonzero(m)
                if len(ys) == 0:
                    continue
                ev = byname[name]
                pad = 8
                y0, y1 = max(0, ys.min() - pad), min(m.shape[0], ys.max() + pad + 1)
                x0, x1 = max(0, xs.min() - pad), min(m.shape[1], xs.max() + pad + 1)
                crop = (ev.photo[y0:y1, x0:x1].numpy() * 255).astype(np.uint8)
                rel = f"crops/{c.id}/{Path(name).stem}.jpg"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop).save(out / rel, quality=90)
                entry["crops"][name] = rel
        doc_cands.append(entry)
    if config.overview:
        (out / "overview").mkdir(exist_ok=True)
        for ev in evidence:
            photo = (ev.photo.numpy() * 255).astype(np.uint8)
            rend = (ev.render.clamp(0, 1).numpy() * 255).astype(np.uint8)
            diff = (ev.score.clamp(0, 2 * config.k_mad) / (2 * config.k_mad)).numpy()
            diff = (np.stack([diff, diff * 0.5, 1 - diff], -1) * 255).astype(np.uint8)
            diff[~ev.known.numpy()] = 60
            over = photo.copy()
            over[ev.changed.numpy()] = (
                0.5 * over[ev.changed.numpy()] + 0.5 * np.array([255, 255, 255])
            ).astype(np.uint8)
            for c in cands:
                if ev.name in c.masks:
                    over[_outline(c.masks[ev.name])] = colours[c.kind]
                if c.masks_before and ev.name in c.masks_before:
                    over[_outline(c.masks_before[ev.name])] = (230, 40, 40)
            Image.fromarray(np.concatenate([photo, rend, diff, over], 1)).save(
                out / "overview" / f"{Path(ev.name).stem}.png"
            )
    return {"candidates": doc_cands}


def detect_changes(
    version,
    images: str | os.PathLike,
    out: str | os.PathLike,
    registration: dict[str, Any] | str | os.PathLike | None = None,
    config: DetectConfig | None = None,
) -> dict[str, Any]:
    """Compare new photos with a scene version and write the change candidates to ``out``.

    Args:
        version: the scene version (reconstruction.store.SceneVersion).
        images: the photo folder.
        out: output folder (created).
        registration: an ``idu register --json`` document (or its path) for these photos; None registers
            them first.
    Returns:
        ``{"scene", "version", "candidates": [...], "photos": {name: status}, "seconds"}``; the same document
        is written to ``out/candidates.json``, the registration it used to ``out/registration.json``.
    """
    from .registration import RegistrationConfig, load_rgb, register_photos

    config = config or DetectConfig()
    if config.backend not in BACKENDS:
        raise IDUError(f"change backend {config.backend!r}: expected one of {', '.join(BACKENDS)}")
    t0 = time.perf_counter()
    images = Path(images)
    if not images.is_dir():
        raise IDUError(f"{images}: no such folder of photos")
    if registration is None:
        reg = register_photos(version, images)
    elif isinstance(registration, dict):
        reg = registration
    else:
        path = Path(registration)
        try:
            reg = json.loads(path.read_text())
            reg["images"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IDUError(f"{path}: not an idu register --json document ({e})") from None
    splats = version.load_splats().to_torch()
    views = [(im.entry.camera, im.entry.cam_from_world) for im in version.images()]
    evidence = []
    photos: dict[str, str] = {}
    for r in reg["images"]:
        if r.get("status") != "registered":
            photos[r["name"]] = f"not registered: {r.get('reason')}"
            continue
        camera = Camera.from_json(r["camera"], f"{r['name']} camera")
        rgb = load_rgb(images / r["name"], max(camera.width, camera.height), RegistrationConfig().max_pixels)
        if (rgb.shape[1], rgb.shape[0]) != (camera.width, camera.height):
            raise IDUError(f"{images / r['name']}: photo is {rgb.shape[1]}x{rgb.shape[0]} but its "
                           f"registration says {camera.width}x{camera.height}")  # fmt: skip
        ev = compare_photo(r["name"], rgb, camera, Pose.from_json(r["cam_from_world"]), splats, config, views)
        evidence.append(ev)
        photos[r["name"]] = "compared"
    stats = score_evidence(evidence, config)
    for ev in evidence:
        log.info("%s: %.1f%% of the pixels changed", ev.name, 100 * float(ev.changed.float().mean()))
    refs = [Reference(im.entry.name, im.entry.camera, im.entry.cam_from_world, version.scene.root / im.file)
            for im in version.images() if im.file and (version.scene.root / im.file).is_file()]  # fmt: skip
    cands = find_candidates(evidence, splats, config, stats, refs)
    doc = write_outputs(Path(out), evidence, cands, config)
    doc = {"scene": version.scene.ref, "version": version.number, **doc, "photos": photos,
           "config": asdict(config), "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    (Path(out) / "candidates.json").write_text(json.dumps(doc, indent=1) + "\n")
    (Path(out) / "registration.json").write_text(json.dumps(reg, indent=1) + "\n")  # what the assets use
    return doc


__all__ = [
    "BACKENDS", "Candidate", "DetectConfig", "Evidence", "already_there", "compare_photo", "detect_changes",
    "dissimilarity", "find_candidates", "fit_gains", "noise_statistics", "photo_consistency", "scene_bounds",
    "score_evidence", "up_direction", "upright_box", "vote",
]  # fmt: skip
