"""nerfstudio splatfacto import, round-tripped through the project's own fixture writer (no nerfstudio)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from reconstruction.cameras import quat_to_matrix
from reconstruction.errors import SceneFormatError
from reconstruction.nerfstudio import (
    COLMAP_TO_NERFSTUDIO,
    inspect_splatfacto,
    load_config,
    read_splatfacto,
    splatfacto_data_path,
    write_splatfacto_fixture,
)
from reconstruction.splats import Splats


def rand_splats(n: int, degree: int = 3, seed: int = 0) -> Splats:
    r = np.random.default_rng(seed)
    k = (degree + 1) ** 2 - 1
    return Splats(
        means=r.uniform(-5, 5, (n, 3)).astype(np.float32),
        quats=r.standard_normal((n, 4)).astype(np.float32),
        scales=r.uniform(-5, -1, (n, 3)).astype(np.float32),
        opacities=r.standard_normal(n).astype(np.float32),
        sh0=r.uniform(-1, 1, (n, 3)).astype(np.float32),
        shN=r.uniform(-0.5, 0.5, (n, k, 3)).astype(np.float32),
    )


def random_rigid(seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    T = np.zeros((3, 4))
    T[:, :3] = quat_to_matrix(r.standard_normal(4))
    T[:, 3] = r.uniform(-3, 3, 3)
    return T


def assert_same(a: Splats, b: Splats, atol: float = 1e-5):
    for f in ("means", "quats", "scales", "opacities", "sh0", "shN"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.shape == y.shape, f
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5, err_msg=f)


@pytest.mark.parametrize("assume", [True, False])
@pytest.mark.parametrize("degree", [3, 1])
def test_import_round_trip(tmp_path, assume, degree):
    s = rand_splats(300, degree)
    write_splatfacto_fixture(
        tmp_path, s, random_rigid(degree), 0.137, assume_colmap_world_coordinate_convention=assume
    )
    out = read_splatfacto(tmp_path)
    assert out.sh_degree == degree
    assert_same(out, s)
    assert inspect_splatfacto(tmp_path).assume_colmap_world_coordinate_convention is assume


def test_sh_degree_0_logit_colours(tmp_path):
    s = rand_splats(50, 0)
    write_splatfacto_fixture(tmp_path, s, random_rigid(3), 2.0)
    ckpt = torch.load(next((tmp_path / "nerfstudio_models").glob("*.ckpt")), weights_only=False)
    dc = ckpt["pipeline"]["_model.gauss_params.features_dc"].numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-dc)), 0.5 + 0.28209479177387814 * s.sh0, atol=1e-6)
    assert_same(read_splatfacto(tmp_path), s)


def test_saved_transform_contains_the_axis_swap(tmp_path):
    """With no auto-orientation, nerfstudio's frame is S @ p: COLMAP's -y (up) becomes +z."""
    s = rand_splats(20, 1)
    write_splatfacto_fixture(tmp_path, s, np.eye(3, 4), 1.0, orientation_method="none", center_method="none")
    T = np.asarray(json.loads((tmp_path / "dataparser_transforms.json").read_text())["transform"])
    np.testing.assert_array_equal(T[:, :3], COLMAP_TO_NERFSTUDIO)
    ns = read_splatfacto(tmp_path, colmap_frame=False)
    x, y, z = s.means.T
    np.testing.assert_allclose(ns.means, np.stack([x, z, -y], 1), atol=1e-6)
    assert_same(read_splatfacto(tmp_path), s)


def test_colmap_frame_false_returns_checkpoint_values(tmp_path):
    s = rand_splats(30, 2)
    write_splatfacto_fixture(tmp_path, s, random_rigid(5), 0.5)
    ckpt = torch.load(next((tmp_path / "nerfstudio_models").glob("*.ckpt")), weights_only=False)["pipeline"]
    ns = read_splatfacto(tmp_path / "config.yml", colmap_frame=False)
    np.testing.assert_array_equal(ns.means, ckpt["_model.gauss_params.means"].numpy())
    np.testing.assert_array_equal(ns.opacities, ckpt["_model.gauss_params.opacities"].numpy()[:, 0])
    (tmp_path / "dataparser_transforms.json").unlink()
    assert len(read_splatfacto(tmp_path, colmap_frame=False)) == 30  # the json is only needed for the frame


def test_highest_step_wins(tmp_path):
    s = rand_splats(10, 1)
    write_splatfacto_fixture(tmp_path, s, random_rigid(1), 1.0, step=29999)
    models = tmp_path / "nerfstudio_models"
    write_splatfacto_fixture(tmp_path / "old", rand_splats(7, 1, seed=9), random_rigid(1), 1.0, step=500)
    shutil.copy(tmp_path / "old/nerfstudio_models/step-000000500.ckpt", models)
    (models / "notes.txt").write_text("not a checkpoint")
    run = inspect_splatfacto(tmp_path)
    assert run.step == 29999 and run.checkpoint.name == "step-000029999.ckpt"
    assert len(read_splatfacto(tmp_path)) == 10


def test_config_yaml_with_python_tags(tmp_path):
    write_splatfacto_fixture(tmp_path, rand_splats(3, 3), random_rigid(), 1.0, data="/datasets/garden")
    text = (tmp_path / "config.yml").read_text()
    assert "!!python/object:nerfstudio" in text and "!!python/name:" in text and "&id001" in text
    cfg = load_config(tmp_path / "config.yml")
    dp = cfg["pipeline"]["datamanager"]["dataparser"]
    assert dp["__class__"] == "nerfstudio.data.dataparsers.colmap_dataparser.ColmapDataParserConfig"
    assert dp["_target"] == "nerfstudio.data.dataparsers.colmap_dataparser.ColmapDataParser"
    assert str(dp["colmap_path"]) == "colmap/sparse/0"
    run = inspect_splatfacto(tmp_path)
    assert str(run.data) == "/datasets/garden" and run.sh_degree == 3 and run.method_name == "splatfacto"
    assert run.assume_colmap_world_coordinate_convention is True


# -- errors ---------------------------------------------------------------------------------------------
def _fixture(tmp_path):
    write_splatfacto_fixture(tmp_path, rand_splats(8, 3), random_rigid(2), 0.8)
    return tmp_path


def _ckpt_path(tmp_path):
    return next((tmp_path / "nerfstudio_models").glob("*.ckpt"))


def _edit_ckpt(tmp_path, edit):
    p = _ckpt_path(tmp_path)
    ckpt = torch.load(p, weights_only=False)
    edit(ckpt)
    torch.save(ckpt, p)


class NotAllowed:  # pickled into a checkpoint: weights_only refuses it
    pass


def _nerfacto_state(c):
    c["pipeline"] = {"_model.field.mlp.params": torch.zeros(3)}


ERRORS = {  # case: (break the fixture, file named in the message, pattern)
    "no config": (lambda t: (t / "config.yml").unlink(), "config.yml", "does not exist"),
    "bad yaml": (lambda t: (t / "config.yml").write_text("a: [1, 2\n"), "config.yml", "not valid YAML"),
    "no checkpoint": (lambda t: _ckpt_path(t).unlink(), "", "no nerfstudio_models/step-"),
    "no model dir": (lambda t: shutil.rmtree(t / "nerfstudio_models"), "", "checkpoint"),
    "no transforms": (lambda t: (t / "dataparser_transforms.json").unlink(), "dataparser_transforms.json",
                      "does not exist"),
    "bad transforms": (lambda t: (t / "dataparser_transforms.json").write_text('{"transform": [[1, 0]]}'),
                       "dataparser_transforms.json", "transform|scale"),
    "not a rotation": (lambda t: (t / "dataparser_transforms.json").write_text(
        json.dumps({"transform": (np.eye(3, 4) * 2).tolist(), "scale": 1.0})),
        "dataparser_transforms.json", "not a rotation"),
    "no gauss_params": (lambda t: _edit_ckpt(t, _nerfacto_state), ".ckpt", "no splatfacto Gaussians"),
    "no pipeline": (lambda t: _edit_ckpt(t, lambda c: c.pop("pipeline")), ".ckpt", "no 'pipeline'"),
    "quats shape": (lambda t: _edit_ckpt(t, lambda c: c["pipeline"].__setitem__(
        "_model.gauss_params.quats", torch.zeros(8, 3))), ".ckpt", r"quats has shape \(8, 3\), exp"),
    "rest shape": (lambda t: _edit_ckpt(t, lambda c: c["pipeline"].__setitem__(
        "_model.gauss_params.features_rest", torch.zeros(8, 5, 3))), ".ckpt", "features_rest has shape"),
    "rows differ": (lambda t: _edit_ckpt(t, lambda c: c["pipeline"].__setitem__(
        "_model.gauss_params.scales", torch.zeros(7, 3))), ".ckpt", "scales has shape"),
    "unsafe pickle": (lambda t: _edit_ckpt(t, lambda c: c.__setitem__("extra", NotAllowed())), ".ckpt",
                      "weights_only"),
    "not a checkpoint": (lambda t: _ckpt_path(t).write_bytes(b"garbage"), ".ckpt", "cannot be read"),
    "nan means": (lambda t: _edit_ckpt(t, lambda c: c["pipeline"]["_model.gauss_params.means"].__setitem__(
        (0, 0), float("nan"))), ".ckpt", "means holds NaN"),
    "sh_degree mismatch": (lambda t: (t / "config.yml").write_text(
        (t / "config.yml").read_text().replace("sh_degree: 3", "sh_degree: 2")), ".ckpt", "sh_degree 2"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_name_the_file(tmp_path, case):
    edit, filename, pattern = ERRORS[case]
    edit(_fixture(tmp_path))
    with pytest.raises(SceneFormatError, match=pattern) as ei:
        read_splatfacto(tmp_path)
    msg = str(ei.value)
    assert str(tmp_path) in msg and filename in msg and "\n" not in msg


def test_missing_folder(tmp_path):
    with pytest.raises(SceneFormatError, match="does not exist"):
        read_splatfacto(tmp_path / "nope")


def test_splatfacto_data_path(tmp_path, monkeypatch):
    run = tmp_path / "outputs" / "scene" / "splatfacto" / "2025-01-01_000000"
    write_splatfacto_fixture(run, rand_splats(3, 0), np.eye(3, 4), 1.0, data="data/scene")
    monkeypatch.chdir(tmp_path / "outputs")  # not the training directory
    assert splatfacto_data_path(run) == Path("data/scene")  # nothing exists: as written
    (tmp_path / "data" / "scene").mkdir(parents=True)
    assert splatfacto_data_path(run) == tmp_path / "data" / "scene"  # found from the run folder
    write_splatfacto_fixture(run, rand_splats(3, 0), np.eye(3, 4), 1.0, data=str(tmp_path / "abs"))
    (tmp_path / "abs").mkdir()
    (tmp_path / "abs" / "transforms.json").write_text("{}")
    assert splatfacto_data_path(run) == tmp_path / "abs"
