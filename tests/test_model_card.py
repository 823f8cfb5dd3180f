"""Model cards: rendering hand-made facts, reading a run folder's facts, and the README.md of every export folder of
a CLI fit (final, best, ema, ``sdft export``) and of a textual inversion, whose loading code runs as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from training import brief_fit

from sdft.assets import resolve
from sdft.cli import main
from sdft.families import StableDiffusion, StableDiffusionXL
from sdft.interop.model_card import MethodFacts, ModelCard, RunFacts, place_samples, read_run_facts, render
from sdft.methods import FullFineTuner, TextualInversion
from sdft.methods.lora import LORA_WEIGHTS, kohya_file_name
from sdft.methods.run_notes import RunNotes
from sdft.methods.tokens import EMBEDDINGS_FILE

KOHYA_FILE = kohya_file_name("run", 4)  # the run fixture's: run "run", four steps
PROMPT = "a photo of <sks>: toy #1"  # a prompt YAML must quote
LORA = MethodFacts(
    "LoRA",
    ("lora", "template:sd-lora"),
    {"rank": 4, "alpha": 8.0},
    {LORA_WEIGHTS: "diffusers"},
    (f'pipe.load_lora_weights(folder, weight_name="{LORA_WEIGHTS}")',),
)
BASE_ROW = {"step": 0, "val/clip_i": 0.5, "val/clip_t": 0.25, "val/dino": 0.3, "val/pres": 0.125, "grid": "g0.png"}
STEP_ROW = {"step": 40, "val/clip_i": 0.625, "val/clip_t": 0.2, "val/dino": 0.45, "val/pres": 0.15, "grid": "g40.png"}


def front_matter(text: str) -> dict:
    """The YAML between the card's opening ``---`` lines."""
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match is not None, text[:200]
    return yaml.safe_load(match[1])


def python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.DOTALL)[1]


def evaluated_card(**options) -> ModelCard:
    run = RunFacts(metrics=(BASE_ROW, STEP_ROW), selection="step 40 has val/dino 0.4500", prompts=("a sks toy",))
    facts = {"step": 40, "instance_prompt": PROMPT, "image": "samples.png", "run": run, "title": "toy", **options}
    return ModelCard("builtin:tiny-sd1", "StableDiffusionPipeline", LORA, **facts)


# -- rendering ---------------------------------------------------------------------------------------------------


def test_the_header_is_hub_yaml_with_the_base_model_license_tags_prompt_and_widget():
    header = front_matter(render(evaluated_card()))
    assert header["base_model"] == "builtin:tiny-sd1" and header["library_name"] == "diffusers"
    assert header["license"] == "other" and header["license_name"] == "set-me"
    assert header["tags"] == ["text-to-image", "diffusers", "sdft", "lora", "template:sd-lora"]
    assert header["instance_prompt"] == PROMPT
    assert header["widget"] == [{"text": PROMPT, "output": {"url": "samples.png"}}]


def test_the_body_shows_the_step_beside_the_base_model_the_selection_the_image_and_the_loading_code():
    text = render(evaluated_card())
    assert "# toy\n" in text and "The weights are those of training step 40." in text
    assert "| metric | base model (step 0) | step 40 (these weights) |" in text
    table = {line.split(" | ")[0] for line in text.splitlines() if line.startswith("| val/")}
    assert table == {"| val/clip_i ↑", "| val/clip_t ↑", "| val/dino ↑", "| val/pres ↓"}
    assert "| val/dino ↑ | 0.3000 | 0.4500 |" in text and "| val/pres ↓ | 0.1250 | 0.1500 |" in text
    assert "Selected as the best step by the evaluation: step 40 has val/dino 0.4500." in text
    assert "![samples of step 40](samples.png)" in text and "`a sks toy`" in text
    assert python_block(text).splitlines() == [
        "from diffusers import StableDiffusionPipeline",
        "",
        'folder = "path/to/this/folder"',
        "# builtin:tiny-sd1, sdft's built-in model, as cached here; elsewhere its folder is printed by: "
        """python -c "from sdft.assets import resolve; print(resolve('builtin:tiny-sd1'))\"""",
        f"pipe = StableDiffusionPipeline.from_pretrained({json.dumps(resolve('builtin:tiny-sd1'))})",
        f'pipe.load_lora_weights(folder, weight_name="{LORA_WEIGHTS}")',
        'image = pipe("a photo of <sks>: toy #1").images[0]',
    ]


def test_a_card_without_evaluation_or_image_says_nothing_of_them_and_lists_the_method_s_settings():
    text = render(ModelCard("some/model", "FluxPipeline", LORA, step=7))
    header = front_matter(text)
    assert "widget" not in header and "instance_prompt" not in header
    assert "val/" not in text and "## Evaluation" not in text and "## Samples" not in text and "![" not in text
    assert "Trigger" not in text and "Selected" not in text
    assert "- rank: `4`\n- alpha: `8.0`" in text and "The weights are those of training step 7." in text


def test_the_run_s_model_config_replaces_the_method_s_own_settings():
    config = {"class_path": "sdft.methods.LoRAFineTuner", "init_args": {"rank": 8, "alpha": 4.0}}
    text = render(ModelCard("some/model", "FluxPipeline", LORA, step=7, run=RunFacts(model_config=config)))
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)[1]
    assert yaml.safe_load(block) == config
    assert "Method: `sdft.methods.LoRAFineTuner` (LoRA)" in text and "- rank:" not in text


def test_a_card_for_the_base_step_alone_has_one_column():
    text = render(evaluated_card(step=0, run=RunFacts(metrics=(BASE_ROW,))))
    assert "| metric | base model (step 0) |\n|---|---:|\n| val/clip_i ↑ | 0.5000 |" in text


# -- the facts of a run folder -------------------------------------------------------------------------------------


def solid(colour: tuple[int, int, int], size: int = 4) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def write_evaluated_run(run: Path) -> None:
    """A run folder evaluated at steps 0 and 2 (step 2 selected), with its model config and probes."""
    (run / "evaluation").mkdir(parents=True)
    rows = [
        {**BASE_ROW, "grid": "evaluation/step_000000.png"},
        {**STEP_ROW, "step": 2, "grid": "evaluation/step_2.png"},
    ]
    (run / "evaluation" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    solid((255, 0, 0)).save(run / "evaluation" / "step_2.png")
    probes = [{"prompt": "a sks toy", "seed": 0}, {"prompt": "a sks toy", "seed": 1}, {"prompt": "a toy", "seed": 0}]
    (run / "evaluation" / "probes.json").write_text(json.dumps({"columns": 2, "probes": probes}))
    (run / "evaluation" / "selection.json").write_text(json.dumps({"step": 2, "reason": "the best", "rejected": {}}))
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"class_path": "x.Method", "init_args": {"rank": 2}}}))


def test_the_facts_of_a_step_are_its_rows_beside_the_base_its_selection_and_its_grid(tmp_path):
    write_evaluated_run(tmp_path)
    facts = read_run_facts(tmp_path, 2)
    assert [row["step"] for row in facts.metrics] == [0, 2] and facts.metrics[1]["val/dino"] == 0.45
    assert (facts.selection, facts.grid, facts.prompts) == (
        "the best",
        tmp_path / "evaluation/step_2.png",
        ("a sks toy", "a toy"),
    )
    assert facts.model_config == {"class_path": "x.Method", "init_args": {"rank": 2}}
    place_samples(facts, tmp_path)
    assert (tmp_path / "samples.png").read_bytes() == (tmp_path / "evaluation" / "step_2.png").read_bytes()
    assert read_run_facts(tmp_path, 0).grid is None and read_run_facts(tmp_path, 0).selection is None  # no file
    assert read_run_facts(tmp_path, 1) == RunFacts(facts.model_config)  # not evaluated: no rows, no selection
    assert read_run_facts(tmp_path, None) == RunFacts(facts.model_config)  # an average: no step's facts
    assert read_run_facts(tmp_path / "nowhere", 2) == RunFacts()


def test_without_an_evaluation_the_step_s_previews_are_tiled_one_prompt_per_row(tmp_path):
    folder = tmp_path / "samples" / "step_000003"
    folder.mkdir(parents=True)
    colours = {"0_5": (255, 0, 0), "0_6": (0, 255, 0), "1_5": (0, 0, 255), "1_6": (255, 255, 255)}
    for stem, colour in colours.items():
        solid(colour).save(folder / f"{stem}.png")
    callbacks = [{"class_path": "sdft.callbacks.SamplePreview", "init_args": {"prompts": ["one", "two"]}}]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    facts = read_run_facts(tmp_path, 3)
    assert facts.prompts == ("one", "two") and facts.metrics == ()
    assert place_samples(facts, tmp_path) == "samples.png"
    grid = Image.open(tmp_path / "samples.png")
    assert grid.size == (8, 8)
    assert [grid.getpixel(xy) for xy in ((0, 0), (4, 0), (0, 4), (4, 4))] == list(colours.values())
    assert place_samples(read_run_facts(tmp_path, 4), tmp_path / "none") is None


def test_an_unreadable_metrics_table_is_warned_about_and_left_out(tmp_path):
    write_evaluated_run(tmp_path)
    (tmp_path / "evaluation" / "metrics.jsonl").write_text("not json\n")
    with pytest.warns(UserWarning, match="leaves out the run's evaluation: .*metrics.jsonl line 1"):
        facts = read_run_facts(tmp_path, 2)
    assert facts.metrics == () and facts.selection is None and facts.grid is None


# -- the exports of a fit ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Four quickstart steps through the CLI, evaluated at 0, 2 and 4, with a moving average."""
    options = (
        "--model.init_args.optimizer.init_args.lr=0.05",
        "--trainer.callbacks+=sdft.callbacks.ExponentialMovingAverage",
    )
    return brief_fit("configs/quickstart_tiny.yaml", tmp_path_factory.mktemp("card"), {}, *options, max_steps=4)


def metric_rows(run: Path) -> dict[int, dict]:
    lines = (run / "evaluation" / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


def check_step_card(folder: Path, run: Path, step: int) -> str:
    """The card of an export of ``step``: its header, step, metrics beside the base model's and its image."""
    text = (folder / "README.md").read_text()
    header = front_matter(text)
    assert header["base_model"] == "builtin:tiny-sd1" and header["instance_prompt"] == "a photo of sks toy"
    assert {"lora", "template:sd-lora", "text-to-image"} <= set(header["tags"])
    assert f"The weights are those of training step {step}." in text
    rows = metric_rows(run)
    for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres"):
        assert re.search(rf"\| {key} . \| {rows[0][key]:.4f} \| {rows[step][key]:.4f} \|", text), key
    image = header["widget"][0]["output"]["url"]
    assert f"]({image})" in text
    assert (folder / image).read_bytes() == (run / rows[step]["grid"]).read_bytes()
    return text


def test_the_final_export_s_card_names_the_last_step_its_metrics_its_grid_and_the_run_s_config(run):
    final = run / "final"
    assert sorted(path.name for path in final.iterdir()) == ["README.md", LORA_WEIGHTS, KOHYA_FILE, "samples.png"]
    text = check_step_card(final, run, 4)
    assert "class_path: sdft.methods.LoRAFineTuner" in text and "rank: 8" in text and "Resolution: 32 px." in text
    assert f"| `{KOHYA_FILE}` |" in text and f"| `{LORA_WEIGHTS}` |" in text


def test_the_best_export_s_card_names_the_selected_step_and_why(run):
    selection = json.loads((run / "evaluation" / "selection.json").read_text())
    assert selection["export"] == "best"
    text = check_step_card(run / "best", run, selection["step"])
    assert f"Selected as the best step by the evaluation: {selection['reason']}." in text


def test_the_average_s_card_describes_the_average_and_shows_no_step_s_evaluation(run):
    ema = run / "ema"
    assert sorted(path.name for path in ema.iterdir()) == ["README.md", LORA_WEIGHTS, KOHYA_FILE]
    text = (ema / "README.md").read_text()
    assert "The weights are the exponential moving average (decay 0.999) of the trained weights from step 0 to" in text
    assert "## Evaluation" not in text and "![" not in text and "widget" not in front_matter(text)


def test_sdft_export_of_a_checkpoint_writes_the_card_of_its_step(run):
    main(["export", str(run / "checkpoints" / "step=000002.ckpt")])
    check_step_card(run / "exports" / "step=000002", run, 2)


def test_the_card_s_loading_code_runs_as_written_in_a_python_with_diffusers_alone(run):
    """The code a user copies, with the folder filled in, in a fresh interpreter that imports no sdft."""
    code = python_block((run / "final" / "README.md").read_text())
    code = code.replace('"path/to/this/folder"', json.dumps(str(run / "final")))
    code = code.replace(".images[0]", ".images[0]\nprint(pipe.get_list_adapters(), image.size, 'sdft' in sys.modules)")
    script = "import sys\n" + code.replace("pipe(", "pipe(num_inference_steps=2, prompt=", 1)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "{'unet': ['default_0']} (64, 64) False"


def run_loading_code(folder: Path, models: dict[str, str] | None = None):
    """Run a card's Python block but its last line (the image) on ``folder``, with base models named as diffusers
    finds them (``models``: the card's name -> a folder); return its ``pipe``."""
    code = "\n".join(python_block((folder / "README.md").read_text()).splitlines()[:-1])
    code = code.replace('"path/to/this/folder"', json.dumps(str(folder)))
    for name, path in (models or {}).items():
        code = code.replace(json.dumps(name), json.dumps(path))
    namespace = {}
    exec(code, namespace)
    return namespace["pipe"]


# -- another method ------------------------------------------------------------------------------------------------


def test_a_textual_inversion_export_s_card_lists_its_word_and_files_and_its_code_loads_them(tiny_sd1, tmp_path):
    options = {"placeholder_token": "<sks>", "initializer_token": "toy", "num_vectors": 2}
    model = TextualInversion(StableDiffusion(str(tiny_sd1)), **options)
    model.configure_model()
    with torch.no_grad():
        for rows in model.tokens.parameters(model.family):
            rows.add_(torch.randn_like(rows))
    model.run_notes = RunNotes(resolution=32, trigger="a photo of <sks> toy", title="words")
    folder = tmp_path / "export"
    model.export(folder)
    assert sorted(path.name for path in folder.iterdir()) == ["README.md", EMBEDDINGS_FILE, "sks.safetensors"]
    text = (folder / "README.md").read_text()
    header = front_matter(text)
    assert "textual_inversion" in header["tags"] and "lora" not in header["tags"]
    assert header["instance_prompt"] == "a photo of <sks> toy" and "widget" not in header
    assert "# words\n" in text and "Textual inversion of" in text and "training step 0" in text
    assert '- placeholder_token: `"<sks>"`' in text and "- num_vectors: `2`" in text
    assert f"| `{EMBEDDINGS_FILE}` |" in text and "| `sks.safetensors` |" in text
    pipe = run_loading_code(folder)
    ids = pipe.tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"])
    loaded = pipe.text_encoder.get_input_embeddings().weight[ids]
    assert torch.equal(loaded, model.tokens.parameters(model.family)[0].detach())


def test_an_sdxl_embedding_s_loading_code_loads_it_into_both_text_encoders(tiny_sdxl, tmp_path):
    options = {"placeholder_token": "<sks>", "initializer_token": "toy", "num_vectors": 2}
    model = TextualInversion(StableDiffusionXL(str(tiny_sdxl)), **options)
    model.configure_model()
    with torch.no_grad():
        for rows in model.tokens.parameters(model.family):
            rows.add_(torch.randn_like(rows))
    model.export(tmp_path)
    pipe = run_loading_code(tmp_path)
    trained = model.tokens.parameters(model.family)
    for encoder, tokenizer, rows in zip(
        (pipe.text_encoder, pipe.text_encoder_2), (pipe.tokenizer, pipe.tokenizer_2), trained, strict=True
    ):
        ids = tokenizer.convert_tokens_to_ids(["<sks>", "<sks>_1"])
        assert torch.equal(encoder.get_input_embeddings().weight[ids], rows.detach())


def test_a_full_fine_tune_s_card_loads_the_folder_as_the_pipeline(tiny_sd1, tmp_path):
    model = FullFineTuner(StableDiffusion(str(tiny_sd1)))
    model.configure_model()
    model.run_notes = RunNotes(trigger="a photo of sks toy")
    model.export(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "dreambooth" in front_matter(text)["tags"] and "Full fine-tuning of" in text
    assert "pipe = StableDiffusionPipeline.from_pretrained(folder)\n" in text and "| `model_index.json` |" in text
    pipe = run_loading_code(tmp_path)
    trained = model.family.unet.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in pipe.unet.state_dict().items())
