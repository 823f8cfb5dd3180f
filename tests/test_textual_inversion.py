"""Textual inversion end to end on the tiny model: only the new rows learn, slim checkpoints, stock-loadable exports,
resume, clear errors, and the shipped config through the CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from training import (
    brief_fit,
    checkpointer,
    cpu_trainer,
    stock_images,
    stock_pipeline,
    trained_images,
    validation_loss,
)
from transformers import CLIPTextModel, CLIPTokenizer

from sdft.data import SubjectDataModule
from sdft.families import StableDiffusion
from sdft.families.base import Capabilities
from sdft.methods import TextualInversion
from sdft.methods.tokens import EMBEDDINGS_FILE, ExtendedEmbedding, PlaceholderTokens
from sdft.runs import apply_checkpoint
from sdft.tiny_models import tiny_clip_text_encoder

PLACEHOLDER = "<sks>"
PROMPT = f"a photo of {PLACEHOLDER} toy on the beach"
STEPS = 10


def textual_inversion(model_dir: Path, lr: float = 1e-2, **kwargs) -> TextualInversion:
    options = {"placeholder_token": PLACEHOLDER, "initializer_token": "toy", "num_vectors": 3, **kwargs}
    optimizer = lambda params: torch.optim.AdamW(params, lr=lr)  # noqa: E731
    return TextualInversion(StableDiffusion(str(model_dir)), optimizer=optimizer, **options)


def template_data(subject_dir: Path, instance_prompt: str = f"{PLACEHOLDER} toy") -> SubjectDataModule:
    return SubjectDataModule(
        str(subject_dir), instance_prompt, resolution=32, batch_size=2, random_flip=0.5, prompt_templates="object"
    )


def base_embeddings(model_dir: Path) -> torch.Tensor:
    return CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder").get_input_embeddings().weight.detach()


def test_extended_embedding_reads_old_ids_from_the_frozen_table_and_new_ids_from_the_rows():
    base = nn.Embedding(5, 3).requires_grad_(False)
    rows = torch.arange(6.0).view(2, 3)
    embedding = ExtendedEmbedding(base, rows)
    looked_up = embedding(torch.tensor([[0, 5, 4, 6, 5]]))
    assert torch.equal(looked_up[0], torch.stack([base.weight[0], rows[0], base.weight[4], rows[1], rows[0]]))
    assert torch.equal(embedding.weight, torch.cat([base.weight, rows])) and embedding.num_embeddings == 7
    looked_up.sum().backward()
    assert torch.equal(embedding.rows.grad, torch.tensor([[2.0] * 3, [1.0] * 3])) and base.weight.grad is None


class TwoEncoderFamily:
    """Stands in for an SDXL-like family: two text encoders of different widths, each with its own tokenizer."""

    capabilities = Capabilities(
        lora_components=("unet",),
        token_encoders=("text_encoder", "text_encoder_2"),
        embedding_keys=("clip_l", "clip_g"),
    )

    def __init__(self, model_dir: Path) -> None:
        self.encoders = {"text_encoder": tiny_clip_text_encoder(32), "text_encoder_2": tiny_clip_text_encoder(48)}
        self.tokenizer_of = {name: CLIPTokenizer.from_pretrained(model_dir / "tokenizer") for name in self.encoders}

    def token_encoders(self) -> dict[str, nn.Module]:
        return self.encoders

    def tokenizers(self) -> dict[str, CLIPTokenizer]:
        return self.tokenizer_of


def test_two_text_encoders_get_their_own_rows_and_the_sdxl_file_keys(tiny_sd1, tmp_path):
    family, tokens = TwoEncoderFamily(tiny_sd1), PlaceholderTokens(PLACEHOLDER, "toy", num_vectors=2)
    tokens.add_to(family)
    assert [p.shape for p in tokens.parameters(family)] == [(2, 32), (2, 48)]
    tokens.write(family, tmp_path)
    embeddings = load_file(tmp_path / EMBEDDINGS_FILE)
    assert {key: value.shape for key, value in embeddings.items()} == {"clip_l": (2, 32), "clip_g": (2, 48)}
    assert load_file(tmp_path / "sks.safetensors").keys() == embeddings.keys()


@dataclass
class Fit:
    model: TextualInversion
    checkpoint: Path
    loss_before: float
    loss_after: float


@pytest.fixture(scope="module")
def fit(tiny_sd1, subject_dir, tmp_path_factory) -> Fit:
    """Three vectors of ``<sks>`` trained for a few steps on the object templates, checkpointed at the end."""
    root = tmp_path_factory.mktemp("fit")
    model, data = textual_inversion(tiny_sd1), template_data(subject_dir)
    trainer = cpu_trainer(root, STEPS, [checkpointer(root, STEPS)])
    before = validation_loss(trainer, model, data)
    trainer.fit(model, datamodule=data)
    return Fit(model, root / "checkpoints" / f"step={STEPS}.ckpt", before, validation_loss(trainer, model, data))


def test_short_fit_lowers_the_loss_on_the_instance_images(fit):
    # The tiny random UNet attends almost evenly over all 77 text positions, so three new token vectors can move
    # its loss by about 1% at best; the fixed-noise validation loss must still fall by a clear, deterministic margin.
    assert fit.loss_after < 0.997 * fit.loss_before, (fit.loss_before, fit.loss_after)


def test_only_the_new_rows_change(fit, tiny_sd1):
    base = base_embeddings(tiny_sd1)
    table = fit.model.family.text_encoder.get_input_embeddings().weight
    assert table.shape == (base.shape[0] + 3, base.shape[1])
    assert torch.equal(table[: base.shape[0]], base)
    initializer = base[fit.model.family.tokenizer.convert_tokens_to_ids("toy</w>")]
    # every vector learns (moves ~0.07); one the prompts never spelled would drift only by weight decay (~3e-5)
    assert ((table[base.shape[0] :] - initializer).abs().amax(dim=1) > 1e-2).all()


def test_new_tokens_start_as_the_initializer_in_the_live_pipeline(tiny_sd1):
    model = textual_inversion(tiny_sd1)
    model.configure_model()
    assert model.tokens.expand([PROMPT]) == ["a photo of <sks> <sks>_1 <sks>_2 toy on the beach"]
    # every vector is the embedding of "toy": the untrained word reads as "toy toy toy"
    expected = stock_images(stock_pipeline(tiny_sd1), PROMPT.replace(PLACEHOLDER, "toy toy toy"))
    assert np.array_equal(trained_images(model, PROMPT), expected)


def test_checkpoint_holds_only_the_new_rows(fit):
    checkpoint = torch.load(fit.checkpoint, weights_only=False)
    (key,) = checkpoint["state_dict"]
    assert key.endswith("token_embedding.rows") and checkpoint["state_dict"][key].shape == (3, 32)
    assert torch.equal(checkpoint["state_dict"][key], fit.model.trainable_state_dict()[key])
    assert len(checkpoint["optimizer_states"][0]["state"]) == 1
    assert fit.checkpoint.stat().st_size < 100_000


def test_checkpoint_restores_the_embeddings_on_a_fresh_model(fit, tiny_sd1):
    restored = apply_checkpoint(textual_inversion(tiny_sd1), fit.checkpoint)
    trained_table = fit.model.family.text_encoder.get_input_embeddings().weight
    assert torch.equal(restored.family.text_encoder.get_input_embeddings().weight, trained_table)
    assert restored.family.tokenizer.convert_tokens_to_ids(f"{PLACEHOLDER}_2") == trained_table.shape[0] - 1


def test_stock_loader_reproduces_the_trained_images(fit, tiny_sd1, tmp_path):
    path = fit.model.export(tmp_path)
    assert path == tmp_path / EMBEDDINGS_FILE
    embeddings = load_file(path)
    assert list(embeddings) == [PLACEHOLDER] and embeddings[PLACEHOLDER].shape == (3, 32)
    pipeline = stock_pipeline(tiny_sd1)
    untrained = stock_images(pipeline, PROMPT.replace(PLACEHOLDER, "toy toy toy"))
    pipeline.load_textual_inversion(path)
    expected = trained_images(fit.model, PROMPT)
    assert np.abs(stock_images(pipeline, PROMPT) - expected).max() <= 1
    assert np.abs(untrained - expected).mean() > 1.0  # training changed the images: the equality above means something


def test_a1111_embedding_holds_the_same_vectors(fit, tiny_sd1, tmp_path):
    fit.model.export(tmp_path)
    a1111 = load_file(tmp_path / "sks.safetensors")
    assert list(a1111) == ["emb_params"]
    assert torch.equal(a1111["emb_params"], load_file(tmp_path / EMBEDDINGS_FILE)[PLACEHOLDER])
    pipeline = stock_pipeline(tiny_sd1)
    pipeline.load_textual_inversion(tmp_path / "sks.safetensors", token=PLACEHOLDER)
    assert np.abs(stock_images(pipeline, PROMPT) - trained_images(fit.model, PROMPT)).max() <= 1


def test_prompts_without_the_placeholder_are_refused(tiny_sd1, subject_dir, tmp_path):
    model, data = textual_inversion(tiny_sd1), template_data(subject_dir, instance_prompt="sks toy")
    with pytest.raises(ValueError, match=r"placeholder_token '<sks>' does not appear in data.instance_prompt"):
        cpu_trainer(tmp_path, 1).fit(model, datamodule=data)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"initializer_token": "teddybear"}, "initializer_token 'teddybear' encodes to 2 tokens"),
        ({"placeholder_token": "<|endoftext|>"}, "placeholder_token '<|endoftext|>' is taken"),
    ],
)
def test_unusable_words_name_the_config_key(tiny_sd1, options, key):
    model = textual_inversion(tiny_sd1, **options)
    with pytest.raises(ValueError, match=re.escape(f"model.init_args.{key}")):
        model.configure_model()
    assert len(model.family.tokenizer) == 49408  # nothing was added before the error


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"num_vectors": 0}, "num_vectors must be a positive integer"),
        ({"placeholder_token": "<>"}, "placeholder_token must be one word"),
        ({"placeholder_token": "<my dog>"}, "placeholder_token must be one word"),
    ],
)
def test_invalid_arguments_fail_at_construction(tiny_sd1, options, key):
    with pytest.raises(ValueError, match=f"model.init_args.{key}"):
        textual_inversion(tiny_sd1, **options)


def test_shipped_config_runs_through_the_cli(subject_dir, tmp_path):
    run = brief_fit("configs/sd15/textual_inversion.yaml", tmp_path, {"instance_dir": str(subject_dir)})
    final = run / "final"
    assert sorted(p.name for p in final.iterdir()) == sorted(
        ["README.md", EMBEDDINGS_FILE, "samples.png", "sks.safetensors"]
    )
    assert load_file(final / EMBEDDINGS_FILE)[PLACEHOLDER].shape == (1, 32)
    assert (run / "evaluation" / "selection.json").is_file()
