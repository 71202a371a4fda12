"""The splat container: one set of 3D Gaussians in the DESIGN.md conventions.

Fields (numpy arrays or torch tensors, float32 on disk):

- ``means``     [N, 3]     centres in the scene (COLMAP) frame
- ``quats``     [N, 4]     rotations, wxyz, unnormalised allowed
- ``scales``    [N, 3]     log standard deviations
- ``opacities`` [N]        logits
- ``sh0``       [N, 3]     SH degree-0 coefficients (INRIA ``f_dc_*``)
- ``shN``       [N, K, 3]  higher SH coefficients, K = 0, 3, 8 or 15 (degree 0..3)

Example::

    splats = Splats.empty(0)
    splats.validate("scene.ply")
    t = splats.to_torch("cuda")
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from .errors import SceneFormatError

SH_C0 = 0.28209479177387814
_K_TO_DEGREE = {0: 0, 3: 1, 8: 2, 15: 3}
FIELDS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per channel for ``degree`` (1, 4, 9, 16)."""
    return (degree + 1) ** 2


def _isfinite_all(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x).all())
    return bool(np.isfinite(x).all())


@dataclass
class Splats:
    means: Any  # [N, 3]
    quats: Any  # [N, 4] wxyz
    scales: Any  # [N, 3] log
    opacities: Any  # [N] logit
    sh0: Any  # [N, 3]
    shN: Any  # [N, K, 3]

    @classmethod
    def empty(cls, n: int, sh_degree: int = 0) -> Splats:
        """Zero-filled float32 numpy splats with identity rotations."""
        k = num_sh_bases(sh_degree) - 1
        quats = np.zeros((n, 4), np.float32)
        quats[:, 0] = 1.0
        return cls(
            means=np.zeros((n, 3), np.float32),
            quats=quats,
            scales=np.zeros((n, 3), np.float32),
            opacities=np.zeros((n,), np.float32),
            sh0=np.zeros((n, 3), np.float32),
            shN=np.zeros((n, k, 3), np.float32),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Splats:
        missing = [f for f in FIELDS if f not in d]
        if missing:
            raise SceneFormatError(f"splats: missing field(s) {', '.join(missing)}")
        return cls(**{f: d[f] for f in FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        k = int(self.shN.shape[1])
        if k not in _K_TO_DEGREE:
            raise SceneFormatError(f"splats: shN has {k} coefficients per channel (expected 0, 3, 8 or 15)")
        return _K_TO_DEGREE[k]

    def check_shapes(self, source: str = "splats") -> Splats:
        """Check shapes and SH degree only (cheap); raise SceneFormatError naming ``source``."""
        n = len(self)
        want = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 3)}
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise SceneFormatError(f"{source}: {name} has shape {got}, expected {shape}")
        shn = tuple(self.shN.shape)
        if len(shn) != 3 or shn[0] != n or shn[2] != 3 or shn[1] not in _K_TO_DEGREE:
            raise SceneFormatError(
                f"{source}: shN has shape {shn}, expected ({n}, K, 3) with K = 0, 3, 8 or 15 coefficients"
            )
        return self

    def validate(self, source: str = "splats") -> Splats:
        """Check shapes, SH degree and finiteness; raise SceneFormatError naming ``source``."""
        self.check_shapes(source)
        for name in FIELDS:
            if not _isfinite_all(getattr(self, name)):
                raise SceneFormatError(f"{source}: {name} holds NaN or Inf values")
        q = self.quats
        qn = (q * q).sum(-1)
        if bool((qn <= 1e-24).any()):
            raise SceneFormatError(f"{source}: quats holds zero-length quaternions")
        return self

    # -- conversions --------------------------------------------------------------------------
    def to_torch(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Splats:
        """Same splats as torch tensors (shares memory with numpy float32 arrays on CPU)."""
        out = {}
        for name in FIELDS:
            v = getattr(self, name)
            t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
            out[name] = t.to(device=device, dtype=dtype)
        return Splats(**out)

    def to_numpy(self) -> Splats:
        """Same splats as float32 numpy arrays (detached)."""
        out = {}
        for name in FIELDS:
            v = getattr(self, name)
            if isinstance(v, torch.Tensor):
                v = v.detach().cpu().numpy()
            out[name] = np.ascontiguousarray(v, dtype=np.float32)
        return Splats(**out)

    def nbytes(self) -> int:
        return int(
            sum(
                getattr(self, f).numel() * 4
                if isinstance(getattr(self, f), torch.Tensor)
                else getattr(self, f).nbytes
                for f in FIELDS
            )
        )

    def equal(self, other: Splats) -> bool:
        """Bit-exact equality of every field (numpy view)."""
        a, b = self.to_numpy(), other.to_numpy()
        return all(
            getattr(a, f).shape == getattr(b, f).shape and np.array_equal(getattr(a, f), getattr(b, f))
            for f in FIELDS
        )
