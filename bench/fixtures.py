"""The test fixture every stage is judged on: the small benchmark world and its bootstrapped scene.

Made by the project's own code (:func:`bench.worlds.generate_world`, :func:`bench.runner.cached_bootstrap`)
and cached under ``IDU_CACHE_DIR`` (default ``~/.cache/idu``), keyed by the generator's version: the
first test session on a machine pays for it (about a minute to generate, one or two to bootstrap on
2 cores), later ones reuse it. The scene is bootstrapped with the world's known before-cameras
(``poses="known"``), so that a stage test measures that stage against ground truth, not SfM's drift.

Example::

    world, scene = fixture_world_and_scene()
    gt = json.loads((world / "gt.json").read_text())
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from reconstruction._torch_rasterizer import engine_override
from reconstruction.bootstrap import BootstrapConfig
from reconstruction.store import Scene
from reconstruction.train import preset

from .runner import BENCH_SFM, cache_root, cached_bootstrap
from .worlds import GENERATOR_VERSION, WORLD_PRESETS, generate_world

FIXTURE_SEED = 0
FIXTURE_SIZE = "small"


def fixture_config() -> BootstrapConfig:
    """How the fixture scene is bootstrapped: the "fast" preset, known poses, COLMAP on one thread (the
    benchmark runner's BENCH_SFM: the same scene on every machine, which the tests expect)."""
    sfm = dataclasses.replace(BENCH_SFM)
    return BootstrapConfig(sfm=sfm, train=dataclasses.replace(preset("fast")), progress=False)


def fixture_world(root: Path | None = None) -> Path:
    """The small world of seed 0, its person undressed (``WorldConfig.clothes``: the world of generator 1.0,
    byte for byte, which the stage and flow tests were written for), generated once per generator version
    under ``root`` (default: the cache)."""
    root = Path(root) if root is not None else cache_root() / "worlds"
    world = root / f"{FIXTURE_SIZE}-{FIXTURE_SEED}-{GENERATOR_VERSION}-bare"
    gt = world / "gt.json"
    if gt.is_file():
        try:
            if json.loads(gt.read_text()).get("generator_version") == GENERATOR_VERSION:
                return world
        except json.JSONDecodeError:
            pass  # a damaged cache entry is regenerated (generate_world replaces it atomically)
    config = dataclasses.replace(WORLD_PRESETS[FIXTURE_SIZE], clothes=False)
    return generate_world(FIXTURE_SEED, world, FIXTURE_SIZE, config)


def fixture_world_and_scene(root: Path | None = None) -> tuple[Path, Scene]:
    """The fixture world and its before-scene (version 1 in the ground-truth frame), both cached."""
    world = fixture_world(root)
    gt = json.loads((world / "gt.json").read_text())
    # Trained with the torch compositor: training is chaotic (float rounding flips a few densification
    # decisions, and the random draws of the splits follow), and the stage tests' figures belong to the scene
    # this draw gives; the compiled engine's scene differs (README, detection).
    with engine_override("torch"):
        scene = cached_bootstrap(world, gt, world / "before" / "images", fixture_config(), "before", "known")
    return world, scene


def render_world_view(
    seed: int,
    pose,
    camera,
    capture: str = "before",
    exposure_stops: float = 0.0,
    noise_seed: int = 0,
    light: str | None = None,
    white_balance: tuple[float, float, float] = (1.0, 1.0, 1.0),
    clothes: bool = False,
):
    """A photo [H, W, 3] uint8 of world ``seed`` (its ``before`` or ``after`` state; the light of ``light``,
    default the same capture) from any pose, by the world generator's own renderer: new photos for stage
    tests (e.g. of the unchanged place from a pose no before-view had, under the after-capture's sun).
    ``clothes``: the person dressed (default: undressed, as in the test fixture)."""
    import numpy as np

    from .worlds.layout import build_world
    from .worlds.render import Geometry, Lighting, Photometric, develop, render_radiance

    world = build_world(seed, with_person=capture == "after", clothes=clothes)
    geo = Geometry(world.objects(capture))
    sun = world.sun_before if (light or capture) == "before" else world.sun_after
    rad = render_radiance(geo, camera, pose, Lighting(sun), 2, 4)
    return develop(rad, Photometric(exposure_stops, tuple(white_balance)), np.random.default_rng(noise_seed))


__all__ = [
    "FIXTURE_SEED", "FIXTURE_SIZE", "fixture_config", "fixture_world", "fixture_world_and_scene",
    "render_world_view",
]  # fmt: skip
