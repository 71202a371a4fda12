"""Ray-cast renderer for the worlds: open3d ``RaycastingScene`` for visibility, numpy for shading.

Per sample: primary hit (primitive id, barycentrics) -> procedural albedo at the interpolated uv; a sun term
with a cast shadow (an occlusion ray towards a slightly jittered sun), sky light with ambient occlusion
(a fixed, normal-aligned set of short occlusion rays, so every view agrees), a little ground bounce and a
sky reflection on glossy materials; a sky gradient with clouds where nothing is hit. Samples are averaged
in linear light (``supersample`` x ``supersample`` per pixel), then the camera applies exposure, white
balance, vignetting, a filmic tone curve, sRGB gamma and sensor noise.

Pixel coordinates follow COLMAP: the centre of pixel (x, y) is (x + 0.5, y + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reconstruction.cameras import Camera, Pose

from .layout import SceneObject, Sun
from .materials import MATERIALS, shade_albedo
from .noise import fbm

SKY_ID = -1


@dataclass
class Photometric:
    """What the camera did to the light: exposure (stops), white-balance gains, vignetting, noise."""

    exposure_stops: float = 0.0
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0)
    vignetting: float = 0.25
    noise: float = 1.0

    def to_json(self) -> dict:
        return {
            "exposure_stops": round(float(self.exposure_stops), 6),
            "white_balance_rgb": [round(float(g), 6) for g in self.white_balance],
            "vignetting": round(float(self.vignetting), 6),
        }


@dataclass
class Lighting:
    sun: Sun
    sun_intensity: float = 2.8
    sky_intensity: float = 0.62
    sun_radius_deg: float = 0.8
    extra: dict = field(default_factory=dict)


class Geometry:
    """All objects of one scene (before or after) in one ray-casting scene.

    Face arrays: ``uv`` [F, 3, 2], ``normals`` [F, 3, 3], ``material`` [F] (index into ``materials``),
    ``inst`` [F], ``object`` [F] (index into ``object_ids``).
    """

    def __init__(self, objects: list[SceneObject]):
        import open3d as o3d

        verts, faces, uv, nrm, mat, inst, obj = [], [], [], [], [], [], []
        self.materials = sorted(MATERIALS)
        mindex = {m: i for i, m in enumerate(self.materials)}
        self.object_ids = [o.id for o in objects]
        n = 0
        for oi, o in enumerate(objects):
            for p in o.parts:
                verts.append(p.vertices)
                faces.append(p.faces + n)
                n += len(p.vertices)
                uv.append(p.uv)
                nrm.append(p.normals)
                k = len(p.faces)
                mat.append(np.full(k, mindex[p.material], np.int32))
                inst.append(np.full(k, p.inst, np.int64))
                obj.append(np.full(k, oi, np.int32))
        self.vertices = np.concatenate(verts).astype(np.float32)
        self.faces = np.concatenate(faces).astype(np.int32)
        self.uv = np.concatenate(uv).astype(np.float32)
        self.normals = np.concatenate(nrm).astype(np.float32)
        self.material = np.concatenate(mat)
        self.inst = np.concatenate(inst)
        self.object = np.concatenate(obj)
        # faces whose corner normals differ from the face normal are shaded smooth
        fv = self.vertices[self.faces]
        fn = np.cross(fv[:, 1] - fv[:, 0], fv[:, 2] - fv[:, 0])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
        self.smooth = (np.abs(np.einsum("fkc,fc->fk", self.normals, fn)) < 0.9999).any(1)
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(
            o3d.core.Tensor(self.vertices), o3d.core.Tensor(self.faces.astype(np.uint32))
        )

    def cast(self, origins: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
        """Primary hits of rays (origins [N, 3], dirs [N, 3]): t [N] (inf on a miss), prim [N] (-1 on a miss),
        bary [N, 2], ng [N, 3]."""
        import open3d as o3d

        rays = np.empty((len(dirs), 6), np.float32)
        rays[:, :3], rays[:, 3:] = origins, dirs
        r = self.scene.cast_rays(o3d.core.Tensor(rays))
        t = r["t_hit"].numpy()
        prim = r["primitive_ids"].numpy().astype(np.int64)
        prim[~np.isfinite(t)] = -1
        return {
            "t": t,
            "prim": prim,
            "bary": r["primitive_uvs"].numpy(),
            "ng": r["primitive_normals"].numpy(),
        }

    def occluded(self, origins: np.ndarray, dirs: np.ndarray, tfar: float = np.inf) -> np.ndarray:
        import open3d as o3d

        if len(origins) == 0:
            return np.zeros(0, bool)
        rays = np.empty((len(dirs), 6), np.float32)
        rays[:, :3], rays[:, 3:] = origins, dirs
        return (
            self.scene.test_occlusions(o3d.core.Tensor(rays), tnear=0.0, tfar=float(tfar))
            .numpy()
            .astype(bool)
        )

    def id_map(self, camera: Camera, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """Object index [H, W] int32 (``SKY_ID`` where nothing is hit) and depth along z [H, W] float32 at
        the pixel centres."""
        o, d = camera_rays(camera, pose, 1)
        hit = self.cast(o, d)
        ids = np.where(hit["prim"] >= 0, self.object[np.maximum(hit["prim"], 0)], SKY_ID).astype(np.int32)
        zc = d @ pose.R[2].astype(np.float32)  # the z of each unit direction in the camera frame
        depth = np.where(np.isfinite(hit["t"]), hit["t"] * zc, np.inf).astype(np.float32)
        return ids.reshape(camera.height, camera.width), depth.reshape(camera.height, camera.width)


def camera_rays(camera: Camera, pose: Pose, supersample: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """World-frame ray origins and unit directions [H*s * W*s, 3] float32, row-major over the sample grid."""
    fx, fy, cx, cy = np.asarray(camera.K())[[0, 1, 0, 1], [0, 1, 2, 2]]
    s = int(supersample)
    u = ((np.arange(camera.width * s, dtype=np.float32) + 0.5) / s - cx) / fx
    v = ((np.arange(camera.height * s, dtype=np.float32) + 0.5) / s - cy) / fy
    R = pose.R.astype(np.float32)
    # R^T (u, v, 1) = u * R[0] + v * R[1] + R[2]  (rows of R are the camera axes in the world)
    dw = (v[:, None, None] * R[1] + R[2])[:, None, :] + u[None, :, None] * R[0]
    dw = dw.reshape(-1, 3)
    dw /= np.sqrt((dw * dw).sum(1, keepdims=True))
    return np.broadcast_to(pose.center().astype(np.float32), dw.shape), dw


def sky_radiance(d: np.ndarray, sun: Sun, cloud_seed: int = 5) -> np.ndarray:
    """Sky colour (linear RGB) [N, 3] for unit directions d [N, 3]."""
    el = np.clip(d[:, 2], -0.2, 1.0)
    t = np.sqrt(np.clip(el, 0, 1))[:, None]
    horizon = np.array([0.72, 0.80, 0.92], np.float32)
    zenith = np.array([0.20, 0.38, 0.78], np.float32)
    col = horizon + (zenith - horizon) * t
    cosg = np.clip(d @ sun.direction.astype(d.dtype), -1, 1)
    col = (
        col + (np.exp((cosg - 1) * 60)[:, None] * 0.6 + np.exp((cosg - 1) * 4000)[:, None] * 20.0) * sun.color
    )
    dz = np.maximum(d[:, 2], 0.03)
    cu, cv = d[:, 0] / dz, d[:, 1] / dz
    cloud = fbm(cu * 3.0, cv * 3.0, cloud_seed, 1.0, 4)
    c = np.clip((cloud - 0.52) * 3.0, 0, 1)[:, None] * np.clip(d[:, 2] * 4, 0, 1)[:, None]
    col = col * (1 - c) + np.array([0.95, 0.95, 0.97], np.float32) * c
    return (col * 1.25).astype(np.float32)


def _tangent_frame(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.where(np.abs(n[:, 2:3]) < 0.9, np.float32([[0, 0, 1]]), np.float32([[1, 0, 0]]))
    t = np.cross(n, a)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return t, np.cross(n, t)


def _ao_directions(k: int) -> np.ndarray:
    """k fixed cosine-weighted hemisphere directions [k, 3] (local frame, z = normal)."""
    i = np.arange(k) + 0.5
    r = np.sqrt(i / k)
    phi = i * np.pi * (3 - np.sqrt(5)) + 0.4
    return np.stack([r * np.cos(phi), r * np.sin(phi), np.sqrt(1 - r * r)], 1)


def _sun_jitter(s: int, sun: np.ndarray, radius_deg: float) -> np.ndarray:
    """s*s sun directions [s*s, 3] spread over the sun's disc (a fixed pattern)."""
    k = s * s
    t, b = _tangent_frame(sun[None])
    i = np.arange(k) + 0.5
    r = np.sqrt(i / k) * np.tan(np.radians(radius_deg))
    phi = i * 2.39996
    d = sun[None] + r[:, None] * (np.cos(phi)[:, None] * t + np.sin(phi)[:, None] * b)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def ambient_occlusion(
    geom: Geometry, camera: Camera, pose: Pose, rays: int, radius: float = 1.5
) -> np.ndarray:
    """Unoccluded fraction [H*W] of ``rays`` fixed cosine-weighted directions (within ``radius`` metres) at
    the surface seen through each pixel centre (1 where the pixel sees sky)."""
    o, d = camera_rays(camera, pose, 1)
    hit = geom.cast(o, d)
    out = np.ones(len(d), np.float32)
    idx = np.nonzero(hit["prim"] >= 0)[0]
    if len(idx) == 0:
        return out
    dh, t = d[idx], hit["t"][idx]
    ng = hit["ng"][idx]
    ng /= np.maximum(np.sqrt((ng * ng).sum(1, keepdims=True)), 1e-8)
    ng[(ng * dh).sum(1) > 0] *= -1
    start = o[0] + dh * t[:, None] + ng * (2e-3 + 2e-4 * t)[:, None]
    tan, bit = _tangent_frame(ng)
    occ = np.zeros(len(idx), np.float32)
    for lx, ly, lz in _ao_directions(rays).astype(np.float32):
        occ += geom.occluded(start, lx * tan + ly * bit + lz * ng, tfar=radius)
    out[idx] = 1 - occ / rays
    return out


def tone_map(x: np.ndarray) -> np.ndarray:
    """A filmic curve (ACES fit) then sRGB encoding: linear [.., 3] -> display [0, 1]."""
    x = np.maximum(x, 0)
    y = (x * (2.51 * x + 0.03)) / (x * (2.43 * x + 0.59) + 0.14)
    y = np.clip(y, 0, 1)
    return np.where(y <= 0.0031308, 12.92 * y, 1.055 * np.power(y, 1 / 2.4) - 0.055)


def render_radiance(
    geom: Geometry, camera: Camera, pose: Pose, light: Lighting, supersample: int = 2, ao_rays: int = 4
) -> np.ndarray:
    """Linear scene radiance [H, W, 3] float32, averaged over supersample^2 samples per pixel.

    ``ao_rays`` is the number of ambient-occlusion directions, cast once per pixel (at its centre ray).
    """
    s = int(supersample)
    o, d = camera_rays(camera, pose, s)
    n_s = len(d)
    hit = geom.cast(o, d)
    m = hit["prim"] >= 0
    out = np.empty((n_s, 3), np.float32)
    out[~m] = sky_radiance(d[~m], light.sun)
    idx = np.nonzero(m)[0]
    prim = hit["prim"][idx]
    dh = d[idx]
    t_hit = hit["t"][idx]
    p = o[0] + dh * t_hit[:, None]
    bary = hit["bary"][idx]
    w = np.empty((len(idx), 3, 1), np.float32)
    w[:, 1, 0], w[:, 2, 0] = bary[:, 0], bary[:, 1]
    w[:, 0, 0] = 1 - bary[:, 0] - bary[:, 1]
    uv = (geom.uv[prim] * w).sum(1)
    ng = hit["ng"][idx]
    ng /= np.maximum(np.sqrt((ng * ng).sum(1, keepdims=True)), 1e-8)
    ng[(ng * dh).sum(1) > 0] *= -1
    ns = ng.copy()
    smooth = np.nonzero(geom.smooth[prim])[0]
    if len(smooth):  # interpolated normals on curved parts (people, foliage, cylinders)
        nsm = (geom.normals[prim[smooth]] * w[smooth]).sum(1)
        nsm /= np.maximum(np.sqrt((nsm * nsm).sum(1, keepdims=True)), 1e-8)
        nsm[(nsm * ng[smooth]).sum(1) < 0] *= -1
        ns[smooth] = nsm
    # albedo and gloss per material
    albedo = np.empty((len(idx), 3), np.float32)
    spec = np.empty(len(idx), np.float32)
    mat = geom.material[prim]
    inst = geom.inst[prim]
    # each sample's footprint on the surface (metres): textures fade detail they cannot resolve
    # (one pixel: the samples are averaged per pixel; sqrt(cos) splits the difference between the
    # foreshortened and the unforeshortened axis, like anisotropic filtering)
    cos_in = np.maximum(-(dh * ng).sum(1), 0.05)
    fp = t_hit / np.float32(camera.K()[0, 0]) / np.sqrt(cos_in)
    for mi in np.unique(mat):
        sel = np.nonzero(mat == mi)[0]
        albedo[sel], spec[sel] = shade_albedo(geom.materials[mi], uv[sel], p[sel], inst[sel], fp[sel])
    # which sample of its pixel each hit is (0 .. s*s-1)
    sub_grid = (np.arange(camera.height * s) % s)[:, None] * s + (np.arange(camera.width * s) % s)[None, :]
    sub = sub_grid.reshape(-1)[idx]
    # sun with a cast shadow (samples spread over the sun's disc)
    sun_dirs = _sun_jitter(s, light.sun.direction, light.sun_radius_deg).astype(np.float32)[sub]
    cos_sun = np.clip((ns * sun_dirs).sum(1), 0, None) * ((ng * sun_dirs).sum(1) > 0)
    start = p + ng * (2e-3 + 2e-4 * t_hit)[:, None]
    lit = np.nonzero(cos_sun > 0)[0]
    vis = np.zeros(len(idx), np.float32)
    vis[lit] = ~geom.occluded(start[lit], sun_dirs[lit])
    # ambient occlusion, once per pixel at its centre ray with a fixed normal-aligned set of directions:
    # a smooth function of the surface point, so every view sees the same shading
    ao = np.ones(len(idx), np.float32)
    if ao_rays > 0:
        ao_pix = ambient_occlusion(geom, camera, pose, ao_rays)
        col, row = idx % (camera.width * s), idx // (camera.width * s)
        ao = ao_pix[(row // s) * camera.width + col // s]
    sky_up = np.array([0.62, 0.72, 0.95], np.float32) * light.sky_intensity
    bounce = np.array([0.30, 0.27, 0.22], np.float32) * light.sky_intensity * 0.6
    nz = ns[:, 2]
    irr = (
        (light.sun_intensity * cos_sun * vis)[:, None] * light.sun.color.astype(np.float32)
        + (ao * (0.55 + 0.45 * nz))[:, None] * sky_up
        + (ao * (0.5 - 0.5 * nz))[:, None] * bounce
    )
    rad = albedo * irr
    # glossy surfaces reflect the sky (windows, car paint)
    g = np.nonzero(spec > 0)[0]
    if len(g):
        dg, ng_ = dh[g], ns[g]
        cosv = -(dg * ng_).sum(1, keepdims=True)
        r = dg + 2 * cosv * ng_
        fres = spec[g] * (0.35 + 0.65 * (1 - np.clip(cosv[:, 0], 0, 1)) ** 5)
        rad[g] += (fres * (0.4 + 0.6 * ao[g]))[:, None] * sky_radiance(r, light.sun) * 0.8
    out[idx] = rad
    img = out.reshape(camera.height, s, camera.width, s, 3).mean((1, 3))
    return img.astype(np.float32)


def develop(
    radiance: np.ndarray, photo: Photometric, rng: np.random.Generator, base_exposure: float = 0.75
) -> np.ndarray:
    """Camera response: linear radiance [H, W, 3] -> uint8 sRGB [H, W, 3] (exposure, WB, vignetting,
    tone curve, noise)."""
    h, w, _ = radiance.shape
    x = radiance * np.float32(base_exposure * 2.0**photo.exposure_stops)
    x = x * np.asarray(photo.white_balance, np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx + 0.5 - w / 2) ** 2 + (yy + 0.5 - h / 2) ** 2) / (0.25 * (w * w + h * h))
    x = x * (1 - photo.vignetting * r2)[..., None].astype(np.float32)
    y = tone_map(x)
    if photo.noise > 0:
        sigma = photo.noise * (0.002 + 0.006 * np.sqrt(np.clip(y, 0, 1)))
        y = y + sigma * rng.standard_normal(y.shape).astype(np.float32)
    return np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)
