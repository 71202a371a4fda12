"""Image-to-3D backends (generation/image_to_3d.py): IDU's triplane format end to end with a tiny field
fitted here, the registry and its licences, and the errors of the backends whose packages and weights are
not on this machine."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from generation.assets import AssetError
from generation.image_to_3d import (
    ALLOWED_LICENCES,
    GENERATORS,
    GeneratorSpec,
    TriplaneField,
    extract_mesh,
    generate,
    licence_allowed,
    register,
    square_crop,
    to_object_frame,
)
from generation.surface import face_frames, mesh_to_splats
from reconstruction.cameras import Camera, Pose
from reconstruction.models import MODEL_DIR_ENV, MODELS, ModelNotAvailable
from reconstruction.render import render
from tests.generation.conftest import red_disc_crop


def test_triplane_round_trips_through_save_and_load(sphere_model):
    folder, crop = sphere_model
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    a, b = TriplaneField.from_pretrained(folder), TriplaneField.from_pretrained(folder)
    pts = torch.rand(100, 3) * 2 - 1
    with torch.no_grad():
        da, ca = a.query(a.planes_for(crop), pts)
        db, cb = b.query(b.planes_for(crop), pts)
    assert torch.equal(da, db) and torch.equal(ca, cb)
    assert a.config.plane_res == 16 and a.config.threshold == 5.0


def test_generate_with_the_triplane_backend_gives_a_red_ball(sphere_model):
    folder, crop = sphere_model
    mesh = generate("triplane", crop, model=folder, device="cpu", resolution=40)
    assert mesh.name == "triplane"
    v = mesh.vertices
    # the object frame: centred, largest extent 1 -> the sphere of radius 0.5 stays radius 0.5
    np.testing.assert_allclose((v.min(0) + v.max(0)) / 2, 0, atol=1e-9)
    assert np.isclose((v.max(0) - v.min(0)).max(), 1.0)
    r = np.linalg.norm(v, axis=1)
    assert np.abs(r - 0.5).max() < 0.05, (r.min(), r.max())
    assert (mesh.vertex_colors[:, 0] > 0.8).all() and (mesh.vertex_colors[:, 1:] < 0.2).all()
    # faces wind outwards
    frames = face_frames(v, mesh.faces)
    centres = v[mesh.faces].mean(1)
    assert ((frames[:, :, 2] * centres).sum(1) > 0).mean() > 0.99

    # to Gaussians and seen from the input camera (at -Y looking along +Y, Z up): a red disc
    splats = mesh_to_splats(mesh, num=6000)
    width, dist, f = 128, 3.0, 128.0
    cam = Camera.pinhole(f, f, width / 2, width / 2, width, width)
    m = np.eye(4)
    m[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    m[:3, 3] = [0, 0, dist]
    with torch.no_grad():
        out = render(splats, cam, Pose.from_matrix(m), background=[1, 1, 1])
    xs = np.arange(width) + 0.5 - width / 2
    rr = np.hypot(xs[None, :], xs[:, None])
    disc = rr <= f * 0.5 / np.sqrt(dist**2 - 0.25)  # the sphere's silhouette
    sil = out.alpha.numpy() > 0.5
    assert (sil & disc).sum() / (sil | disc).sum() > 0.85
    rgb = out.rgb.numpy()[rr < 0.8 * disc.sum() ** 0.5 / np.sqrt(np.pi)]
    assert rgb[:, 0].mean() > 0.8 and rgb[:, 1:].mean() < 0.2


def test_extract_mesh_refuses_an_empty_field_and_one_that_fills_the_cube():
    def ball(p):
        return 10.0 * (p.norm(dim=1) < 0.5).float(), torch.ones(len(p), 3)

    mesh = extract_mesh(ball, 16, 5.0)
    assert len(mesh.faces) > 0 and np.allclose(mesh.vertex_colors, 1)
    with pytest.raises(
        AssetError, match=r"the field is empty \(density at most 10, the surface threshold is 20\)"
    ):
        extract_mesh(ball, 16, 20.0)
    with pytest.raises(AssetError, match="fills the whole cube"):
        extract_mesh(lambda p: (torch.full((len(p),), 9.0), torch.zeros(len(p), 3)), 8, 5.0)
    # a field that touches the cube's faces is closed there
    box = extract_mesh(
        lambda p: (torch.full((len(p),), 9.0) - 9 * (p[:, 2] > 0.5), torch.zeros(len(p), 3)), 9, 5.0
    )
    assert box.vertices[:, 2].min() < -1 and box.vertices.max(0)[2] < 0.75


def test_object_frame_conversion_and_square_crop():
    from generation.image_to_3d import TRIPOSR_TO_OBJECT
    from generation.surface import Mesh

    # TripoSR: x towards the camera, y right, z up -> X right, Y away from the camera, Z up
    v = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    got = to_object_frame(Mesh(v, np.array([[0, 1, 2]])), TRIPOSR_TO_OBJECT).vertices
    d = got - got[3]
    np.testing.assert_allclose(d[:3], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert np.isclose(np.linalg.det(TRIPOSR_TO_OBJECT), 1)
    crop = np.zeros((30, 50, 4), np.uint8)
    crop[5:15, 10:30] = (200, 100, 0, 255)
    sq = square_crop(crop, fill=0.5)
    assert sq.shape == (40, 40, 4) and np.isclose(sq[..., 3].sum(), 200)
    np.testing.assert_allclose(sq[sq[..., 3] > 0][:, :3], [[200 / 255, 100 / 255, 0]] * 200, atol=1e-6)


def test_bad_inputs_and_unknown_backends_raise_asset_errors(sphere_model):
    folder, crop = sphere_model
    with pytest.raises(AssetError, match="backend 'sf3d': expected one of trellis, triplane, triposr"):
        generate("sf3d", crop)
    empty = crop.copy()
    empty[..., 3] = 0
    with pytest.raises(AssetError, match=r"mask \(alpha >= 128\) is empty"):
        generate("triplane", empty, model=folder)
    with pytest.raises(AssetError, match=r"expected \[H, W, 4\] uint8"):
        generate("triplane", crop[..., :3], model=folder)
    with pytest.raises(AssetError, match=r"expected \[H, W, 4\] uint8"):
        generate("triplane", crop.astype(np.float32), model=folder)
    with pytest.raises(ModelNotAvailable, match="backend 'triplane' has no registered weights: pass model="):
        generate("triplane", crop)


def test_missing_packages_and_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "models"))
    crop = red_disc_crop()
    missing = (
        r"'triposr' \(stabilityai/TripoSR, MIT\) is not on this machine: put it in \$IDU_MODEL_DIR/triposr"
    )
    with pytest.raises(ModelNotAvailable, match=missing):
        generate("triposr", crop)
    with pytest.raises(
        ModelNotAvailable, match=r"\(microsoft/TRELLIS-image-large, MIT\) is not on this machine"
    ):
        generate("trellis", crop)
    # a TripoSR folder is recognised by config.yaml (not config.json), and needs model.ckpt
    folder = tmp_path / "models" / "triposr"
    folder.mkdir(parents=True)
    with pytest.raises(ModelNotAvailable, match=r"not a model folder \(no config\.yaml\)"):
        generate("triposr", crop, model=folder)
    (folder / "config.yaml").write_text("cond_image_size: 512\n")
    with pytest.raises(ModelNotAvailable, match=r"needs config\.yaml and model\.ckpt \(missing model\.ckpt"):
        generate("triposr", crop)  # found in $IDU_MODEL_DIR
    (folder / "model.ckpt").write_bytes(b"")
    if importlib.util.find_spec("tsr") is None:
        install = r"needs TripoSR's `tsr` package .*git clone https://github.com/VAST-AI-Research/TripoSR"
        with pytest.raises(ModelNotAvailable, match=install):
            generate("triposr", crop, model=folder)
    trellis = tmp_path / "trellis"
    trellis.mkdir()
    (trellis / "pipeline.json").write_text("{}")
    if importlib.util.find_spec("trellis") is None:
        with pytest.raises(ModelNotAvailable, match=r"needs Microsoft's `trellis` package"):
            generate("trellis", crop, model=trellis)
    # a config.json that is not IDU's triplane format
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(ModelNotAvailable, match=r"not a triplane model \(config.json model_type 'dinov2'"):
        generate("triplane", crop, model=other)


def test_every_registered_generator_has_a_licence_that_allows_every_use():
    assert set(GENERATORS) >= {"triplane", "triposr", "trellis"}
    for name, spec in GENERATORS.items():
        assert licence_allowed(spec.licence), name
        if spec.default_model is not None:
            assert licence_allowed(MODELS[spec.default_model].licence), name
    assert {"MIT", "Apache-2.0"} <= set(ALLOWED_LICENCES) and licence_allowed("BSD-3-Clause")
    spec = GENERATORS["triposr"]
    with pytest.raises(AssetError, match="generator 'sf3d': licence Stability-AI-Community is not allowed"):
        register("sf3d", GeneratorSpec("sf3d", None, "Stability-AI-Community", spec.load, spec.run))
    assert "sf3d" not in GENERATORS
