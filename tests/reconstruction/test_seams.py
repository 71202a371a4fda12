"""Seam refinement: only the Gaussians near an edit move, and the background a removed object hid fills in."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from bench.sample_scene import look_at, sample_splats
from reconstruction.cameras import Camera, ImageEntry, build_model
from reconstruction.merge import merge
from reconstruction.render import render
from reconstruction.seams import SeamConfig, box_pixels
from reconstruction.splat_ops import concat, in_box, select
from reconstruction.splats import FIELDS, Splats
from reconstruction.store import SceneStore

PROP = {"center": [1.0, -1.0, 0.5], "size": [1.2, 1.2, 1.0]}
CAM = Camera.pinhole(140, 140, 80, 60, 160, 120)
EYES = [[6, -7, 3], [7, 1, 3.5], [-3, -8, 4], [2, -9, 2.5], [8, -4, 5], [-1, -6, 6]]


def _prop(n: int = 1500) -> Splats:
    rng = np.random.default_rng(4)
    c, s = np.array(PROP["center"]), np.array(PROP["size"]) * 0.9
    p = Splats.empty(n, 1)
    p.means = (c + (rng.random((n, 3)) - 0.5) * s).astype(np.float32)
    p.scales[:] = np.log(0.06)
    p.opacities[:] = 3.0
    p.sh0[:] = [1.2, -1.0, -1.0]  # red
    return p


@pytest.fixture
def scenes(tmp_path):
    """(store, scene with the prop standing on a hole in the ground, the true after-state, photo folder)."""
    full = sample_splats(seed=1, density=0.35)
    under = in_box(full.means, PROP["center"], [1.3, 1.3, 1.4])
    base = concat([select(full, ~under), _prop()])  # the ground under the prop was never seen
    truth = full  # after: the prop is gone, the ground is there
    photos = tmp_path / "new"
    photos.mkdir()
    images = []
    for k, eye in enumerate(EYES):
        pose = look_at(np.array(eye, float), [1.0, -1.0, 0.3])
        rgb = render(truth, CAM, pose, background=(0, 0, 0), backend="torch").rgb * 1.15  # another exposure
        Image.fromarray((rgb.clamp(0, 1).numpy() * 255).astype(np.uint8)).save(photos / f"new_{k}.png")
        images.append({"name": f"new_{k}.png", "status": "registered", "camera": CAM.to_json(),
                       "cam_from_world": pose.to_json()})  # fmt: skip
    store = SceneStore(tmp_path / "store")
    before = [ImageEntry(f"b{k}.png", CAM, look_at(np.array([9 * np.cos(a), 9 * np.sin(a), 4]), [0, 0, 0.5]))
              for k, a in enumerate(np.linspace(0, 2 * np.pi, 6, endpoint=False))]  # fmt: skip
    for name in ("plain", "seams"):
        with store.scene(name).writer() as w:
            w.add_version(base, build_model(before, full.means[::50].astype(float)), before, reason="test")
    reg = {"images": images}
    return store, truth, photos, reg


def _decisions(photos, reg) -> dict:
    c1 = {"change_id": "c1", "action": "approve", "kind": "removed", "box": PROP}
    return {"base_version": 1, "photos": {"registration": reg, "images": str(photos)}, "decisions": [c1]}


def test_seam_refinement_fills_the_hole_and_leaves_the_rest(scenes, tmp_path):
    store, truth, photos, reg = scenes
    merge(store.scene("plain"), _decisions(photos, reg), tmp_path)
    out = merge(
        store.scene("seams"), _decisions(photos, reg), tmp_path, seams=SeamConfig(steps=40, max_side=160)
    )
    plain, refined = (
        store.scene("plain").version(2).load_splats(),
        store.scene("seams").version(2).load_splats(),
    )
    stats = store.scene("seams").version(2).meta["seams"]
    assert stats["fill"] > 0 and stats["optimised"] > 0 and stats["loss_last"] < stats["loss_first"]
    assert out["num_gaussians"] == len(plain) + stats["fill"]
    # only Gaussians near the edit changed; every other one is bit-identical and in its place
    changed = np.zeros(len(plain), bool)
    for f in FIELDS:
        a, b = getattr(plain, f), getattr(refined, f)[: len(plain)]
        changed |= ~np.all((a == b).reshape(len(a), -1), axis=1)
    assert 0 < changed.sum() <= stats["optimised"]
    grown = {"center": PROP["center"], "size": (np.array(PROP["size"]) * 1.5 + 0.6).tolist()}
    assert in_box(plain.means[changed], grown["center"], grown["size"]).all()
    # where the prop stood, the refined scene now looks like the place does (the photos' exposure aside)
    gains = []
    outside = []
    for eye in ([5, -8, 3], [-2, -7, 5]):
        pose = look_at(np.array(eye, float), [1.0, -1.0, 0.3])
        t = render(truth, CAM, pose, background=(0, 0, 0), backend="torch").rgb
        p = render(plain, CAM, pose, background=(0, 0, 0), backend="torch")
        r = render(refined, CAM, pose, background=(0, 0, 0), backend="torch").rgb
        hole = p.alpha < 0.9  # the plain merge leaves a hole there
        hole &= torch.from_numpy(box_pixels(grown, CAM, pose))
        assert hole.sum() > 30
        gains.append(float(((p.rgb - t)[hole] ** 2).mean() / ((r - t)[hole] ** 2).mean()))
        away = ~torch.from_numpy(box_pixels(PROP, CAM, pose))  # outside the edited box
        outside.append(float((r - p.rgb).abs()[away].mean()))
    assert min(gains) > 2.0  # squared error in the revealed region at least halved
    assert max(outside) <= 1 / 255  # away from the edited box the render is (almost) the plain merge's


def test_seam_refinement_needs_photos(scenes, tmp_path):
    store, *_ = scenes
    doc = {
        "base_version": 1,
        "decisions": [{"change_id": "c1", "action": "approve", "kind": "removed", "box": PROP}],
    }
    with pytest.raises(Exception, match="seam refinement needs the new photos"):
        merge(store.scene("plain"), doc, tmp_path, seams=SeamConfig())
    assert store.scene("plain").version_numbers() == [1]
    json.dumps(doc)
