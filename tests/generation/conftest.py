"""Shared fixtures of the generation tests: a tiny image-to-3D model fitted here (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generation.image_to_3d import TriplaneConfig, TriplaneField

RED = (1.0, 0.0, 0.0)


def red_disc_crop(size: int = 48) -> np.ndarray:
    """A photo crop of a red ball: RGBA uint8, the disc in alpha."""
    yy, xx = np.mgrid[:size, :size] + 0.5
    inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 <= (0.4 * size) ** 2
    img = np.zeros((size, size, 4), np.uint8)
    img[inside] = (220, 20, 20, 255)
    img[~inside, :3] = 90  # background colour, masked out
    return img


@pytest.fixture(scope="module")
def sphere_model(tmp_path_factory):
    """A tiny triplane field fitted to a red sphere of radius 0.5 (density from the signed distance)."""
    torch.manual_seed(0)
    cfg = TriplaneConfig(image_size=32, encoder_channels=8, encoder_layers=2, plane_res=16,
                         plane_channels=8, hidden=16, threshold=5.0)  # fmt: skip
    field = TriplaneField(cfg)
    crop = red_disc_crop()
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small run fastest on one thread (and far faster on a busy machine)
    try:
        fit(field, crop, opt, g)
    finally:
        torch.set_num_threads(threads)
    folder = field.save_pretrained(tmp_path_factory.mktemp("models") / "sphere")
    return folder, crop


def fit(field: TriplaneField, crop: np.ndarray, opt: torch.optim.Optimizer, g: torch.Generator) -> None:
    for _ in range(300):
        uniform = torch.rand(1024, 3, generator=g) * 2 - 1
        d = torch.nn.functional.normalize(torch.randn(1024, 3, generator=g), dim=1)
        shell = d * (0.5 + 0.1 * torch.randn(1024, 1, generator=g))
        pts = torch.cat([uniform, shell])
        sdf = pts.norm(dim=1) - 0.5
        target = 10 * torch.sigmoid(-sdf / 0.05)  # 10 inside, 0 outside, 5 (the threshold) on the sphere
        density, rgb = field.query(field.planes_for(crop), pts)
        near = sdf.abs() < 0.15
        loss = ((density - target) / 10).pow(2).mean() + (rgb[near] - torch.tensor(RED)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
