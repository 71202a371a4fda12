"""``bootstrap_scene`` through its deployment: SfM on the CPU, training tagged for the GPU pool."""

from __future__ import annotations

import pytest

from bench.bench_bootstrap import cached_capture
from flows import runs
from reconstruction.store import SceneStore

from ..reconstruction.test_sfm import CAPTURE
from .conftest import final, wait_for

pytestmark = pytest.mark.slow


def test_bootstrap_flow_builds_a_scene_from_photos(idu_services, tmp_path_factory):
    capture = cached_capture(tmp_path_factory.getbasetemp() / "flow_capture", **CAPTURE)
    ref = f"{idu_services.store}/built"
    options = {"preset": "fast", "iterations": 12, "max_side": 64}
    run = runs.start("bootstrap-scene", {"scene": ref, "images": str(capture / "images"), "options": options})
    out = runs.result(wait_for(run.id, final, 600))
    scene = SceneStore(idu_services.store).scene("built")
    assert out["version"] == 1 and scene.current_version() == 1
    assert out["sfm"]["num_registered"] == out["sfm"]["num_images"] == 10
    meta = scene.version(1).meta
    assert meta["flow_run_id"] == str(run.id) and meta["num_gaussians"] == out["num_gaussians"] > 0
    assert meta["lineage"]["train_config"]["iterations"] == 12
    tags = {t.name.rsplit("-", 1)[0]: set(t.tags) for t in runs.task_runs(run.id)}
    assert "gpu" in tags["train and write version"] and "gpu" not in tags["structure from motion"]
    # bad input: the run fails with the reason, nothing is written
    bad = runs.start(
        "bootstrap-scene",
        {"scene": f"{idu_services.store}/empty", "images": str(tmp_path_factory.mktemp("none"))},
    )
    with pytest.raises(runs.RunError, match="needs at least 2 photos, found 0"):
        runs.result(wait_for(bad.id, final, 300))
    assert not SceneStore(idu_services.store).scene("empty").exists
