"""Generate a benchmark world folder: images of both captures, masks, meshes, gt.json, a contact sheet.

Layout of the folder and the gt.json format: bench/README.md.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reconstruction.cameras import Camera, matrix_to_quat
from reconstruction.errors import IDUError

from .capture import after_views, before_views, nearest_view
from .config import GENERATOR_VERSION, WORLD_PRESETS, WorldConfig
from .layout import PLAZA_Z, SceneObject, World, build_world, person_joints_world
from .render import SKY_ID, Geometry, Lighting, Photometric, develop, render_radiance

log = logging.getLogger(__name__)

NOVEL_DISTANCE_M = 1.5
NOVEL_ANGLE_DEG = 25.0


def _r(x, nd: int = 6):
    """Round floats (recursively) so that gt.json stays readable."""
    if isinstance(x, dict):
        return {k: _r(v, nd) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_r(v, nd) for v in x]
    if isinstance(x, np.ndarray):
        return _r(x.tolist(), nd)
    if isinstance(x, float | np.floating):
        return round(float(x), nd)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _box_json(o: SceneObject) -> dict[str, Any]:
    return {
        "center": _r(o.box_center),
        "size": _r(o.box_size),
        "rotation_wxyz": _r(matrix_to_quat(o.box_rotation)),
    }


def _write_mesh(path: Path, o: SceneObject | list[SceneObject]) -> None:
    import open3d as o3d

    objs = o if isinstance(o, list) else [o]
    verts, faces, n = [], [], 0
    for obj in objs:
        for p in obj.parts:
            verts.append(p.vertices)
            faces.append(p.faces + n)
            n += len(p.vertices)
    m = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.concatenate(verts)), o3d.utility.Vector3iVector(np.concatenate(faces))
    )
    if not o3d.io.write_triangle_mesh(str(path), m, write_ascii=False, compressed=False):
        raise IDUError(f"{path}: could not write the mesh")


def _photometric_after(rng: np.random.Generator, noise: float) -> Photometric:
    stops = float(rng.uniform(0.35, 1.0)) * (1 if rng.random() < 0.5 else -1)
    temp, tint = float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1))
    wb = (1.0 + 0.14 * temp, 1.0 + 0.04 * tint, 1.0 - 0.14 * temp)
    return Photometric(stops, wb, float(rng.uniform(0.15, 0.4)), noise)


def _photometric_before(rng: np.random.Generator, noise: float) -> Photometric:
    stops = float(np.clip(rng.normal(0, 0.08), -0.2, 0.2))
    wb = tuple(float(1 + rng.normal(0, 0.01)) for _ in range(3))
    return Photometric(stops, wb, 0.25, noise)


def _save_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, optimize=False, compress_level=6)


def _prepare_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise IDUError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not (out / "gt.json").exists():
        raise IDUError(f"{out}: folder is not empty and holds no world (gt.json); pick another --out")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("before/images", "after/images", "masks", "meshes"):
        (tmp / sub).mkdir(parents=True)
    return tmp


def _commit(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def generate_world(seed: int, out: Path, size: str = "small", config: WorldConfig | None = None) -> Path:
    """Generate the world of ``seed`` into ``out`` (replacing a world already there) and return ``out``.

    Args:
        seed: any int; the same seed and config give byte-identical images and gt.json.
        out: the world folder to write (its parent must exist or be creatable).
        size: a preset of ``WORLD_PRESETS`` ("small" or "medium"); ignored when ``config`` is given.
        config: a full config (e.g. a reduced one for tests).
    Returns:
        ``out``, holding ``before/images``, ``after/images``, ``masks``, ``meshes``, ``gt.json``,
        ``contact_sheet.png`` and ``timing.json`` (the only file that differs between runs).

    Example::

        world = generate_world(0, Path("worlds/s0"), "small")
        gt = json.loads((world / "gt.json").read_text())
    """
    if config is None:
        if size not in WORLD_PRESETS:
            raise IDUError(f"unknown world size {size!r} (choose from {', '.join(WORLD_PRESETS)})")
        config = WORLD_PRESETS[size]
    cfg = config
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    t_all = t = time.perf_counter()
    tmp = _prepare_out(out)
    try:
        world = build_world(seed, with_person=cfg.person, clothes=cfg.clothes)
        geo = _geometries(world, cfg)
        timing["build_world"] = time.perf_counter() - t
        gt = _capture(
            world, geo, cfg, tmp, timing, seed, size if config is WORLD_PRESETS.get(size) else "custom"
        )
        t = time.perf_counter()
        (tmp / "gt.json").write_text(json.dumps(gt, indent=1) + "\n")
        contact_sheet(tmp, gt, tmp / "contact_sheet.png", cfg.thumb_width)
        timing["write"] = time.perf_counter() - t
        timing["total"] = time.perf_counter() - t_all
        (tmp / "timing.json").write_text(
            json.dumps({k: round(v, 3) for k, v in timing.items()}, indent=1) + "\n"
        )
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("world seed %d (%s) written to %s in %.1f s", seed, size, out, timing["total"])
    return out


def _geometries(world: World, cfg: WorldConfig) -> dict[str, Geometry]:
    before = Geometry(world.objects("before"))
    return {"before": before, "after": Geometry(world.objects("after")) if cfg.changes else before}


def _num_workers(cfg: WorldConfig, num_jobs: int) -> int:
    if cfg.workers > 0:
        return min(cfg.workers, num_jobs)
    # auto: worker processes pay ~5 s each to start (imports, anny, the world): only for long renders
    cost = num_jobs * cfg.width * cfg.height * cfg.supersample**2
    return max(1, min(os.cpu_count() or 1, 4, num_jobs)) if cost > 40 * 640 * 480 * 4 else 1


def _render_jobs(
    world: World, geo: dict[str, Geometry], cfg: WorldConfig, seed: int, jobs, out: Path
) -> None:
    """Render and save views: jobs are (capture, index, cam_from_world Pose, Photometric)."""
    f = cfg.focal * cfg.width
    camera = Camera.pinhole(f, f, cfg.width / 2, cfg.height / 2, cfg.width, cfg.height)
    sun = {"before": world.sun_before, "after": world.sun_after}
    for capture, i, pose, photo in jobs:
        rad = render_radiance(
            geo[capture], camera, pose, Lighting(sun[capture]), cfg.supersample, cfg.ao_rays
        )
        img = develop(rad, photo, np.random.default_rng([int(seed), 0 if capture == "before" else 1, i]))
        _save_png(out / capture / "images" / f"{capture}_{i:03d}.png", img)


def _render_worker(args) -> None:
    """A worker process: rebuild the world from its seed (deterministic) and render its share of views."""
    import torch

    torch.set_num_threads(1)
    seed, cfg, jobs, out = args
    world = build_world(seed, with_person=cfg.person, clothes=cfg.clothes)
    _render_jobs(world, _geometries(world, cfg), cfg, seed, jobs, Path(out))


def _capture(world: World, geo: dict[str, Geometry], cfg: WorldConfig, out: Path, timing, seed, size) -> dict:
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0xCA7]).spawn(4)]
    r_path, r_after, r_photo, r_noise = rngs
    W, H = cfg.width, cfg.height
    f = cfg.focal * W
    camera = Camera.pinhole(f, f, W / 2, H / 2, W, H)
    changed = world.changes if cfg.changes else []
    ids = {
        w: {c.id: g.object_ids.index(c.id) for c in changed if c.id in g.object_ids} for w, g in geo.items()
    }

    t = time.perf_counter()
    bviews = before_views(world, geo["before"], camera, cfg.num_before, cfg.elevated_fraction, r_path)
    # planned on the changed place in any case: a world without changes has the same after-poses
    plan = geo["after"] if cfg.changes else Geometry(world.objects("after"))
    aviews = after_views(world, geo["before"], plan, camera, cfg.num_after, r_after, cfg.after_candidates)
    timing["plan_views"] = time.perf_counter() - t

    # render every view (in worker processes when asked: each rebuilds the same world from the seed)
    t = time.perf_counter()
    photos_b = [_photometric_before(r_photo, cfg.noise) for _ in bviews]
    photos_a = [_photometric_after(r_photo, cfg.noise) for _ in aviews]
    jobs = [("before", i, v.pose, photos_b[i]) for i, v in enumerate(bviews)]
    jobs += [("after", i, v.pose, photos_a[i]) for i, v in enumerate(aviews)]
    workers = _num_workers(cfg, len(jobs))
    if workers <= 1:
        _render_jobs(world, geo, cfg, seed, jobs, out)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        chunks = [jobs[k::workers] for k in range(workers)]
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            list(ex.map(_render_worker, [(seed, cfg, c, str(out)) for c in chunks]))
    timing["render"] = time.perf_counter() - t
    timing["render_workers"] = workers

    t = time.perf_counter()
    before_entries = []
    for i, v in enumerate(bviews):
        name = f"before_{i:03d}.png"
        idm, _ = geo["before"].id_map(camera, v.pose)
        before_entries.append(
            {
                "name": name,
                "path": f"before/images/{name}",
                "cam_from_world": _r(v.pose.to_json()),
                "kind": v.kind,
                "photometric": photos_b[i].to_json(),
                "sky_fraction": _r(float((idm == SKY_ID).mean())),
                "visible_pixels": {
                    cid: int((idm == k).sum()) for cid, k in ids["before"].items() if (idm == k).any()
                },
            }
        )
    after_entries = []
    bposes = [v.pose for v in bviews]
    for i, v in enumerate(aviews):
        name = f"after_{i:03d}.png"
        stem = name.rsplit(".", 1)[0]
        (out / "masks" / stem).mkdir(parents=True, exist_ok=True)
        photo = photos_a[i]
        id_after, _ = geo["after"].id_map(camera, v.pose)
        id_before, _ = geo["before"].id_map(camera, v.pose)
        objects = {}
        for c in changed:
            entry = {}
            if c.after is not None:
                m = id_after == ids["after"][c.id]
                entry["mask"] = f"masks/{stem}/{c.id}.png"
                entry["pixels"] = int(m.sum())
                _save_png(out / entry["mask"], (m * 255).astype(np.uint8))
            if c.before is not None:
                m = id_before == ids["before"][c.id]
                key = "mask" if c.after is None else "mask_before"
                entry[key] = f"masks/{stem}/{c.id}{'' if c.after is None else '__before'}.png"
                entry["pixels" if c.after is None else "pixels_before"] = int(m.sum())
                _save_png(out / entry[key], (m * 255).astype(np.uint8))
            objects[c.id] = entry
        k, dist, ang = nearest_view(v.pose, bposes)
        after_entries.append(
            {
                "name": name,
                "path": f"after/images/{name}",
                "cam_from_world": _r(v.pose.to_json()),
                "kind": v.kind,
                "target": v.target,
                "novel_pose": bool(dist > NOVEL_DISTANCE_M or ang > NOVEL_ANGLE_DEG),
                "nearest_before": {
                    "name": before_entries[k]["name"],
                    "distance_m": _r(dist),
                    "angle_deg": _r(ang),
                },
                "photometric": photo.to_json(),
                "sky_fraction": _r(float((id_after == SKY_ID).mean())),
                "objects": objects,
            }
        )
    timing["masks"] = time.perf_counter() - t

    t = time.perf_counter()
    changes = []
    for c in changed:
        obj = c.after if c.after is not None else c.before
        _write_mesh(out / "meshes" / f"{c.id}.ply", obj)
        d = {
            "id": c.id,
            "kind": c.kind,
            "category": c.category,
            "box": _box_json(obj),
            "mesh": f"meshes/{c.id}.ply",
            "num_faces": obj.num_faces,
        }
        if c.kind == "moved":
            _write_mesh(out / "meshes" / f"{c.id}__before.ply", c.before)
            d["box_before"] = _box_json(c.before)
            d["mesh_before"] = f"meshes/{c.id}__before.ply"
        key = "pixels_before" if c.kind == "moved" else "pixels"
        d["visible_in_after"] = [e["name"] for e in after_entries if e["objects"][c.id].get("pixels", 0) > 0]
        if c.before is not None:
            d["visible_in_before"] = [e["name"] for e in before_entries if c.id in e["visible_pixels"]]
            d["visible_in_after_before_scene"] = [
                e["name"] for e in after_entries if e["objects"][c.id].get(key, 0) > 0
            ]
        changes.append(d)
    _write_mesh(out / "meshes" / "scene_before.ply", world.objects("before"))
    _write_mesh(out / "meshes" / "scene_after.ply", world.objects("after" if cfg.changes else "before"))
    timing["write_meshes"] = time.perf_counter() - t

    person = None
    joints = person_joints_world(world) if cfg.changes else None
    if joints is not None:
        p = world.person
        obj = next(c.after for c in world.changes if c.id == world.person_change)
        person = {
            "object_id": world.person_change,
            "model": p.model,
            "height_m": _r(p.height),
            "phenotype": p.phenotype,
            "pose": p.pose,
            "clothing": p.clothing,
            "yaw_deg": _r(float(np.degrees(obj.meta["yaw"]))),
            "keypoints": {
                "format": "coco17+feet (anny KeypointsRegressor.coco)",
                "names": p.keypoint_names,
                "xyz": _r(joints["keypoints"]),
            },
            "bones": {"names": p.bone_names, "xyz": _r(joints["bone_heads"])},
        }
    hx, hy = world.half
    sun = {
        w: {
            "direction": _r(s.direction),
            "azimuth_deg": _r(s.azimuth_deg),
            "elevation_deg": _r(s.elevation_deg),
            "color": _r(s.color),
        }
        for w, s in (("before", world.sun_before), ("after", world.sun_after))
    }
    return {
        "format": "idu-bench-world",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "size": size,
        "config": cfg.to_json(),
        "frame": {
            "up": [0, 0, 1],
            "units": "metres",
            "camera_axes": "OpenCV: x right, y down, z forward",
            "pose": "cam_from_world: x_cam = R(rotation_wxyz) @ x_world + translation",
            "pixels": "COLMAP: the centre of the top-left pixel is (0.5, 0.5); masks sample pixel centres",
        },
        "world": {
            "kind": "courtyard",
            "courtyard_half_extent": _r([hx, hy]),
            "plaza": _r(list(world.plaza)),
            "plaza_z": PLAZA_Z,
            "street_y": _r(list(world.road)),
            "num_faces": {w: int(len(g.faces)) for w, g in geo.items()},
        },
        "lighting": {"before": {"sun": sun["before"]}, "after": {"sun": sun["after"]}},
        "cameras": {"before": camera.to_json(), "after": camera.to_json()},
        "before": {"camera": "before", "images": before_entries},
        "after": {"camera": "after", "images": after_entries},
        "changes": changes,
        "person": person,
        "scene_meshes": {"before": "meshes/scene_before.ply", "after": "meshes/scene_after.ply"},
    }


_COLORS = {"added": (40, 230, 60), "removed": (255, 60, 50), "moved": (255, 170, 0)}


def contact_sheet(world_dir: Path, gt: dict, out: Path, thumb_width: int = 160) -> Path:
    """A grid of before thumbnails, then after thumbnails with the changes' mask outlines and labels
    (added green, removed red, moved orange; a moved object's old place dashed in the same colour)."""
    world_dir = Path(world_dir)
    cam = gt["cameras"]["before"]
    tw = int(thumb_width)
    th = max(1, round(tw * cam["height"] / cam["width"]))
    cols = 10 if len(gt["before"]["images"]) > 40 else 8
    font = ImageFont.load_default(size=max(9, tw // 14))
    title = ImageFont.load_default(size=16)

    def thumb(path: str) -> Image.Image:
        return Image.open(world_dir / path).convert("RGB").resize((tw, th), Image.Resampling.LANCZOS)

    def outline(mask_path: str) -> np.ndarray:
        m = np.asarray(Image.open(world_dir / mask_path).resize((tw, th), Image.Resampling.BOX)) > 60
        grown = np.zeros_like(m)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                grown |= np.roll(np.roll(m, dy, 0), dx, 1)
        return grown & ~m

    kinds = {c["id"]: c["kind"] for c in gt["changes"]}
    rows_b = -(-len(gt["before"]["images"]) // cols)
    rows_a = -(-len(gt["after"]["images"]) // cols)
    pad, head = 4, 24
    width = cols * (tw + pad) + pad
    height = 2 * head + (rows_b + rows_a) * (th + pad) + pad
    sheet = Image.new("RGB", (width, height), (24, 24, 28))
    d = ImageDraw.Draw(sheet)
    d.text(
        (pad, 4),
        f"seed {gt['seed']} ({gt['size']}): before, {len(gt['before']['images'])} views",
        font=title,
        fill=(230, 230, 230),
    )
    for i, im in enumerate(gt["before"]["images"]):
        x, y = pad + (i % cols) * (tw + pad), head + (i // cols) * (th + pad)
        sheet.paste(thumb(im["path"]), (x, y))
    y0 = head + rows_b * (th + pad)
    legend = "after: added green, removed red, moved orange (old place dashed)"
    d.text(
        (pad, y0 + 4),
        f"after, {len(gt['after']['images'])} views - {legend}",
        font=title,
        fill=(230, 230, 230),
    )
    y0 += head
    for i, im in enumerate(gt["after"]["images"]):
        t = np.asarray(thumb(im["path"])).copy()
        labels = []
        for oid, e in im["objects"].items():
            color = np.array(_COLORS[kinds[oid]], np.uint8)
            for key, dashed in (("mask", False), ("mask_before", True)):
                if key not in e or e.get("pixels" if key == "mask" else "pixels_before", 0) == 0:
                    continue
                ol = outline(e[key])
                if dashed:
                    yy, xx = np.mgrid[0:th, 0:tw]
                    ol &= ((xx + yy) // 3) % 2 == 0
                t[ol] = color
                if not dashed and ol.any():
                    ys, xs = np.nonzero(ol)
                    labels.append(
                        (oid.split("_", 1)[-1], int(xs.min()), max(0, int(ys.min()) - 11), tuple(color))
                    )
        img = Image.fromarray(t)
        di = ImageDraw.Draw(img)
        for text, lx, ly, color in labels:
            di.text((lx, ly), text, font=font, fill=color, stroke_width=1, stroke_fill=(0, 0, 0))
        di.text(
            (2, th - 12), im["name"] + (" *" if im["novel_pose"] else ""), font=font, fill=(255, 255, 255)
        )
        x, y = pad + (i % cols) * (tw + pad), y0 + (i // cols) * (th + pad)
        sheet.paste(img, (x, y))
    sheet.save(out)
    return out
