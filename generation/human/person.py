"""A person's asset: the fitted body with the photos' pixels on it, as Gaussians (SyncHuman's structure:
a 3D-native shape from the body prior, pixel-aligned detail injected from the 2D evidence).

The mesh is the fitted body with its clothing layer (``PersonFit.clothed_vertices``). Colours: every
vertex of that mesh takes the photos' colours (mapped onto the scene's exposure and
white balance) where a photo sees it: in front in that photo's z-buffer of the body, facing the camera,
inside the person's mask and not behind a scene occluder; photos are weighted by how squarely they see
the surface. Vertices no photo sees take the colour of the nearest seen vertex. The coloured mesh becomes
Gaussians by area-weighted surface sampling (``generation.surface.mesh_to_splats``), placed with its
feet on the point the fit found.

    fit = fit_person(windows, box, up, scene)
    asset, placement, report = person_asset(fit, windows)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from generation.assets import nearest
from generation.multiview import Window
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


def person_asset(fit: PersonFit, windows: list[Window], gaussians: int = 20000,
                 seed: int = 0) -> tuple[Splats, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(Gaussians in the person's frame, placement into the scene, report) from a body fit."""
    V = fit.clothed_vertices()
    F = np.asarray(fit.posed.faces, np.int64)
    col, seen = colour_vertices(V, F, windows)
    feet = fit.params.feet.detach().double().numpy()
    mesh = Mesh(V - feet, F, vertex_colors=np.clip(col, 0, 1), name="person")
    asset = mesh_to_splats(mesh, num=gaussians, seed=seed, thickness=0.3)
    placement = {"rotation_wxyz": [1.0, 0.0, 0.0, 0.0], "translation": [float(x) for x in feet], "scale": 1.0}
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
        "seen_fraction": round(float(seen.mean()), 3),
        "fit_seconds": round(fit.seconds, 2),
    }
    return asset, placement, report
