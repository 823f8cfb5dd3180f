"""sdft generate: labelled grids, settings in every PNG, identical reruns, LoRA scales (diffusers and kohya files),
a run's checkpoints as training's previews showed them, embeddings, and one-line errors before any model loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_kohya
from jsonargparse import auto_cli
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file, save_file
from training import brief_fit, stock_pipeline

from sdft.errors import UserError
from sdft.families import StableDiffusion3
from sdft.methods.lora import LORA_WEIGHTS, LoRAFineTuner, kohya_file
from sdft.tools.generate import generate
from sdft.tools.grids import GridLayout, grid_layout, labelled_grid

PROMPTS = ["a photo of sks toy", "a red car"]
FAST = {"num_inference_steps": 2, "resolution": 32, "seeds": (0, 1)}


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


def stock_images(pipeline: StableDiffusionPipeline, prompt: str, seeds=(0, 1), **options) -> list[np.ndarray]:
    """Images from a stock diffusers pipeline at the FAST settings, one call per seed (as generate's batch_size 1)."""
    images = [
        pipeline(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=2, height=32, width=32,
                 **options).images[0]
        for seed in seeds
    ]  # fmt: skip
    return [np.asarray(image).astype(np.int16) for image in images]


def is_blank(region: Image.Image) -> bool:
    return np.asarray(region.convert("L")).min() == 255


# -- grids -------------------------------------------------------------------------------------------------------------


def test_a_grid_is_its_tiles_plus_label_margins_with_every_label_drawn():
    colours = [[(200, 0, 0), (0, 200, 0)], [(0, 0, 200), (200, 200, 0)], [(0, 200, 200), (90, 90, 90)]]
    tiles = [[Image.new("RGB", (64, 48), colour) for colour in row] for row in colours]
    rows, columns = ["seed 0", "seed 1", "seed 2"], ["LoRA 0", "LoRA 1"]
    grid = labelled_grid(tiles, rows, columns, "a photo of sks toy", "tiny · 2 steps")
    layout = grid_layout((64, 48), rows, columns, "a photo of sks toy", "tiny · 2 steps")
    assert layout.cell_width == 64 and layout.left > 0 and layout.top > 0
    assert grid.size == layout.size == (layout.left + 2 * 64, layout.top + 3 * 48)
    for row in range(3):
        assert not is_blank(grid.crop(layout.row_label_box(row)))
        for column in range(2):
            tile = np.asarray(grid.crop(layout.tile_box(row, column)))
            assert (tile == colours[row][column]).all()
    for column in range(2):
        assert not is_blank(grid.crop(layout.column_label_box(column)))
    title = grid.crop((0, 0, grid.width, layout.column_label_box(0)[1]))
    assert not is_blank(title) and len(layout.lines) == 2 and layout.title_lines == 1


def test_a_label_wider_than_its_tile_widens_the_column_and_a_long_title_wraps():
    layout = grid_layout((16, 16), ["seed 0"], ["guidance 7.5", "guidance 12"], "a very long prompt " * 6)
    assert layout.cell_width > 16 and layout.size[0] == layout.left + 2 * layout.cell_width
    assert len(layout.lines) > 1 and all(line for line in layout.lines)
    left, _, right, _ = layout.tile_box(0, 1)
    assert right - left == 16 and left > layout.left + layout.cell_width  # centred in its cell


# -- LoRA --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(tiny_sd1: Path, tmp_path_factory) -> Path:
    """A rank-4 LoRA on the tiny UNet's attention with large random weights, saved as diffusers saves LoRAs."""
    pipeline = stock_pipeline(tiny_sd1)
    unet = pipeline.unet
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(parameter, std=0.5)
    folder = tmp_path_factory.mktemp("lora")
    layers = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_WEIGHTS)
    return folder


@pytest.fixture(scope="module")
def scales(tiny_sd1, lora_dir, tmp_path_factory) -> Path:
    """LoRA scales 0 and 1 of two prompts at two seeds."""
    output = tmp_path_factory.mktemp("generated") / "scales"
    options = {"compare": "lora_scale", "lora_scales": [0.0, 1.0], "negative_prompt": "blurry", **FAST}
    return generate(PROMPTS, str(tiny_sd1), lora=[lora_dir], output=output, **options)


def test_lora_scale_0_is_the_base_model_and_scale_1_differs(scales, tiny_sd1):
    base = stock_images(stock_pipeline(tiny_sd1), PROMPTS[0], negative_prompt="blurry")
    for seed, expected in zip((0, 1), base, strict=True):
        assert np.array_equal(pixels(scales / f"images/prompt_000/lora_0_seed_{seed}.png"), expected)
        assert np.abs(pixels(scales / f"images/prompt_000/lora_1_seed_{seed}.png") - expected).mean() > 5


def test_every_image_carries_its_settings_in_png_text_chunks(scales, tiny_sd1, lora_dir):
    text = Image.open(scales / "images/prompt_001/lora_1_seed_1.png").text
    assert text["prompt"] == "a red car" and text["negative_prompt"] == "blurry"
    assert (text["seed"], text["num_inference_steps"], text["guidance_scale"]) == ("1", "2", "7.5")
    assert (text["lora_scale"], text["width"], text["model"]) == ("1.0", "32", str(tiny_sd1))
    assert json.loads(text["lora"]) == [str(lora_dir / LORA_WEIGHTS)]
    assert text["parameters"].splitlines() == [
        "a red car <lora:pytorch_lora_weights:1>",
        "Negative prompt: blurry",
        f"Steps: 2, Sampler: DDIMScheduler, CFG scale: 7.5, Seed: 1, Size: 32x32, Model: {tiny_sd1}",
    ]


def test_the_index_and_one_grid_per_prompt(scales):
    index = json.loads((scales / "generation.json").read_text())
    assert index["compare"] == "lora_scale" and index["columns"] == ["LoRA 0", "LoRA 1"]
    assert len(index["images"]) == 2 * 2 * 2 and {image["lora_scale"] for image in index["images"]} == {0.0, 1.0}
    assert [grid["file"] for grid in index["grids"]] == ["grids/prompt_000.png", "grids/prompt_001.png"]
    grid = Image.open(scales / "grids/prompt_001.png")
    layout = GridLayout(
        **{key: tuple(v) if isinstance(v, list) else v for key, v in index["grids"][1]["layout"].items()}
    )
    assert (layout.tile, layout.rows, layout.columns) == ((32, 32), 2, 2) and layout.cell_width >= 32
    assert grid.size == layout.size == (layout.left + 2 * layout.cell_width, layout.top + 2 * 32)
    assert layout.lines[0] == "a red car" and "negative: blurry" in " ".join(layout.lines)
    assert np.array_equal(
        np.asarray(grid.convert("RGB").crop(layout.tile_box(1, 0))).astype(np.int16),
        pixels(scales / "images/prompt_001/lora_0_seed_1.png"),
    )


def test_a_rerun_writes_the_same_bytes(scales, tiny_sd1, lora_dir, tmp_path):
    options = {"compare": "lora_scale", "lora_scales": [0.0, 1.0], "negative_prompt": "blurry", **FAST}
    again = generate(PROMPTS, str(tiny_sd1), lora=[lora_dir], output=tmp_path / "again", **options)
    files = sorted(path.relative_to(scales) for path in scales.rglob("*.png"))
    assert len(files) == 10 and files == sorted(path.relative_to(again) for path in again.rglob("*.png"))
    assert all((scales / file).read_bytes() == (again / file).read_bytes() for file in [*files, "generation.json"])


def test_a_kohya_file_gives_the_diffusers_file_images(scales, tiny_sd1, lora_dir, tmp_path):
    kohya = tmp_path / "kohya.safetensors"
    save_file(convert_state_dict_to_kohya(load_file(lora_dir / LORA_WEIGHTS)), kohya)
    output = generate(PROMPTS[:1], str(tiny_sd1), lora=[kohya], negative_prompt="blurry", output=tmp_path / "k", **FAST)
    for seed in (0, 1):
        expected = pixels(scales / f"images/prompt_000/lora_1_seed_{seed}.png")
        assert np.array_equal(pixels(output / f"images/prompt_000/image_seed_{seed}.png"), expected)


@pytest.mark.slow
def test_batched_seeds_match_seeds_sampled_alone_within_one_level(tiny_sd1, tmp_path):
    options = {**FAST, "seeds": (0, 1, 2)}
    alone = generate(PROMPTS[:1], str(tiny_sd1), output=tmp_path / "alone", **options)
    batched = generate(PROMPTS[:1], str(tiny_sd1), output=tmp_path / "batched", batch_size=3, **options)
    for seed in (0, 1, 2):
        file = f"images/prompt_000/image_seed_{seed}.png"
        assert np.abs(pixels(alone / file) - pixels(batched / file)).max() <= 1


# -- runs and embeddings -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Four LoRA steps of the quickstart config, checkpoints and previews (seeds 0 and 1, 2 steps) every two."""
    lr = "--model.init_args.optimizer.init_args.lr=0.05"  # large enough that the checkpoints' images differ
    folder = tmp_path_factory.mktemp("run")
    return brief_fit("configs/quickstart_tiny.yaml", folder, {}, lr, evaluate=False, max_steps=4)


def test_a_run_s_checkpoints_give_the_images_its_previews_showed(run):
    # the previews sampled both seeds in one call, at 32 px, 2 steps and guidance 7.5
    output = generate(["a photo of sks toy"], run=run, compare="checkpoints", batch_size=2, **FAST)
    assert output == run / "generated" / "000"
    index = json.loads((output / "generation.json").read_text())
    assert index["columns"] == ["step 0 (base)", "step 2", "step 4"]
    images = {}
    for step in (0, 2, 4):
        for seed in (0, 1):
            images[step, seed] = pixels(output / f"images/prompt_000/step_{step:06d}_seed_{seed}.png")
            assert np.array_equal(images[step, seed], pixels(run / f"samples/step_{step:06d}/0_{seed}.png"))
    assert np.abs(images[0, 0] - images[2, 0]).mean() > 1 and np.abs(images[2, 0] - images[4, 0]).mean() > 1
    text = Image.open(output / "images/prompt_000/step_000004_seed_1.png").text
    assert (text["step"], text["checkpoint"], text["run"]) == ("4", "step=000004.ckpt", str(run))
    assert "Checkpoint: " in text["parameters"]


def test_embedding_files_name_their_word_as_diffusers_and_a1111_do(tiny_sd1, tmp_path):
    vectors = torch.randn(2, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    save_file({"<toy>": vectors}, tmp_path / "learned_embeds.safetensors")
    save_file({"emb_params": vectors}, tmp_path / "my-toy.safetensors")
    diffusers_file = generate(["a photo of <toy>"], str(tiny_sd1), embeddings=[tmp_path], output=tmp_path / "d", **FAST)
    a1111 = generate(["a photo of my-toy"], str(tiny_sd1), embeddings=[tmp_path / "my-toy.safetensors"],
                     output=tmp_path / "a", **FAST)  # fmt: skip
    stock = stock_pipeline(tiny_sd1)
    stock.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"))
    for seed, expected in enumerate(stock_images(stock, "a photo of <toy>")):
        file = f"images/prompt_000/image_seed_{seed}.png"
        assert np.array_equal(pixels(diffusers_file / file), expected)
        assert np.array_equal(pixels(a1111 / file), expected)
    assert np.abs(stock_images(stock, "a photo of toy")[1] - expected).mean() > 1  # the new word changes the image
    assert json.loads(Image.open(a1111 / file).text["embeddings"])[0]["token"] == "my-toy"


def test_an_embedding_of_another_width_or_a_known_word_is_one_line(tiny_sd1, tmp_path):
    save_file({"<wide>": torch.zeros(1, 48)}, tmp_path / "wide.safetensors")
    message = one_line_error(model=str(tiny_sd1), embeddings=[tmp_path / "wide.safetensors"], output=tmp_path / "o")
    assert message.endswith("holds vectors 48 wide, but the text_encoder of " + f"{tiny_sd1} takes 32: it was "
                            "trained for another model; use one trained on this model")  # fmt: skip
    save_file({"emb_params": torch.zeros(1, 32)}, tmp_path / "photo.safetensors")
    message = one_line_error(model=str(tiny_sd1), embeddings=[tmp_path / "photo.safetensors"], output=tmp_path / "o")
    assert message.endswith("its word 'photo' is already in the tokenizer of " + f"{tiny_sd1}; name it with "
                            "--embedding_tokens, e.g. ['<photo>']")  # fmt: skip
    assert not (tmp_path / "o").exists()


# -- mistakes ----------------------------------------------------------------------------------------------------------


def fake_model(folder: Path, pipeline_class: str) -> str:
    """A folder with only a model_index.json: family detection reads it, and any attempt to load it fails."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class}))
    return str(folder)


def one_line_error(**arguments) -> str:
    with pytest.raises(UserError) as error:
        generate(**{"prompts": ["a photo of sks toy"], **arguments})
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.fixture
def sd1(tmp_path) -> str:
    return fake_model(tmp_path / "sd1", "StableDiffusionPipeline")


def test_missing_files_and_folders_are_named(sd1, tmp_path):
    missing = tmp_path / "missing.safetensors"
    assert one_line_error(model=sd1, lora=[missing]) == (
        f"--lora {missing} does not exist; give a LoRA .safetensors file or an export folder that holds one"
    )
    assert one_line_error(model=sd1, embeddings=[missing]).startswith(f"--embeddings {missing} does not exist")
    assert one_line_error(run=tmp_path / "nowhere").startswith(f"--run {tmp_path / 'nowhere'} does not exist; give a")
    assert one_line_error(model=str(tmp_path / "models" / "none")).startswith("--model ")
    assert "no model_index.json" in one_line_error(model=str(tmp_path))


def test_a_lora_or_embedding_for_another_family_is_refused_before_loading(sd1, lora_dir, tmp_path):
    save_file({"transformer.blocks.0.to_q.lora_A.weight": torch.zeros(4, 8)}, tmp_path / "sd3.safetensors")
    message = one_line_error(model=sd1, lora=[tmp_path / "sd3.safetensors"])
    assert "adapts transformer, which StableDiffusion models" in message and "another kind of model" in message
    flux = fake_model(tmp_path / "flux", "FluxPipeline")
    assert "adapts unet, which Flux models" in one_line_error(model=flux, lora=[lora_dir])
    save_file({"emb_params": torch.zeros(1, 8)}, tmp_path / "word.safetensors")
    assert "take no new words" in one_line_error(model=flux, embeddings=[tmp_path / "word.safetensors"])
    sdxl = fake_model(tmp_path / "sdxl", "StableDiffusionXLPipeline")
    keyed = {"clip_l": torch.zeros(1, 8), "clip_g": torch.zeros(1, 8)}
    save_file(keyed, tmp_path / "learned_embeds.safetensors")
    assert "--embedding_tokens" in one_line_error(model=sdxl, embeddings=[tmp_path / "learned_embeds.safetensors"])
    assert "holds emb_params" in one_line_error(model=sdxl, embeddings=[tmp_path / "word.safetensors"])


def test_a_lora_of_another_model_of_the_same_names_is_refused_before_the_pipeline_loads(
    lora_dir, tiny_sdxl, tmp_path, monkeypatch
):
    def refuse_loading(*arguments, **options):
        raise AssertionError("the pipeline loaded")

    monkeypatch.setattr("sdft.families.StableDiffusionXL.base_pipeline", refuse_loading)
    message = one_line_error(model=str(tiny_sdxl), lora=[lora_dir], output=tmp_path / "out", **FAST)
    assert message.startswith(f"--lora: {lora_dir / LORA_WEIGHTS} adapts ")
    assert message.endswith("it is a LoRA of another model family or layout; pass a LoRA trained on this base model")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"compare": "lora_scale", "lora": ["x"], "lora_scales": [1]}, "--compare lora_scale needs at least two"),
        ({"compare": "lora_scale", "lora": ["x"]}, "--compare lora_scale needs at least two --lora_scales"),
        ({"compare": "lora_scale"}, "--compare lora_scale needs --lora"),
        ({"compare": "guidance", "guidance_scales": [7.5]}, "--compare guidance needs at least two --guidance_scales"),
        ({"compare": "guidance"}, "--compare guidance needs at least two --guidance_scales to compare, got None"),
        ({"guidance_scales": [3.0, 7.5]}, "--guidance_scales has 2 values; compare them with --compare guidance"),
        ({"compare": "checkpoints"}, "--compare checkpoints needs --run"),
        ({"lora_scales": [0.5]}, "--lora_scales is set but there is no --lora"),
        ({"seeds": (1, 1)}, "--seeds must list distinct seeds"),
        ({"resolution": 30}, "--resolution must be a positive multiple of 8"),
    ],
)
def test_an_axis_or_option_that_cannot_work_is_one_line(sd1, arguments, message):
    assert one_line_error(model=sd1, **arguments).startswith(message)


def test_an_output_folder_with_files_is_never_written_into(sd1, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.png").write_bytes(b"mine")
    message = one_line_error(model=sd1, output=tmp_path / "out")
    assert (
        message
        == f"--output {tmp_path / 'out'}: the folder is not empty; choose a new folder (it must not exist or be empty)"
    )
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["keep.png"]


def test_a_run_folder_given_where_a_model_or_lora_goes_names_the_right_option(run):
    assert one_line_error(model=str(run)) == f"--model {run} is a run folder; pass it as --run {run}"
    assert one_line_error(model="builtin:tiny-sd1", lora=[run]).startswith(f"--lora {run} is a run folder")
    assert one_line_error(run=run.parent).startswith(
        f"--run {run.parent} is a folder of runs; give one of them, e.g. --run {run}"
    )


# -- the command line --------------------------------------------------------------------------------------------------


def test_the_command_line_reads_lists_and_its_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        auto_cli(generate, args=["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "--compare {none,checkpoints,lora_scale,guidance}" in text
    with pytest.raises(UserError, match="--lora_scales is set but there is no --lora"):
        auto_cli(generate, args=['["a photo", "a car"]', "--model", "builtin:tiny-sd1", "--lora_scales", "[0.5]"])


def test_the_module_imports_no_heavy_library():
    code = (
        "import sys, sdft.tools.generate; print([m for m in ('torch', 'diffusers', 'lightning') if m in sys.modules])"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_guidance_scales_as_columns(tiny_sd1, tmp_path):
    options = {**FAST, "seeds": (5,)}
    output = generate(
        PROMPTS[:1], str(tiny_sd1), compare="guidance", guidance_scales=[1.0, 9.0], output=tmp_path, **options
    )
    assert json.loads((output / "generation.json").read_text())["columns"] == ["guidance 1", "guidance 9"]
    low, high = (output / f"images/prompt_000/guidance_{g}_seed_5.png" for g in (1, 9))
    assert Image.open(high).text["guidance_scale"] == "9.0" and "CFG scale: 9," in Image.open(high).text["parameters"]
    assert np.abs(pixels(low) - pixels(high)).mean() > 1


def test_an_sd3_kohya_file_gives_the_images_of_its_diffusers_twin(tiny_sd3, tmp_path):
    """diffusers' SD3 loader reads no kohya names: generate reads every LoRA format itself (read_lora)."""
    model = LoRAFineTuner(StableDiffusion3(str(tiny_sd3)), rank=4, alpha=2.0)
    model.configure_model()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    folder = model.export(tmp_path / "lora").parent
    made, kohya_name = {}, kohya_file(folder).name
    for name in (LORA_WEIGHTS, kohya_name):
        out = generate(
            ["a photo of sks toy"], model=str(tiny_sd3), lora=[folder / name], output=tmp_path / name, **FAST
        )
        made[name] = [pixels(out / f"images/prompt_000/image_seed_{seed}.png") for seed in FAST["seeds"]]
    base = generate(["a photo of sks toy"], model=str(tiny_sd3), output=tmp_path / "base", **FAST)
    for diffusers_image, kohya_image, seed in zip(made[LORA_WEIGHTS], made[kohya_name], FAST["seeds"], strict=True):
        assert np.abs(diffusers_image - kohya_image).max() <= 1
        assert np.abs(diffusers_image - pixels(base / f"images/prompt_000/image_seed_{seed}.png")).mean() > 1
