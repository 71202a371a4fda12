"""The world generator's typed config and its presets (``small``, ``medium``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Bump when the same seed and config would give different files (it is part of cache keys downstream).
GENERATOR_VERSION = "idu-worlds-1.1"


@dataclass(frozen=True)
class WorldConfig:
    """How a world is captured. The place itself depends only on the seed (and ``person``)."""

    width: int = 320
    """Image width in pixels (both captures)."""
    height: int = 240
    """Image height in pixels (both captures)."""
    focal: float = 0.85
    """Focal length as a fraction of the image width: fx = fy = focal * width (PINHOLE, centred)."""
    num_before: int = 30
    """Views of the before capture: a walk-around ring at eye height, then an elevated drone-like ring."""
    elevated_fraction: float = 0.2
    """Share of the before views taken from the elevated ring."""
    num_after: int = 6
    """Views of the after capture, each aimed at one change from a varied (often novel) pose."""
    supersample: int = 2
    """Samples per pixel along each axis (anti-aliasing; the cost grows with its square)."""
    ao_rays: int = 4
    """Ambient-occlusion rays per sample (0 turns ambient occlusion off)."""
    person: bool = True
    """Add a person made with anny (a world without anny installed has none and says so on stderr)."""
    clothes: bool = True
    """Dress the person (``bench/README.md``); off, the body as anny makes it: the test fixture, whose
    stage and flow tests were written for generator 1.0's world (this one, byte for byte)."""
    noise: float = 1.0
    """Scale of the sensor noise (0: none)."""
    after_candidates: int = 60
    """Candidate poses tried per after view before taking the best one seen."""
    thumb_width: int = 160
    """Width of a thumbnail in contact_sheet.png."""
    changes: bool = True
    """False: the after-capture sees the before-place (nothing added, removed or moved) under the after
    capture's light and exposures, from the same kind of poses: every change a detector reports is false."""
    workers: int = 0
    """Rendering processes (0: automatic, several only for long renders; 1: in this process). Output does
    not depend on it."""

    def __post_init__(self) -> None:
        from reconstruction.errors import IDUError

        checks = [
            (self.width >= 16 and self.height >= 16, "width and height must be >= 16 pixels"),
            (0.2 <= self.focal <= 5.0, "focal must be in [0.2, 5] (a fraction of the width)"),
            (self.num_before >= 2, "num_before must be >= 2"),
            (self.num_after >= 1, "num_after must be >= 1"),
            (0.0 <= self.elevated_fraction < 1.0, "elevated_fraction must be in [0, 1)"),
            (1 <= self.supersample <= 4, "supersample must be 1..4"),
            (0 <= self.ao_rays <= 16, "ao_rays must be 0..16"),
            (self.workers >= 0, "workers must be >= 0 (0: automatic)"),
        ]
        for ok, msg in checks:
            if not ok:
                raise IDUError(f"world config: {msg}")

    def to_json(self) -> dict:
        """The fields that shape the output (``workers`` does not)."""
        d = asdict(self)
        d.pop("workers")
        if d["changes"]:  # the default is left out: worlds written before the option stay byte-identical
            d.pop("changes")
        return d


WORLD_PRESETS: dict[str, WorldConfig] = {
    "small": WorldConfig(),
    "medium": WorldConfig(width=640, height=480, num_before=80, num_after=12, ao_rays=3, thumb_width=128),
}
