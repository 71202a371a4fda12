"""Procedural surface materials: albedo (linear RGB) and a sky-reflection weight per surface point.

A material is a function ``fn(uv, p, inst, fp) -> (albedo [N, 3] float32, spec [N] float32)`` of the surface
coordinates ``uv`` [N, 2] (metres along the surface unless the material says otherwise), the world position
``p`` [N, 3], a per-part integer ``inst`` [N] that varies colours, layouts and markings between objects, and
the sample's footprint on the surface ``fp`` [N] (metres): patterns finer than about two footprints fade to
their mean (mip-mapping by hand), so distant bricks and pavers do not alias into moiré.

Textures are multi-octave and full of unique, corner-rich detail (stains, joints, planks, stencilled text,
window frames, posters) so that SIFT finds features that match across views; every value is a pure
function of its inputs, so all views agree.

``MATERIALS`` is the registry: name -> function. Geometry refers to materials by name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from .noise import cells, edge_distance, fbm, hash01, hash_u32, value_noise

MaterialFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
MATERIALS: dict[str, MaterialFn] = {}


def material(name: str):
    def deco(fn: MaterialFn) -> MaterialFn:
        MATERIALS[name] = fn
        return fn

    return deco


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _pick(palette: list[tuple[float, float, float]], h: np.ndarray) -> np.ndarray:
    """One palette colour per element, chosen by the uint32 hash ``h``: [N, 3] float32."""
    pal = _f32(palette)
    return pal[(np.asarray(h, np.uint32) % np.uint32(len(pal))).astype(np.int64)]


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = _f32(t)
    if t.ndim == 1 and np.ndim(a) == 2:
        t = t[:, None]
    return a + (b - a) * t


def _smooth(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1).astype(np.float32)
    return t * t * (3 - 2 * t)


def _fade(period: float, fp: np.ndarray) -> np.ndarray:
    """Contrast kept by a pattern of this period (metres) at footprint fp: 1 when the period spans 3+
    footprints (pixels), 0 at 1.5 or fewer."""
    return np.clip((np.float32(period) / fp - 1.5) / 1.5, 0.0, 1.0).astype(np.float32)


def _toward(x: np.ndarray, mean: float, keep: np.ndarray) -> np.ndarray:
    """x pulled to its mean where the pattern cannot be resolved (keep in [0, 1])."""
    return mean + (x - mean) * keep


def _grain(uv, inst, seed: int, scale: float, octaves: int, fp) -> np.ndarray:
    """fbm in [0, 1] with a per-instance offset (so two walls of one material differ)."""
    off = hash01(inst, 17, seed) * 1000.0
    return fbm(uv[:, 0] + off, uv[:, 1] - off, seed, scale, octaves, fp=fp)


def _spec(n: int, value: float = 0.0) -> np.ndarray:
    return np.full(n, value, np.float32)


def _spots(uv, inst, seed: int, fp, scale: float = 0.35, cover: float = 0.62) -> np.ndarray:
    """Irregular blotches (stains, lichen, gum, patches, chips) in [0, 1]: unique, corner-rich shapes at
    two sizes that make surfaces distinctive for feature matching."""
    off = hash01(inst, 19, seed) * 500.0
    n1 = fbm(uv[:, 0] + off, uv[:, 1], seed, scale, 3, fp=fp)
    n2 = fbm(uv[:, 0], uv[:, 1] - off, seed + 1, scale * 0.3, 2, fp=fp)
    big = _smooth(cover, cover + 0.03, n1)
    small = _smooth(cover + 0.04, cover + 0.07, n2) * _fade(scale * 0.3, fp)
    return np.maximum(big, 0.8 * small)


# -- text decals -------------------------------------------------------------------------------
_WORDS = ["CAFE", "BAKERY", "PHARMACY", "NEWS", "BAR 24", "HOTEL", "TAXI", "MARKET", "BOOKS", "FLORIST"]
_WORDS += ["GARAGE", "DELI", "OPTICS", "PIZZA", "TOOLS", "KEBAB", "SALON", "POST", "BANK", "LAUNDRY"]
_STENCILS = ["FRAGILE", "THIS SIDE UP", "LOT 7", "NO HOOKS", "KEEP DRY", "HEAVY", "SUPPLY", "AMMO 5.56"]


@functools.lru_cache(maxsize=256)
def _text_image(text: str, px: int = 40) -> np.ndarray:
    """A white-on-black float32 mask [h, w] of ``text`` in Pillow's built-in font (cached)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=px)
    lines = text.split("\n")
    w = max(int(font.getlength(line)) for line in lines) + px // 2
    h = int(px * 1.25) * len(lines) + px // 4
    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    for i, line in enumerate(lines):
        d.text((px // 4, px // 8 + i * int(px * 1.25)), line, font=font, fill=255)
    return np.asarray(im, np.float32) / 255.0


def _sample_text(text: str, su: np.ndarray, sv: np.ndarray) -> np.ndarray:
    """Bilinearly sample a text mask at normalised coordinates (su right, sv up) in [0, 1]; 0 outside."""
    img = np.pad(_text_image(text), 1)
    h, w = img.shape
    x = np.clip(su * (w - 2) + 0.5, 0, w - 1.001)
    y = np.clip((1 - sv) * (h - 2) + 0.5, 0, h - 1.001)
    x0, y0 = x.astype(np.int64), y.astype(np.int64)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bot = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    inside = (su >= 0) & (su < 1) & (sv >= 0) & (sv < 1)
    return np.where(inside, top * (1 - fy) + bot * fy, 0.0).astype(np.float32)


def _decal(uv, inst, words: list[str], center, width: float, seed: int, fp) -> np.ndarray:
    """Per-instance text stencilled on a surface: [N] in [0, 1] coverage. ``center`` [N, 2] or (u, v)."""
    out = np.zeros(len(uv), np.float32)
    codes = hash_u32(inst, seed, 3)
    center = np.broadcast_to(_f32(center), uv.shape)
    for code in np.unique(codes):
        m = np.nonzero(codes == code)[0]
        c = int(code)
        text = words[c % len(words)]
        if c % 3 == 0:
            text += f"\n{(c >> 8) % 900 + 100}-{chr(65 + (c >> 4) % 26)}{(c >> 12) % 10}"
        img = _text_image(text)
        aspect = img.shape[0] / img.shape[1]
        su = (uv[m, 0] - center[m, 0]) / width + 0.5
        sv = (uv[m, 1] - center[m, 1]) / (width * aspect) + 0.5
        inside = ((su >= 0) & (su < 1) & (sv >= 0) & (sv < 1)).astype(np.float32)
        # strokes are about a 40th of the text's width: far away the text greys out instead of aliasing
        out[m] = _toward(_sample_text(text, su, sv), 0.25 * inside, _fade(width / 20, fp[m]))
    return out


# -- ground ------------------------------------------------------------------------------------
@material("pavers")
def pavers(uv, p, inst, fp):
    """Paved fields 5.4 m square (running bond, orientation and colour per field) framed by granite setts."""
    F, B = 5.4, 0.4
    fi, fj = np.floor(uv[:, 0] / F), np.floor(uv[:, 1] / F)
    fu, fv = uv[:, 0] - fi * F, uv[:, 1] - fj * F
    hf = hash_u32(fi.astype(np.int64), fj.astype(np.int64), 10 + (inst % 7))
    swap = (hf & np.uint32(1)).astype(bool)
    a = np.where(swap, uv[:, 1], uv[:, 0])
    b = np.where(swap, uv[:, 0], uv[:, 1])
    su, sv = 0.30, 0.15
    col, row, lu, lv = cells(a, b, su, sv, 0.5)
    field_col = _pick(
        [(0.34, 0.32, 0.30), (0.40, 0.35, 0.29), (0.38, 0.27, 0.22), (0.27, 0.27, 0.28)], hf >> 1
    )
    tone = _toward(0.7 + 0.55 * hash01(col, row, 12), 0.975, _fade(sv, fp))
    alb = field_col * tone[:, None]
    e = edge_distance(lu, lv, su, sv)
    joint_keep = _fade(sv / 2, fp)
    band = (fu < B) | (fv < B)
    if band.any():
        sc, sr, slu, slv = cells(uv[band, 0], uv[band, 1], 0.1, 0.1, 0.0)
        st = _toward(0.6 + 0.8 * hash01(sc, sr, 16), 1.0, _fade(0.1, fp[band]))
        alb[band] = _f32([0.17, 0.17, 0.19]) * st[:, None]
        e[band] = edge_distance(slu, slv, 0.1, 0.1)
        joint_keep[band] = _fade(0.05, fp[band])
    g = _grain(uv, inst, 13, 0.06, 2, fp)[:, None]
    stain = fbm(uv[:, 0], uv[:, 1], 14, 3.0, 3, fp=fp)
    alb = alb * (0.75 + 0.5 * g) * (0.65 + 0.55 * stain[:, None])
    joint = _toward(_smooth(0.004, 0.014, e), 0.85, joint_keep)[:, None]
    alb = alb * (0.7 + 0.3 * joint)
    # stains at two sizes: big ones (oil, water, shade of a tree long gone) stay recognisable from afar
    alb = alb * (1 - 0.45 * _spots(uv, inst, 17, fp, 0.35, 0.64))[:, None]
    big = _smooth(0.64, 0.67, fbm(uv[:, 0], uv[:, 1], 18, 1.6, 4, fp=fp))
    alb = _mix(alb, alb * _f32([0.6, 0.57, 0.52]), 0.6 * big)
    moss = _smooth(0.68, 0.8, stain) * (1 - joint[:, 0])
    alb = _mix(alb, _f32([0.10, 0.13, 0.05]), 0.7 * moss)
    return alb.astype(np.float32), _spec(len(uv))


@material("manhole")
def manhole(uv, p, inst, fp):
    """A round cast-iron cover (0.8 m) in a square frame; uv normalised to [0, 1]."""
    fpn = fp / 0.8
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    r = np.hypot(x, y)
    g = fbm(uv[:, 0] * 4, uv[:, 1] * 4, 261, 0.2, 3, fp=fpn * 4)
    v = 0.10 + 0.08 * g
    ring = (np.abs(r - 0.44) < 0.02) | (np.abs(r - 0.30) < 0.012) | (np.abs(r - 0.16) < 0.012)
    studs = (r < 0.42) & (np.mod(np.floor(x * 22) + np.floor(y * 22), 2) == 0) & ~ring
    v = v * _toward(np.where(ring, 0.4, np.where(studs, 1.5, 1.0)), 1.0, _fade(0.09, fpn))
    v = np.where(r > 0.47, 0.22 + 0.1 * g, v)
    t = _decal(uv, inst, ["WATER", "GAS", "SEWER", "TELECOM"], (0.5, 0.5), 0.36, 262, fpn)
    v = v * (1 - 0.6 * t)
    rust = _smooth(0.55, 0.8, fbm(uv[:, 0], uv[:, 1], 263, 0.15, 3, fp=fpn))
    alb = np.stack([v, v, v], 1) * (1 - rust[:, None]) + _f32([0.28, 0.14, 0.06]) * rust[:, None]
    return alb.astype(np.float32), _spec(len(uv), 0.05)


@material("grate")
def grate(uv, p, inst, fp):
    """A drain grate (~0.5 m): slots across a metal frame; uv normalised to [0, 1]."""
    u, v = uv[:, 0], uv[:, 1]
    frame = (u < 0.08) | (u > 0.92) | (v < 0.1) | (v > 0.9)
    slot = (np.mod(u * 9, 1) > 0.35) & ~frame
    g = fbm(u * 3, v * 3, 271, 0.2, 3, fp=fp * 6)
    metal = 0.12 + 0.08 * g
    val = np.where(slot, 0.015, metal)
    val = np.where(frame, val, _toward(val, 0.35 * metal + 0.01, _fade(0.055, fp)))
    return np.stack([val, val, val * 1.05], 1).astype(np.float32), _spec(len(uv), 0.05)


@material("asphalt")
def asphalt(uv, p, inst, fp):
    g = _grain(uv, inst, 21, 0.05, 3, fp)
    big = fbm(uv[:, 0], uv[:, 1], 22, 4.0, 3, fp=fp)
    patch = _smooth(0.58, 0.6, fbm(uv[:, 0], uv[:, 1], 23, 2.5, 2, fp=fp))
    crack = _smooth(0.0, 0.015, np.abs(fbm(uv[:, 0], uv[:, 1], 24, 1.2, 4, fp=fp) - 0.5))
    crack = _toward(crack, 0.95, _fade(0.1, fp))
    v = (0.09 + 0.08 * g + 0.06 * big) * (1 - 0.3 * patch) * (0.4 + 0.6 * crack)
    v = v * (1 - 0.4 * _spots(uv, inst, 25, fp, 0.5, 0.64))
    alb = np.stack([v, v, v * 1.05], 1)
    return alb.astype(np.float32), _spec(len(uv), 0.02)


@material("paint")
def road_paint(uv, p, inst, fp):
    h = hash_u32(inst, 31, 31)
    base = _pick([(0.85, 0.85, 0.82), (0.85, 0.65, 0.12)], h)
    wear = _smooth(0.45, 0.7, fbm(uv[:, 0], uv[:, 1], 32, 0.3, 4, fp=fp))[:, None]
    alb = _mix(base, _f32([0.15, 0.15, 0.16]), 0.8 * wear)
    return alb.astype(np.float32), _spec(len(uv))


@material("grass")
def grass(uv, p, inst, fp):
    g = _grain(uv, inst, 41, 0.05, 4, fp)
    clump = fbm(uv[:, 0], uv[:, 1], 42, 0.6, 3, fp=fp)
    dry = _smooth(0.55, 0.75, fbm(uv[:, 0], uv[:, 1], 43, 2.0, 2, fp=fp))
    green = np.stack([0.10 + 0.10 * g, 0.22 + 0.18 * g, 0.05 + 0.05 * g], 1) * (0.6 + 0.8 * clump)[:, None]
    alb = _mix(green, _f32([0.35, 0.30, 0.16]) * (0.6 + 0.6 * g)[:, None], 0.7 * dry)
    return alb.astype(np.float32), _spec(len(uv))


@material("gravel")
def gravel(uv, p, inst, fp):
    col, row, lu, lv = cells(uv[:, 0], uv[:, 1], 0.035, 0.03, 0.5)
    keep = _fade(0.03, fp)
    stone = _toward(hash01(col, row, 51), 0.5, keep)
    g = _grain(uv, inst, 52, 0.5, 3, fp)
    e = _toward(_smooth(0.0, 0.008, edge_distance(lu, lv, 0.035, 0.03)), 0.7, keep)
    v = (0.25 + 0.35 * stone) * (0.5 + 0.5 * e) * (0.7 + 0.5 * g)
    alb = np.stack([v * 1.05, v, v * 0.88], 1)
    return alb.astype(np.float32), _spec(len(uv))


@material("soil")
def soil(uv, p, inst, fp):
    g = _grain(uv, inst, 55, 0.04, 4, fp)
    v = 0.12 + 0.14 * g
    alb = np.stack([v * 1.3, v, v * 0.7], 1)
    return alb.astype(np.float32), _spec(len(uv))


# -- buildings ---------------------------------------------------------------------------------
@material("brick")
def brick(uv, p, inst, fp):
    su, sv = 0.235, 0.075
    col, row, lu, lv = cells(uv[:, 0], uv[:, 1], su, sv, 0.5)
    hb = hash_u32(inst, 61, 61)
    base = _pick([(0.45, 0.20, 0.13), (0.55, 0.32, 0.20), (0.38, 0.22, 0.18), (0.60, 0.45, 0.32)], hb)
    keep = _fade(sv, fp)
    per = _toward(hash01(col, row + 7919 * (hb % 97).astype(np.int64), 62), 0.5, keep)[:, None]
    g = _grain(uv, inst, 63, 0.04, 2, fp)[:, None]
    alb = base * (0.65 + 0.6 * per) * (0.8 + 0.4 * g)
    mortar = _f32([0.55, 0.53, 0.50]) * (0.8 + 0.3 * g)
    joint = _toward(_smooth(0.004, 0.009, edge_distance(lu, lv, su, sv)), 0.82, keep)[:, None]
    alb = _mix(mortar, alb, joint)
    grime = _smooth(0.4, 0.9, fbm(uv[:, 0] * 8, uv[:, 1], 64, 6.0, 3, fp=fp * 8))[:, None]
    alb = alb * (1 - 0.35 * grime * _smooth(4.0, 0.0, uv[:, 1])[:, None])
    alb = alb * (1 - 0.25 * _spots(uv, inst, 65, fp, 0.3, 0.68))[:, None]
    return alb.astype(np.float32), _spec(len(uv))


@material("plaster")
def plaster(uv, p, inst, fp):
    hb = hash_u32(inst, 71, 71)
    base = _pick(
        [(0.72, 0.60, 0.42), (0.74, 0.70, 0.62), (0.68, 0.50, 0.45), (0.58, 0.63, 0.56), (0.66, 0.66, 0.70)],
        hb,
    )
    g = _grain(uv, inst, 72, 0.03, 3, fp)[:, None]
    blotch = _grain(uv, inst, 73, 1.5, 3, fp)
    streak = fbm(uv[:, 0] * 10.0, uv[:, 1], 74, 5.0, 2, fp=fp * 10)[:, None]
    alb = base * (0.8 + 0.3 * g) * (0.75 + 0.4 * blotch[:, None]) * (0.8 + 0.3 * streak)
    damp = _smooth(1.6, 0.2, uv[:, 1] + 0.8 * blotch)[:, None]
    alb = alb * (1 - 0.35 * damp)
    alb = alb * (1 - 0.25 * _spots(uv, inst, 77, fp, 0.3, 0.66))[:, None]
    # flaking patches showing brick
    flake = _smooth(0.72, 0.74, 0.5 * blotch + 0.5 * fbm(uv[:, 0], uv[:, 1], 76, 0.4, 3, fp=fp))
    sel = np.nonzero(flake > 0)[0]
    if len(sel):
        b, _ = brick(uv[sel], p[sel], inst[sel], fp[sel])
        alb[sel] = _mix(alb[sel], b, flake[sel])
    return alb.astype(np.float32), _spec(len(uv))


@material("concrete")
def concrete(uv, p, inst, fp):
    pu, pv = 1.2, 0.6
    col, row, lu, lv = cells(uv[:, 0], uv[:, 1], pu, pv, 0.0)
    g = _grain(uv, inst, 81, 0.03, 4, fp)
    panel = hash01(col, row, 82)
    stain = fbm(uv[:, 0], uv[:, 1] * 0.4, 83, 1.0, 3, fp=fp)
    v = (0.40 + 0.10 * panel) * (0.8 + 0.35 * g) * (0.75 + 0.4 * stain)
    seam = _toward(_smooth(0.002, 0.008, edge_distance(lu, lv, pu, pv)), 0.98, _fade(0.03, fp))
    # tie holes at the panel's quarter points
    hole = np.minimum(
        np.hypot(np.minimum(np.abs(lu - 0.25 * pu), np.abs(lu - 0.75 * pu)), lv - 0.5 * pv), 1.0
    )
    holes = _toward(_smooth(0.012, 0.02, hole), 0.99, _fade(0.05, fp))
    v = v * (0.55 + 0.45 * seam) * (0.4 + 0.6 * holes)
    v = v * (1 - 0.25 * _spots(uv, inst, 84, fp, 0.4, 0.68))
    alb = np.stack([v, v * 0.98, v * 0.95], 1)
    return alb.astype(np.float32), _spec(len(uv))


@material("stone_trim")
def stone_trim(uv, p, inst, fp):
    su = 0.9
    col, row, lu, lv = cells(uv[:, 0], uv[:, 1], su, 0.6, 0.5)
    g = _grain(uv, inst, 91, 0.05, 4, fp)
    v = (0.55 + 0.1 * hash01(col, row, 92)) * (0.7 + 0.4 * g)
    v = v * (0.6 + 0.4 * _toward(_smooth(0.003, 0.008, np.minimum(lu, su - lu)), 0.98, _fade(0.03, fp)))
    v = v * (1 - 0.3 * _spots(uv, inst, 93, fp, 0.3, 0.64))
    alb = np.stack([v, v * 0.96, v * 0.9], 1)
    return alb.astype(np.float32), _spec(len(uv))


@material("roof")
def roof(uv, p, inst, fp):
    g = _grain(uv, inst, 95, 0.1, 4, fp)
    v = (0.12 + 0.12 * g) * (1 - 0.4 * _spots(uv, inst, 96, fp, 0.8, 0.6))
    alb = np.stack([v, v * 0.95, v * 0.92], 1)
    return alb.astype(np.float32), _spec(len(uv))


@material("window")
def window(uv, p, inst, fp):
    """uv normalised to [0, 1] across the window (about 1.2 m wide, u right, v up)."""
    u, v = uv[:, 0], uv[:, 1]
    fpn = fp / 1.2
    h = hash_u32(inst, 101, 101)
    frame_col = _pick(
        [(0.85, 0.85, 0.82), (0.20, 0.20, 0.22), (0.35, 0.22, 0.12), (0.25, 0.35, 0.30)], h >> 3
    )
    fw = 0.06
    frame = (u < fw) | (u > 1 - fw) | (v < fw) | (v > 1 - fw)
    frame |= np.abs(u - 0.5) < fw / 2
    frame |= np.abs(v - 0.68) < fw / 2
    # inside: curtains from the sides, blinds or a dark room
    kind = (h % np.uint32(4)).astype(np.int64)
    cur_col = _pick(
        [(0.7, 0.6, 0.45), (0.6, 0.2, 0.2), (0.8, 0.8, 0.75), (0.3, 0.35, 0.55), (0.5, 0.55, 0.3)], h >> 7
    )
    cover = 0.1 + 0.35 * hash01(inst, 102, 102)
    folds = _toward(
        0.7 + 0.3 * np.sin(u * 60.0 + hash01(inst, 103, 103) * 6).astype(np.float32), 0.7, _fade(0.1, fpn)
    )
    curtain = (kind == 0) & ((u < cover) | (u > 1 - cover))
    blinds = (kind == 1) & (v > 1 - 1.2 * cover)
    room = 0.03 + 0.05 * value_noise(u * 3, v * 3, 104)
    alb = np.repeat(room[:, None], 3, 1) * _f32([0.9, 0.95, 1.0])
    alb = np.where(curtain[:, None], cur_col * folds[:, None], alb)
    stripes = _toward((np.floor(v * 40) % 2).astype(np.float32), 0.5, _fade(0.05, fpn))
    inside = np.where(blinds[:, None], _f32([0.75, 0.74, 0.7]) * (0.75 + 0.25 * stripes)[:, None], alb)
    fcol = frame_col * (0.85 + 0.15 * value_noise(u * 9, v * 9, 105))[:, None]
    # thin frame bars blend with the glass far away (about 30 % of the window is frame)
    f = _toward(frame.astype(np.float32), 0.3, _fade(2 * fw, fpn))
    alb = _mix(inside, fcol, f)
    spec = (0.45 * (1 - f)).astype(np.float32)
    return alb.astype(np.float32), spec


@material("door")
def door(uv, p, inst, fp):
    """uv normalised to [0, 1] across the door."""
    u, v = uv[:, 0], uv[:, 1]
    h = hash_u32(inst, 111, 111)
    base = _pick([(0.35, 0.12, 0.08), (0.10, 0.20, 0.15), (0.12, 0.14, 0.30), (0.30, 0.22, 0.12)], h)
    g = fbm(u * 2, v * 6, 112, 0.05, 3, fp=fp * 4)[:, None]
    alb = base * (0.7 + 0.5 * g)
    panel = (
        (np.abs(u - 0.5) < 0.36)
        & (((v > 0.08) & (v < 0.45)) | ((v > 0.52) & (v < 0.78)))
        & (np.abs(u - 0.5) > 0.04)
    )
    alb = np.where(panel[:, None], alb * 0.75, alb)
    glass_ = (np.abs(u - 0.5) < 0.36) & (v > 0.83) & (v < 0.95)
    alb = np.where(glass_[:, None], _f32([0.04, 0.05, 0.06]), alb)
    knob = np.hypot((u - 0.85) * 1.0, (v - 0.47) * 2.2) < 0.035
    alb = np.where(knob[:, None], _f32([0.7, 0.6, 0.3]), alb)
    return alb.astype(np.float32), np.where(glass_, 0.5, 0.05).astype(np.float32)


@material("sign")
def sign(uv, p, inst, fp):
    """A shop sign; uv in metres from the sign's lower-left corner, ``inst`` picks words and colours."""
    h = hash_u32(inst, 121, 121)
    bg = _pick(
        [(0.08, 0.18, 0.35), (0.45, 0.05, 0.05), (0.05, 0.25, 0.12), (0.85, 0.80, 0.70), (0.1, 0.1, 0.1)], h
    )
    fg = _pick([(0.90, 0.85, 0.60), (0.95, 0.95, 0.95), (0.90, 0.70, 0.10)], h >> 5)
    t = _decal(uv, inst, _WORDS, (1.5, 0.3), 2.6, 123, fp)
    g = fbm(uv[:, 0], uv[:, 1], 124, 0.2, 3, fp=fp)[:, None]
    alb = _mix(bg, fg, t) * (0.85 + 0.3 * g)
    return alb.astype(np.float32), _spec(len(uv), 0.05)


@material("poster")
def poster(uv, p, inst, fp):
    """Street posters (~0.7 m): uv normalised to [0, 1]; coloured blocks, blobs and a word."""
    u, v = uv[:, 0], uv[:, 1]
    fpn = fp / 0.7
    h = hash_u32(inst, 131, 131)
    c1 = _pick([(0.9, 0.2, 0.1), (0.1, 0.4, 0.8), (0.95, 0.8, 0.1), (0.2, 0.7, 0.3), (0.9, 0.9, 0.85)], h)
    c2 = _pick([(0.05, 0.05, 0.05), (0.95, 0.95, 0.9), (0.6, 0.1, 0.5), (0.1, 0.2, 0.4)], h >> 4)
    split = 0.3 + 0.4 * hash01(inst, 132, 132)
    alb = np.where((v > split)[:, None], c1, c2)
    blob = value_noise(u * 5 + hash01(inst, 133, 133) * 50, v * 7, 134) > 0.62
    alb = np.where(blob[:, None], 1.0 - alb * 0.8, alb)
    center = np.stack([np.full(len(u), 0.5), split * 0.5], 1)
    t = _decal(np.stack([u, v], 1), inst, _WORDS + _STENCILS, center, 0.9, 135, fpn)
    alb = _mix(alb, 1.0 - c2, t)
    torn = fbm(u, v, 136, 0.15, 3, fp=fpn) > 0.72
    alb = np.where(torn[:, None], _f32([0.7, 0.68, 0.62]), alb)
    return alb.astype(np.float32), _spec(len(uv))


# -- props -------------------------------------------------------------------------------------
@material("wood")
def wood(uv, p, inst, fp):
    pw = 0.12
    row = np.floor(uv[:, 1] / pw).astype(np.int64)  # planks run along u
    lv = uv[:, 1] - row * pw
    col = np.floor((uv[:, 0] + 0.37 * row) / 0.9).astype(np.int64)
    h = hash_u32(inst, 141, 141)
    base = _pick([(0.45, 0.30, 0.17), (0.55, 0.40, 0.25), (0.35, 0.24, 0.15), (0.50, 0.45, 0.38)], h)
    per = _toward(hash01(row, col, 142), 0.5, _fade(pw, fp))[:, None]
    grain = fbm(uv[:, 0] + per[:, 0] * 10, uv[:, 1], 143, 0.02, 3, aspect=12.0, fp=fp)[:, None]
    alb = base * (0.7 + 0.5 * per) * (0.65 + 0.6 * grain)
    gap = _toward(_smooth(0.002, 0.007, np.minimum(lv, pw - lv)), 0.9, _fade(pw / 2, fp))[:, None]
    alb = alb * (0.3 + 0.7 * gap)
    alb = alb * (1 - 0.3 * _spots(uv, inst, 144, fp, 0.25, 0.66))[:, None]
    return alb.astype(np.float32), _spec(len(uv))


@material("crate_paint")
def crate_paint(uv, p, inst, fp):
    """Painted crates with plank lines and stencilled markings centred at uv (0, 0) of each face (crates are
    built with face-centred uvs)."""
    h = hash_u32(inst, 151, 151)
    base = _pick([(0.23, 0.27, 0.12), (0.10, 0.18, 0.35), (0.45, 0.08, 0.05), (0.40, 0.33, 0.20)], h)
    g = _grain(uv, inst, 152, 0.05, 4, fp)[:, None]
    planks = np.floor(uv[:, 1] / 0.15).astype(np.int64)
    per = _toward(hash01(planks, inst, 153), 0.5, _fade(0.15, fp))[:, None]
    alb = base * (0.75 + 0.3 * per) * (0.75 + 0.5 * g)
    lv = np.mod(uv[:, 1], 0.15)
    gap = _toward(_smooth(0.002, 0.006, np.minimum(lv, 0.15 - lv)), 0.93, _fade(0.075, fp))[:, None]
    alb = alb * (0.45 + 0.55 * gap)
    chip = _smooth(0.68, 0.72, fbm(uv[:, 0], uv[:, 1], 154, 0.15, 4, fp=fp))[:, None]
    alb = _mix(alb, _f32([0.45, 0.33, 0.2]), chip)
    t = _decal(uv, inst, _STENCILS, (0.0, 0.0), 0.6, 155, fp)[:, None]
    stencil = _pick([(0.85, 0.82, 0.70), (0.05, 0.05, 0.05), (0.9, 0.75, 0.1)], h >> 6)
    alb = _mix(alb, stencil, 0.9 * t)
    return alb.astype(np.float32), _spec(len(uv), 0.03)


@material("metal_paint")
def metal_paint(uv, p, inst, fp):
    h = hash_u32(inst, 161, 161)
    base = _pick(
        [(0.08, 0.22, 0.12), (0.10, 0.10, 0.11), (0.05, 0.12, 0.30), (0.35, 0.30, 0.10), (0.4, 0.08, 0.05)], h
    )
    g = _grain(uv, inst, 162, 0.1, 3, fp)[:, None]
    rust = _smooth(0.6, 0.75, fbm(uv[:, 0], uv[:, 1], 163, 0.3, 3, fp=fp))[:, None]
    ribs = _toward((np.sin(uv[:, 0] * 40.0) > 0.6).astype(np.float32), 0.3, _fade(0.157, fp))
    alb = base * (0.7 + 0.6 * g) * (0.85 + 0.15 * ribs)[:, None]
    alb = _mix(alb, _f32([0.35, 0.17, 0.07]) * (0.6 + 0.8 * g), rust)
    words = ["NO PARKING", "RECYCLE", "KEEP CLEAR", "DANGER", "7"]
    t = _decal(uv, inst, words, (0, 0.6), 0.5, 164, fp)[:, None]
    alb = _mix(alb, _f32([0.9, 0.9, 0.85]), t * (hash01(inst, 165, 165) > 0.4)[:, None])
    return alb.astype(np.float32), _spec(len(uv), 0.06)


@material("barrel")
def barrel(uv, p, inst, fp):
    """uv: (arc length, height) in metres."""
    h = hash_u32(inst, 171, 171)
    base = _pick([(0.05, 0.15, 0.40), (0.55, 0.08, 0.05), (0.60, 0.45, 0.05), (0.1, 0.3, 0.12)], h)
    g = _grain(uv, inst, 172, 0.08, 4, fp)[:, None]
    band = _toward((np.abs(np.mod(uv[:, 1], 0.3) - 0.15) < 0.015).astype(np.float32), 0.1, _fade(0.06, fp))
    alb = base * (0.7 + 0.6 * g) * (1 - 0.45 * band)[:, None]
    rust = _smooth(0.62, 0.75, fbm(uv[:, 0], uv[:, 1], 173, 0.2, 4, fp=fp))[:, None]
    alb = _mix(alb, _f32([0.3, 0.15, 0.06]), rust)
    t = _decal(uv, inst, ["OIL", "WATER", "DIESEL", "H2O 200L", "FLAMMABLE"], (0.25, 0.45), 0.4, 174, fp)
    alb = _mix(alb, _f32([0.9, 0.9, 0.9]), t[:, None])
    return alb.astype(np.float32), _spec(len(uv), 0.05)


@material("car_paint")
def car_paint(uv, p, inst, fp):
    h = hash_u32(inst, 181, 181)
    base = _pick(
        [(0.55, 0.04, 0.03), (0.02, 0.08, 0.30), (0.70, 0.70, 0.68), (0.05, 0.05, 0.05), (0.2, 0.3, 0.2)], h
    )
    g = _grain(uv, inst, 182, 0.3, 3, fp)[:, None]
    dirt = _smooth(0.9, 0.2, p[:, 2])[:, None] * fbm(uv[:, 0], uv[:, 1], 183, 0.1, 3, fp=fp)[:, None]
    alb = base * (0.9 + 0.2 * g)
    alb = _mix(alb, _f32([0.25, 0.2, 0.15]), 0.6 * dirt)
    seams = (np.abs(np.mod(uv[:, 0] + 0.3, 1.1) - 0.55) < 0.006) & (p[:, 2] > 0.35)
    alb = alb * (1 - 0.7 * seams * _fade(0.03, fp))[:, None]
    t = _decal(
        uv, inst, ["POLICE", "AMBULANCE", "DELIVERY", "TAXI", "K-7319", "UN"], (0.0, 0.75), 0.9, 184, fp
    )
    alb = _mix(alb, 1 - alb, t * (hash01(inst, 185, 185) > 0.3))
    return alb.astype(np.float32), _spec(len(uv), 0.2)


@material("glass")
def glass(uv, p, inst, fp):
    g = fbm(uv[:, 0], uv[:, 1], 191, 0.3, 3, fp=fp)[:, None]
    alb = _f32([0.03, 0.04, 0.05]) * (0.8 + 0.4 * g)
    return alb.astype(np.float32), _spec(len(uv), 0.55)


@material("rubber")
def rubber(uv, p, inst, fp):
    g = _grain(uv, inst, 195, 0.03, 3, fp)
    tread = _toward((np.sin(uv[:, 0] * 90.0) > 0.3).astype(np.float32), 0.4, _fade(0.07, fp))
    v = (0.03 + 0.04 * g) * (0.7 + 0.3 * tread)
    return np.stack([v, v, v], 1).astype(np.float32), _spec(len(uv))


@material("chrome")
def chrome(uv, p, inst, fp):
    g = fbm(uv[:, 0], uv[:, 1], 197, 0.1, 2, fp=fp)
    v = 0.5 + 0.3 * g
    return np.stack([v, v, v * 0.95], 1).astype(np.float32), _spec(len(uv), 0.5)


@material("bark")
def bark(uv, p, inst, fp):
    g = fbm(uv[:, 0], uv[:, 1], 201, 0.04, 4, aspect=0.2, fp=fp)
    cr = _smooth(0.3, 0.45, fbm(uv[:, 0], uv[:, 1], 202, 0.05, 3, aspect=0.15, fp=fp))
    v = (0.10 + 0.14 * g) * (0.4 + 0.6 * cr)
    return np.stack([v * 1.2, v, v * 0.8], 1).astype(np.float32), _spec(len(uv))


@material("foliage")
def foliage(uv, p, inst, fp):
    h = hash_u32(inst, 211, 211)
    base = _pick([(0.10, 0.22, 0.05), (0.16, 0.25, 0.06), (0.08, 0.18, 0.08), (0.25, 0.28, 0.08)], h)
    g1 = fbm(uv[:, 0], uv[:, 1], 212, 0.12, 4, fp=fp)
    leaf = _toward(value_noise(uv[:, 0] * 30, uv[:, 1] * 30, 213), 0.5, _fade(0.066, fp))
    alb = base * (0.35 + 1.2 * g1 * (0.5 + leaf))[:, None]
    flowers = (value_noise(uv[:, 0] * 14, uv[:, 1] * 14, 214) > 0.86) & (hash01(inst, 215, 215) > 0.5)
    fcol = _pick([(0.8, 0.1, 0.2), (0.9, 0.8, 0.2), (0.8, 0.8, 0.85)], h >> 5)
    alb = _mix(alb, fcol, flowers * _fade(0.14, fp))
    return alb.astype(np.float32), _spec(len(uv))


@material("bronze")
def bronze(uv, p, inst, fp):
    g = fbm(uv[:, 0], uv[:, 1], 281, 0.08, 4, fp=fp)
    patina = _smooth(0.45, 0.7, fbm(uv[:, 0], uv[:, 1], 282, 0.3, 3, fp=fp))[:, None]
    alb = _f32([0.22, 0.14, 0.07]) * (0.6 + 0.8 * g)[:, None]
    alb = _mix(alb, _f32([0.20, 0.32, 0.25]), 0.8 * patina)
    return alb.astype(np.float32), _spec(len(uv), 0.12)


# -- people ------------------------------------------------------------------------------------
@material("skin")
def skin(uv, p, inst, fp):
    h = hash_u32(inst, 221, 221)
    base = _pick([(0.62, 0.42, 0.32), (0.45, 0.28, 0.18), (0.25, 0.15, 0.10), (0.70, 0.52, 0.42)], h)
    g = fbm(uv[:, 0], uv[:, 1], 222, 0.05, 3, fp=fp)[:, None]
    return (base * (0.85 + 0.3 * g)).astype(np.float32), _spec(len(uv), 0.03)


@material("hair")
def hair(uv, p, inst, fp):
    h = hash_u32(inst, 231, 231)
    base = _pick([(0.05, 0.03, 0.02), (0.20, 0.12, 0.06), (0.45, 0.35, 0.18), (0.3, 0.3, 0.3)], h)
    g = fbm(uv[:, 0], uv[:, 1], 232, 0.01, 3, aspect=0.3, fp=fp)[:, None]
    return (base * (0.6 + 0.8 * g)).astype(np.float32), _spec(len(uv), 0.04)


@material("fabric")
def fabric(uv, p, inst, fp):
    h = hash_u32(inst, 241, 241)
    base = _pick(
        [
            (0.05, 0.08, 0.25),
            (0.50, 0.05, 0.05),
            (0.12, 0.25, 0.10),
            (0.60, 0.55, 0.45),
            (0.08, 0.08, 0.08),
            (0.75, 0.45, 0.10),
            (0.25, 0.30, 0.40),
            (0.80, 0.80, 0.78),
        ],
        h,
    )
    weave = _toward(value_noise(uv[:, 0] * 60, uv[:, 1] * 60, 242), 0.5, _fade(0.033, fp))[:, None]
    folds = fbm(uv[:, 0], uv[:, 1], 243, 0.15, 3, fp=fp)[:, None]
    alb = base * (0.8 + 0.15 * weave) * (0.6 + 0.7 * folds)
    stripes = ((h >> 9) % np.uint32(3) == 0) & (np.mod(uv[:, 1], 0.08) < 0.03)
    alb = _mix(alb, alb * 0.5 + 0.35, stripes * _fade(0.08, fp))
    return alb.astype(np.float32), _spec(len(uv))


@material("leather")
def leather(uv, p, inst, fp):
    g = fbm(uv[:, 0], uv[:, 1], 251, 0.02, 3, fp=fp)
    v = 0.04 + 0.06 * g
    return np.stack([v * 1.3, v, v * 0.8], 1).astype(np.float32), _spec(len(uv), 0.1)


def shade_albedo(
    name: str, uv: np.ndarray, p: np.ndarray, inst: np.ndarray, fp: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate material ``name`` at N points: uv [N, 2], p [N, 3], inst [N], footprint fp [N] (metres;
    None: infinitely fine, no fading) -> (albedo [N, 3], spec [N])."""
    if name not in MATERIALS:
        raise KeyError(f"unknown material {name!r} (known: {', '.join(sorted(MATERIALS))})")
    n = len(uv)
    fp = np.full(n, 1e-6, np.float32) if fp is None else np.maximum(np.asarray(fp, np.float32), 1e-6)
    alb, spec = MATERIALS[name](
        np.asarray(uv, np.float64), np.asarray(p, np.float64), np.asarray(inst, np.int64), fp
    )
    assert alb.shape == (n, 3) and spec.shape == (n,), f"material {name}: bad output shapes"
    return np.clip(alb, 0.0, 1.0).astype(np.float32), np.clip(spec, 0.0, 1.0).astype(np.float32)
