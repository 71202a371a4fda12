"""Merge approved changes into a new scene version.

    new = merge(store.scene("plaza"), decisions, base_dir=Path("review/"))

A *decisions* document names the version the changes were detected against and one decision per change
(only ``approve`` is applied; the others are recorded)::

    {"base_version": 3,
     "photos": {"registration": "register.json", "images": "new_photos/"},     # optional: grows the model
     "decisions": [
       {"change_id": "c1", "action": "approve", "kind": "removed", "gaussian_ids": "c1_ids.npy",
        "reviewer": "ana", "comment": "bench taken away"},
       {"change_id": "c2", "action": "approve", "kind": "added", "asset": "assets/c2.ply",
        "transform": {"rotation_wxyz": [1, 0, 0, 0], "translation": [2.0, 0.5, 0.0], "scale": 1.0}},
       {"change_id": "c3", "action": "approve", "kind": "moved", "gaussian_ids": [10, 11, 12],
        "transform": {"rotation_wxyz": [0.92, 0, 0, 0.38], "translation": [1.0, 0, 0]}},
       {"change_id": "c4", "action": "reject", "reviewer": "ana"}]}

- ``removed``: the Gaussians ``gaussian_ids`` (a list, or a ``.npy`` file) and/or those inside ``box``
  (``{"center", "size", "rotation_wxyz"}``) leave the scene.
- ``added``: the asset's Gaussians (an INRIA PLY / ``.splat`` / ``.spz`` file in its own frame) enter the
  scene moved by ``transform`` (``x -> scale R x + translation``: means, rotations, log-scales and the
  spherical harmonics turn with it, see ``splat_ops.transform``).
- ``moved``: the Gaussians ``gaussian_ids`` leave their place and re-enter moved by ``transform`` (in the
  scene frame).

Relative paths are resolved against ``base_dir`` (the folder of the decisions file). The edit is a few pure
operations on the splat container; every Gaussian not named by a decision is carried over bit for bit,
in its order, so renders away from the edits are identical to the parent's. With ``photos``, the new
version's COLMAP model also holds the newly registered photos (their poses as registered; existing
cameras untouched), their observations of the existing points and the points triangulated among them, so
the next update can register against them.

A merge whose ``base_version`` is no longer current is refused (SceneStoreError): another update landed
since detection and the caller must re-detect against it. The version is written by the store (staged,
fsynced, read back, renamed; ``current`` moves last), and its ``meta.json`` records the parent, the
decisions, the reviewers, the photos used, the flow run id and a diff per change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
import torch

from .cameras import Camera, ImageEntry, Pose, model_images, project_points, quat_to_matrix
from .errors import IDUError, SceneStoreError
from .ply import edit_ply, is_canonical_ply, read_ply_columns, read_ply_header, read_ply_rows
from .seams import Photo as SeamPhoto
from .seams import SeamConfig, refine_seams
from .sfm import colmap_log
from .splat_ops import concat, in_box, transform
from .splats import FIELDS, Splats, num_sh_bases

log = logging.getLogger(__name__)

ACTIONS = ("approve", "reject", "relabel", "adjust", "regenerate")
KINDS = ("added", "removed", "moved")


class DecisionError(IDUError):
    """A decisions document that cannot be applied (names the change and the problem)."""


@dataclass
class Decision:
    """One reviewed change, checked and with its files loaded."""

    change_id: str
    action: str
    kind: str | None
    reviewer: str | None = None
    comment: str | None = None
    label: str | None = None
    decided_at: str | None = None  # ISO time of the decision (the update flow sets it)
    rounds: list[dict[str, Any]] | None = None  # the review rounds before it (adjust, relabel, ...)
    gaussian_ids: np.ndarray | None = None  # [K] int64, sorted, unique
    box: dict[str, Any] | None = None
    asset: Splats | None = None
    asset_path: str | None = None
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    @property
    def applied(self) -> bool:
        return self.action == "approve"

    def record(self) -> dict[str, Any]:
        """What meta.json keeps of it."""
        out: dict[str, Any] = {
            "change_id": self.change_id, "action": self.action, "kind": self.kind,
            "reviewer": self.reviewer, "comment": self.comment, "label": self.label,
        }  # fmt: skip
        if self.decided_at:
            out["decided_at"] = self.decided_at
        if self.rounds:
            out["rounds"] = self.rounds
        if self.applied and self.kind in ("added", "moved"):
            out["transform"] = {"rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                                "scale": self.scale}  # fmt: skip
        if self.asset_path:
            out["asset"] = self.asset_path
        return out


def _resolve(base_dir: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else base_dir / q


def _transform_of(where: str, d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float]:
    t = d.get("transform") or {}
    if not isinstance(t, dict):
        raise DecisionError(f"{where}: 'transform' must be an object")
    try:
        R = np.eye(3)
        if "rotation_wxyz" in t:
            q = np.asarray(t["rotation_wxyz"], np.float64).reshape(4)
            if not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
                raise ValueError(f"rotation_wxyz {q.tolist()} is not a rotation")
            R = quat_to_matrix(q / np.linalg.norm(q))
        elif "rotation" in t:
            R = np.asarray(t["rotation"], np.float64).reshape(3, 3)
            if not np.allclose(R @ R.T, np.eye(3), atol=1e-5) or np.linalg.det(R) <= 0:
                raise ValueError("rotation is not a proper rotation matrix")
        tr = np.asarray(t.get("translation", [0, 0, 0]), np.float64).reshape(3)
        s = float(t.get("scale", 1.0))
    except (TypeError, ValueError) as e:
        raise DecisionError(f"{where}: bad transform ({e})") from None
    if not np.isfinite(tr).all() or not (np.isfinite(s) and s > 0):
        raise DecisionError(f"{where}: bad transform (translation {tr.tolist()}, scale {s})")
    return R, tr, s


def _ids_of(where: str, d: dict[str, Any], base_dir: Path, n: int) -> np.ndarray | None:
    v = d.get("gaussian_ids")
    if v is None:
        return None
    if isinstance(v, str):
        path = _resolve(base_dir, v)
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DecisionError(f"{where}: cannot read gaussian_ids {path} ({e})") from None
    else:
        ids = np.asarray(v)
    if ids.ndim != 1 or (len(ids) and not np.issubdtype(ids.dtype, np.integer)):
        raise DecisionError(f"{where}: gaussian_ids must be a list of integers")
    ids = np.unique(ids.astype(np.int64))
    if len(ids) and (ids[0] < 0 or ids[-1] >= n):
        raise DecisionError(f"{where}: gaussian_ids out of range (the base version has {n} Gaussians)")
    return ids


def parse_decisions(doc: dict[str, Any], base_dir: str | os.PathLike, num_gaussians: int) -> list[Decision]:
    """Check a decisions document against a base version with ``num_gaussians`` Gaussians and load the
    files it names. Raises DecisionError (one line naming the change and the problem)."""
    from .formats import read_splats

    base_dir = Path(base_dir)
    if not isinstance(doc, dict) or not isinstance(doc.get("decisions"), list):
        raise DecisionError('decisions: expected {"base_version": N, "decisions": [...]}')
    out: list[Decision] = []
    seen: set[str] = set()
    for k, d in enumerate(doc["decisions"]):
        if not isinstance(d, dict):
            raise DecisionError(f"decision {k}: expected an object")
        cid = str(d.get("change_id") or "")
        where = f"decision {k} ({cid or 'no change_id'})"
        if not cid:
            raise DecisionError(f"{where}: missing change_id")
        if cid in seen:
            raise DecisionError(f"{where}: change {cid} is decided twice")
        seen.add(cid)
        action = d.get("action")
        if action not in ACTIONS:
            raise DecisionError(f"{where}: action {action!r} is not one of {', '.join(ACTIONS)}")
        kind = d.get("kind")
        if action == "approve" and kind not in KINDS:
            raise DecisionError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        dec = Decision(cid, action, kind, d.get("reviewer"), d.get("comment"), d.get("label"),
                       d.get("decided_at"), d.get("rounds"))  # fmt: skip
        if action != "approve":
            out.append(dec)
            continue
        dec.gaussian_ids = _ids_of(where, d, base_dir, num_gaussians)
        dec.box = d.get("box")
        if kind == "removed" and dec.gaussian_ids is None and dec.box is None:
            raise DecisionError(f"{where}: a removal needs gaussian_ids or a box")
        if kind == "moved" and dec.gaussian_ids is None:
            raise DecisionError(f"{where}: a move needs the gaussian_ids of the object")
        if kind in ("added", "moved"):
            dec.rotation, dec.translation, dec.scale = _transform_of(where, d)
        if kind == "added":
            if not d.get("asset"):
                raise DecisionError(f"{where}: an addition needs an asset file")
            path = _resolve(base_dir, str(d["asset"]))
            try:
                dec.asset = read_splats(path).to_numpy().validate(str(path))
            except (IDUError, OSError) as e:
                raise DecisionError(f"{where}: asset {e}") from None
            dec.asset_path = str(d["asset"])
        out.append(dec)
    return out


def _decision_mask(means: np.ndarray, d: Decision) -> np.ndarray:
    """The base Gaussians one removal or move takes out [N] bool."""
    m = np.zeros(len(means), bool)
    if d.gaussian_ids is not None:
        m[d.gaussian_ids] = True
    if d.box is not None:
        b = d.box
        m |= in_box(means, b["center"], b["size"], b.get("rotation_wxyz", (1, 0, 0, 0)))
    return m


def _removed_mask(means: np.ndarray, decisions: list[Decision]) -> tuple[np.ndarray, dict[str, int]]:
    mask = np.zeros(len(means), bool)
    counts: dict[str, int] = {}
    for d in decisions:
        if d.applied and d.kind in ("removed", "moved"):
            m = _decision_mask(means, d)
            counts[d.change_id] = int((m & ~mask).sum())
            mask |= m
    return mask, counts


def _inserted(decisions: list[Decision], rows, sh_degree: int) -> list[tuple[str, Splats]]:
    """The Gaussians each approved addition or move puts into the scene (placed), in decision order.
    ``rows(ids)`` gives the base version's Gaussians ``ids``."""
    out = []
    for d in decisions:
        if d.applied and d.kind == "added":
            out.append((d.change_id, transform(d.asset, d.rotation, d.translation, d.scale)))
        elif d.applied and d.kind == "moved":
            out.append((d.change_id, transform(rows(d.gaussian_ids), d.rotation, d.translation, d.scale)))
    k = num_sh_bases(sh_degree) - 1
    for _, part in out:
        if part.shN.shape[1] != k:  # the asset's SH degree differs: higher bands dropped or zero-filled
            shN = np.zeros((len(part), k, 3), np.float32)
            m = min(k, part.shN.shape[1])
            shN[:, :m] = part.shN[:, :m]
            part.shN = shN
    return out


def _diff(decisions: list[Decision], counts: dict[str, int], inserts) -> dict[str, dict[str, int]]:
    diff = {d.change_id: {"removed": counts.get(d.change_id, 0), "added": 0} for d in decisions if d.applied}
    for cid, part in inserts:
        diff[cid]["added"] = len(part)
    return diff


def apply_decisions(splats: Splats, decisions: list[Decision]) -> tuple[Splats, dict[str, dict[str, int]]]:
    """The edited Gaussians and a diff per change (``{"removed": n, "added": n}``), in memory.

    Kept Gaussians come first, in their order and bit for bit; inserted ones follow in decision order.
    (:func:`merge` does the same by streaming the parent's PLY rows; this is the in-memory equivalent.)
    """
    s = splats.to_numpy()
    removed, counts = _removed_mask(s.means, decisions)
    inserts = _inserted(decisions, lambda ids: Splats(**{f: getattr(s, f)[ids] for f in FIELDS}), s.sh_degree)
    keep = np.flatnonzero(~removed)
    total = len(keep) + sum(len(p) for _, p in inserts)
    out: dict[str, np.ndarray] = {}
    for f in FIELDS:
        src = getattr(s, f)
        dst = np.empty((total, *src.shape[1:]), src.dtype)
        np.take(src, keep, axis=0, out=dst[: len(keep)], mode="clip")  # "raise" would buffer a copy
        at = len(keep)
        for _, part in inserts:
            dst[at : at + len(part)] = getattr(part, f).astype(src.dtype, copy=False)
            at += len(part)
        out[f] = dst
    return Splats(**out), _diff(decisions, counts, inserts)


# -- the COLMAP model grows --------------------------------------------------------------------------
def _triangulate(P: list[np.ndarray], uv: list[np.ndarray]) -> np.ndarray:
    """DLT of one point from projection matrices [3, 4] and pixels [2]."""
    A = []
    for Pm, x in zip(P, uv, strict=True):
        A.append(x[0] * Pm[2] - Pm[0])
        A.append(x[1] * Pm[2] - Pm[1])
    _, _, Vt = np.linalg.svd(np.asarray(A))
    X = Vt[-1]
    return X[:3] / X[3] if abs(X[3]) > 1e-12 else np.full(3, np.nan)


@dataclass
class _NewPhoto:
    name: str
    path: Path
    camera: Camera  # full size, as registered
    pose: Pose
    xy: np.ndarray  # [N, 2] keypoints in the camera's pixels (full size, undistorted: no)
    desc: np.ndarray  # [N, 128]
    colours: np.ndarray  # [N, 3] uint8
    point3D: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [N] model id or -1


def _projection(cam: Camera, pose: Pose) -> np.ndarray:
    return cam.K() @ pose.matrix()[:3]


def grow_model(
    version, registration: dict[str, Any], image_dir: Path, max_error: float = 2.0, min_angle_deg: float = 1.5
) -> tuple[pycolmap.Reconstruction, list[ImageEntry], dict[str, Path], dict[str, Any]]:
    """The version's COLMAP model with the registered new photos added (see the module docstring).

    Returns:
        (model, its image entries, photo files of the new images by name, statistics).
    """
    from .registration import (
        RegistrationConfig,
        extract,
        feature_cache,
        load_photo,
        match_descriptors,
        scene_index,
    )

    rec = version.load_model()
    known = {rec.image(i).name for i in rec.reg_image_ids()}
    regd = [r for r in registration.get("images", []) if r.get("status") == "registered"]
    skipped = [r["name"] for r in regd if r["name"] in known]
    regd = [r for r in regd if r["name"] not in known]
    stats: dict[str, Any] = {"new_images": 0, "observations": 0, "new_points": 0, "skipped_names": skipped}
    if not regd:
        return rec, model_images(rec), {}, stats
    config = RegistrationConfig()
    try:
        index = scene_index(version, config)
    except IDUError as e:  # a scene without photos in the store: new points only, no shared tracks
        log.warning(
            "%s: no registration index (%s); the new photos observe only their own points",
            version.scene.ref,
            e,
        )
        index = None
    cache = feature_cache(version)
    photos: list[_NewPhoto] = []
    for r in regd:
        path = image_dir / r["name"]
        ph = load_photo(path, config)
        xy, desc = extract(ph, config, cache)
        cam = Camera.from_json(r["camera"], f"{path} camera")
        xy_full = xy.astype(np.float64) * (cam.width / ph.gray.shape[1])
        g = ph.gray[np.clip(xy[:, 1].astype(int), 0, ph.gray.shape[0] - 1),
                    np.clip(xy[:, 0].astype(int), 0, ph.gray.shape[1] - 1)]  # fmt: skip
        rgb = np.repeat(g[:, None], 3, 1).astype(np.uint8)
        pose = Pose.from_json(r["cam_from_world"])
        photos.append(
            _NewPhoto(r["name"], path, cam, pose, xy_full, desc, rgb, np.full(len(xy), -1, np.int64))
        )
    # 1. observations of the existing points: matches with the scene photos the registration retrieved,
    #    kept where the point reprojects within max_error with the registered pose
    ids_model = index.point3D_ids if index and index.point3D_ids is not None else np.full(0, -1)
    by_name = {n: i for i, n in enumerate(index.names)} if index else {}
    for r, p in zip(regd, photos, strict=True):
        for sname in r.get("retrieved", list(by_name)[:12]):
            i = by_name.get(sname)
            if i is None:
                continue
            rows = index.point_ids[i]
            sel = np.flatnonzero(rows >= 0)
            if len(sel) == 0:
                continue
            m = match_descriptors(p.desc, index.desc[i][sel], config.ratio)
            if len(m) == 0:
                continue
            kp, row = m[:, 0], rows[sel[m[:, 1]]]
            uv, z = project_points(p.camera, p.pose, index.points[row])
            err = np.linalg.norm(uv - p.xy[kp], axis=1)
            ok = (z > 0) & (err <= max_error) & (ids_model[row] >= 0) & (p.point3D[kp] < 0)
            p.point3D[kp[ok]] = ids_model[row[ok]]
    # one keypoint per point and photo
    for p in photos:
        _, first = np.unique(p.point3D, return_index=True)
        dup = np.ones(len(p.point3D), bool)
        dup[first] = False
        p.point3D[dup & (p.point3D >= 0)] = -1
    # 2. new points among the new photos: pairwise matches, tracks by union-find, DLT, gates
    parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(a):
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(len(photos)):
        for b in range(a + 1, len(photos)):
            pa, pb = photos[a], photos[b]
            fa, fb = np.flatnonzero(pa.point3D < 0), np.flatnonzero(pb.point3D < 0)
            m = match_descriptors(pa.desc[fa], pb.desc[fb], config.ratio)
            if len(m) < 8:
                continue
            for i, j in zip(fa[m[:, 0]], fb[m[:, 1]], strict=True):
                parent[find((a, int(i)))] = find((b, int(j)))
    tracks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for node in list(parent):
        tracks.setdefault(find(node), []).append(node)
    new_points = []
    for members in tracks.values():
        if len(members) < 2 or len({a for a, _ in members}) != len(members):
            continue  # two keypoints of one photo: ambiguous
        P = [_projection(photos[a].camera.undistorted(), photos[a].pose) for a, _ in members]
        uv = [photos[a].xy[i] for a, i in members]
        X = _triangulate(P, uv)
        if not np.isfinite(X).all():
            continue
        ok = True
        rays = []
        for a, i in members:
            q, z = project_points(photos[a].camera, photos[a].pose, X[None])
            if z[0] <= 0 or np.linalg.norm(q[0] - photos[a].xy[i]) > max_error:
                ok = False
                break
            rays.append((X - photos[a].pose.center()) / np.linalg.norm(X - photos[a].pose.center()))
        if not ok:
            continue
        angle = max(np.degrees(np.arccos(np.clip(r1 @ r2, -1, 1))) for r1 in rays for r2 in rays)
        if angle < min_angle_deg:
            continue
        new_points.append((X, members))
    # 3. the model
    image_ids = {}
    next_cam = max(rec.cameras, default=0) + 1
    next_img = max(rec.images, default=0) + 1
    for k, p in enumerate(photos):
        cam = p.camera.to_pycolmap(next_cam + k)
        rec.add_camera_with_trivial_rig(cam)
        pts = pycolmap.Point2DList([pycolmap.Point2D(np.asarray(xy, np.float64)) for xy in p.xy])
        image = pycolmap.Image(name=p.name, points2D=pts, camera_id=cam.camera_id, image_id=next_img + k)
        rec.add_image_with_trivial_frame(image, p.pose.to_pycolmap())
        image_ids[k] = next_img + k
        for i in np.flatnonzero(p.point3D >= 0):
            if rec.exists_point3D(int(p.point3D[i])):
                rec.add_observation(int(p.point3D[i]), pycolmap.TrackElement(image_ids[k], int(i)))
                stats["observations"] += 1
    for X, members in new_points:
        track = pycolmap.Track()
        for a, i in members:
            track.add_element(image_ids[a], int(i))
        colour = np.mean([photos[a].colours[i] for a, i in members], 0).astype(np.uint8)
        rec.add_point3D(np.asarray(X, np.float64), track, colour)
    stats["new_images"] = len(photos)
    stats["new_points"] = len(new_points)
    stats["local_ba"] = local_bundle_adjustment(rec, list(image_ids.values()))
    return rec, model_images(rec), {p.name: p.path for p in photos}, stats


def _image_error(rec: pycolmap.Reconstruction, image_ids: list[int]) -> float:
    """Mean reprojection error (pixels) of the observations of these images."""
    errs = []
    for i in image_ids:
        im = rec.image(i)
        cam = rec.camera(im.camera_id)
        for p2 in im.points2D:
            if p2.has_point3D():
                uv = cam.img_from_cam(im.cam_from_world() * rec.point3D(p2.point3D_id).xyz)
                if uv is not None:
                    errs.append(float(np.linalg.norm(np.asarray(uv) - p2.xy)))
    return float(np.mean(errs)) if errs else float("nan")


def local_bundle_adjustment(rec: pycolmap.Reconstruction, image_ids: list[int]) -> dict[str, Any]:
    """Refine the poses of ``image_ids`` and the points only they observe, everything else held fixed
    (the scene's cameras and points do not move; the existing points fix the frame). In place."""
    if not image_ids:
        return {"images": 0}
    own = set(image_ids)
    cfg = pycolmap.BundleAdjustmentConfig()
    for i in image_ids:
        cfg.add_image(i)
        cfg.set_constant_cam_intrinsics(rec.image(i).camera_id)
    constant = variable = 0
    for i in image_ids:
        for p2 in rec.image(i).points2D:
            if not p2.has_point3D():
                continue
            pid = p2.point3D_id
            if cfg.has_point(pid):
                continue
            if all(el.image_id in own for el in rec.point3D(pid).track.elements):
                cfg.add_variable_point(pid)
                variable += 1
            else:
                cfg.add_constant_point(pid)
                constant += 1
    before = _image_error(rec, image_ids)
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.print_summary = False
    with colmap_log(Path(os.devnull)):
        summary = pycolmap.create_default_bundle_adjuster(opts, cfg, rec).solve()
    after = _image_error(rec, image_ids)
    log.info("local BA of %d new photos (%d new points, %d fixed): reprojection %.3f -> %.3f px",
             len(image_ids), variable, constant, before, after)  # fmt: skip
    return {"images": len(image_ids), "variable_points": variable, "constant_points": constant,
            "usable": bool(summary.is_solution_usable()), "error_before_px": before,
            "error_after_px": after}  # fmt: skip


# -- the stage -----------------------------------------------------------------------------------------
def _load_registration(spec: Any, base_dir: Path) -> dict[str, Any]:
    if isinstance(spec, dict):
        return spec
    path = _resolve(base_dir, str(spec))
    try:
        doc = json.loads(path.read_text())
        doc["images"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DecisionError(f"{path}: not an idu register --json document ({e})") from None
    return doc


def _regions(base_means: np.ndarray, decisions: list[Decision], inserts) -> list[dict[str, Any]]:
    """Axis-aligned boxes of the edited places, one per place: where each removal or move took Gaussians
    out, where each inserted part stands."""
    pts = [base_means[m] for d in decisions if d.applied and d.kind in ("removed", "moved")
           if (m := _decision_mask(base_means, d)).any()]  # fmt: skip
    pts += [np.asarray(p.means, np.float64) for _, p in inserts if len(p)]
    return [{"center": ((q.min(0) + q.max(0)) / 2).tolist(), "size": np.ptp(q, axis=0).tolist()} for q in pts]


def _merge_with_seams(version, parsed, reg: dict[str, Any], image_dir: Path, seams: SeamConfig):
    from .registration import load_rgb

    base = version.load_splats()
    removed, _ = _removed_mask(base.means, parsed)
    inserts = _inserted(
        parsed, lambda ids: Splats(**{f: getattr(base, f)[ids] for f in FIELDS}), base.sh_degree
    )
    regions = _regions(base.means.astype(np.float64), parsed, inserts)
    removed_means = base.means[removed].astype(np.float64)
    edited, diff = apply_decisions(base, parsed)
    photos = []
    for r in reg["images"]:
        if r.get("status") == "registered":
            cam = Camera.from_json(r["camera"], f"{r['name']} camera")
            rgb = load_rgb(image_dir / r["name"], max(cam.width, cam.height))
            if not cam.is_pinhole:
                from .cameras import undistort_image

                rgb, cam = undistort_image(rgb, cam)
            photos.append(SeamPhoto(torch.from_numpy(rgb.astype(np.float32) / 255), cam,
                                    Pose.from_json(r["cam_from_world"])))  # fmt: skip
    refined, stats = refine_seams(edited, regions, photos, seams, removed_means)
    return refined, diff, stats


def merge(
    scene,
    decisions: dict[str, Any],
    base_dir: str | os.PathLike = ".",
    flow_run_id: str | None = None,
    seams: SeamConfig | None = None,
    writer=None,
    publish: bool = True,
) -> dict[str, Any]:
    """Apply the approved decisions to ``decisions["base_version"]`` and write the next version.

    ``seams``: refine the Gaussians near the edits against the new photos (reconstruction.seams; needs
    ``photos`` in the decisions). Off by default: the merge is then a pure edit of the parent.
    ``writer``: a ``SceneWriter`` the caller already holds (default: take the scene's lock here).
    ``publish=False`` only stages the version (``"staged"`` in the result): the caller publishes or
    discards it with the same writer (the update flow does so in a Prefect transaction).

    Returns:
        ``{"scene", "version", "parent", "diff": {change_id: {"removed", "added"}}, "num_gaussians",
        "model": {...}, "seconds"}`` (+ ``"staged"``: ``StagedVersion.to_json()`` when not published).
    Raises:
        DecisionError: an invalid decision (nothing is written); SceneStoreError: the base version is no
        longer current (re-detect), or another writer holds the scene.
    """
    t0 = time.perf_counter()
    base_dir = Path(base_dir)
    if "base_version" not in decisions:
        raise DecisionError("decisions: missing base_version (the version the changes were detected against)")
    base = int(decisions["base_version"])
    current = scene.current_version()
    if current != base:
        raise SceneStoreError(f"{scene.ref}: current version is {current}, not {base}; re-detect against it")
    version = scene.version(base)
    parent_ply = version.splats_path
    num, sh_degree = read_ply_header(parent_ply)
    parsed = parse_decisions(decisions, base_dir, num)
    photos = decisions.get("photos") or {}
    if photos:
        if "registration" not in photos or "images" not in photos:
            raise DecisionError("decisions: 'photos' needs 'registration' and 'images'")
        reg = _load_registration(photos["registration"], base_dir)
        model, entries, files, model_stats = grow_model(
            version, reg, _resolve(base_dir, str(photos["images"]))
        )
    else:
        model = version.load_model()
        entries, files, model_stats = model_images(model), {}, {"new_images": 0}
    seam_stats = None
    if seams is not None:  # in memory: the refinement changes Gaussians near the edits
        if not photos:
            raise DecisionError("decisions: seam refinement needs the new photos ('photos')")
        image_dir = _resolve(base_dir, str(photos["images"]))
        edited, diff, seam_stats = _merge_with_seams(version, parsed, reg, image_dir, seams)
        num_out = len(edited)
    elif is_canonical_ply(parent_ply):  # stream the parent's rows: memory stays small for any scene size
        removed, counts = _removed_mask(read_ply_columns(parent_ply, "means"), parsed)
        inserts = _inserted(parsed, lambda ids: read_ply_rows(parent_ply, ids), sh_degree)
        diff = _diff(parsed, counts, inserts)
        added = concat([p for _, p in inserts]) if inserts else None

        def write(path: Path) -> int:
            return edit_ply(parent_ply, path, ~removed, added)

        edited: Splats | Callable[[Path], int] = write
        num_out = int((~removed).sum()) + (len(added) if added is not None else 0)
    else:
        edited, diff = apply_decisions(version.load_splats(), parsed)
        num_out = len(edited)
    reviewers = sorted({d.reviewer for d in parsed if d.reviewer})
    stored = {im.entry.name: im for im in version.images()}
    image_files = {n: scene.root / im.file for n, im in stored.items() if im.file}
    image_files.update(files)
    n_applied = sum(d.applied for d in parsed)
    with contextlib.ExitStack() as stack:
        w = writer if writer is not None else stack.enter_context(scene.writer())
        staged = w.stage_version(
            edited, model, entries, image_files, reason=f"merge of {n_applied} change(s)", parent=base,
            expected_base=base, flow_run_id=flow_run_id,
            extra_meta={"decisions": [d.record() for d in parsed], "reviewers": reviewers,
                        "photos": sorted(files), "diff": diff, "model_growth": model_stats,
                        "seams": seam_stats},
        )  # fmt: skip
        number = w.publish(staged) if publish else staged.number
    out = {"scene": scene.ref, "version": number, "parent": base, "diff": diff, "num_gaussians": num_out,
           "model": model_stats, "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    if not publish:
        out["staged"] = staged.to_json()
    return out


def read_decisions(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """A decisions file and the folder its relative paths are resolved against."""
    path = Path(path)
    try:
        return json.loads(path.read_text()), path.parent
    except (OSError, ValueError) as e:
        raise DecisionError(f"{path}: cannot read the decisions ({e})") from None


__all__ = [
    "ACTIONS", "KINDS", "Decision", "DecisionError", "apply_decisions", "grow_model",
    "local_bundle_adjustment", "merge", "parse_decisions", "read_decisions",
]  # fmt: skip
