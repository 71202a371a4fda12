"""Meshes to Gaussians (generation/surface.py): sampling, colours, orientation, a render, and mesh files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.assets import C0, AssetError
from generation.surface import Mesh, face_frames, frames_to_quats, load_mesh, mesh_to_splats
from reconstruction.cameras import Camera, Pose, matrix_to_quat, quat_to_matrix
from reconstruction.render import render

FACE_COLOURS = {  # outward normal -> colour of that face of the cube
    (0, -1, 0): (1.0, 0.0, 0.0),
    (0, 1, 0): (0.0, 1.0, 0.0),
    (-1, 0, 0): (0.0, 0.0, 1.0),
    (1, 0, 0): (1.0, 1.0, 0.0),
    (0, 0, -1): (0.0, 1.0, 1.0),
    (0, 0, 1): (1.0, 0.0, 1.0),
}


def quad_texture() -> np.ndarray:
    """64 x 64 texture in four 32-pixel quadrants: top-left red, top-right green, bottom-left blue, bottom-
    right white."""
    tex = np.zeros((64, 64, 3), np.uint8)
    tex[:32, :32] = (255, 0, 0)
    tex[:32, 32:] = (0, 255, 0)
    tex[32:, :32] = (0, 0, 255)
    tex[32:, 32:] = (255, 255, 255)
    return tex


def textured_quad() -> Mesh:
    """The unit square in z = 0, uv = xy (so v = 1, the texture's top row, is at y = 1)."""
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
    return Mesh(v, np.array([[0, 1, 2], [0, 2, 3]]), uv=v[:, :2].copy(), texture=quad_texture(), name="quad")


def coloured_cube(size: float = 1.0) -> Mesh:
    """A cube centred at the origin, one colour per face (4 vertices per face, outward winding)."""
    verts, faces, cols = [], [], []
    for n, c in FACE_COLOURS.items():
        n = np.asarray(n, np.float64)
        a = np.roll(n, 1)  # two in-plane axes with a x b = n
        b = np.cross(n, a)
        corners = [n + s * a + t * b for s, t in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        base = len(verts)
        verts += [0.5 * size * p for p in corners]
        faces += [[base, base + 1, base + 2], [base, base + 2, base + 3]]
        cols += [c] * 4
    return Mesh(np.array(verts), np.array(faces, np.int64), np.array(cols), name="cube")


def colours(splats) -> np.ndarray:
    return splats.sh0 * C0 + 0.5


def test_samples_lie_on_the_surface_with_the_texture_colour_there():
    splats = mesh_to_splats(textured_quad(), num=4000, seed=1)
    assert len(splats) == 4000 and splats.sh_degree == 0
    m = splats.means
    assert np.abs(m[:, 2]).max() < 1e-6 and m[:, :2].min() >= -1e-6 and m[:, :2].max() <= 1 + 1e-6
    # away from the quadrants' borders the bilinear lookup gives the quadrant's colour exactly
    inner = (np.abs(m[:, 0] - 0.5) > 0.05) & (np.abs(m[:, 1] - 0.5) > 0.05)
    inner &= (m[:, :2].min(1) > 0.05) & (m[:, :2].max(1) < 0.95)
    top, right = m[:, 1] > 0.5, m[:, 0] > 0.5
    quadrant = np.select([top & ~right, top & right, ~top & ~right], [0, 1, 2], 3)
    want = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0]])[quadrant]
    assert inner.sum() > 2500
    np.testing.assert_allclose(colours(splats)[inner], want[inner], atol=1e-5)
    # deterministic for a seed, different for another
    assert splats.equal(mesh_to_splats(textured_quad(), num=4000, seed=1))
    assert not np.allclose(splats.means, mesh_to_splats(textured_quad(), num=4000, seed=2).means)


def test_sampling_is_area_weighted_and_ignores_degenerate_faces():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 0, 0], [8, 0, 0], [5, 2, 0], [9, 9, 9]], np.float64)
    faces = np.array([[0, 1, 2], [3, 4, 5], [6, 6, 6], [0, 1, 3]])  # areas 1, 3, 0 (a point), 0 (a line)
    mesh = Mesh(v, faces, vertex_colors=np.full((7, 3), 0.25))
    splats = mesh_to_splats(mesh, num=40000)
    first = (splats.means[:, 0] < 2).mean()
    assert abs(first - 0.25) < 0.01  # 1 : 3
    assert not np.isclose(splats.means, [9, 9, 9]).all(1).any()
    np.testing.assert_allclose(colours(splats), 0.25, atol=1e-6)
    # num from the spacing: area / spacing^2, tangential std 0.6 spacing, normal std thickness x that
    sp = mesh_to_splats(mesh, spacing=0.05, thickness=0.2)
    assert len(sp) == 1600
    np.testing.assert_allclose(np.exp(sp.scales[0]), [0.03, 0.03, 0.006], rtol=1e-5)
    assert np.allclose(1 / (1 + np.exp(-sp.opacities)), 0.95)
    # default count, no colour: grey
    grey = mesh_to_splats(Mesh(v, faces))
    assert len(grey) == 20000 and np.allclose(colours(grey), 0.5, atol=1e-6)


def test_gaussians_are_flat_and_their_z_axis_is_the_face_normal():
    cube = coloured_cube()
    splats = mesh_to_splats(cube, num=3000, spacing=0.02)
    R = quat_to_matrix(splats.quats)
    normal = R[:, :, 2]
    # on a unit cube the normal is the axis of the coordinate at +-0.5
    axis = np.argmax(np.abs(splats.means), 1)
    want = np.zeros_like(normal)
    want[np.arange(len(axis)), axis] = np.sign(splats.means[np.arange(len(axis)), axis])
    np.testing.assert_allclose(normal, want, atol=1e-5)
    np.testing.assert_allclose(np.abs(splats.means).max(1), 0.5, atol=1e-6)
    # the colour is the face's
    got = colours(splats)
    for n, c in FACE_COLOURS.items():
        sel = (want == n).all(1)
        assert sel.sum() > 300
        np.testing.assert_allclose(got[sel], np.broadcast_to(c, got[sel].shape), atol=1e-5)
    # the vectorised quaternions agree with the reference conversion
    frames = face_frames(cube.vertices, cube.faces)
    np.testing.assert_allclose(frames_to_quats(frames), matrix_to_quat(frames), atol=1e-9)


def test_frames_to_quats_covers_every_branch():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[:4] = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]  # 180 deg turns and identity
    got = frames_to_quats(quat_to_matrix(q))
    want = np.where(q[:, :1] < 0, -q, q)
    np.testing.assert_allclose(np.abs((got * want).sum(1)), 1, atol=1e-9)


def front_view(width: int = 96, dist: float = 3.0, f: float = 96.0):
    """A camera at (0, -dist, 0) looking along +Y with Z up (OpenCV axes: x = X, y = -Z, z = Y)."""
    cam = Camera.pinhole(f, f, width / 2, width / 2, width, width)
    m = np.eye(4)
    m[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    m[:3, 3] = [0, 0, dist]
    return cam, Pose.from_matrix(m)


def test_render_of_a_cube_shows_its_front_face():
    torch.manual_seed(0)
    cube = coloured_cube()
    splats = mesh_to_splats(cube, spacing=0.02)
    cam, pose = front_view()
    with torch.no_grad():
        out = render(splats, cam, pose, background=[0, 0, 0])
    alpha, rgb = out.alpha.numpy(), out.rgb.numpy()
    # the silhouette is the front face (y = -0.5, at depth 2.5): a square of side f / 2.5 around the centre
    half = 0.5 * 96 / 2.5
    xs = np.arange(96) + 0.5
    inside_x = np.abs(xs - 48) <= half
    square = inside_x[None, :] & inside_x[:, None]
    sil = alpha > 0.5
    iou = (sil & square).sum() / (sil | square).sum()
    assert iou >= 0.9, iou
    core = np.maximum(np.abs(xs - 48)[None, :], np.abs(xs - 48)[:, None]) < half - 2  # inside, 2 px in
    np.testing.assert_allclose(rgb[core].mean(0), FACE_COLOURS[(0, -1, 0)], atol=0.05)


def test_mesh_validation_names_the_mesh_and_the_problem():
    cube = coloured_cube()
    with pytest.raises(AssetError, match="mesh 'cube': has no faces"):
        Mesh(cube.vertices, np.zeros((0, 3), np.int64), name="cube").validate()
    bad = cube.vertices.copy()
    bad[3, 1] = np.nan
    with pytest.raises(AssetError, match="'cube': vertices hold NaN"):
        Mesh(bad, cube.faces, name="cube").validate()
    with pytest.raises(AssetError, match=r"face indices run from 0 to 24, expected 0 \.\. 23"):
        Mesh(cube.vertices, np.vstack([cube.faces, [[0, 1, 24]]]), name="cube").validate()
    with pytest.raises(AssetError, match=r"vertex_colors have shape \(24, 4\), expected \(24, 3\)"):
        Mesh(cube.vertices, cube.faces, np.ones((24, 4)), name="cube").validate()
    with pytest.raises(AssetError, match="uv and texture come together"):
        Mesh(cube.vertices, cube.faces, uv=np.zeros((24, 2)), name="cube").validate()
    flat = Mesh(np.zeros((3, 3)), np.array([[0, 1, 2]]), name="flat")
    with pytest.raises(AssetError, match="'flat': every face has zero area"):
        mesh_to_splats(flat)


def trimesh_of(mesh: Mesh, textured: bool = False):
    import trimesh
    from PIL import Image

    if textured:
        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(mesh.texture))
        visual = trimesh.visual.TextureVisuals(uv=mesh.uv, material=material)
    else:
        visual = trimesh.visual.ColorVisuals(vertex_colors=np.rint(mesh.vertex_colors * 255).astype(np.uint8))
    return trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False)


def test_load_mesh_round_trips_ply_obj_and_glb(tmp_path):
    import trimesh
    from PIL import Image

    cube = coloured_cube()
    trimesh_of(cube).export(tmp_path / "cube.ply")
    got = load_mesh(tmp_path / "cube.ply")
    assert got.name == "cube.ply" and got.texture is None
    np.testing.assert_allclose(got.vertices, cube.vertices, atol=1e-6)
    np.testing.assert_array_equal(got.faces, cube.faces)
    np.testing.assert_allclose(got.vertex_colors, cube.vertex_colors, atol=1 / 255)

    quad = textured_quad()
    (tmp_path / "obj").mkdir()
    trimesh_of(quad, textured=True).export(tmp_path / "obj" / "quad.obj")
    got = load_mesh(tmp_path / "obj" / "quad.obj")
    np.testing.assert_array_equal(got.texture, quad.texture)
    np.testing.assert_allclose(got.vertices, quad.vertices, atol=1e-6)
    np.testing.assert_allclose(got.uv, quad.uv, atol=1e-6)
    a = mesh_to_splats(got, num=500, seed=3)
    b = mesh_to_splats(quad, num=500, seed=3)
    np.testing.assert_allclose(colours(a), colours(b), atol=1e-5)

    # a glTF scene of two placed geometries: concatenated, each texture in its strip of one atlas
    pbr = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(quad.texture),
                                              baseColorFactor=[255, 255, 255, 255])  # fmt: skip
    other = np.zeros((16, 16, 3), np.uint8)
    other[:] = (10, 200, 30)
    pbr2 = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(other))
    scene = trimesh.Scene()
    for mat, x in ((pbr, 0.0), (pbr2, 5.0)):
        t = trimesh.Trimesh(quad.vertices, quad.faces, process=False,
                            visual=trimesh.visual.TextureVisuals(uv=quad.uv, material=mat))  # fmt: skip
        scene.add_geometry(t, transform=trimesh.transformations.translation_matrix([x, 0, 0]))
    scene.export(tmp_path / "two.glb")
    got = load_mesh(tmp_path / "two.glb")
    assert len(got.vertices) == 8 and len(got.faces) == 4 and got.texture.shape == (84, 66, 3)
    sp = mesh_to_splats(got, num=4000, seed=0)
    near = (
        (sp.means[:, 0] < 2) & (np.abs(sp.means[:, 0] - 0.5) > 0.05) & (np.abs(sp.means[:, 1] - 0.5) > 0.05)
    )
    near &= (sp.means[:, :2].min(1) > 0.05) & (sp.means[:, 1] < 0.95) & (sp.means[:, 0] < 0.95)
    top, right = sp.means[:, 1] > 0.5, sp.means[:, 0] > 0.5
    red = near & top & ~right
    np.testing.assert_allclose(colours(sp)[red], np.broadcast_to([1.0, 0, 0], (int(red.sum()), 3)), atol=1e-5)
    far = (
        (sp.means[:, 0] > 5.05) & (sp.means[:, 0] < 5.95) & (sp.means[:, 1] > 0.05) & (sp.means[:, 1] < 0.95)
    )
    np.testing.assert_allclose(colours(sp)[far].mean(0), np.array([10, 200, 30]) / 255, atol=1e-5)


def test_bad_mesh_files_raise_naming_the_file(tmp_path):
    trimesh_of(coloured_cube()).export(tmp_path / "cube.ply")
    data = (tmp_path / "cube.ply").read_bytes()
    (tmp_path / "truncated.ply").write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError, match=r"truncated\.ply: cannot read the mesh"):
        load_mesh(tmp_path / "truncated.ply")
    (tmp_path / "notes.glb").write_text("this is not a binary glTF file\n")
    with pytest.raises(AssetError, match=r"notes\.glb: cannot read the mesh"):
        load_mesh(tmp_path / "notes.glb")
    with pytest.raises(AssetError, match=r"missing\.obj: mesh file does not exist"):
        load_mesh(tmp_path / "missing.obj")
    (tmp_path / "cube.stl").write_bytes(b"")
    with pytest.raises(AssetError, match=r"cube\.stl: not a mesh file \(expected one of \.obj"):
        load_mesh(tmp_path / "cube.stl")
    (tmp_path / "points.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n1 1 1\n"
    )
    with pytest.raises(AssetError, match=r"points\.ply: holds no triangles \(found PointCloud\)"):
        load_mesh(tmp_path / "points.ply")
    (tmp_path / "empty.obj").write_text("# nothing\n")
    with pytest.raises(AssetError, match=r"empty\.obj: holds no triangles"):
        load_mesh(tmp_path / "empty.obj")
