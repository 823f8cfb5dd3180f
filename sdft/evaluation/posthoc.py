"""Score every checkpoint of a finished run after the fact, with the probe set its evaluator used."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule

from sdft.callbacks.evaluation import SubjectEvaluator
from sdft.evaluation.selection import select_step
from sdft.files import write_json, write_jsonl
from sdft.methods.base import DiffusionFineTuner
from sdft.runs import apply_checkpoint, checkpoints_by_step, instantiate, read_config

EVALUATOR = "sdft.callbacks.SubjectEvaluator"


def evaluator_from_config(config: dict[str, Any], **overrides: Any) -> SubjectEvaluator:
    """The run's ``SubjectEvaluator`` (defaults when it had none), with ``overrides`` applied (None ignored)."""
    sections = [c for c in config["trainer"].get("callbacks") or [] if c.get("class_path") == EVALUATOR]
    init_args = {**(sections[0].get("init_args", {}) if sections else {}), "export_best": False}
    init_args.update({key: value for key, value in overrides.items() if value is not None})
    return SubjectEvaluator(**init_args)


def score_run(run_dir: Path, clip_model: str | None = None, dino_model: str | None = None) -> list[dict[str, Any]]:
    """Score the base model and every checkpoint of a finished run, with the probes its evaluator used.

    Writes ``evaluation/posthoc.jsonl`` and ``evaluation/posthoc_selection.json``, prints the table, returns the rows.

    Args:
        run_dir: a run folder made by ``sdft fit`` (``config.yaml`` and ``checkpoints/``).
        clip_model: CLIP spec overriding the run's evaluator (e.g. ``open_clip:ViT-L-14/openai``).
        dino_model: DINO spec overriding the run's evaluator.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir / "config.yaml")
    data = instantiate(config["data"], LightningDataModule)
    data.setup("validate")  # the subject photos; class images are a training matter
    evaluator = evaluator_from_config(config, clip_model=clip_model, dino_model=dino_model)
    scorer = evaluator.prepare(data)
    model = instantiate(config["model"], DiffusionFineTuner)
    model.configure_model()
    scorer.set_reference(data.images)
    base = scorer.score(model)
    rows, scores = [{"step": 0, **base.values, "se": base.errors}], {0: base.scores}
    for step, checkpoint in checkpoints_by_step(run_dir / "checkpoints"):
        result = scorer.score(apply_checkpoint(model, checkpoint))
        rows.append({"step": step, **result.values, "se": result.errors, "checkpoint": checkpoint.name})
        scores[step] = result.scores
    selection = select_step(rows, **evaluator.rule, scores=scores)
    write_jsonl(run_dir / "evaluation" / "posthoc.jsonl", rows)
    write_json(run_dir / "evaluation" / "posthoc_selection.json", {"step": selection.step, "reason": selection.reason})
    print(format_rows(rows), f"\nselected step {selection.step}: {selection.reason}", sep="")
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the metric rows."""
    keys = [key for key in rows[0] if key.startswith("val/")]
    lines = ["step".rjust(8) + "".join(key.rjust(12) for key in keys)]
    lines += [str(row["step"]).rjust(8) + "".join(f"{row[key]:12.3f}" for key in keys) for row in rows]
    return "\n".join(lines)
