"""SDXL on its tiny offline model: the micro-conditioning from the real data path, the two text encoders as the stock
pipeline reads them, the fp32 VAE, and every method's export loaded by diffusers' own SDXL loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.data import default_collate
from training import (
    PROMPT,
    Fit,
    adamw,
    brief_fit,
    cpu_trainer,
    fit,
    full_tuner,
    loaded,
    lora_tuner,
    resumed_losses,
    sampled_latents,
    stock_images,
    stock_pipeline,
    subject_data,
    trained_images,
    training_noise,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from sdft.data.images import read_resized
from sdft.data.sampling import AugmentedImages
from sdft.errors import UserError
from sdft.families import StableDiffusionXL
from sdft.families.stable_diffusion_xl import micro_conditioning
from sdft.methods import LoRAFineTuner, TextualInversion
from sdft.methods.lora import LORA_WEIGHTS, kohya_file_name
from sdft.methods.tokens import EMBEDDINGS_FILE
from sdft.tiny_models import tiny_vae

STEPS = 6
#: the guidance of every image comparison: ``generate``'s default (SDXL's own is 5)
GUIDANCE = 7.5


@pytest.fixture(scope="module")
def family(tiny_sdxl) -> StableDiffusionXL:
    return loaded(StableDiffusionXL(str(tiny_sdxl))).eval()


# -- conditioning ---------------------------------------------------------------------------------------------------


def sized_images(folder: Path) -> list[Image.Image]:
    """A landscape (80 x 48) and a portrait (40 x 96) photo, read as the data modules read them at 32 px."""
    paths = []
    for name, size in (("landscape.png", (80, 48)), ("portrait.png", (40, 96))):
        Image.new("RGB", size, (200, 30, 90)).save(folder / name)
        paths.append(folder / name)
    return [read_resized(path, 32) for path in paths]


@pytest.mark.parametrize(
    ("flip", "landscape_left"),
    [(0.0, 10), (1.0, 11)],  # the 53 x 32 resize, centre crop at 10; mirrored: 53 - 10 - 32 = 11
)
def test_time_ids_are_each_examples_original_size_crop_and_target_size(family, tmp_path, flip, landscape_left):
    dataset = AugmentedImages(sized_images(tmp_path), [PROMPT] * 2, 32, True, flip, seed=0)
    batch = default_collate([dataset[position] for position in range(4)])
    time_ids = family.encode_conditioning(batch).kwargs["added_cond_kwargs"]["time_ids"]
    expected_of = {  # (height, width) in the file -> its hand-computed row
        (48, 80): [48, 80, 0, landscape_left, 32, 32],
        (96, 40): [96, 40, 22, 0, 32, 32],  # 32 x 77 resize, centre crop at top 22 (left 0 either way)
    }
    expected = [expected_of[tuple(size)] for size in batch["original_size"].tolist()]
    assert sorted({tuple(row) for row in expected}) == sorted(tuple(row) for row in expected_of.values())
    assert torch.equal(time_ids, torch.tensor(expected, dtype=torch.float32))


def test_micro_conditioning_follows_the_pipelines_order():
    original, crop = torch.tensor([[1024, 768], [600, 900]]), torch.tensor([[0, 128], [44, 0]])
    expected = torch.tensor([[1024, 768, 0, 128, 512, 256], [600, 900, 44, 0, 512, 256]], dtype=torch.float32)
    assert torch.equal(micro_conditioning(original, crop, (512, 256)), expected)


def test_prompts_are_encoded_as_the_stock_pipeline_encodes_them(family, tiny_sdxl):
    prompts = [PROMPT, "a red cube on a table"]
    batch = {
        "prompts": prompts,
        "pixel_values": torch.zeros(2, 3, 32, 32),
        "original_size": torch.tensor([[32, 32]] * 2),
        "crop_top_left": torch.zeros(2, 2, dtype=torch.long),
    }
    with torch.no_grad():
        conditioning = family.encode_conditioning(batch).kwargs
        states, _, pooled, _ = stock_pipeline(tiny_sdxl, StableDiffusionXL).encode_prompt(
            prompts, device=torch.device("cpu"), do_classifier_free_guidance=False
        )
    assert conditioning["encoder_hidden_states"].shape == (2, 77, 32 + 48)
    assert torch.equal(conditioning["encoder_hidden_states"], states)
    assert torch.equal(conditioning["added_cond_kwargs"]["text_embeds"], pooled)


# -- images and noise -----------------------------------------------------------------------------------------------


def test_the_vae_runs_in_float32_outside_autocast_with_the_configs_scale(family):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert family.vae.dtype == torch.float32 and family.vae.config.scaling_factor == pytest.approx(0.13025)
    with torch.no_grad():
        by_hand = family.vae.encode(pixels).latent_dist.sample(torch.Generator().manual_seed(1)) * 0.13025
        with torch.autocast("cpu", dtype=torch.bfloat16):
            latents = sampled_latents(family, pixels, torch.Generator().manual_seed(1))
    assert latents.dtype == torch.float32  # (bf16 would be 1e-2 off)
    torch.testing.assert_close(latents, by_hand, rtol=1e-6, atol=1e-6)


def test_the_target_is_the_noise_for_the_epsilon_model(family):
    assert family.prediction_type == "epsilon"
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noised = training_noise(family, latents, torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    levels = torch.rand(3, generator=draws)
    noise = torch.randn(latents.shape, generator=draws)
    assert torch.equal(noised.timesteps, (levels * 1000).long()) and torch.equal(noised.target, noise)


def test_an_unknown_prediction_type_names_the_key(tiny_sdxl):
    with pytest.raises(UserError, match=r"family.init_args.prediction_type must be one of epsilon, v_prediction"):
        StableDiffusionXL(str(tiny_sdxl), prediction_type="flow")


def test_a_separate_vae_replaces_the_models_own(tiny_sdxl, family, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        tiny_vae(scaling_factor=0.13025).save_pretrained(tmp_path / "vae")
    other = StableDiffusionXL(str(tiny_sdxl), vae_name_or_path=str(tmp_path / "vae"))
    other.load()
    assert other.source()["vae_name_or_path"] == str(tmp_path / "vae")
    saved = AutoencoderKL.from_pretrained(tmp_path / "vae").state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in other.vae.state_dict().items())
    assert not torch.equal(other.vae.encoder.conv_in.weight, family.vae.encoder.conv_in.weight)
    assert torch.equal(other.unet.conv_in.weight, family.unet.conv_in.weight)


# -- LoRA: the fast representative ------------------------------------------------------------------------------


def lora(tiny_sdxl: Path) -> LoRAFineTuner:
    return lora_tuner(StableDiffusionXL(str(tiny_sdxl)), lr=1e-2, train_text_encoder=True)


@pytest.fixture(scope="module")
def lora_fit(tiny_sdxl, subject_dir, tmp_path_factory) -> Fit:
    """A LoRA on the UNet and both text encoders."""
    return fit(lora(tiny_sdxl), subject_data(subject_dir), tmp_path_factory.mktemp("lora"), STEPS, every=2)


def test_lora_fit_lowers_the_validation_loss(lora_fit):
    assert lora_fit.loss_after < 0.98 * lora_fit.loss_before, (lora_fit.loss_before, lora_fit.loss_after)


def test_lora_checkpoint_holds_exactly_the_adapters_of_the_three_components(lora_fit):
    state = torch.load(lora_fit.checkpoint(STEPS), weights_only=False)["state_dict"]
    assert set(state) == set(lora_fit.model.trainable_state_dict())
    assert {key.split(".")[1] for key in state} == {"unet", "text_encoder", "text_encoder_2"}
    assert all(".lora_A." in key or ".lora_B." in key for key in state)


def test_lora_export_loads_in_the_stock_sdxl_pipeline_and_reproduces_the_images(lora_fit, tiny_sdxl, tmp_path):
    path = lora_fit.model.export(tmp_path)
    with safe_open(path, "pt") as file:
        keys = list(file.keys())
    assert {key.split(".")[0] for key in keys} == {"unet", "text_encoder", "text_encoder_2"}
    pipeline = stock_pipeline(tiny_sdxl, StableDiffusionXL)
    untrained = stock_images(pipeline, guidance_scale=GUIDANCE)
    pipeline.load_lora_weights(tmp_path)
    expected = trained_images(lora_fit.model, guidance_scale=GUIDANCE)
    assert np.abs(stock_images(pipeline, guidance_scale=GUIDANCE) - expected).max() <= 1
    assert np.abs(untrained - expected).mean() > 1.0  # the adapters change the images: the equality means something


def test_lora_resume_continues_with_the_uninterrupted_losses(lora_fit, tiny_sdxl, subject_dir, tmp_path):
    resumed = lora(tiny_sdxl)
    losses = resumed_losses(resumed, subject_data(subject_dir), tmp_path, STEPS, lora_fit.checkpoint(STEPS - 2))
    assert losses == pytest.approx({step: lora_fit.losses[step] for step in (STEPS - 1, STEPS)}, rel=1e-6)
    final = lora_fit.model.trainable_state_dict()
    assert all(torch.equal(value, final[key]) for key, value in resumed.trainable_state_dict().items())


# -- full fine-tuning and textual inversion (slow) -----------------------------------------------------------------


@pytest.mark.slow
def test_full_fine_tuning_exports_a_pipeline_the_stock_loader_reproduces(tiny_sdxl, subject_dir, tmp_path):
    model = full_tuner(StableDiffusionXL(str(tiny_sdxl)), train_text_encoder=True)
    result = fit(model, subject_data(subject_dir), tmp_path / "fit", STEPS, every=2)
    assert result.loss_after < 0.95 * result.loss_before, (result.loss_before, result.loss_after)
    state = torch.load(result.checkpoint(STEPS), weights_only=False)["state_dict"]
    trained = {
        f"family.{name}.{key}"
        for name in ("unet", "text_encoder", "text_encoder_2")
        for key in getattr(model.family, name).state_dict()
    }
    assert set(state) == trained
    folder = model.export(tmp_path / "pipeline")
    expected = trained_images(model, guidance_scale=GUIDANCE)
    assert (
        np.abs(stock_images(stock_pipeline(folder, StableDiffusionXL), guidance_scale=GUIDANCE) - expected).max() <= 1
    )
    assert (
        np.abs(stock_images(stock_pipeline(tiny_sdxl, StableDiffusionXL), guidance_scale=GUIDANCE) - expected).mean()
        > 1.0
    )


def base_table(folder: Path, name: str) -> torch.Tensor:
    model_class = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
    return model_class.from_pretrained(folder, subfolder=name).get_input_embeddings().weight.detach()


@pytest.mark.slow
def test_textual_inversion_trains_rows_in_both_encoders_that_diffusers_loads(tiny_sdxl, subject_dir, tmp_path):
    model = TextualInversion(
        StableDiffusionXL(str(tiny_sdxl)),
        optimizer=adamw(5e-2),
        placeholder_token="<sks>",
        initializer_token="toy",
        num_vectors=2,
    )
    prompt = "a photo of <sks> toy"
    result = fit(model, subject_data(subject_dir, prompt), tmp_path / "fit", STEPS, every=2)
    assert result.loss_after < result.loss_before, (result.loss_before, result.loss_after)
    state = torch.load(result.checkpoint(STEPS), weights_only=False)["state_dict"]
    assert all(key.endswith(".token_embedding.rows") for key in state)  # the new rows and nothing else
    assert {key.split(".")[1]: value.shape for key, value in state.items()} == {
        "text_encoder": (2, 32),
        "text_encoder_2": (2, 48),
    }
    for name, encoder in model.family.token_encoders().items():
        base, table = base_table(tiny_sdxl, name), encoder.get_input_embeddings().weight
        assert torch.equal(table[: len(base)], base)  # every original row untouched
        initializer = base[model.family.tokenizer.convert_tokens_to_ids("toy</w>")]
        assert ((table[len(base) :] - initializer).abs().amax(dim=1) > 1e-2).all(), name  # both vectors learn

    model.export(tmp_path / "export")
    embeddings = load_file(tmp_path / "export" / EMBEDDINGS_FILE)
    assert {key: value.shape for key, value in embeddings.items()} == {"clip_l": (2, 32), "clip_g": (2, 48)}
    pipeline = stock_pipeline(tiny_sdxl, StableDiffusionXL)
    untrained = stock_images(pipeline, prompt.replace("<sks>", "toy toy"), guidance_scale=GUIDANCE)
    for key, encoder, tokenizer in (
        ("clip_l", "text_encoder", "tokenizer"),
        ("clip_g", "text_encoder_2", "tokenizer_2"),
    ):
        pipeline.load_textual_inversion(
            embeddings[key],
            token=model.tokens.tokens,
            text_encoder=getattr(pipeline, encoder),
            tokenizer=getattr(pipeline, tokenizer),
        )
    expected = trained_images(model, prompt, guidance_scale=GUIDANCE)
    assert np.abs(stock_images(pipeline, prompt, guidance_scale=GUIDANCE) - expected).max() <= 1
    assert np.abs(untrained - expected).mean() > 1.0


# -- the shipped configs (slow) ---------------------------------------------------------------------------------


TINY_SDXL = "--model.init_args.family.init_args.pretrained_model_name_or_path=builtin:tiny-sdxl"
#: the ComfyUI / A1111 file of the final export of a brief fit (run "run", two steps)
KOHYA_FILE = kohya_file_name("run", 2)
#: an SDXL pipeline export: its index and a folder per component
PIPELINE = [
    "model_index.json",
    "scheduler",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "unet",
    "vae",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "exported", "class_images"),
    [
        ("configs/quickstart_sdxl.yaml", [KOHYA_FILE, LORA_WEIGHTS], False),
        ("configs/sdxl/lora.yaml", [KOHYA_FILE, LORA_WEIGHTS], False),
        ("configs/sdxl/dreambooth_lora.yaml", [KOHYA_FILE, LORA_WEIGHTS], True),
        ("configs/sdxl/dreambooth.yaml", PIPELINE, True),
        ("configs/sdxl/textual_inversion.yaml", [EMBEDDINGS_FILE, "sks.safetensors"], False),
        ("configs/sdxl/pivotal_tuning.yaml", [EMBEDDINGS_FILE, KOHYA_FILE, LORA_WEIGHTS, "sks.safetensors"], False),
    ],
)
def test_shipped_configs_fit_the_tiny_model_through_the_cli(config, exported, class_images, subject_dir, tmp_path):
    data = {"instance_dir": str(subject_dir)}
    if class_images:  # two class images generated by the tiny model's base pipeline
        data |= {"class_dir": str(tmp_path / "class"), "num_class_images": 2, "class_generation_steps": 2}
    run = brief_fit(config, tmp_path, data, TINY_SDXL)
    assert sorted(path.name for path in (run / "final").iterdir()) == sorted([*exported, "README.md", "samples.png"])
    assert (run / "evaluation" / "selection.json").is_file()
    if class_images:
        assert len(list((tmp_path / "class").glob("*.png"))) == 2


def test_the_vae_stays_float32_when_the_rest_trains_in_bf16(tiny_sdxl, subject_dir, tmp_path):
    model = lora(tiny_sdxl)
    cpu_trainer(tmp_path, 2, precision="bf16-true").fit(model, datamodule=subject_data(subject_dir))
    family = model.family
    assert family.unet.dtype == family.text_encoder.dtype == torch.bfloat16
    assert family.vae.dtype == torch.float32
