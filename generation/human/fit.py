"""Fit the anny body to a person's silhouettes in every photo at once, from several starting hypotheses.

The body is drawn as round Gaussians at points spread evenly over its surface through IDU's
differentiable rasterizer, so the silhouette loss reaches the pose, the phenotype, the turn about up and
the feet's position. The loss sees the body behind the scene's nearer Gaussians only (one render per
photo), rendered at ``supersample`` times the photo's resolution and averaged down: at the photo's own,
the rasterizer's low-pass blur and the Gaussians' size widen a person 100 pixels tall by about a pixel all
round, so much that the true body's silhouette scores no better than a wrong pose's. The IoUs that rank
and report the fits are exact: the body's mesh ray-cast through the pixel centres (as the masks are made),
hidden where the scene's nearer Gaussians are opaque.
Steps:

1. **Hypotheses.** A standing body (and a crouching one when the candidate's box is short) facing each of
   ``yaws`` directions, feet on the ground under the box's centre, is fitted briefly (turn, position and
   height only) and ranked by its mean silhouette IoU over the photos: multi-view consistency.
2. **Limbs.** For the ``keep`` best, the legs take the best of :data:`STANCES` and each arm the best of
   :data:`ARM_POSES` by IoU (a silhouette cannot lift an arm that starts inside the torso).
3. **Fit.** They are fitted in full: silhouette loss (soft IoU + BCE of the visible coverage against the
   mask), ground contact (the soles on the scene's ground under the person: the lowest layer of the
   scene's triangulated 3D points under its footprint when there are enough, else the top of the opaque
   Gaussians' heights there, not the Gaussians buried under the surface), 2D keypoints when a keypoint
   model gave them (robust reprojection error),
   a pose prior (axis-angles near the standing pose) and a phenotype prior (near the average body). With
   one photo the priors' weight doubles and the ground contact is firm: the feet's ray meeting the ground
   fixes the distance the silhouette leaves loose.
4. The best by mean IoU is the result; every fitted hypothesis is kept for the reviewer (the ``keep``
   fitted in full are different readings of the photos: facings apart, or another stance).
5. **Clothing.** With the body held fixed, an offset of each vertex along its normal (0 to
   ``clothing_max``, smooth over the mesh, penalised by its size) is fitted to the same silhouettes:
   loose clothing widens the silhouette without pulling the joints (ClothHMR's idea). The reported IoUs
   are the clothed body's; the bare body's stay in ``extra``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from generation.multiview import Window, _box_frame
from generation.placement import PlacementConfig, _frame, _ground, _iou, ground_from_points
from reconstruction.render import render
from reconstruction.splats import Splats

from .body import (
    ARM_POSES,
    POSE_BONES,
    STANCES,
    Body,
    BodyParams,
    PosedBody,
    arm_axis_angles,
    stance_axis_angles,
    vertex_normals,
)

log = logging.getLogger(__name__)


@dataclass
class PersonFitConfig:
    yaws: int = 8
    """Facing directions tried (every 360 / yaws degrees)."""
    quick_steps: int = 10
    """Steps of each hypothesis' brief fit (turn, position, height)."""
    keep: int = 2
    """Hypotheses fitted in full: the best, then the best whose facing differs by more than
    ``distinct_yaw_deg`` from those already kept (or that crouches where they stand), so the reviewer is
    shown different readings of the photos (with one photo: a body facing the camera or away from it),
    not one reading twice."""
    distinct_yaw_deg: float = 60.0
    steps: int = 200
    """Steps of each full fit (the small benchmark world's person, 4 photos: 100 steps 48 mm MPJPE, 150
    steps 42, 200 steps 33, 300 steps 31 and half as long again)."""
    photo_steps: int = 800
    """...but at most this many steps times photos (0: no limit): with many photos the full fit takes fewer
    steps, so the time per person stays about flat, and the photos constrain the body more (medium world's
    person in 8 photos: 100 steps 35 mm MPJPE in 49 s, 150 steps 42 mm, 200 steps 45 mm in 79 s)."""
    samples: int = 4000
    """Points of the body's surface drawn as Gaussians (spread evenly by area)."""
    sigma_factor: float = 0.4
    """Their size: this times the mean spacing of the points (larger ones fatten the silhouette)."""
    body_opacity: float = 0.0
    """Opacity logit of each of those Gaussians (0: 0.5; overlapping, they make the inside opaque)."""
    supersample: int = 2
    """The loss's silhouettes are rendered at this many times the window's resolution and averaged down.
    The true body drawn this way against its own masks (small benchmark world, people 51-129 pixels tall):
    IoU 0.68 at 1 (opacity logit 3), 0.84 at 2, 0.85 at 3; the fit's time grows with the pixels. The
    hypotheses' brief fits (turn, position, height) render at 1."""
    supersample_below: int = 160
    """...in photos where the person's mask is shorter than this (pixels); taller ones render at 1 (the
    blur's pixel is a small part of them, and their pixels cost)."""
    crouch_below: float = 1.4
    """A box lower than this (metres along up) also tries crouching bodies; one higher than
    ``stand_above`` only standing ones."""
    stand_above: float = 1.2
    lr: float = 0.03
    """Adam learning rate (radians for angles, logits for the phenotype, metres / 10 for the position)."""
    pose_prior: float = 0.02
    """Weight of the pose prior (squared axis-angle distance from the standing pose, radians)."""
    phenotype_prior: float = 0.005
    """Weight of the phenotype prior (squared logits)."""
    ground_weight: float = 2.0
    """Weight of the ground contact (squared gap of the soles, metres): gentle, the splats' ground lies a
    few centimetres off the true one, and the photos show the feet."""
    single_ground_weight: float = 50.0
    """...with one photo: firm. The photo leaves the body's distance along the camera's rays loose (a body
    5 % larger and 5 % farther casts the same silhouette); the feet's ray meeting the ground pins it."""
    bce_weight: float = 0.5
    """Weight of the silhouette BCE beside the soft IoU."""
    keypoint_weight: float = 1.0
    """Weight of the 2D keypoint loss (when keypoints are given)."""
    keypoint_scale: float = 0.05
    """Scale of its robust distance, in person heights in the photo."""
    clothing_steps: int = 60
    """Steps of the clothing layer's fit after the body's (0: no layer): an offset of every vertex of the
    fitted body along its normal (ClothHMR's idea), from 0 up to ``clothing_max`` metres, fitted to the
    same silhouettes with the body held fixed, so loose clothing widens the silhouette without pulling the
    joints. Smoothness between neighbouring vertices and a size penalty keep offsets where the photos ask
    for them."""
    clothing_max: float = 0.12
    clothing_lr: float = 0.15
    """Adam learning rate of the offsets' logits."""
    clothing_smooth: float = 2000.0
    """Weight of the mean squared offset difference along the mesh's edges (metres)."""
    clothing_size: float = 2.0
    """Weight of the mean squared offset (metres)."""
    seed: int = 0


@dataclass
class PersonFit:
    params: BodyParams
    posed: PosedBody
    silhouette_iou: dict[str, float]  # per photo
    hypotheses: list[dict[str, Any]]  # every fitted start: label, yaw, IoU (best first)
    ground: float | None  # the ground's height under the person (upright frame), None when unknown
    seconds: float
    confidence: float
    extra: dict[str, Any] = field(default_factory=dict)
    offsets: np.ndarray | None = None  # [V] the clothing layer, metres along the body's vertex normals
    kept_keypoints: list[np.ndarray] = field(default_factory=list)  # each fitted hypothesis' keypoints

    @property
    def mean_iou(self) -> float:
        return float(np.mean(list(self.silhouette_iou.values()))) if self.silhouette_iou else 0.0

    def clothed_vertices(self) -> np.ndarray:
        """[V, 3] the fitted body's vertices moved out by the clothing layer (the body's without one)."""
        V = self.posed.vertices.detach().double().numpy()
        if self.offsets is None:
            return V
        return V + self.offsets[:, None] * vertex_normals(V, np.asarray(self.posed.faces, np.int64))


def body_splats(points: torch.Tensor, sigma: float, opacity: float = 3.0) -> Splats:
    """White round Gaussians of size ``sigma`` and opacity logit ``opacity`` at ``points`` [N, 3]
    (differentiable)."""
    n = len(points)
    means = points.float()
    return Splats(
        means=means,
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(n, 4),
        scales=torch.full((n, 3), math.log(sigma)),
        opacities=torch.full((n,), float(opacity)),
        sh0=torch.full((n, 3), 1.0),
        shN=torch.zeros((n, 0, 3)),
    )


def _cover_fast(win: Window, sp: Splats, supersample: int = 1) -> torch.Tensor:
    """The body's coverage [h, w] behind the window's front occluders only (the loss's, and the limbs'
    choice), rendered at ``supersample`` times the window's resolution and averaged down."""
    cam = win.camera.scaled(supersample) if supersample > 1 else win.camera
    a = render(sp, cam, win.pose, backend="torch").alpha
    if supersample > 1:
        a = F.interpolate(a[None, None], size=tuple(win.front_alpha.shape), mode="area")[0, 0]
    return a * (1.0 - win.front_alpha)


def mesh_covers(windows: list[Window], vertices: np.ndarray, faces: np.ndarray) -> list[torch.Tensor]:
    """Where the mesh ``vertices`` [V, 3], ``faces`` [F, 3] is seen in each window ([h, w] bool): a pixel is
    in when the ray through its centre hits the mesh (as the benchmark worlds' masks are made) and the
    scene's nearer Gaussians leave it more than half visible. The mesh's ray-casting structure is built
    once for all the windows."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(faces, np.uint32)))  # fmt: skip
    out = []
    for win in windows:
        cam = win.camera
        K, M = cam.K(), win.pose.matrix()
        u, v = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1) @ M[:3, :3]
        origin = np.broadcast_to(-M[:3, :3].T @ M[:3, 3], dirs.shape)
        rays = o3d.core.Tensor(np.concatenate([origin, dirs], -1).astype(np.float32))
        hit = torch.from_numpy(np.isfinite(scene.cast_rays(rays)["t_hit"].numpy()))
        out.append(hit & (win.front_alpha < 0.5))
    return out


def _silhouette_loss(cover: torch.Tensor, mask: torch.Tensor, bce_weight: float) -> torch.Tensor:
    c = cover.clamp(1e-4, 1 - 1e-4)
    inter = (c * mask).sum()
    soft_iou = inter / (c.sum() + mask.sum() - inter).clamp_min(1e-6)
    return (1 - soft_iou) + bce_weight * F.binary_cross_entropy(c, mask)


def window_keypoints(keypoints: np.ndarray, win: Window) -> np.ndarray:
    """Keypoints [K, 3] (x, y, confidence) in a photo's pixels moved into the window's pixels."""
    out = np.asarray(keypoints, np.float64).copy()
    out[:, :2] = out[:, :2] * win.scale - np.asarray(win.offset, np.float64)
    return out


class _Fitter:
    def __init__(self, body: Body, windows: list[Window], frame: np.ndarray, ground: float | None,
                 config: PersonFitConfig, keypoints: dict[str, np.ndarray] | None = None):  # fmt: skip
        self.body, self.windows, self.frame, self.ground, self.config = body, windows, frame, ground, config
        # one photo: the priors weigh double and the ground contact is firm (the silhouette leaves the
        # distance along the ray loose)
        single = len(windows) == 1
        self.prior_weight = 2.0 if single else 1.0
        self.ground_weight = config.single_ground_weight if single else config.ground_weight
        # 2D keypoints per window (window pixels), and the person's height there (the error's unit)
        self.kps, self.supersample = [], []
        for w in windows:
            k = None if not keypoints or w.name not in keypoints else window_keypoints(keypoints[w.name], w)
            ys = torch.nonzero(w.mask > 0.5)[:, 0]
            unit = float(ys.max() - ys.min() + 1) if len(ys) else 1.0
            self.kps.append(None if k is None else (torch.as_tensor(k[:17]), unit))
            self.supersample.append(config.supersample if unit < config.supersample_below else 1)
        rest = body.pose(BodyParams.standing(), np.eye(3)).vertices.detach()
        faces = torch.as_tensor(body.faces)
        a, b, c = (rest[faces[:, k]] for k in range(3))
        area = 0.5 * torch.linalg.cross(b - a, c - a).norm(dim=1)
        gen = torch.Generator().manual_seed(config.seed)
        # points spread evenly over the surface: faces drawn by area, uniform barycentric coordinates
        self.faces = faces[
            torch.multinomial(area / area.sum(), config.samples, replacement=True, generator=gen)
        ]
        u, v = torch.rand(config.samples, generator=gen), torch.rand(config.samples, generator=gen)
        flip = u + v > 1
        u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
        self.bary = torch.stack([1 - u - v, u, v], 1).to(rest.dtype)
        self.sigma = config.sigma_factor * math.sqrt(float(area.sum()) / config.samples)
        self.up = torch.as_tensor(frame[:, 2], dtype=torch.float64)
        self.standing = BodyParams.standing().pose

    def splats(self, vertices: torch.Tensor) -> Splats:
        """The loss's Gaussians on the surface of a posed (or clothed) body's vertices [V, 3]."""
        points = (vertices[self.faces] * self.bary[..., None]).sum(1)
        return body_splats(points, self.sigma, self.config.body_opacity)

    def posed(self, p: BodyParams) -> PosedBody:
        return self.body.pose(p, self.frame)

    def loss(self, p: BodyParams, supersample: bool = False) -> tuple[torch.Tensor, PosedBody]:
        cfg = self.config
        posed = self.posed(p)
        sp = self.splats(posed.vertices)
        sil = 0.0
        for w, ss in zip(self.windows, self.supersample, strict=True):
            sil = sil + _silhouette_loss(_cover_fast(w, sp, ss if supersample else 1), w.mask, cfg.bce_weight)
        sil = sil / len(self.windows)
        loss = sil + self.prior_weight * cfg.pose_prior * ((p.pose - self.standing) ** 2).sum()
        loss = loss + self.prior_weight * cfg.phenotype_prior * (p.phenotype**2).sum()
        if self.ground is not None:
            soles = (posed.vertices @ self.up).min()
            loss = loss + self.ground_weight * (soles - self.ground) ** 2
        return loss + self.keypoint_loss(posed), posed

    def keypoint_loss(self, posed: PosedBody) -> torch.Tensor | float:
        """Robust distance (Geman-McClure, scale ``keypoint_scale`` person heights) of the body's COCO
        keypoints projected into each window from the detected ones, weighted by their confidence."""
        total, n = 0.0, 0
        X = posed.keypoints[:17]
        for w, kp in zip(self.windows, self.kps, strict=True):
            if kp is None:
                continue
            target, unit = kp
            M = torch.as_tensor(w.pose.matrix(), dtype=X.dtype)
            K = torch.as_tensor(w.camera.K(), dtype=X.dtype)
            pc = X @ M[:3, :3].T + M[:3, 3]
            uv = (pc @ K.T)[:, :2] / pc[:, 2:3].clamp_min(1e-3)
            d2 = ((uv - target[:, :2]) ** 2).sum(1) / unit**2
            s2 = self.config.keypoint_scale**2
            # weighted by confidence, not normalised by it: a photo whose keypoints are all doubtful
            # (a small or half-hidden person) pulls little
            total = total + (target[:, 2] * d2 / (d2 + s2)).mean()
            n += 1
        return self.config.keypoint_weight * total / n if n else 0.0

    def score(self, p: BodyParams, fast: bool = False, ious: dict[str, float] | None = None) -> float:
        """Mean silhouette IoU (``ious`` when already measured), less the keypoint loss when keypoints are
        given: what ranks the hypotheses."""
        with torch.no_grad():
            kl = float(self.keypoint_loss(self.posed(p)))
        return float(np.mean(list((ious or self.ious(p, fast)).values()))) - kl

    def ious(self, p: BodyParams, fast: bool = False) -> dict[str, float]:
        """Silhouette IoU per photo: exact (:func:`mesh_covers`), or ``fast`` from the loss's splats."""
        with torch.no_grad():
            return self._vertex_ious(self.posed(p).vertices, fast)

    def _vertex_ious(self, vertices: torch.Tensor, fast: bool = False) -> dict[str, float]:
        if fast:
            sp = self.splats(vertices)
            return {w.name: _iou(_cover_fast(w, sp, ss), w.mask)
                    for w, ss in zip(self.windows, self.supersample, strict=True)}  # fmt: skip
        covers = mesh_covers(self.windows, vertices.detach().double().numpy(), self.body.faces)
        return {w.name: _iou(c.float(), w.mask) for w, c in zip(self.windows, covers, strict=True)}

    def clothing(self, p: BodyParams) -> tuple[np.ndarray, dict[str, float]]:
        """The clothing layer over the body ``p`` (see ``PersonFitConfig.clothing_steps``): (offsets [V] in
        metres, silhouette IoU per photo of the clothed body)."""
        cfg = self.config
        with torch.no_grad():
            V = self.posed(p).vertices.detach()
        normals = torch.as_tensor(vertex_normals(V.numpy(), self.body.faces), dtype=V.dtype)
        f = torch.as_tensor(self.body.faces)
        pairs = torch.sort(torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), 1).values
        edges = torch.unique(pairs, dim=0)
        logits = torch.full((len(V),), -4.0, dtype=V.dtype, requires_grad=True)
        opt = torch.optim.Adam([logits], lr=cfg.clothing_lr)

        def clothed() -> tuple[torch.Tensor, torch.Tensor]:
            d = cfg.clothing_max * torch.sigmoid(logits)
            return d, V + d[:, None] * normals

        for _ in range(cfg.clothing_steps):
            opt.zero_grad()
            d, Vc = clothed()
            sp = self.splats(Vc)
            sil = sum(_silhouette_loss(_cover_fast(w, sp, ss), w.mask, cfg.bce_weight)
                      for w, ss in zip(self.windows, self.supersample, strict=True))  # fmt: skip
            smooth = ((d[edges[:, 0]] - d[edges[:, 1]]) ** 2).mean()
            loss = sil / len(self.windows) + cfg.clothing_smooth * smooth + cfg.clothing_size * (d**2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            d, Vc = clothed()
            return d.numpy().astype(np.float64), self._vertex_ious(Vc)

    def choose_arms(self, p: BodyParams) -> BodyParams:
        """Each arm set to the configuration of :data:`ARM_POSES` whose silhouettes agree best."""
        p = p.detached()
        for side in ("L", "R"):
            iu, il = POSE_BONES.index(f"upperarm01.{side}"), POSE_BONES.index(f"lowerarm01.{side}")
            best, best_score = None, -math.inf
            for kind in ARM_POSES:
                up_aa, low_aa = arm_axis_angles(side, kind)
                q = p.detached()
                q.pose[iu], q.pose[il] = torch.as_tensor(up_aa), torch.as_tensor(low_aa)
                score = self.score(q, fast=True)
                if score > best_score:
                    best, best_score = q, score
            p = best
        return p

    def choose_stance(self, p: BodyParams) -> BodyParams:
        """The legs set to the stance of :data:`STANCES` whose silhouettes agree best."""
        best, best_score = p.detached(), self.score(p, fast=True)
        for kind in STANCES:
            q = p.detached()
            for bone, aa in stance_axis_angles(kind).items():
                q.pose[POSE_BONES.index(bone)] = torch.as_tensor(aa)
            score = self.score(q, fast=True)
            if score > best_score:
                best, best_score = q, score
        return best

    def run(self, p: BodyParams, steps: int, full: bool) -> BodyParams:
        p = p.detached()
        free = [p.yaw, p.feet] + ([p.pose, p.phenotype] if full else [p.phenotype])
        for t in free:
            t.requires_grad_(True)
        groups = [{"params": [p.yaw], "lr": self.config.lr}, {"params": [p.feet], "lr": self.config.lr / 10}]
        groups.append({"params": [p.pose, p.phenotype] if full else [p.phenotype], "lr": self.config.lr})
        opt = torch.optim.Adam(groups)
        # the full fit ends with small steps (cosine decay to a tenth): the silhouettes pin the joints finely
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: 0.55 + 0.45 * math.cos(math.pi * k / max(steps, 1)) if full else 1.0
        )
        mask_height = None if full else torch.zeros(len(p.phenotype), dtype=torch.float64)
        if mask_height is not None:
            mask_height[4] = 1.0  # the brief fit moves the height only
        for _ in range(steps):
            opt.zero_grad()
            loss, _ = self.loss(p, supersample=full)
            loss.backward()
            if mask_height is not None:
                p.phenotype.grad *= mask_height
            opt.step()
            sched.step()
        return p.detached()


def fit_person(
    windows: list[Window],
    box: dict[str, Any],
    up: np.ndarray,
    scene: Splats | None = None,
    config: PersonFitConfig | None = None,
    body: Body | None = None,
    keypoints: dict[str, np.ndarray] | None = None,
    points: np.ndarray | None = None,
) -> PersonFit:
    """Fit the body to the person's masks in ``windows`` (``generation.multiview.prepare_windows`` around
    the candidate's ``box``); ``up`` is the scene's up direction, ``scene`` its splats (the ground).
    ``keypoints``: photo name -> COCO keypoints [17, 3] (x, y in the photo's pixels, confidence), from a
    keypoint model (``generation.human.keypoints``); they join the loss and rank the hypotheses.
    ``points``: the scene's 3D points [N, 3] (``SceneVersion.load_points``): the ground under the person is
    measured on them where there are enough (:func:`generation.placement.ground_from_points`), else on the
    splats."""
    config = config or PersonFitConfig()
    if not windows:
        raise ValueError("fit_person: no photo shows the person (every mask is empty)")
    t0 = time.perf_counter()
    body = body or Body.load()
    frame = _frame(np.asarray(up, np.float64), box)
    centre, size, box_R = _box_frame(box)
    height = float(size @ np.abs(box_R.T @ frame[:, 2]))
    bottom = float(centre @ frame[:, 2]) - height / 2
    ground, ground_from = None, None
    radius, below = 0.5 * float(np.linalg.norm(size[:2])), -height / 2 + 0.3
    estimates = {  # the points first; the splats' only where the points give no ground
        "points": lambda: ground_from_points(points, centre, radius, frame, below),
        "splats": lambda: None if scene is None else _ground(scene.to_numpy(), centre, radius, frame, below,
                                                              PlacementConfig()),
    }  # fmt: skip
    for source, estimate in estimates.items():
        g = estimate()
        if g is not None and abs(g - (-height / 2)) < 0.3:
            ground, ground_from = float(centre @ frame[:, 2]) + g, source
            break
    foot_h = ground if ground is not None else bottom
    feet = centre + (foot_h - float(centre @ frame[:, 2])) * frame[:, 2]
    fitter = _Fitter(body, windows, frame, ground, config, keypoints)
    steps = config.steps
    if config.photo_steps:
        steps = min(steps, max(1, config.photo_steps // len(windows)))

    starts: list[BodyParams] = []
    for k in range(config.yaws):
        yaw = 2 * math.pi * k / config.yaws
        if height > config.stand_above:
            starts.append(BodyParams.standing(yaw, feet))
        if height < config.crouch_below:
            starts.append(BodyParams.crouching(yaw, feet))
    ranked = []
    for s in starts:
        p = fitter.run(s, config.quick_steps, full=False)
        ranked.append((fitter.score(p), p))
    ranked.sort(key=lambda x: -x[0])
    chosen = _distinct(ranked, config.keep, config.distinct_yaw_deg)
    ranked = [ranked[i] for i in chosen] + [r for i, r in enumerate(ranked) if i not in chosen]
    fitted = []
    for _, p in ranked[: config.keep]:
        q = fitter.run(fitter.choose_arms(fitter.choose_stance(p)), steps, full=True)
        ious = fitter.ious(q)
        fitted.append((fitter.score(q, ious=ious), q, ious))
    fitted.sort(key=lambda x: -x[0])
    _, best, ious = fitted[0]
    best_iou = float(np.mean(list(ious.values())))
    hyps = [_hypothesis(p, float(np.mean(list(i.values()))), True) for _, p, i in fitted]
    hyps += [_hypothesis(p, s, False) for s, p in ranked[config.keep :]]
    with torch.no_grad():
        posed = fitter.posed(best)
        kept = [fitter.posed(p).keypoints.numpy().copy() for _, p, _ in fitted]
    extra = {"phenotype": best.phenotype_values(), "box_height": round(height, 3),
             "keypoint_names": body.keypoint_names, "ground_from": ground_from}  # fmt: skip
    offsets = None
    if config.clothing_steps > 0:
        offsets, clothed = fitter.clothing(best)
        extra["body_silhouette_iou"] = ious
        extra["clothing"] = {"mean_offset_m": round(float(offsets.mean()), 4),
                             "max_offset_m": round(float(offsets.max()), 4)}  # fmt: skip
        ious, best_iou = clothed, float(np.mean(list(clothed.values())))
    # confidence: how well the silhouettes agree, lower with fewer photos
    confidence = best_iou * min(1.0, 0.5 + 0.2 * len(windows))
    return PersonFit(best, posed, ious, hyps, ground, time.perf_counter() - t0, round(confidence, 4), extra,
                     offsets, kept)  # fmt: skip


def _distinct(ranked: list[tuple[float, BodyParams]], keep: int, min_deg: float) -> list[int]:
    """Indices of ``keep`` of the ``ranked`` hypotheses (best first): each next one the best that differs
    from every one chosen, by its start's label or by more than ``min_deg`` of facing; the best of the
    rest when too few differ."""
    chosen: list[int] = []
    for i, (_, p) in enumerate(ranked):
        if len(chosen) == keep:
            break
        yaw = math.degrees(float(p.yaw))
        if all(p.label != ranked[j][1].label
               or abs((yaw - math.degrees(float(ranked[j][1].yaw)) + 180) % 360 - 180) > min_deg
               for j in chosen):  # fmt: skip
            chosen.append(i)
    chosen += [i for i in range(len(ranked)) if i not in chosen][: keep - len(chosen)]
    return chosen


def _hypothesis(p: BodyParams, value: float, fitted: bool) -> dict[str, Any]:
    """A hypothesis for the report: fitted ones with their silhouette IoU, the others with the score
    that ranked them out (the IoU after the brief fit, less the keypoint loss)."""
    yaw = round(math.degrees(float(p.yaw)) % 360, 1)
    key = "silhouette_iou" if fitted else "score"
    return {"start": p.label, "yaw_deg": yaw, key: round(value, 4), "fitted": fitted}


__all__ = ["PersonFitConfig", "PersonFit", "fit_person", "body_splats", "POSE_BONES"]
