"""``sdft compare``: score checkpoints and exports, sdft's or another tool's, on one probe set.

Each entry is sampled the way its users load it, a stock diffusers pipeline of the base model with the entry's files
loaded (:func:`sdft.tools.sources.load_loras`, which reads every adapter format ``read_lora`` reads), with the same
prompts, seeds, sampler and backbones, and scored against the same subject photos. The base model is scored too: the
selection rule's constraints are relative to it. Entries:

- a run folder: the step its evaluation chose (its ``best/`` export), else its last checkpoint;
- a run's checkpoint (``.ckpt``): exported first, into ``<output>/exports/``;
- an export folder: its adapter file (the diffusers one when both are there) and its learned words;
- an adapter file of any tool: diffusers, kohya / A1111 / ComfyUI or LyCORIS ``.safetensors``.

The probes, the subject photos, the base model and the rule are those of a run: ``--run``, else the first run among
the entries. Output, in ``<output>`` (default ``<run>/compare``)::

    comparison.json   the entries in order, the base model first: name, source, metrics, standard errors, grid;
                      and the rule's choice among the entries with its reason and the entries it rejected
    scores.jsonl      every probe's score of each entry, in probe order (as evaluation/scores.jsonl)
    grids/NN_<name>.png  each entry's probe images, one row per prompt
    report.html       the page: the preferred entry and why, the metrics table, the grids under one slider
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdft.errors import UserError
from sdft.files import write_atomic, write_json, write_jsonl

EMBEDDINGS_FILE = "learned_embeds.safetensors"


@dataclass(frozen=True)
class Entry:
    """One thing to score: a name for the page, where it came from, and the files that load it on the base model.

    Attributes:
        name: the entry's label.
        source: what the user gave.
        loras: adapter files.
        embeddings: learned-word files.
    """

    name: str
    source: str
    loras: tuple[Path, ...] = ()
    embeddings: tuple[Path, ...] = ()


@dataclass
class PipelineSampler:
    """A pipeline with an entry's files loaded, behind the ``generate`` call the probe scorer makes."""

    pipeline: Any
    family: Any
    device: str

    def generate(
        self, prompts: list[str], seeds: list[int], resolution: int, num_inference_steps: int, guidance_scale: float
    ) -> list:
        """One image per (prompt, seed), each seed drawing through its own generator, as training's samples do."""
        import torch

        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        with torch.no_grad():
            return self.pipeline(
                prompt=prompts,
                generator=generators,
                height=resolution,
                width=resolution,
                num_inference_steps=num_inference_steps,
                **self.family.guidance_options(guidance_scale, len(prompts)),
                **self.family.sampling_options(),
            ).images


def compare(
    entries: Sequence[Path],
    run: Path | None = None,
    output: Path | None = None,
    scale: float = 1.0,
    clip_model: str | None = None,
    dino_model: str | None = None,
    device: str = "cpu",
) -> Path:
    """Score the base model and each entry on one probe set; write ``comparison.json``, the grids and the page.

    Returns the output folder.

    Args:
        entries: run folders, checkpoints, export folders or adapter files (see the module docstring).
        run: the run whose probes, photos, base model and rule are used; default the first run among ``entries``.
        output: the output folder; default ``<run>/compare``.
        scale: the strength every adapter is loaded at.
        clip_model: CLIP spec overriding the run's evaluator.
        dino_model: DINO spec overriding the run's evaluator.
        device: where to sample and score.
    """
    if not entries:
        raise UserError("sdft compare needs at least one run folder, checkpoint, export folder or adapter file")
    paths = [Path(entry) for entry in entries]
    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist: give a run folder, a .ckpt, an export folder or a .safetensors")
    run = Path(run) if run is not None else next((path for path in paths if is_run(path)), None)
    if run is None or not is_run(run):
        raise UserError(
            "sdft compare takes its probes, subject photos and base model from a run: give a run folder among the "
            "entries or as --run (a folder with config.yaml, made by sdft fit)"
        )
    output = Path(output) if output is not None else run / "compare"
    resolved = [resolve_entry(path, output) for path in paths]
    evaluator = run_evaluator(run, clip_model, dino_model)
    rows, scores = score_entries(run, evaluator, resolved, output, scale, device)
    write_comparison(output, rows, scores, evaluator.rule)
    from sdft.reporting.comparison import write_comparison_page

    print(write_comparison_page(output, run))
    return output


def is_run(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file()


def resolve_entry(path: Path, output: Path) -> Entry:
    """The files that load one entry (see the module docstring), checked to exist before any model loads."""
    if is_run(path):
        return run_entry(path, output)
    if path.suffix == ".ckpt":
        from sdft.runs import export_checkpoint

        exported = export_checkpoint(path, output / "exports" / f"{path.parent.parent.name}-{path.stem}")
        folder = exported if exported.is_dir() else exported.parent
        return export_entry(folder, f"{path.parent.parent.name} {path.stem}", str(path))
    if path.is_dir():
        return export_entry(path, path.name, str(path))
    if path.suffix == ".safetensors":
        return Entry(path.stem, str(path), (path,))
    raise UserError(f"{path} is not a run folder, a .ckpt, an export folder or a .safetensors adapter file")


def run_entry(run: Path, output: Path) -> Entry:
    """A run's chosen step: its ``best/`` export, else its last checkpoint exported."""
    import json

    from sdft.runs import checkpoints_by_step

    best = run / "best"
    selection_file = run / "evaluation" / "selection.json"
    if best.is_dir() and selection_file.is_file():
        step = json.loads(selection_file.read_text())["step"]
        return export_entry(best, f"{run_label(run)} step {step} (chosen)", str(run))
    checkpoints = checkpoints_by_step(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    if not checkpoints:
        raise UserError(f"{run} has no best/ export and no checkpoint: train it, or give an export or adapter file")
    step, checkpoint = checkpoints[-1]
    entry = resolve_entry(checkpoint, output)
    return Entry(f"{run_label(run)} step {step} (last)", str(run), entry.loras, entry.embeddings)


def run_label(run: Path) -> str:
    """``<name>/<version>`` of a run folder made by sdft fit, else its folder name."""
    return f"{run.parent.name}/{run.name}" if run.name.startswith("version_") else run.name


def export_entry(folder: Path, name: str, source: str) -> Entry:
    """An export folder's adapter file (the diffusers one, else the ComfyUI / A1111 one) and learned words."""
    from sdft.methods.lora import LORA_WEIGHTS, kohya_file

    adapter = folder / LORA_WEIGHTS if (folder / LORA_WEIGHTS).is_file() else kohya_file(folder)
    loras = (adapter,) if adapter is not None else ()
    embeddings = (folder / EMBEDDINGS_FILE,) if (folder / EMBEDDINGS_FILE).is_file() else ()
    if not loras and not embeddings:
        raise UserError(
            f"{folder} holds no adapter ({LORA_WEIGHTS} or a kohya file) and no {EMBEDDINGS_FILE}: sdft compare "
            "scores adapters and learned words on the run's base model"
        )
    return Entry(name, source, loras, embeddings)


def run_evaluator(run: Path, clip_model: str | None, dino_model: str | None) -> Any:
    """The run's ``SubjectEvaluator`` as its config sets it (``clip_model`` / ``dino_model`` replacing its own)."""
    from sdft.evaluation.posthoc import evaluator_from_config
    from sdft.runs import read_config

    return evaluator_from_config(read_config(run / "config.yaml"), clip_model=clip_model, dino_model=dino_model)


def score_entries(
    run: Path, evaluator: Any, entries: list[Entry], output: Path, scale: float, device: str
) -> tuple[list[dict[str, Any]], list[dict[str, list[float]]]]:
    """The base model's row and each entry's (metrics, standard errors, grid), and every probe's scores."""
    from lightning.pytorch import LightningDataModule

    from sdft.runs import instantiate, read_config
    from sdft.tools import sources
    from sdft.tools.grids import image_grid

    config = read_config(run / "config.yaml")
    data = instantiate(config["data"], LightningDataModule)
    data.setup("validate")
    scorer = evaluator.prepare(data)
    scorer.to(device)
    scorer.set_reference(data.images)
    family_section = config["model"]["init_args"]["family"]
    base = Entry("base model", str(family_section.get("init_args", {}).get("pretrained_model_name_or_path", "")))
    rows, scores = [], []
    for index, entry in enumerate([base, *entries]):
        family = sources.run_model(run, None).family
        pipeline = family.base_pipeline(device)
        model = family.pretrained_model_name_or_path
        names, fused = sources.load_loras(pipeline, list(entry.loras), family, model)
        embeddings = [sources.read_embedding(file, None, type(family)) for file in entry.embeddings]
        sources.load_embeddings(pipeline, embeddings, type(family), model)
        if names:
            pipeline.set_adapters(names, [scale] * len(names))
        if fused.changes:
            fused.apply(scale)
        result = scorer.score(PipelineSampler(pipeline, family, device))
        grid = f"grids/{index:02d}_{slug(entry.name)}.png"
        image = image_grid(result.images, columns=evaluator.images_per_prompt)
        write_atomic(output / grid, lambda file, image=image: image.save(file, format="PNG"))
        errors = {key: round(value, 6) for key, value in result.errors.items()}
        rows.append({"name": entry.name, "source": entry.source, **result.values, "se": errors, "grid": grid})
        scores.append(result.scores)
        print(f"{entry.name}: " + ", ".join(f"{key} {value:.3f}" for key, value in result.values.items()))
    return rows, scores


def write_comparison(
    output: Path, rows: list[dict[str, Any]], scores: list[dict[str, list[float]]], rule: dict[str, Any]
) -> None:
    """``comparison.json`` with the rule's choice among the entries, and ``scores.jsonl``."""
    from sdft.evaluation.selection import Axis, select_step

    axis = Axis("entry", "entries", "entry", "listed first", lambda index: rows[index]["name"])
    table = [{**row, "step": index} for index, row in enumerate(rows)]
    selection = select_step(table, **rule, scores=dict(enumerate(scores)), axis=axis)
    choice = {
        "entry": rows[selection.step]["name"],
        "reason": selection.reason,
        "rejected": {rows[index]["name"]: why for index, why in selection.rejected.items()},
        "rule": rule,
    }
    write_json(output / "comparison.json", {"entries": rows, "selection": choice})
    named = [{"name": row["name"], **score} for row, score in zip(rows, scores, strict=True)]
    write_jsonl(output / "scores.jsonl", named)
    print(f"the rule prefers {choice['entry']}: {choice['reason']}")


def slug(name: str) -> str:
    """A file-name-safe form of an entry's name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "entry"
