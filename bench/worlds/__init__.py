"""Benchmark worlds: procedural places with ground truth for change detection (before / after captures).

A world is a courtyard of textured buildings around a paved plaza and a street, with props, lit by a sun
with cast shadows and sky light, rendered by ray casting (open3d) and shaded in numpy. The before capture
walks around the plaza and flies a drone ring over it; the after capture aims a few views at the changes
(an added crate, vehicle and person, a removed and a moved prop) under another sun, exposure and white
balance. Everything follows from the seed. Folder layout and gt.json format: bench/README.md.

Example::

    from bench.worlds import WORLD_PRESETS, generate_world

    world = generate_world(0, Path("worlds/s0"), "small")          # ~30 + 6 views at 320x240
    tiny = dataclasses.replace(WORLD_PRESETS["small"], width=96, height=72, num_before=6, num_after=3)
    generate_world(1, Path("worlds/tiny"), config=tiny)
"""

from .config import GENERATOR_VERSION, WORLD_PRESETS, WorldConfig
from .generate import contact_sheet, generate_world
from .layout import World, build_world
from .person import anny_available

__all__ = [
    "GENERATOR_VERSION",
    "WORLD_PRESETS",
    "WorldConfig",
    "World",
    "anny_available",
    "build_world",
    "contact_sheet",
    "generate_world",
]
