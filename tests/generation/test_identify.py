"""The classifier backend that labels changes (generation/identify.py), with a tiny CLIP built here."""

from __future__ import annotations

import numpy as np
import pytest

from generation.identify import LABELS, identify
from reconstruction.models import ModelNotAvailable, resolve


def tiny_clip(folder):
    """A CLIP with random weights and a character-level BPE vocabulary, saved like a hub model."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 128,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )  # fmt: skip
    import torch

    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("models") / "tiny-clip")


def crops(seed: int, n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 5 * i, 30, 3), dtype=np.uint8) for i in range(n)]


def test_clip_labels_changes_through_the_registry(clip_folder):
    assert resolve(clip_folder) == clip_folder
    label, scores = identify(crops(0), clip_folder, min_probability=0.0)
    assert set(scores) == set(LABELS) and np.isclose(sum(scores.values()), 1.0, atol=1e-5)
    assert label == max(scores, key=scores.get)
    # the same crops, the same answer; other crops, other probabilities
    assert identify(crops(0), clip_folder, min_probability=0.0) == (label, scores)
    assert identify(crops(1), clip_folder, min_probability=0.0)[1] != scores
    # not sure enough: the reviewer labels it
    assert identify(crops(0), clip_folder, min_probability=0.99) == (None, scores)
    assert identify([], clip_folder) == (None, {})


def test_missing_weights_and_unknown_backends_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("IDU_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ModelNotAvailable, match=r"openai/clip-vit-base-patch32, MIT\) is not on this machine"
    ):
        identify(crops(0), "clip-vit-b32")
    with pytest.raises(ModelNotAvailable, match="classifier 'sam'"):
        identify(crops(0), "clip-vit-b32", backend="sam")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailable, match="cannot load a CLIP model"):
        identify(crops(0), tmp_path / "broken")
