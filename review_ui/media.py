"""Pictures and 3D data the review pages show, made from what an update run proposed.

For a change and each new photo that sees it:

    after      the photo, the change's mask outlined (green added, orange moved, red where it was)
    before     the scene version the change was detected against, rendered at the photo's pose, same outline
    composite  the proposed asset rendered at that pose with its placement, composited into the photo
    crop       the change's crop from the detect stage

and for the 3D view, the scene's Gaussians around the change plus the asset's (``viewer_splats``). Versions
get before/after thumbnails (``version_thumbnail``). Everything is rendered with reconstruction.render and
cached as JPEG under the run's work folder (``<detect>/../review``) or ``STORE/.review/thumbs``; nothing
is written into a scene version. No Prefect here: the pages pass in the proposal they read.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np

from reconstruction.errors import IDUError

KINDS = ("after", "before", "composite", "crop")
MAX_SIDE = 640  # longest side of the review pictures (pixels)
THUMB_SIDE = 240
VIEWER_MAX_SPLATS = 6000  # scene Gaussians around a change sent to the 3D view
OUTLINE = {"added": (40, 220, 40), "moved": (255, 160, 0), "removed": (230, 40, 40), "before": (230, 40, 40)}

_lock = threading.Lock()  # renders: one at a time (CPU rasterizer; the machine has few cores)


class MediaError(IDUError):
    """A picture that cannot be made (unknown photo, missing file)."""


def photos_of(proposal: dict[str, Any]) -> list[str]:
    """The new photos that see the change, in the order of the detection's masks."""
    c = proposal["change"]
    names = list(c.get("masks") or {})
    names += [n for n in (c.get("masks_before") or {}) if n not in names]
    return names


def _inside(folder: Path, rel: str) -> Path:
    """``folder/rel``, refusing anything that leaves ``folder`` (``..``, absolute paths, links out)."""
    folder = folder.resolve()
    f = (folder / rel).resolve()
    if folder not in f.parents:
        raise MediaError(f"{rel}: outside {folder}")
    return f


def asset_preview(proposal: dict[str, Any]) -> Path:
    """The proposed asset's preview from 4 sides (``<id>_previews/sides.jpg`` beside its PLY)."""
    a = proposal.get("asset") or {}
    rel = (a.get("previews") or {}).get("sides")
    if not rel or not a.get("path"):
        raise MediaError(f"change {proposal['change']['id']}: its asset has no preview")
    return _inside(Path(a["path"]).parent, rel)


def _registration(proposal: dict[str, Any]) -> dict[str, dict[str, Any]]:
    folder = Path(proposal["detect_folder"]).parent
    doc = json.loads((folder / "registration.json").read_text())
    return {r["name"]: r for r in doc["images"] if r.get("status") == "registered"}


@functools.lru_cache(maxsize=2)
def _splats(scene_ref: str, version: int):
    from reconstruction.store import SceneStore

    return SceneStore.from_ref(scene_ref).version(version).load_splats().to_numpy()


@functools.lru_cache(maxsize=8)
def _asset(path: str):
    from reconstruction.formats import read_splats

    return read_splats(path).to_numpy()


def _placed_asset(proposal: dict[str, Any], placement: dict[str, Any] | None = None):
    from reconstruction.splat_ops import transform

    asset, p = proposal.get("asset"), placement or proposal.get("placement")
    if not asset or not p:
        return None
    q = np.asarray(p.get("rotation_wxyz", [1, 0, 0, 0]), float)
    return transform(_asset(asset["path"]), q / np.linalg.norm(q), p.get("translation"), p.get("scale", 1.0))


def _jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _mask(folder: Path, rel: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    m = Image.open(_inside(folder, rel)).convert("L").resize(size, Image.Resampling.NEAREST)
    return np.asarray(m) > 0


def _grow(m: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)-square."""
    p = np.pad(m, r)
    H, W = m.shape
    out = np.zeros_like(m)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= p[dy : dy + H, dx : dx + W]
    return out


def _outline(m: np.ndarray, width: int = 2) -> np.ndarray:
    """The mask's border band, ``width`` pixels outside and one inside."""
    return _grow(m, width) & _grow(~m, 1)


def _render(splats, entry: dict[str, Any], size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """RGB [H, W, 3] float and alpha [H, W] of ``splats`` at a registered photo's pose, ``size`` = (W, H)."""
    import torch

    from reconstruction.cameras import Camera, Pose
    from reconstruction.render import render

    cam = Camera.from_json(entry["camera"]).undistorted()
    cam = cam.scaled(size[0] / cam.width)
    with _lock, torch.no_grad():
        out = render(splats, cam, Pose.from_json(entry["cam_from_world"]), background=(0, 0, 0))
    return out.rgb.clamp(0, 1).cpu().numpy(), out.alpha.cpu().numpy()


def _cache_dir(proposal: dict[str, Any], key: str) -> Path:
    return Path(proposal["detect_folder"]).parent / "review" / key


def change_picture(proposal: dict[str, Any], key: str, photo: str, kind: str) -> Path:
    """A JPEG (cached) of ``kind`` (KINDS) for ``photo``, one of the photos that see the change."""
    from PIL import Image

    from reconstruction.registration import load_rgb

    if kind not in KINDS:
        raise MediaError(f"{kind}: not one of {', '.join(KINDS)}")
    if photo not in photos_of(proposal):
        raise MediaError(f"{photo}: not a photo of change {proposal['change']['id']}")
    c, folder = proposal["change"], Path(proposal["detect_folder"])
    if kind == "crop":
        if photo not in (c.get("crops") or {}):
            raise MediaError(f"{photo}: no crop of change {c['id']}")
        return _inside(folder, c["crops"][photo])
    placement = json.dumps(proposal.get("placement"), sort_keys=True)
    tag = hashlib.sha256(f"{photo}|{kind}|{placement}".encode()).hexdigest()[:16]
    out = _cache_dir(proposal, key) / f"{tag}.jpg"
    if out.is_file():
        return out
    img = load_rgb(_inside(Path(proposal["photos"]), photo), MAX_SIDE)
    H, W = img.shape[:2]
    entry = _registration(proposal).get(photo)
    if entry is None:
        raise MediaError(f"{photo}: not registered, nothing to render")
    if kind == "before":
        rgb, _ = _render(_splats(proposal["scene"], int(proposal["base"])), entry, (W, H))
        img = (rgb * 255).astype(np.uint8)
    elif kind == "composite":
        asset = _placed_asset(proposal)
        if asset is not None:
            rgb, alpha = _render(asset, entry, (W, H))
            img = (rgb * 255 + (1 - alpha[..., None]) * img).clip(0, 255).astype(np.uint8)
    img = img.copy()
    outlines = (("masks", OUTLINE.get(c["kind"], OUTLINE["added"])), ("masks_before", OUTLINE["before"]))
    for key_masks, colour in outlines:
        rel = (c.get(key_masks) or {}).get(photo)
        if rel:
            img[_outline(_mask(folder, rel, (W, H)))] = colour
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{threading.get_ident()}.tmp")
    Image.fromarray(img).save(tmp, "JPEG", quality=85)
    tmp.replace(out)
    return out


def prepare(proposal: dict[str, Any], key: str) -> int:
    """Render (and cache) every picture of a change's page; returns how many. The update flow calls it
    before it asks for the review, so that reviewers never wait for a render."""
    n = 0
    for photo in photos_of(proposal):
        for kind in ("before", "after", "composite"):
            change_picture(proposal, key, photo, kind)
            n += 1
    return n


def _rows(sp) -> np.ndarray:
    """[N, 14] float32: x y z, scale x y z (linear), quat w x y z, r g b (0..1), opacity (0..1)."""
    from reconstruction.sh import C0 as SH_C0

    q = sp.quats / np.linalg.norm(sp.quats, axis=1, keepdims=True)
    rgb = np.clip(0.5 + SH_C0 * sp.sh0, 0, 1)
    a = 1 / (1 + np.exp(-sp.opacities))
    return np.concatenate([sp.means, np.exp(sp.scales), q, rgb, a[:, None]], 1).astype(np.float32)


def viewer_splats(proposal: dict[str, Any]) -> bytes:
    """The 3D view's data: a little-endian header (uint32 scene rows, uint32 asset rows, 3 float32 box
    centre, float32 box diagonal, 3 float32 up) then scene rows and asset rows (``_rows``). Scene rows:
    the Gaussians nearest the change (at most VIEWER_MAX_SPLATS); asset rows in the asset's own frame
    (the page applies the placement, so that moving it costs nothing)."""
    from reconstruction.cameras import Pose
    from reconstruction.changes import up_direction

    c = proposal["change"]
    centre = np.asarray(c["box"]["center"], np.float64)
    diag = float(np.linalg.norm(c["box"]["size"])) or 1.0
    sp = _splats(proposal["scene"], int(proposal["base"]))
    d = np.linalg.norm(sp.means - centre, axis=1)
    keep = np.argsort(d)[:VIEWER_MAX_SPLATS]
    near = d[keep] < 6 * diag
    if near.sum() > 200:  # a sparse neighbourhood keeps the nearest ones, however far
        keep = keep[near]
    scene_rows = _rows(_subset(sp, np.sort(keep)))
    asset = proposal.get("asset")
    asset_rows = _rows(_asset(asset["path"])) if asset else np.zeros((0, 14), np.float32)
    poses = [Pose.from_json(e["cam_from_world"]) for e in _registration(proposal).values()]
    up = up_direction(poses) if poses else np.array([0.0, -1.0, 0.0])
    head = struct.pack("<II3ff3f", len(scene_rows), len(asset_rows), *centre, diag, *up)
    return head + scene_rows.tobytes() + asset_rows.tobytes()


def _subset(sp, idx: np.ndarray):
    from reconstruction.splats import Splats

    return Splats.from_dict({k: v[idx] for k, v in sp.as_dict().items()})


def _thumb_pose(scene, number: int):
    """The camera of a version's thumbnails: the first photo the version added, else its first image."""
    v = scene.version(number)
    added = v.meta.get("photos") or []
    images = {im.entry.name: im.entry for im in v.images()}
    for name in added:
        if name in images:
            return images[name]
    return next(iter(images.values()), None)


def version_thumbnail(store: str | Path, name: str, number: int, side: str = "after") -> Path:
    """A small render of version ``number`` (``after``) or of its parent (``before``) from the camera of
    ``_thumb_pose``; cached under ``STORE/.review/thumbs``."""
    from PIL import Image

    from reconstruction.store import SceneStore

    if side not in ("before", "after"):
        raise MediaError(f"{side}: a thumbnail is 'before' or 'after'")
    scene = SceneStore(store).scene(name)
    v = scene.version(number)
    shown = v.meta.get("parent") if side == "before" else number
    out = Path(store) / ".review" / "thumbs" / name / f"v{number}-{side}.jpg"
    if out.is_file():
        return out
    entry = _thumb_pose(scene, number)
    if shown is None or entry is None:
        img = np.full((THUMB_SIDE * 3 // 4, THUMB_SIDE, 3), 235, np.uint8)
    else:
        cam = entry.camera
        s = THUMB_SIDE / max(cam.width, cam.height)
        size = (max(1, round(cam.width * s)), max(1, round(cam.height * s)))
        rgb, _ = _render(_splats(scene.ref, int(shown)), entry.to_json(), size)
        img = (rgb * 255).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{threading.get_ident()}.tmp")
    Image.fromarray(img).save(tmp, "JPEG", quality=85)
    tmp.replace(out)
    return out


__all__ = [
    "KINDS",
    "MediaError",
    "asset_preview",
    "change_picture",
    "photos_of",
    "prepare",
    "version_thumbnail",
    "viewer_splats",
]
