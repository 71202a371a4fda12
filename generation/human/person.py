"""A person's asset: the fitted body with the photos' pixels on it, as Gaussians (SyncHuman's structure:
a 3D-native shape from the body prior, pixel-aligned detail injected from the 2D evidence).

The mesh is the fitted body with its clothing layer (``PersonFit.clothed_vertices``). Colours: every
vertex of that mesh takes the photos' colours (mapped onto the scene's exposure and
white balance) where a photo sees it: in front in that photo's z-buffer of the body, facing the camera,
inside the person's mask and not behind a scene occluder; photos are weighted by how squarely they see
the surface. Vertices no photo sees take the colour of the nearest seen vertex. The coloured mesh becomes
Gaussians by area-weighted surface sampling (``generation.surface.mesh_to_splats``), placed with its
feet on the point the fit found. Last, those Gaussians are optimised briefly against the photos with the
scene frozen (``generation.multiview.optimise_in_box``, no densification, the means held close): sampled
from the mesh, they render its silhouette about a pixel too wide all round at the photos' resolution (the
rasterizer's low-pass filter; a person 50-130 pixels tall at 320 px loses 0.1-0.25 IoU to it), and the
short optimisation pulls them in and brings the photos' colours, while the body keeps the unseen sides.

    fit = fit_person(windows, box, up, scene)
    asset, placement, report = person_asset(fit, windows)
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from generation.assets import nearest
from generation.multiview import MultiViewConfig, Window, optimise_in_box, window_metrics
from generation.surface import Mesh, mesh_to_splats
from reconstruction.splats import Splats

from .body import POSE_BONES, vertex_normals
from .fit import PersonFit


def _seen_colours(vertices: np.ndarray, normals: np.ndarray, win: Window,
                  tolerance: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(colour [V, 3], weight [V]) of each vertex in one window (weight 0: not seen)."""
    M = win.pose.matrix()
    pc = vertices @ M[:3, :3].T + M[:3, 3]
    K = win.camera.K()
    z = pc[:, 2]
    ok = z > 1e-3
    u = K[0, 0] * pc[:, 0] / np.maximum(z, 1e-3) + K[0, 2]
    v = K[1, 1] * pc[:, 1] / np.maximum(z, 1e-3) + K[1, 2]
    h, w = win.mask.shape
    iu, iv = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    ok &= (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h)
    # z-buffer of the body's own vertices (each vertex covers its pixel and the 4 neighbours)
    zbuf = np.full((h, w), np.inf)
    for du, dv in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        pu, pv = iu + du, iv + dv
        inb = ok & (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h)
        np.minimum.at(zbuf, (pv[inb], pu[inb]), z[inb])
    col = np.zeros((len(vertices), 3))
    wt = np.zeros(len(vertices))
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return col, wt
    front = z[idx] <= zbuf[iv[idx], iu[idx]] + tolerance
    view = -pc[idx] / np.linalg.norm(pc[idx], axis=1, keepdims=True)  # towards the camera, camera frame
    facing = (normals[idx] @ M[:3, :3].T * view).sum(1)
    mask = win.mask.numpy()[iv[idx], iu[idx]] > 0.5
    clear = win.front_alpha.numpy()[iv[idx], iu[idx]] < 0.5
    good = front & (facing > 0.1) & mask & clear
    sel = idx[good]
    col[sel] = win.target.numpy()[iv[sel], iu[sel]]
    wt[sel] = facing[good] ** 2
    return col, wt


def colour_vertices(vertices: np.ndarray, faces: np.ndarray, windows: list[Window],
                    tolerance: float = 0.03) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(vertex colours [V, 3] in 0..1, seen [V] bool) of a mesh in the scene frame from the windows."""
    normals = vertex_normals(vertices, faces)
    acc, wsum = np.zeros((len(vertices), 3)), np.zeros(len(vertices))
    for win in windows:
        c, w = _seen_colours(vertices, normals, win, tolerance)
        acc += c * w[:, None]
        wsum += w
    seen = wsum > 0
    col = np.full((len(vertices), 3), 0.5)
    col[seen] = acc[seen] / wsum[seen, None]
    if seen.any() and not seen.all():
        s, u = np.flatnonzero(seen), np.flatnonzero(~seen)
        col[u] = col[s[nearest(vertices[u], vertices[s])[0]]]
    return col, seen


REFINE = MultiViewConfig(steps=60, refine_start=10**9, means_lr=2e-4)
"""The short optimisation of the person's Gaussians (``refine_steps`` replaces its steps): no
densification (the mesh gave them evenly), means moving at a fifth of the multi-view backend's rate."""


def person_asset(
    fit: PersonFit,
    windows: list[Window],
    gaussians: int = 5000,
    seed: int = 0,
    refine_steps: int = REFINE.steps,
) -> tuple[Splats, dict[str, Any], dict[str, Any]]:
    """(Gaussians in the person's frame, placement into the scene, report) from a body fit.

    ``gaussians``: how many the mesh becomes (fewer, larger ones widen the silhouette less: 5000 against
    20,000 held 0.05 more IoU in views the fit never saw); ``refine_steps``: the optimisation against the
    photos (0: none). The report's ``asset_silhouette_iou`` is the Gaussians' own, per photo, before and
    after it."""
    V = fit.clothed_vertices()
    F = np.asarray(fit.posed.faces, np.int64)
    col, seen = colour_vertices(V, F, windows)
    feet = fit.params.feet.detach().double().numpy()
    mesh = Mesh(V - feet, F, vertex_colors=np.clip(col, 0, 1), name="person")
    asset = mesh_to_splats(mesh, num=gaussians, seed=seed, thickness=0.3)
    placement = {"rotation_wxyz": [1.0, 0.0, 0.0, 0.0], "translation": [float(x) for x in feet], "scale": 1.0}
    asset, refined = _refine(asset, feet, windows, refine_steps, seed)
    report = {
        "backend": "person",
        "body_model": "anny",
        "phenotype": fit.params.phenotype_values(),
        "pose_axis_angles": dict(
            zip(POSE_BONES, np.round(fit.params.pose.detach().numpy(), 4).tolist(), strict=True)
        ),  # fmt: skip
        "hypotheses": fit.hypotheses,
        "fit_silhouette_iou": {k: round(v, 4) for k, v in fit.silhouette_iou.items()},
        "body_silhouette_iou": {k: round(v, 4) for k, v in fit.extra.get("body_silhouette_iou", {}).items()},
        "clothing": fit.extra.get("clothing"),
        "confidence": fit.confidence,
        "ground": fit.ground,
        "keypoints": {
            "names": list(fit.extra.get("keypoint_names", [])),
            "xyz": np.round(fit.posed.keypoints.numpy(), 4).tolist(),
        },
        "asset_silhouette_iou": refined,
        "seen_fraction": round(float(seen.mean()), 3),
        "fit_seconds": round(fit.seconds, 2),
    }
    return asset, placement, report


def _refine(asset: Splats, feet: np.ndarray, windows: list[Window], steps: int,
            seed: int) -> tuple[Splats, dict[str, Any]]:  # fmt: skip
    """The person's Gaussians (its own frame, ``feet`` at the origin) optimised against ``windows`` inside
    their own box grown by 10 %; per-photo silhouette IoU of the Gaussians before and after."""
    init = asset.to_numpy()
    init.means = (init.means + feet).astype(np.float32)
    lo, hi = init.means.min(0), init.means.max(0)
    box = {"center": (0.5 * (lo + hi)).tolist(), "size": (1.1 * (hi - lo) + 1e-3).tolist(),
           "rotation_wxyz": [1.0, 0.0, 0.0, 0.0]}  # fmt: skip
    if steps <= 0:
        ious = {w.name: round(window_metrics(w, init.to_torch())["silhouette_iou"], 4) for w in windows}
        return asset, {"before": ious, "after": ious, "steps": 0}
    out, stats = optimise_in_box(init, box, windows, replace(REFINE, steps=steps, seed=seed))
    out.means = (out.means - feet).astype(np.float32)
    per = {k: {w: round(v[w]["silhouette_iou"], 4) for w in v} for k, v in
           (("before", stats["before"]["views"]), ("after", stats["after"]["views"]))}  # fmt: skip
    return out.validate("person asset"), per | {"steps": steps, "seconds": round(stats["seconds"], 2)}
