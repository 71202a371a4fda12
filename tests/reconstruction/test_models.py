"""Hub models behind the registry: offline resolution, DINOv2 loading and global descriptors, retrieval.

The weights of the real models cannot be downloaded here: the tests build tiny DINOv2 models from a config
(random weights) and load them through the same code path as a downloaded one.
"""

import json

import numpy as np
import pytest
import torch

from reconstruction.models import (
    MODEL_DIR_ENV,
    MODELS,
    ModelNotAvailable,
    global_descriptors,
    load_dinov2,
    resolve,
)


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=56, patch_size=14)  # fmt: skip
    folder = tmp_path_factory.mktemp("models") / "tiny-dinov2"
    Dinov2Model(cfg).save_pretrained(folder)
    return folder


def test_resolve_finds_folders_and_the_model_dir_and_says_where_weights_go(
    tiny_dinov2, tmp_path, monkeypatch
):
    assert resolve(tiny_dinov2) == tiny_dinov2
    with pytest.raises(ModelNotAvailable, match="not a model folder"):
        resolve(tmp_path)
    with pytest.raises(ModelNotAvailable, match="neither a folder nor a registered name"):
        resolve("no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path / "models"))
    with pytest.raises(
        ModelNotAvailable, match=r"facebook/dinov2-small, Apache-2.0\) is not on this machine"
    ):
        resolve("dinov2-small")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "dinov2-small").symlink_to(tiny_dinov2)
    assert resolve("dinov2-small") == tmp_path / "models" / "dinov2-small"
    assert all(spec.licence in ("Apache-2.0", "MIT") for spec in MODELS.values())  # no restrictive default


def test_global_descriptors_are_normalised_and_tell_images_apart(tiny_dinov2):
    model = load_dinov2(tiny_dinov2)
    assert load_dinov2(tiny_dinov2) is model  # loaded once per process
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    b = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    d = global_descriptors(model, [a, a, b, a[..., 0]], side=56)
    assert d.shape == (4, 64) and np.allclose(np.linalg.norm(d, axis=1), 1, atol=1e-5)
    assert np.allclose(d[0], d[1]) and not np.allclose(d[0], d[2], atol=1e-3)
    bad = tiny_dinov2.parent / "broken"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "dinov2"}))
    with pytest.raises(ModelNotAvailable, match="cannot load a DINOv2 model"):
        load_dinov2(bad)


def test_registration_with_learned_retrieval(tiny_dinov2, bench_world, tmp_path):
    """The DINOv2 retrieval path end to end (random tiny weights: retrieval order is arbitrary, so every
    scene photo is a candidate; what is tested is the plumbing and the index kept per model)."""
    from PIL import Image

    from reconstruction.registration import RegistrationConfig, register_photos, scene_index

    world, scene = bench_world
    cfg = RegistrationConfig(retrieval="dinov2", retrieval_model=str(tiny_dinov2), num_candidates=30)
    index = scene_index(scene.version(), cfg)
    assert index.retrieval == "dinov2" and index.global_desc.shape == (len(index.names), 64)
    assert index.path != scene_index(scene.version()).path  # one index per retrieval backend
    (tmp_path / "p").mkdir()
    Image.open(world / "before" / "images" / index.names[3]).save(tmp_path / "p" / "again.png")
    doc = register_photos(scene.version(), tmp_path / "p", cfg)
    (r,) = doc["images"]
    assert r["status"] == "registered" and len(r["retrieved"]) == 30
    with pytest.raises(ModelNotAvailable):
        missing = RegistrationConfig(retrieval="dinov2", retrieval_model="no-such-model")
        register_photos(scene.version(), tmp_path / "p", missing)
