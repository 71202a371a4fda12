"""Scene bootstrap: photos -> SfM -> training -> version 1, ground-truth alignment, nerfstudio, CLI."""

import dataclasses
import json
import os
import stat

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.bench_bootstrap import cached_capture
from reconstruction.bootstrap import (
    NERFSTUDIO_ENV,
    BootstrapConfig,
    bootstrap_scene,
    find_nerfstudio,
    nerfstudio_commands,
    read_reference_centres,
    work_folder,
)
from reconstruction.cameras import Pose
from reconstruction.errors import IDUError, SfMError
from reconstruction.sfm import SfMConfig, alignment_residuals
from reconstruction.store import SceneStore
from reconstruction.train import preset

from .test_sfm import CAPTURE

TINY = dataclasses.replace(
    preset("fast", iterations=30),
    max_side=80,
    refine_start=10,
    refine_every=10,
    refine_stop=25,
    sky_points=100,
)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return cached_capture(tmp_path_factory.getbasetemp() / "bootstrap_capture", **CAPTURE)


def test_bootstrap_writes_an_aligned_version_and_resumes(capture, tmp_path):
    scene = SceneStore(tmp_path / "store").scene("plaza")
    config = BootstrapConfig(train=TINY, progress=False)
    v = bootstrap_scene(capture / "images", scene, config, align_to=capture / "gt.json")
    assert v == 1 and scene.current_version() == 1
    ver = scene.version(1)
    meta = ver.meta
    assert meta["reason"] == "bootstrap" and meta["parent"] is None
    assert meta["test_psnr"] is not None and meta["test_psnr"] > 10
    lin = meta["lineage"]
    assert lin["source"]["format"] == "bootstrap" and lin["trainer"] == "cpu-gsplat"
    assert lin["sfm"]["num_registered"] == 10 and lin["train_config"]["iterations"] == 30
    assert lin["training"]["num_gaussians"] == meta["num_gaussians"]
    assert lin["alignment"]["residuals"]["rms"] < 0.1
    # the stored model is in the ground-truth frame, photos are in the pool
    ref = read_reference_centres(capture / "gt.json")
    assert alignment_residuals(ver.load_model(), ref)["rms"] < 0.1
    images = ver.images()
    assert len(images) == 10 and all(im.sha256 for im in images)
    # the splats moved with the model: they sit on its (aligned) points, and would not without the Sim3
    splats = ver.load_splats()
    rec = ver.load_model()
    xyz = torch.tensor(np.stack([rec.point3D(i).xyz for i in rec.point3D_ids()]), dtype=torch.float32)
    sim = lin["alignment"]["sim3"]
    R, t, scale = np.array(sim["rotation"]), np.array(sim["translation"]), sim["scale"]
    unaligned = ((splats.means - t) @ R / scale).astype(np.float32)  # back in the SfM frame
    near = float(torch.cdist(xyz, torch.from_numpy(splats.means)).min(1).values.median())
    far = float(torch.cdist(xyz, torch.from_numpy(unaligned)).min(1).values.median())
    assert near < 0.3 and far > 3 * near

    work = work_folder(scene, capture / "images", sorted(ref), config.sfm)
    assert work.parent == scene.root / ".work" and (work / "sfm" / "sparse" / "0").is_dir()
    log_size = (work / "sfm" / "colmap.log").stat().st_size
    v2 = bootstrap_scene(capture / "images", scene, config)  # again, without alignment: SfM is reused
    assert v2 == 2 and (work / "sfm" / "colmap.log").stat().st_size == log_size
    assert scene.version(2).meta["parent"] == 1 and scene.version(2).meta["lineage"]["alignment"] is None


def test_bootstrap_fails_cleanly_before_touching_the_store(capture, tmp_path):
    scene = SceneStore(tmp_path / "store").scene("s")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SfMError, match="no photos"):
        bootstrap_scene(empty, scene, BootstrapConfig(train=TINY, progress=False))
    with pytest.raises(IDUError, match="--trainer magic"):
        bootstrap_scene(capture / "images", scene, BootstrapConfig(trainer="magic"))
    with pytest.raises(IDUError, match="ground-truth file does not exist"):
        bootstrap_scene(capture / "images", scene, BootstrapConfig(train=TINY), align_to=tmp_path / "no.json")
    with pytest.raises(SfMError, match="10 photos, but SfM is asked to register at least 11"):
        bootstrap_scene(
            capture / "images",
            scene,
            BootstrapConfig(sfm=SfMConfig(min_registered=11), train=TINY, progress=False),
        )
    assert not scene.exists


def test_reference_centres_formats(tmp_path):
    pose = Pose(np.array([0.5, 0.5, -0.5, 0.5]), np.array([1.0, 2.0, 3.0]))
    view = {"name": "a.png", "cam_from_world": pose.to_json()}
    world = {"before": {"camera": "before", "images": [{**view, "path": "before/images/a.png"}]}, "after": {}}
    for doc in (world, {"views": [view]}, [view]):
        p = tmp_path / "gt.json"
        p.write_text(json.dumps(doc))
        got = read_reference_centres(p)
        assert list(got) == ["a.png"]
        np.testing.assert_allclose(got["a.png"], pose.center())
    p.write_text("{not json")
    with pytest.raises(IDUError, match="not valid JSON"):
        read_reference_centres(p)
    p.write_text(json.dumps({"views": [{"name": "a.png"}]}))
    with pytest.raises(IDUError, match="view 0 needs 'name' and 'cam_from_world'"):
        read_reference_centres(p)
    p.write_text(json.dumps({"something": 1}))
    with pytest.raises(IDUError, match="no views found"):
        read_reference_centres(p)


# -- nerfstudio: only the error and the command line (nerfstudio itself is not installed here) -------------
def test_nerfstudio_not_configured_names_the_variable(monkeypatch, tmp_path, capture):
    monkeypatch.delenv(NERFSTUDIO_ENV, raising=False)
    with pytest.raises(IDUError, match=f"set {NERFSTUDIO_ENV} to the folder holding ns-train and ns-export"):
        find_nerfstudio(BootstrapConfig(trainer="nerfstudio"))
    monkeypatch.setenv(NERFSTUDIO_ENV, str(tmp_path))
    with pytest.raises(IDUError, match=rf"ns-train, ns-export not found .* in {tmp_path}"):
        find_nerfstudio(BootstrapConfig(trainer="nerfstudio"))
    # checked before SfM starts: nothing is written
    scene = SceneStore(tmp_path / "store").scene("s")
    with pytest.raises(IDUError, match=NERFSTUDIO_ENV):
        bootstrap_scene(capture / "images", scene, BootstrapConfig(trainer="nerfstudio"))
    assert not (scene.root / ".work").exists()
    for b in ("ns-train", "ns-export"):
        (tmp_path / b).write_text("#!/bin/sh\nexit 0\n")
        os.chmod(tmp_path / b, stat.S_IRWXU)
    assert find_nerfstudio(BootstrapConfig(trainer="nerfstudio")) == tmp_path


def test_nerfstudio_command_lines(tmp_path):
    train, export, run_dir = nerfstudio_commands(
        tmp_path / "bin", tmp_path / "data", tmp_path / "out", 7000, ["--pipeline.model.sh-degree", "3"]
    )
    assert train[:2] == [str(tmp_path / "bin" / "ns-train"), "splatfacto"]
    assert train[train.index("--data") + 1] == str(tmp_path / "data")
    assert train[train.index("--output-dir") + 1] == str(tmp_path / "out")
    assert train[train.index("--max-num-iterations") + 1] == "7000"
    assert train[train.index("--viewer.quit-on-train-completion") + 1] == "True"
    # method arguments come before the dataparser subcommand, its own arguments after
    i = train.index("colmap")
    assert train.index("--pipeline.model.sh-degree") < i
    assert train[train.index("--colmap-path") + 1] == "sparse/0" and train.index("--colmap-path") > i
    assert train[train.index("--load-3D-points") + 1] == "True"
    assert run_dir == tmp_path / "out" / "bootstrap" / "splatfacto" / "run"
    assert export[:2] == [str(tmp_path / "bin" / "ns-export"), "gaussian-splat"]
    assert export[export.index("--load-config") + 1] == str(run_dir / "config.yml")


# -- CLI -----------------------------------------------------------------------------------------------
def test_cli_scene_bootstrap(capture, tmp_path):
    from flows.cli import app

    runner = CliRunner()
    args = ["scene", "bootstrap", str(capture / "images"), "--store", str(tmp_path / "store"), "--name", "p"]
    res = runner.invoke(
        app, [*args, "--preset", "fast", "--iterations", "12", "--max-side", "64", "--align-to",
              str(capture / "gt.json"), "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["version"] == 1 and out["num_registered"] == 10 and out["trainer"] == "cpu-gsplat"
    assert out["alignment"]["residuals"]["rms"] < 0.1 and out["test_psnr"] is not None
    info = SceneStore(tmp_path / "store").scene("p").version(1).meta
    assert info["lineage"]["train_config"]["iterations"] == 12
    assert info["lineage"]["train_config"]["max_side"] == 64

    res = runner.invoke(app, [*args, "--preset", "nope"])
    assert res.exit_code == 1 and "error: training preset 'nope'" in res.output
    res = runner.invoke(
        app, ["scene", "bootstrap", str(tmp_path / "none"), "--store", str(tmp_path), "--name", "q"]
    )
    assert res.exit_code == 1 and "error:" in res.output and "does not exist" in res.output
