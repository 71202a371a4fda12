"""Meshes to Gaussians: any coloured triangle mesh (an image-to-3D output, later the body mesh of a person)
becomes flat splats lying on its surface.

:func:`load_mesh` reads ``.obj``, ``.ply``, ``.glb``, ``.gltf`` and ``.off`` files with trimesh into a
:class:`Mesh` (several geometries of a scene are concatenated; a texture is kept as ``uv`` + ``texture``,
else vertex colours, else a flat grey). :func:`mesh_to_splats` samples the surface at random, area
weighted, and puts one flat Gaussian at every sample: its local z along the face normal, its tangential
standard deviation 0.6 x the sample spacing, its normal one ``thickness`` times that, its colour the
texture's (bilinear) or the vertex colours' (barycentric) at that point.

    mesh = load_mesh("chair.glb")                        # Mesh: vertices [V, 3], faces [F, 3], colours
    splats = mesh_to_splats(mesh, spacing=0.01)          # Splats (SH degree 0), about area / 0.01**2 of them

Texture coordinates follow trimesh (and OBJ): ``u`` runs along the image's columns, ``v = 0`` is the
image's bottom row, and coordinates outside [0, 1] wrap (glTF's default ``REPEAT``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reconstruction.splats import Splats

from .assets import C0, AssetError

log = logging.getLogger(__name__)

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off")
GREY = 0.5
DEFAULT_NUM = 20000


@dataclass
class Mesh:
    """A triangle mesh with colour: vertex colours, or a texture addressed by per-vertex uv."""

    vertices: np.ndarray
    """[V, 3] float64 positions."""
    faces: np.ndarray
    """[F, 3] int64 vertex indices, counter-clockwise seen from outside (the normal is
    ``(v1 - v0) x (v2 - v0)``)."""
    vertex_colors: np.ndarray | None = None
    """[V, 3] float RGB in [0, 1], or None."""
    uv: np.ndarray | None = None
    """[V, 2] texture coordinates (``v = 0`` is the texture's bottom row), or None."""
    texture: np.ndarray | None = None
    """[H, W, 3] uint8 RGB image that ``uv`` addresses, or None."""
    name: str = "mesh"
    """Used in error messages."""

    def validate(self) -> Mesh:
        """Check shapes, index ranges and finiteness; raise AssetError naming the mesh and the problem."""
        src = f"mesh {self.name!r}"
        v, f = np.asarray(self.vertices), np.asarray(self.faces)
        if v.ndim != 2 or v.shape[1] != 3:
            raise AssetError(f"{src}: vertices have shape {v.shape}, expected (V, 3)")
        if f.ndim != 2 or f.shape[1] != 3:
            raise AssetError(f"{src}: faces have shape {f.shape}, expected (F, 3)")
        if len(f) == 0:
            raise AssetError(f"{src}: has no faces")
        if not np.issubdtype(f.dtype, np.integer):
            raise AssetError(f"{src}: faces are {f.dtype}, expected integer vertex indices")
        if not np.isfinite(v).all():
            raise AssetError(f"{src}: vertices hold NaN or Inf values")
        if f.min() < 0 or f.max() >= len(v):
            raise AssetError(
                f"{src}: face indices run from {f.min()} to {f.max()}, expected 0 .. {len(v) - 1}"
            )
        if self.vertex_colors is not None:
            c = np.asarray(self.vertex_colors)
            if c.shape != (len(v), 3):
                raise AssetError(f"{src}: vertex_colors have shape {c.shape}, expected ({len(v)}, 3)")
            if not np.isfinite(c).all() or c.min() < 0 or c.max() > 1:
                raise AssetError(f"{src}: vertex_colors must be finite and in [0, 1]")
        if (self.uv is None) != (self.texture is None):
            only = "uv" if self.texture is None else "texture"
            raise AssetError(f"{src}: uv and texture come together (got only {only})")
        if self.uv is not None:
            uv, tex = np.asarray(self.uv), np.asarray(self.texture)
            if uv.shape != (len(v), 2) or not np.isfinite(uv).all():
                raise AssetError(f"{src}: uv has shape {uv.shape} (expected ({len(v)}, 2), finite)")
            if tex.ndim != 3 or tex.shape[2] != 3 or tex.dtype != np.uint8 or min(tex.shape[:2]) < 1:
                raise AssetError(f"{src}: texture is {tex.dtype} {tex.shape}, expected [H, W, 3] uint8")
        return self

    def area(self) -> float:
        """Total surface area."""
        return float(face_areas(self.vertices, self.faces).sum())


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area [F] of every triangle."""
    v = np.asarray(vertices, np.float64)[np.asarray(faces)]
    return 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)


# -- loading -----------------------------------------------------------------------------------
def _texture_image(material) -> np.ndarray | None:
    img = getattr(material, "baseColorTexture", None)
    if img is None:
        img = getattr(material, "image", None)
    if img is None:
        return None
    tex = np.asarray(img.convert("RGB"), dtype=np.uint8)
    factor = getattr(material, "baseColorFactor", None)
    if factor is not None:  # glTF multiplies the texture by the factor
        f = np.asarray(factor, np.float64)[:3]
        f = f / 255.0 if f.max() > 1 else f
        if not np.allclose(f, 1.0):
            tex = np.clip(np.rint(tex * f), 0, 255).astype(np.uint8)
    return tex


def _part(geom, name: str) -> Mesh:
    """One trimesh geometry as a Mesh (texture kept, face colours split per face, else flat colours)."""
    v = np.asarray(geom.vertices, np.float64)
    f = np.asarray(geom.faces, np.int64)
    visual = geom.visual
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        uv = getattr(visual, "uv", None)
        tex = _texture_image(visual.material)
        if uv is not None and tex is not None and len(uv) == len(v):
            return Mesh(v, f, uv=np.asarray(uv, np.float64), texture=tex, name=name)
        main = np.asarray(visual.material.main_color, np.float64)[:3] / 255.0
        return Mesh(v, f, vertex_colors=np.tile(main, (len(v), 1)), name=name)
    if kind == "face":
        fc = np.asarray(visual.face_colors, np.float64)[:, :3] / 255.0
        return Mesh(v[f].reshape(-1, 3), np.arange(3 * len(f), dtype=np.int64).reshape(-1, 3),
                    vertex_colors=np.repeat(fc, 3, axis=0), name=name)  # fmt: skip
    if kind == "vertex":
        vc = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0
        return Mesh(v, f, vertex_colors=vc, name=name)
    return Mesh(v, f, vertex_colors=np.full((len(v), 3), GREY), name=name)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup: colours [N, 3] in [0, 1] at ``uv`` [N, 2] (``v = 0`` the bottom row;
    coordinates wrap)."""
    tex = np.asarray(texture, np.float64) / 255.0
    h, w = tex.shape[:2]
    uv = np.asarray(uv, np.float64)
    x = np.mod(uv[:, 0], 1.0) * w - 0.5  # texel centres at (i + 0.5) / w
    y = (1.0 - np.mod(uv[:, 1], 1.0)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xa, xb = np.mod(x0, w), np.mod(x0 + 1, w)
    ya, yb = np.mod(y0, h), np.mod(y0 + 1, h)
    return (
        tex[ya, xa] * (1 - fx) * (1 - fy)
        + tex[ya, xb] * fx * (1 - fy)
        + tex[yb, xa] * (1 - fx) * fy
        + tex[yb, xb] * fx * fy
    )


def _wrap(x: np.ndarray) -> np.ndarray:
    """Texture coordinates into [0, 1] as REPEAT addressing reads them (0 and 1 themselves kept)."""
    return np.where((x >= 0) & (x <= 1), x, np.mod(x, 1.0))


def _atlas(parts: list[Mesh]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Stack the parts' textures top to bottom into one image (each with a one-texel border copied from
    its edge, so that bilinear lookups stay inside) and remap each part's uv into its strip."""
    width = max(p.texture.shape[1] for p in parts) + 2
    height = sum(p.texture.shape[0] + 2 for p in parts)
    atlas = np.zeros((height, width, 3), np.uint8)
    uvs, top = [], 0
    for p in parts:
        h, w = p.texture.shape[:2]
        atlas[top : top + h + 2, : w + 2] = np.pad(p.texture, ((1, 1), (1, 1), (0, 0)), mode="edge")
        u, v = _wrap(p.uv[:, 0]), _wrap(p.uv[:, 1])
        # the texture's rows are the atlas's rows top + 1 .. top + h; v = 0 is the atlas's bottom row
        uvs.append(np.stack([(1 + u * w) / width, (height - top - 1 - h + v * h) / height], 1))
        top += h + 2
    return atlas, uvs


def concatenate(parts: list[Mesh], name: str = "mesh") -> Mesh:
    """One mesh from several. All textured: one texture atlas (the textures' REPEAT wrapping becomes
    clamping); otherwise vertex colours (a texture is then sampled at the vertices, losing detail finer
    than the triangles)."""
    if len(parts) == 1:
        p = parts[0]
        return Mesh(p.vertices, p.faces, p.vertex_colors, p.uv, p.texture, name)
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    vertices = np.concatenate([p.vertices for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets, strict=True)])
    if all(p.texture is not None for p in parts):
        atlas, uvs = _atlas(parts)
        return Mesh(vertices, faces, uv=np.concatenate(uvs), texture=atlas, name=name)
    if any(p.texture is not None for p in parts):
        log.info("%s: textured and untextured parts: textures reduced to vertex colours", name)
    colours = []
    for p in parts:
        if p.texture is not None:
            colours.append(sample_texture(p.texture, p.uv))
        elif p.vertex_colors is not None:
            colours.append(np.asarray(p.vertex_colors, np.float64))
        else:
            colours.append(np.full((len(p.vertices), 3), GREY))
    return Mesh(vertices, faces, vertex_colors=np.concatenate(colours), name=name)


def load_mesh(path: str | Path) -> Mesh:
    """Read a mesh file (``.obj``, ``.ply``, ``.glb``, ``.gltf``, ``.off``) into a validated :class:`Mesh`.

    A scene's geometries are placed by their scene transforms and concatenated. Colour: the texture (uv +
    image, times glTF's base colour factor) when there is one, else vertex or face colours, else the
    material's colour, else grey. Raises AssetError naming the file when it is missing, of another type,
    unreadable, or holds no triangles."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: mesh file does not exist")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise AssetError(f"{path}: not a mesh file (expected one of {', '.join(MESH_SUFFIXES)})")
    try:
        scene = trimesh.load_scene(str(path), file_type=suffix[1:], process=False)
        geoms = scene.dump(concatenate=False)
    except Exception as e:  # trimesh raises anything from ValueError to struct.error on bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AssetError(f"{path}: cannot read the mesh ({type(e).__name__}: {msg[:200]})") from None
    parts = [_part(g, path.name) for g in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not parts:
        kinds = sorted({type(g).__name__ for g in geoms}) or ["nothing"]
        raise AssetError(f"{path}: holds no triangles (found {', '.join(kinds)})")
    return concatenate(parts, path.name).validate()


# -- sampling ----------------------------------------------------------------------------------
def frames_to_quats(frames: np.ndarray) -> np.ndarray:
    """wxyz quaternions [N, 4] (w >= 0) of rotation matrices [N, 3, 3] (vectorised Shepperd)."""
    m = np.asarray(frames, np.float64)
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    tr = m00 + m11 + m22
    cand = np.stack([tr, m00, m11, m22], 1)
    k = np.argmax(cand, 1)
    q = np.empty((len(m), 4))
    d = {  # for each largest term: the quaternion times 4 * its largest component, and that component
        0: (1 + tr, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]),
        1: (m[:, 2, 1] - m[:, 1, 2], 1 + m00 - m11 - m22, m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0]),
        2: (m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m00 + m11 - m22, m[:, 1, 2] + m[:, 2, 1]),
        3: (m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1], 1 - m00 - m11 + m22),
    }
    for i, comps in d.items():
        sel = k == i
        if sel.any():
            q[sel] = np.stack([c[sel] for c in comps], 1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(q[:, :1] < 0, -q, q)


def face_frames(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Tangent frames [F, 3, 3] of triangles: columns (edge v0->v1, in-plane perpendicular, normal)."""
    v = np.asarray(vertices, np.float64)[np.asarray(faces)]
    e1, e2 = v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]
    n = np.cross(e1, e2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    t = e1 / np.linalg.norm(e1, axis=1, keepdims=True)
    b = np.cross(n, t)
    return np.stack([t, b, n], axis=2)


def mesh_to_splats(
    mesh: Mesh,
    num: int | None = None,
    spacing: float | None = None,
    seed: int = 0,
    opacity: float = 0.95,
    thickness: float = 0.1,
) -> Splats:
    """Flat Gaussians on a mesh's surface (mesh frame, SH degree 0, float32 numpy).

    Args:
        mesh: vertices [V, 3], faces [F, 3], and vertex colours [V, 3] or uv [V, 2] + texture [H, W, 3]
            (neither: grey). Zero-area faces are ignored.
        num: number of Gaussians N. None: ``ceil(area / spacing**2)`` when ``spacing`` is given, else 20000.
        spacing: mean distance between samples; None: ``sqrt(area / num)``.
        seed: the sampling seed (same seed, same splats).
        opacity: opacity of every Gaussian, in (0, 1).
        thickness: normal standard deviation as a fraction of the tangential one.

    Returns:
        Splats with ``means`` [N, 3] on the surface, ``quats`` [N, 4] wxyz rotating local z to the face
        normal, ``scales`` [N, 3] log(0.6 spacing, 0.6 spacing, 0.6 spacing thickness), ``opacities`` [N]
        logits, ``sh0`` [N, 3] and ``shN`` [N, 0, 3].
    """
    mesh.validate()
    if not 0 < opacity < 1:
        raise AssetError(f"mesh {mesh.name!r}: opacity must be in (0, 1), got {opacity}")
    if thickness <= 0:
        raise AssetError(f"mesh {mesh.name!r}: thickness must be positive, got {thickness}")
    vertices = np.asarray(mesh.vertices, np.float64)
    faces = np.asarray(mesh.faces, np.int64)
    areas = face_areas(vertices, faces)
    keep = areas > 1e-12 * max(float(areas.max()), 1e-300)
    faces, areas = faces[keep], areas[keep]
    total = float(areas.sum())
    if len(faces) == 0 or total <= 0:
        raise AssetError(f"mesh {mesh.name!r}: every face has zero area")
    if num is None:
        num = DEFAULT_NUM if spacing is None else math.ceil(total / float(spacing) ** 2)
    num = int(num)
    if num < 1:
        raise AssetError(f"mesh {mesh.name!r}: num must be at least 1, got {num}")
    if spacing is None:
        spacing = math.sqrt(total / num)
    if not spacing > 0:
        raise AssetError(f"mesh {mesh.name!r}: spacing must be positive, got {spacing}")

    rng = np.random.default_rng(seed)
    fi = rng.choice(len(faces), size=num, p=areas / total)
    b = rng.random((num, 2))
    flip = b.sum(1) > 1
    b[flip] = 1 - b[flip]
    w = np.stack([1 - b[:, 0] - b[:, 1], b[:, 0], b[:, 1]], 1)  # [N, 3] barycentric weights
    tri = faces[fi]  # [N, 3]
    means = np.einsum("nk,nkd->nd", w, vertices[tri])

    if mesh.texture is not None:
        uv = np.einsum("nk,nkd->nd", w, np.asarray(mesh.uv, np.float64)[tri])
        colours = sample_texture(mesh.texture, uv)
    elif mesh.vertex_colors is not None:
        colours = np.einsum("nk,nkd->nd", w, np.asarray(mesh.vertex_colors, np.float64)[tri])
    else:
        colours = np.full((num, 3), GREY)

    used, inverse = np.unique(fi, return_inverse=True)
    quats = frames_to_quats(face_frames(vertices, faces[used]))[inverse]
    s = 0.6 * float(spacing)

    out = Splats.empty(num)
    out.means[:] = means
    out.quats[:] = quats
    out.scales[:] = np.log([s, s, s * thickness])
    out.opacities[:] = math.log(opacity / (1 - opacity))
    out.sh0[:] = (np.clip(colours, 0, 1) - 0.5) / C0
    return out.validate(f"mesh {mesh.name!r}")


__all__ = [
    "MESH_SUFFIXES", "Mesh", "concatenate", "face_areas", "face_frames", "frames_to_quats", "load_mesh",
    "mesh_to_splats", "sample_texture",
]  # fmt: skip
