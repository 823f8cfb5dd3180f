"""A run folder's records read once, for the markdown report and the run page: the evaluation, the TensorBoard
curves, the samples, the strength measurement recorded in ``selection.json``, and the configuration."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sdft.errors import UserError
from sdft.reporting.records import (
    NOT_A_RUN,
    Evaluation,
    Points,
    _is_number,
    read_curves,
    read_evaluation,
    read_samples,
)


@dataclass(frozen=True)
class Strength:
    """The LoRA strength measured at the chosen step (``selection.json``'s ``strength``).

    Attributes:
        rows: one metrics row per scale (``scale``, the metrics, ``se``, ``grid``), in scale order.
        scale: the recommended scale, or None when none was recommended.
        reason: why that scale.
        rejected: scale -> why it was rejected.
    """

    rows: list[dict[str, Any]]
    scale: float | None
    reason: str
    rejected: Mapping[float, str]


@dataclass(frozen=True)
class RunRecords:
    """What one run folder holds for its reports.

    Attributes:
        run_dir: the run folder.
        label: its name on the page (unique among the runs shown together).
        evaluation: the evaluation files, or None without an evaluator.
        curves: the TensorBoard scalars, tag -> (step, value) points.
        samples: the SamplePreview images, (step, [(prompt index, seed, file), ...]).
        strength: the strength measurement, or None.
        config: the parsed ``config.yaml`` (empty when missing or unreadable).
        config_text: the text of ``config.yaml``, or None when missing.
    """

    run_dir: Path
    label: str
    evaluation: Evaluation | None
    curves: dict[str, Points]
    samples: list[tuple[int, list[tuple[int, int, Path]]]]
    strength: Strength | None
    config: dict[str, Any]
    config_text: str | None


def read_run(run_dir: Path, label: str | None = None) -> RunRecords:
    """Read a run folder for its reports; a folder with no evaluation, no curves and no samples is refused.

    Args:
        run_dir: the run folder.
        label: its name on the page; default ``<parent>/<folder>`` (``quickstart/version_0``).
    """
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: {NOT_A_RUN}")
    evaluation = read_evaluation(run_dir) if (run_dir / "evaluation" / "metrics.jsonl").is_file() else None
    curves, samples = read_curves(run_dir), read_samples(run_dir)
    if evaluation is None and not curves and not samples:
        raise UserError(
            f"{run_dir} has nothing to report: no evaluation/metrics.jsonl, no TensorBoard scalars "
            f"(events.out.tfevents.*) and no samples/step_*/ images; {NOT_A_RUN}"
        )
    config_path = run_dir / "config.yaml"
    config_text = config_path.read_text() if config_path.is_file() else None
    label = label or f"{run_dir.parent.name}/{run_dir.name}"
    recorded = evaluation.selection.strength if evaluation and evaluation.selection else None
    strength = parse_strength(recorded, run_dir / "evaluation" / "selection.json")
    return RunRecords(run_dir, label, evaluation, curves, samples, strength, parse_config(config_text), config_text)


def parse_strength(data: Mapping[str, Any] | None, path: Path) -> Strength | None:
    """The ``strength`` entry of ``selection.json`` (see ``sdft.evaluation.strength``); None when it is missing or
    null. A recommended scale that is none of the measured ones (no scale had finite metrics) counts as none.

    Args:
        data: the entry.
        path: the ``selection.json`` file, for error messages.
    """
    if data is None:
        return None
    try:
        rows = sorted((dict(row) for row in data["rows"]), key=lambda row: float(row["scale"]))
        scale = None if data.get("scale") is None else float(data["scale"])
        scale = scale if scale in {float(row["scale"]) for row in rows} else None
        rejected = {float(key): str(why) for key, why in (data.get("rejected") or {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{path} has a malformed 'strength' ({error!r}): expected 'rows' with a numeric 'scale' each, a numeric"
            " 'scale' and scale-keyed 'rejected'"
        ) from error
    return Strength(rows, scale, str(data.get("reason", "")), rejected)


def parse_config(text: str | None) -> dict[str, Any]:
    """The configuration as a dict; empty when there is none or it does not parse.

    Args:
        text: the text of ``config.yaml``, or None.
    """
    try:
        config = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return config if isinstance(config, dict) else {}


def flatten_settings(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys, e.g. ``model.init_args.rank``; a listed item with a ``class_path`` is keyed
    by its class name (``trainer.callbacks[SubjectEvaluator].init_args.every_n_steps``), others by position.

    Args:
        value: the parsed configuration, or a part of it.
        prefix: the key of ``value``.
    """
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten_settings(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, list) and any(isinstance(item, (Mapping, list)) for item in value):
        flat = {}
        for index, item in enumerate(value):
            name = item.get("class_path") if isinstance(item, Mapping) else None
            flat.update(flatten_settings(item, f"{prefix}[{str(name).rsplit('.', 1)[-1] if name else index}]"))
        return flat
    return {prefix: value}


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Names for runs shown together: each folder relative to the folder holding them all
    (``version_0``, ``version_1``); one run is ``<parent>/<folder>``.

    Args:
        run_dirs: the run folders, resolved.
    """
    if len(run_dirs) == 1:
        return [f"{run_dirs[0].parent.name}/{run_dirs[0].name}"]
    common = Path(os.path.commonpath([str(path) for path in run_dirs]))
    labels = [path.relative_to(common).as_posix() or path.name for path in run_dirs]
    if len(set(labels)) < len(labels):
        raise UserError("the same run folder is given twice: pass each run once")
    return labels


def metric_value(row: Mapping[str, Any], metric: str) -> tuple[float, float | None] | None:
    """(value, standard error or None) of ``metric`` in a metrics row; None when the row lacks it.

    Args:
        row: a metrics row (``se`` holds the standard errors).
        metric: the metric key.
    """
    value, error = row.get(metric), (row.get("se") or {}).get(metric)
    return (value, error if _is_number(error) else None) if _is_number(value) else None
