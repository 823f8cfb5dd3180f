"""The toy world's metric backbones: trained by scripts/train_toyworld_backbones.py into one folder, loaded through
the backbone specs, normalised embeddings of any image size, and, after a few seconds of training, a CLIP that
prefers an image's own caption and a DINO stand-in that keeps two drawings of one object together."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch

from sdft.errors import UserError
from sdft.evaluation.backbones import load_clip, load_dino
from sdft.evaluation.features import ClipFeatures
from sdft.toyworld.encoder_probes import caption_ranking, object_ranking
from sdft.toyworld.encoder_training import doubling_steps, info_nce, learning_rate
from sdft.toyworld.encoders import END, PAD, START, UNKNOWN, ToyDinoFeatures, WorldTokenizer, world_token_ids

ROOT = Path(__file__).resolve().parents[1]
#: a small network on 32 px images; the shipped one is wider, on 64 px
TINY = ["--image-size", "32", "--widths", "16", "32", "64"]
STEPS = 100
#: drawings no training step saw
PROBE_SEED = 777


@pytest.fixture(scope="module")
def script():
    """The training script, imported from scripts/ as the benchmark tests import theirs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "scripts"))
        yield importlib.import_module("train_toyworld_backbones")


@pytest.fixture(scope="module")
def trained(script, tmp_path_factory) -> Path:
    """Both backbones after STEPS steps: about 10 s for the CLIP and 4 s for the DINO on one core (a second thread
    only waits on a busy shared CPU)."""
    folder = tmp_path_factory.mktemp("backbones") / "toyworld"
    options = ["--steps", str(STEPS), "--warmup", "5", "--lr", "3e-3", "--probe-count", "0", "--threads", "1", *TINY]
    return script.main(["--output", str(folder), "--seed", "0", "--clip-batch", "96", "--dino-batch", "32", *options])


def images(count: int, side: int, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(side)
    pixels = torch.randint(0, 256, (count, 3, side, side), generator=generator, dtype=torch.uint8)
    return pixels if dtype == torch.uint8 else pixels.to(dtype) / 255


def test_training_writes_both_backbones_and_how_they_were_trained(trained):
    files = sorted(str(path.relative_to(trained)) for path in trained.rglob("*") if path.is_file())
    assert files == [
        "clip/config.json",
        "clip/model.safetensors",
        "dino/config.json",
        "dino/model.safetensors",
        "training.json",
    ]
    record = json.loads((trained / "training.json").read_text())
    assert (record["seed"], record["steps"]) == (0, STEPS)
    for kind in ("clip", "dino"):
        assert record[kind]["steps"] == STEPS and record[kind]["step_seconds"] > 0
        losses = record[kind]["losses"]
        assert len(losses) == STEPS and sum(losses[-5:]) < sum(losses[:5])
    assert record["command"].startswith("python scripts/train_toyworld_backbones.py --output ")
    assert {"python", "torch", "open_clip"} <= set(record["versions"]) and record["machine"]


def test_specs_load_frozen_backbones_with_normalised_embeddings(trained):
    clip = load_clip(f"toyworld-clip:{trained}")
    dino = load_dino(f"toyworld-dino:{trained}")
    assert isinstance(clip, ClipFeatures) and isinstance(dino, ToyDinoFeatures)
    for features in (clip, dino):
        assert not features.training and not any(parameter.requires_grad for parameter in features.parameters())
    for batch in (images(3, 64), images(2, 48, torch.float32)):  # uint8 or float, any size
        for embeddings in (clip.encode_images(batch), dino(batch)):
            assert embeddings.shape == (len(batch), 64) and embeddings.dtype == torch.float32
            torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(len(batch)))
    texts = clip.encode_texts(["a red star on grass", "a photo of sks creature on water"])
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    same = load_clip(f"toyworld-clip:{trained / 'clip'}")  # the backbone's own folder loads too
    torch.testing.assert_close(same.encode_images(images(3, 64)), clip.encode_images(images(3, 64)))


def test_clip_prefers_the_matching_caption_after_a_short_training(trained):
    # Measured after 100 steps: 0.88 against another colour, 1.00 against another background (120 drawings, chance
    # 0.5); the same caption's other attributes come later (shape 0.57, pattern 0.48; at 64 px and 600 steps 0.93, 0.91)
    rates = caption_ranking(load_clip(f"toyworld-clip:{trained}"), PROBE_SEED, count=120)
    assert rates["caption_vs_color"] >= 0.7
    assert rates["caption_vs_background"] >= 0.9


def test_dino_keeps_two_drawings_of_one_object_together_after_a_short_training(trained):
    # Measured after 100 steps: 0.92 against any other object, 0.93 against the object in another colour (120
    # objects, chance 0.5); shape and pattern come later (0.61, 0.53; at 64 px and 600 steps 0.94, 0.93)
    rates = object_ranking(load_dino(f"toyworld-dino:{trained}"), PROBE_SEED, count=120)
    assert rates["object_vs_other"] >= 0.75
    assert rates["object_vs_color"] >= 0.75


def test_equal_seeds_give_equal_weights(script, tmp_path):
    def weights(name: str, seed: int) -> bytes:
        options = ["--steps", "3", "--backbones", "dino", "--dino-batch", "8", "--probe-count", "0", "--threads", "1"]
        options += TINY
        folder = script.main(["--output", str(tmp_path / name), "--seed", str(seed), *options])
        return (folder / "dino" / "model.safetensors").read_bytes()

    assert weights("first", 1) == weights("again", 1) != weights("other", 2)


def test_missing_weights_name_the_training_script(tmp_path):
    with pytest.raises(UserError, match="scripts/train_toyworld_backbones.py"):
        load_clip(f"toyworld-clip:{tmp_path}")
    with pytest.raises(UserError, match="toy-world dino"):
        load_dino(f"toyworld-dino:{tmp_path}")


def test_world_tokenizer_keeps_world_words_and_reads_others_as_unknown():
    tokenizer = WorldTokenizer(world_token_ids(), context_length=8)
    tokens = tokenizer(["a red star", "a sks star"])
    assert tokens.shape == (2, 8)
    assert tokens[0, 0] == START and tokens[0, 4] == END and (tokens[0, 5:] == PAD).all()
    assert tokens[0, 1:4].min() > END and tokens[1, 2] == UNKNOWN and tokens[1, 3] == tokens[0, 3]
    long = tokenizer(["a red star " * 10])[0]
    assert long[-1] == END and (long != PAD).all()  # cut prompts still end with the end token


def test_info_nce_by_hand():
    eye = torch.eye(2)
    # logits [[1, 0], [0, 1]] at scale 1: each row's cross-entropy is log(1 + e^-1)
    assert info_nce(eye, eye, torch.tensor(0.0)).item() == pytest.approx(math.log(1 + math.exp(-1)))
    alike = torch.ones(3, 4)
    assert info_nce(alike, alike, torch.tensor(2.0)).item() == pytest.approx(math.log(3))


def test_learning_rate_warms_up_then_decays_to_zero():
    rates = [learning_rate(step, steps=12, peak=1.0, warmup=4) for step in range(12)]
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert learning_rate(12, steps=12, peak=1.0, warmup=4) == pytest.approx(0.0)
    assert doubling_steps(25, 120) == [25, 50, 100, 120]
