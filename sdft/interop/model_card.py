"""A model card for an export folder: the ``README.md`` the Hugging Face Hub reads, so the folder can be uploaded or
shared as it is.

The card opens with the Hub's YAML front matter, as diffusers' training scripts write it: ``base_model``, ``license``
(``other`` until the user names the base model's license), ``tags``, ``instance_prompt`` and a ``widget`` showing the
sample image. Its body states only what the export and its run folder hold: what was trained and with which settings,
the trigger, the step of the weights, that step's evaluation beside the base model's, why the step was selected, the
samples, the files and how to load them.

:class:`ModelCard` holds the facts and :func:`render` turns them into markdown; :func:`read_run_facts` reads a run
folder's facts about one step, leaving out whatever is missing or unreadable (a card never stops an export).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from sdft.assets import PREFIX as BUILTIN
from sdft.assets import resolve
from sdft.errors import UserError
from sdft.files import write_text_atomic
from sdft.reporting.records import better, read_evaluation, read_samples, sample_prompts
from sdft.tools.grids import image_grid

CARD_FILE = "README.md"
#: the sample image's name in the export folder
SAMPLES_FILE = "samples.png"
#: the tags of every card (the Hub's pipeline tag and library), before the method's
COMMON_TAGS = ("text-to-image", "diffusers", "sdft")
#: the license placeholder: the Hub accepts ``other`` with a ``license_name``; the user sets the base model's
LICENSE = {"license": "other", "license_name": "set-me"}
ARROWS = {"higher": "↑", "lower": "↓"}


@dataclass(frozen=True)
class MethodFacts:
    """What a method tells a card about what it trained and how its files load.

    Attributes:
        name: the method in words, e.g. ``LoRA``.
        tags: its Hub tags, e.g. ``("lora", "template:sd-lora")``.
        settings: what it trained with, by option name (shown when the run's ``config.yaml`` is not at hand).
        files: each file of the export that a consumer loads, with the consumers and how they load it.
        loading: Python lines that load the files into ``pipe`` (the base model's pipeline) from ``folder``.
        whole_pipeline: the folder is a complete pipeline (``from_pretrained(folder)``), not an addition to the base.
    """

    name: str
    tags: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    files: Mapping[str, str] = field(default_factory=dict)
    loading: tuple[str, ...] = ()
    whole_pipeline: bool = False


def joined_facts(name: str, *parts: MethodFacts) -> MethodFacts:
    """The facts of a method that trains what several others do (pivotal tuning: a LoRA and new words), in order."""
    return MethodFacts(
        name,
        tuple(dict.fromkeys(tag for part in parts for tag in part.tags)),
        {key: value for part in parts for key, value in part.settings.items()},
        {key: value for part in parts for key, value in part.files.items()},
        tuple(line for part in parts for line in part.loading),
        any(part.whole_pipeline for part in parts),
    )


@dataclass(frozen=True)
class RunFacts:
    """What a run folder tells about the weights of one step.

    Attributes:
        model_config: the ``model`` section of the run's ``config.yaml``.
        metrics: the evaluation rows of the base model (the earliest row) and of the step; empty without them.
        selection: why the step was selected, when the evaluation selected it.
        grid: the evaluation's probe grid of the step.
        previews: the step's SamplePreview images, one tuple per prompt (when there is no grid).
        prompts: the prompts of the grid or the previews, top row first.
        strength: the adapter strength the evaluation recommends for the step (``scale``, ``reason``), when it
            measured one.
    """

    model_config: Mapping[str, Any] | None = None
    metrics: tuple[Mapping[str, Any], ...] = ()
    selection: str | None = None
    grid: Path | None = None
    previews: tuple[tuple[Path, ...], ...] = ()
    prompts: tuple[str, ...] = ()
    strength: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ModelCard:
    """The facts of one export's card.

    Attributes:
        base_model: the base model's hub id or path, as configured (``builtin:`` names too).
        pipeline: the diffusers pipeline class that loads the base model, e.g. ``StableDiffusionPipeline``.
        method: what the method tells (:class:`MethodFacts`); its files are those the export holds.
        step: the training step of the weights.
        title: the run's name.
        instance_prompt: the prompt that names what was learned (the trigger).
        resolution: the training resolution, in pixels.
        average: how the weights were averaged (e.g. an exponential moving average) when they are no step's own.
        run: what the run folder tells about the step.
        image: the sample image's file name in the folder.
    """

    base_model: str
    pipeline: str
    method: MethodFacts
    step: int
    title: str | None = None
    instance_prompt: str | None = None
    resolution: int | None = None
    average: str | None = None
    run: RunFacts = field(default_factory=RunFacts)
    image: str | None = None

    @property
    def prompt(self) -> str | None:
        """The prompt to show the model with: the trigger, else the samples' first prompt."""
        return self.instance_prompt or next(iter(self.run.prompts), None)


# -- rendering -------------------------------------------------------------------------------------------------


def render(card: ModelCard) -> str:
    """The card as markdown: the YAML front matter, then one section per kind of fact the card has."""
    sections = [
        front_matter(card),
        introduction(card),
        training_section(card),
        evaluation_section(card),
        samples_section(card),
        files_section(card),
        usage_section(card),
        license_section(),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def front_matter(card: ModelCard) -> str:
    """The Hub's metadata block between ``---`` lines (``yaml.safe_dump``, so any prompt is quoted as needed)."""
    header: dict[str, Any] = {"base_model": card.base_model, "library_name": "diffusers", **LICENSE}
    header["tags"] = list(dict.fromkeys([*COMMON_TAGS, *card.method.tags]))
    if card.instance_prompt:
        header["instance_prompt"] = card.instance_prompt
    if card.image:
        header["widget"] = [{"text": card.prompt or "", "output": {"url": card.image}}]
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---"


def introduction(card: ModelCard) -> str:
    """The title, what the folder holds, the weights' step and the trigger."""
    weights = card.average or f"those of training step {card.step}"
    lines = [f"# {card.title or card.method.name}", ""]
    lines.append(
        f"{card.method.name} of `{card.base_model}` (`{card.pipeline}`), trained with sdft. The weights are {weights}."
    )
    if card.instance_prompt:
        lines += ["", f"Trigger: write `{card.instance_prompt}` in the prompt."]
    return "\n".join(lines)


def training_section(card: ModelCard) -> str:
    """The method and its settings: the run's ``model`` config when at hand, else what the method tells."""
    lines = ["## Training", ""]
    if card.resolution:
        lines += [f"Resolution: {card.resolution} px.", ""]
    config = card.run.model_config
    if config is not None:
        lines += [f"Method: `{config.get('class_path', card.method.name)}` ({card.method.name}), as configured:", ""]
        lines += ["```yaml", yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True).rstrip(), "```"]
    else:
        lines += [f"Method: {card.method.name}.", ""]
        lines += [f"- {key}: `{json.dumps(value)}`" for key, value in card.method.settings.items()]
    return "\n".join(lines).rstrip()


def evaluation_section(card: ModelCard) -> str:
    """The step's metrics beside the base model's and the selection's reason; empty when there is neither."""
    lines = []
    if card.run.selection:
        lines += [f"Selected as the best step by the evaluation: {card.run.selection}.", ""]
    if card.run.strength:
        strength = card.run.strength
        lines += [f"Recommended strength: **{strength['scale']:g}**, measured: {strength['reason']}.", ""]
    if card.run.metrics:
        lines += metrics_table(card.run.metrics)
    return "\n".join(["## Evaluation", "", *lines]).rstrip() if lines else ""


def metrics_table(rows: tuple[Mapping[str, Any], ...]) -> list[str]:
    """A markdown table of the metrics (``val/...``) of the step's row, one column per row (base model first).

    Args:
        rows: the base model's row and the step's (or the step's alone, when it is the base model's).
    """
    names = [key for key, value in rows[-1].items() if key.startswith("val/") and is_number(value)]
    headers = ["base model (step 0)" if row["step"] == 0 else f"step {row['step']}" for row in rows]
    if len(rows) > 1:
        headers[-1] = f"step {rows[-1]['step']} (these weights)"
    lines = ["| metric | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(rows)]
    for name in names:
        arrow = ARROWS.get(better(name) or "", "")
        values = [f"{row[name]:.4f}" if is_number(row.get(name)) else "—" for row in rows]
        lines.append(f"| {name} {arrow}".rstrip() + " | " + " | ".join(values) + " |")
    return lines


def samples_section(card: ModelCard) -> str:
    """The sample image and its prompts; empty without an image."""
    if not card.image:
        return ""
    lines = ["## Samples", "", f"![samples of step {card.step}]({card.image})"]
    if card.run.prompts:
        lines += ["", "Prompts, top row first: " + "; ".join(f"`{prompt}`" for prompt in card.run.prompts) + "."]
    return "\n".join(lines)


def files_section(card: ModelCard) -> str:
    """A table of the files a consumer loads and how; empty when the method names none."""
    if not card.method.files:
        return ""
    lines = ["## Files", "", "| file | use |", "|---|---|"]
    lines += [f"| `{name}` | {use} |" for name, use in card.method.files.items()]
    return "\n".join(lines)


def usage_section(card: ModelCard) -> str:
    """How to load the export with diffusers, as a Python block ending in one image of the card's prompt; for an
    export diffusers does not load (a LyCORIS adapter), where it loads instead."""
    if not card.method.loading and not card.method.whole_pipeline:
        return (
            "## Use\n\ndiffusers does not load this adapter: load the files above as their table says, or sample it "
            f"with `sdft generate --model {card.base_model} --lora path/to/this/folder`."
        )
    pipeline = card.pipeline
    source = "folder" if card.method.whole_pipeline else json.dumps(local_name(card.base_model))
    code = [
        f"from diffusers import {pipeline}",
        "",
        'folder = "path/to/this/folder"',
        *built_in_comment(card.base_model, card.method.whole_pipeline),
        f"pipe = {pipeline}.from_pretrained({source})",
        *card.method.loading,
        *strength_line(card),
        f"image = pipe({json.dumps(card.prompt or '')}).images[0]",
    ]
    return "\n".join(["## Use with diffusers", "", "```python", *code, "```"])


def local_name(base_model: str) -> str:
    """The base model as diffusers finds it: a ``builtin:`` name is sdft's, so the card names the folder it resolves to
    on this machine."""
    return resolve(base_model) if base_model.startswith(BUILTIN) else base_model


def built_in_comment(base_model: str, whole_pipeline: bool) -> list[str]:
    """For a ``builtin:`` base model, a comment saying how to get its folder on another machine."""
    if whole_pipeline or not base_model.startswith(BUILTIN):
        return []
    command = f"python -c \"from sdft.assets import resolve; print(resolve('{base_model}'))\""
    return [f"# {base_model}, sdft's built-in model, as cached here; elsewhere its folder is printed by: {command}"]


def strength_line(card: ModelCard) -> list[str]:
    """The line that sets the measured strength of loaded LoRAs, when it is not 1."""
    strength = card.run.strength
    if not strength or strength["scale"] == 1.0 or not card.method.loading:
        return []
    return [f"pipe.set_adapters(pipe.get_active_adapters(), {strength['scale']:g})  # the measured strength"]


def license_section() -> str:
    return (
        "## License\n\nThe weights are subject to the base model's license: set `license` (or `license_name` and "
        "`license_link`) in the header above to it before sharing."
    )


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_model_card(directory: Path, card: ModelCard) -> Path:
    """Write ``README.md`` into ``directory``; return its path."""
    path = Path(directory) / CARD_FILE
    write_text_atomic(path, render(card))
    return path


# -- the facts of a run folder ---------------------------------------------------------------------------------


def read_run_facts(run_dir: Path, step: int | None) -> RunFacts:
    """What a run folder tells about the weights of ``step``: the model config, the step's evaluation (rows,
    selection, grid) or else its SamplePreview images. Missing files leave their facts out; an unreadable one is
    warned about and left out.

    Args:
        run_dir: the run folder (``config.yaml``, ``evaluation/``, ``samples/``).
        step: the training step of the weights; None for weights of no step (an average): only the config is read.
    """
    run_dir = Path(run_dir)
    config = read_model_config(run_dir / "config.yaml")
    if step is None:
        return RunFacts(config)
    try:
        evaluated = read_evaluated_step(run_dir, step)
    except UserError as error:
        warnings.warn(f"the model card leaves out the run's evaluation: {error}", stacklevel=2)
        evaluated = RunFacts()
    if evaluated.grid is not None:
        return replace(evaluated, model_config=config)
    previews = preview_rows(run_dir, step)
    prompts = tuple(sample_prompts(run_dir))[: len(previews)] if previews else ()
    return replace(evaluated, model_config=config, grid=None, previews=previews, prompts=prompts)


def read_model_config(path: Path) -> Mapping[str, Any] | None:
    """The ``model`` section of a run's ``config.yaml``; None when the file or section is missing or unreadable."""
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else None


def read_evaluated_step(run_dir: Path, step: int) -> RunFacts:
    """The evaluation of ``step`` in ``<run>/evaluation/``: the base model's row and the step's, the selection's
    reason when it chose the step, the grid file and its probes' prompts; empty when the step was not evaluated."""
    if not (run_dir / "evaluation" / "metrics.jsonl").is_file():
        return RunFacts()
    evaluation = read_evaluation(run_dir)
    row = next((row for row in evaluation.rows if row["step"] == step), None)
    if row is None:
        return RunFacts()
    base = evaluation.rows[0]  # sorted by step: the base model's, step 0
    selected = evaluation.selection is not None and evaluation.selection.step == step
    grid = run_dir / str(row.get("grid", ""))
    return RunFacts(
        metrics=(row,) if base is row else (base, row),
        selection=evaluation.selection.reason if selected else None,
        strength=evaluation.selection.strength if selected else None,
        grid=grid if row.get("grid") and grid.is_file() else None,
        prompts=probe_prompts(run_dir / "evaluation" / "probes.json"),
    )


def probe_prompts(path: Path) -> tuple[str, ...]:
    """The distinct prompts of the evaluation grids, in grid order, from ``probes.json``; empty when unreadable."""
    try:
        probes = json.loads(path.read_text())["probes"] if path.is_file() else []
        return tuple(dict.fromkeys(str(probe["prompt"]) for probe in probes))
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def preview_rows(run_dir: Path, step: int) -> tuple[tuple[Path, ...], ...]:
    """The SamplePreview images of ``step`` (``samples/step_N/<prompt>_<seed>.png``), one tuple per prompt, each as
    long as the first; empty when there are none."""
    images = dict(read_samples(run_dir)).get(step, [])
    rows: dict[int, list[Path]] = {}
    for prompt, _, path in images:
        rows.setdefault(prompt, []).append(path)
    if not rows or len({len(row) for row in rows.values()}) != 1:
        return ()
    return tuple(tuple(rows[prompt]) for prompt in sorted(rows))


def place_samples(run: RunFacts, directory: Path) -> str | None:
    """Put the run's sample image of the step into ``directory`` as ``samples.png`` (the evaluation grid copied, or
    the previews tiled one prompt per row); return its name, or None when there is none."""
    target = Path(directory) / SAMPLES_FILE
    if run.grid is not None:
        shutil.copyfile(run.grid, target)
        return SAMPLES_FILE
    if not run.previews:
        return None
    images = []
    for path in (path for row in run.previews for path in row):
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    image_grid(images, columns=len(run.previews[0])).save(target, format="PNG")
    return SAMPLES_FILE
