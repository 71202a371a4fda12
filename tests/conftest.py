"""Shared fixtures: tiny scenes made by the project's own code (no downloads, no ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory) -> Path:
    """A COLMAP dataset folder (images/, sparse/0, splats.ply) of a small sample place."""
    from bench.sample_scene import make_sample_dataset

    return make_sample_dataset(
        tmp_path_factory.mktemp("sample"), seed=1, num_views=4, width=80, height=60, density=0.25
    )


@pytest.fixture
def store_with_scene(tmp_path, sample_dataset):
    """A store holding the sample place as scene ``s`` version 1."""
    from reconstruction.importers import import_scene
    from reconstruction.store import SceneStore

    store = SceneStore(tmp_path / "store")
    scene = store.scene("s")
    import_scene(scene, sample_dataset, "colmap", sample_dataset / "splats.ply")
    return scene


@pytest.fixture(scope="session")
def bench_world():
    """(world folder, before-scene): the small benchmark world (seed 0) and its scene bootstrapped with the
    known before-cameras; generated once per generator version and cached (bench/fixtures.py)."""
    from bench.fixtures import fixture_world_and_scene

    return fixture_world_and_scene()
