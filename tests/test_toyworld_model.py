"""The toy world's base model: its SD 1.x architecture loads through the family and samples 64 px images, and each
training stage of scripts/train_toyworld.py lowers its loss and writes a model folder that loads, equal for equal
seeds."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from sdft.families import StableDiffusion
from sdft.families.ddpm import DDPMSchedule
from sdft.tiny_models import SD_BETAS, clip_tokenizer, seeded
from sdft.toyworld import Scene, world_dataset
from sdft.toyworld.model import (
    GEOMETRIES,
    IMAGE_SIZE,
    LATENT_SIZE,
    Geometry,
    build_untrained_toyworld,
    toyworld_modules,
)

ROOT = Path(__file__).resolve().parents[1]
END = 49407


@pytest.fixture(scope="module")
def scripts():
    """The training script's modules, imported from scripts/ as the script itself imports them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "scripts"))
        modules = ("train_toyworld", "toyworld_training", "toyworld_loop")
        yield argparse.Namespace(**{name: importlib.import_module(name) for name in modules})


@pytest.fixture(scope="module")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_untrained_toyworld(tmp_path_factory.mktemp("models") / "toyworld", seed=0)


@pytest.fixture(scope="module")
def examples(scripts):
    return scripts.toyworld_training.draw_examples(world_dataset(0, 8, size=IMAGE_SIZE))


def loaded(folder: Path) -> StableDiffusion:
    family = StableDiffusion(str(folder))
    family.load()
    return family


def test_untrained_architecture_loads_through_the_family_and_samples_64_pixels(untrained):
    family = loaded(untrained)
    assert family.prediction_type == "epsilon" and family.tokenizer.model_max_length == 77
    posterior = family.encode_posterior(torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert posterior.mean.shape == (1, 4, LATENT_SIZE, LATENT_SIZE) == (1, 4, 16, 16)
    pipeline = family.pipeline()
    generator = torch.Generator().manual_seed(0)
    images = pipeline(["a red circle on grass", ""], num_inference_steps=2, generator=generator).images
    assert [image.size for image in images] == [(IMAGE_SIZE, IMAGE_SIZE)] * 2  # the pipeline's default size


def test_sd1_block_layout_with_cross_attention_in_every_level_but_the_last(untrained):
    config = json.loads((untrained / "unet" / "config.json").read_text())
    assert config["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert config["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    assert (
        config["cross_attention_dim"]
        == json.loads((untrained / "text_encoder" / "config.json").read_text())["hidden_size"]
    )


def test_factor2_geometry_gives_32x32_latents_that_its_unet_denoises():
    geometry = GEOMETRIES["factor2"]
    unet, vae, text_encoder = seeded(0, lambda: toyworld_modules(geometry))
    assert (geometry.factor, geometry.latent_size) == (2, 32)
    with torch.no_grad():
        latents = vae.encode(torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)).latent_dist.mean
        assert latents.shape == (2, 4, 32, 32)
        assert vae.decode(latents).sample.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        states = text_encoder(torch.full((2, 77), END))[0]
        assert unet(latents, torch.tensor([10, 900]), states).sample.shape == (2, 4, 32, 32)
    attends = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
    assert unet.config.down_block_types == attends  # attention at 16x16 and 8x8, none at 32x32 and 4x4
    assert not vae.config.mid_block_add_attention  # no attention over the 32x32 latent
    with pytest.raises(ValueError, match="unet_attention has 2 levels and unet_channels 3"):
        Geometry((32, 64), False, (32, 64, 128), (True, False))


def test_gaussian_kl_and_vae_loss_by_hand(scripts):
    training = scripts.toyworld_training
    kl = training.gaussian_kl(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, math.log(2.0), 0.0]))
    assert kl.tolist() == pytest.approx([0.5, 0.5 * (1.0 - math.log(2.0)), 0.0])
    pixels, reconstruction = torch.zeros(1, 3, 1, 2), torch.tensor([[0.5, 0.25]]).expand(1, 3, 1, 2)
    weights = torch.tensor([[[[1.0, 3.0]]]])  # the second pixel is an object's, weighing 3
    mean, logvar = torch.ones(1, 4, 1, 1), torch.zeros(1, 4, 1, 1)
    loss = training.vae_loss(reconstruction, pixels, weights, mean, logvar, 0.1)
    assert float(loss) == pytest.approx((0.5**2 + 3 * 0.25**2) / 4 + 0.1 * 0.5)


def test_learning_rate_warms_up_then_falls_on_a_half_cosine(scripts):
    factor = scripts.toyworld_loop.rate_factor
    assert [factor(step, warmup=4, steps=12) for step in (0, 3, 4, 8, 12, 20)] == pytest.approx(
        [0.25, 1.0, 1.0, 0.55, 0.1, 0.1]
    )


def test_attribute_labels_and_end_token_positions(scripts):
    training = scripts.toyworld_training
    plain = Scene("star", "blue", "plain", "large", "left", "grass")
    second = Scene("circle", "red", "dotted", "small", "right", "sky", "above", "heart", "pink")
    # indices into ATTRIBUTE_VALUES: the world's orders, None first for the second object
    assert training.attribute_labels([plain, second]).tolist() == [
        [3, 5, 0, 1, 0, 3, 0, 0, 0],
        [0, 0, 2, 0, 2, 2, 2, 5, 8],
    ]
    token_ids = torch.tensor([[49406, 320, END, END, END], [49406, END, END, END, END]])
    assert training.from_end_token(token_ids, END).tolist() == [[False, False, True, True, True], [False] + [True] * 4]


def test_latent_scale_gives_unit_variance(scripts):
    means = 3.0 * torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    scale = scripts.toyworld_training.latent_scale(means, torch.zeros_like(means), torch.Generator())
    assert scale == pytest.approx(1 / 3, rel=0.05)


def lowers_its_loss(loop, stage, steps: int = 8, learning_rate: float = 1e-3) -> tuple[float, float, dict]:
    """The stage's loss on one fixed batch before and after ``steps`` steps, and the stage's record."""
    with torch.no_grad():
        before = float(stage.loss(torch.Generator().manual_seed(123)))
    budget = loop.Budget(steps)
    record = loop.fit(stage, budget, learning_rate, torch.Generator().manual_seed(0), warmup=1, every=4)
    with torch.no_grad():
        after = float(stage.loss(torch.Generator().manual_seed(123)))
    return before, after, record


def test_each_stage_lowers_its_loss_in_a_few_steps(scripts, examples, tmp_path):
    training = scripts.toyworld_training
    unet, vae, text_encoder = seeded(0, toyworld_modules)
    tokenizer = clip_tokenizer(tmp_path / "tokenizer")
    token_ids = scripts.train_toyworld.tokenize(tokenizer, examples.captions)
    labels = training.attribute_labels(examples.scenes)
    stages = [
        training.AutoencoderStage(vae, examples, batch_size=4),
        training.TextStage(text_encoder, token_ids, labels, END, batch_size=8),
    ]
    for stage in stages:
        before, after, record = lowers_its_loss(scripts.toyworld_loop, stage)
        assert after < before and record["steps"] == 8 and [row[0] for row in record["losses"]] == [4, 8]
    means, stds = training.encode_images(vae, examples.images)
    assert means.shape == stds.shape == (8, 4, LATENT_SIZE, LATENT_SIZE)
    schedule = DDPMSchedule(dict(DDIMScheduler(**SD_BETAS).config))
    empty = scripts.train_toyworld.tokenize(tokenizer, [""])[0]
    denoiser = training.DenoiserStage(unet, text_encoder, schedule, (means, stds), token_ids, empty, batch_size=8)
    before, after, _ = lowers_its_loss(scripts.toyworld_loop, denoiser)
    assert after < before


@pytest.fixture
def small_settings(scripts, monkeypatch):
    for stage, batch_size in (("vae", 2), ("text", 4), ("unet", 2)):
        monkeypatch.setitem(scripts.train_toyworld.SETTINGS[stage], "batch_size", batch_size)
    monkeypatch.setattr(scripts.train_toyworld, "HELD_OUT_CAPTIONS", 16)
    monkeypatch.setattr(scripts.train_toyworld, "HELD_OUT_SCENES", 4)


def test_training_writes_a_folder_the_family_loads_equal_for_equal_seeds(scripts, small_settings, tmp_path):
    train = scripts.train_toyworld
    budgets = {stage: scripts.toyworld_loop.Budget(2) for stage in train.SETTINGS}
    record = train.train_model(tmp_path / "first", 5, "cpu", budgets, examples=8)
    train.train_model(tmp_path / "again", 5, "cpu", budgets, examples=8)
    written = json.loads((tmp_path / "first" / "training.json").read_text())
    assert written["seed"] == 5 and [stage["steps"] for stage in written["stages"]] == [2, 2, 2]
    assert written["scaling_factor"] == record["scaling_factor"] > 0
    assert set(written["autoencoder_oracle"]) == set(train.SCORED)
    family = loaded(tmp_path / "first")
    assert family.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])
    for component in ("unet", "vae", "text_encoder"):
        name = "model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors"
        first, again = (load_file(tmp_path / run / component / name) for run in ("first", "again"))
        assert all(torch.equal(first[key], again[key]) for key in first), component
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # no staging folder left


def test_evaluate_scores_samples_of_held_out_captions(scripts, untrained, capsys):
    train = scripts.train_toyworld
    rates, images = train.evaluate(untrained, seed=0, samples=3, guidance_scale=2.0, steps=2, device="cpu")
    assert len(images) == 3 and set(rates) == set(train.SCORED)
    assert all(0.0 <= rate <= 1.0 for rate in rates.values())
    train.main(["--evaluate", str(untrained), "--samples", "2", "--inference-steps", "2"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["attribute", "agreement", "chance"] and len(printed) == 1 + len(train.SCORED)


def test_shipped_form_is_half_precision_and_unpacks_to_an_equal_model(untrained, tmp_path):
    from safetensors.torch import save_file

    from sdft.toyworld.model import TEXT_ENCODER_WEIGHTS, TOKEN_TABLE, ship, shipped_version, unpack_shipped

    trained = tmp_path / "trained"
    shutil.copytree(untrained, trained)
    text_encoder = load_file(trained / TEXT_ENCODER_WEIGHTS)
    text_encoder[TOKEN_TABLE][[320, 49407]] += 0.5  # two tokens "trained"; the other 49,406 rows as initialised
    save_file(text_encoder, trained / TEXT_ENCODER_WEIGHTS)
    shipped = ship(trained, tmp_path / "shipped", seed=0)
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    assert not (shipped / "tokenizer").exists() and (shipped / "model_index.json").is_file()
    assert {tensor.dtype for tensor in load_file(shipped / unet_file).values()} == {torch.float16}
    stored = load_file(shipped / TEXT_ENCODER_WEIGHTS)
    assert TOKEN_TABLE not in stored and stored[f"{TOKEN_TABLE}.rows"].tolist() == [320, 49407]
    assert (shipped / TEXT_ENCODER_WEIGHTS).stat().st_size < (untrained / TEXT_ENCODER_WEIGHTS).stat().st_size / 10
    unpacked = unpack_shipped(tmp_path / "unpacked", shipped)
    for name in (unet_file, TEXT_ENCODER_WEIGHTS):
        original, restored = load_file(trained / name), load_file(unpacked / name)
        assert restored.keys() == original.keys() and all(restored[key].dtype == torch.float32 for key in original)
        assert all(torch.equal(restored[key], original[key].half().float()) for key in original), name
    family = loaded(unpacked)
    assert family.tokenizer("a red circle").input_ids == loaded(untrained).tokenizer("a red circle").input_ids
    version = shipped_version(shipped)
    other = build_untrained_toyworld(tmp_path / "other", seed=1, geometry=GEOMETRIES["factor2"])
    ship(other, shipped, seed=1)
    assert shipped_version(shipped) != version  # a cached copy of the old weights is not reused
    # the token table is drawn after the UNet and autoencoder of the shipped folder's own geometry
    assert load_file(shipped / TEXT_ENCODER_WEIGHTS)[f"{TOKEN_TABLE}.rows"].numel() == 0
    table = load_file(unpack_shipped(tmp_path / "other-unpacked", shipped) / TEXT_ENCODER_WEIGHTS)[TOKEN_TABLE]
    assert torch.equal(table, load_file(other / TEXT_ENCODER_WEIGHTS)[TOKEN_TABLE].half().float())


def test_builtin_toyworld_names_the_command_when_nothing_is_shipped(tmp_path, monkeypatch):
    from sdft import assets
    from sdft.errors import UserError
    from sdft.toyworld import model

    monkeypatch.setattr(model, "SHIPPED", tmp_path / "nothing")
    monkeypatch.setenv("SDFT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="scripts/train_toyworld.py .* --ship"):
        assets.resolve("builtin:toyworld")
    assert not any((tmp_path / "cache").glob("toyworld*"))  # nothing half-built left in the cache
