"""Reading a run folder's records: the evaluation files, the TensorBoard scalars and the sample images."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sdft.errors import UserError

Row = Mapping[str, Any]
Points = list[tuple[int, float]]

CEILING_EXTRA_KEYS = frozenset({"num_reference_images"})
#: which direction is better, for the metrics sdft logs; other keys ending in ``loss`` are lower-is-better too
BETTER = {
    "val/clip_i": "higher",
    "val/clip_t": "higher",
    "val/dino": "higher",
    "val/pres": "lower",
    "val/div": "higher",
}
SKIPPED_SCALARS = frozenset({"epoch"})  # Lightning's epoch counter: not a curve anyone reads
SAMPLE_FILE = re.compile(r"(\d+)_(\d+)\.png")
NOT_A_RUN = "pass a run folder made by `sdft fit` (runs/<name>/version_N)"


@dataclass(frozen=True)
class RecordedSelection:
    """The contents of ``selection.json``: the chosen step, why, and the steps that were rejected and why."""

    step: int
    reason: str
    candidates: tuple[int, ...] = ()
    rejected: Mapping[int, str] = field(default_factory=dict)
    rule: Mapping[str, Any] | None = None
    export: str | None = None
    checkpoint: str | None = None
    strength: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Evaluation:
    """A run's evaluation files, loaded: the metrics table, the ceilings, the selection, the grid rows' probes."""

    rows: list[dict[str, Any]]
    ceilings: dict[str, float | None]
    num_reference_images: int | None
    selection: RecordedSelection | None
    grid_rows: list[str] = field(default_factory=list)


# -- reading the run folder -------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``<run>/evaluation/metrics.jsonl`` sorted by step; blank lines are skipped.

    Args:
        run_dir: the run folder.
    """
    path = Path(run_dir) / "evaluation" / "metrics.jsonl"
    if not path.is_file():
        raise UserError(
            f"{path} not found: run `sdft fit` with the `sdft.callbacks.SubjectEvaluator` callback to evaluate"
            " checkpoints"
        )
    rows = [_parse_row(line, path, number) for number, line in enumerate(path.read_text().splitlines(), 1)]
    return sorted((row for row in rows if row is not None), key=lambda row: row["step"])


def read_scores(run_dir: Path) -> dict[int, dict[str, list[float]]]:
    """``<run>/evaluation/scores.jsonl`` as step -> metric -> every probe's score, in probe order.

    Args:
        run_dir: the run folder.
    """
    path = Path(run_dir) / "evaluation" / "scores.jsonl"
    rows = [_parse_row(line, path, number) for number, line in enumerate(path.read_text().splitlines(), 1)]
    return {row.pop("step"): row for row in rows if row is not None}


def _parse_row(line: str, path: Path, number: int) -> dict[str, Any] | None:
    """One metrics line as a dict with an integer ``step``; None for a blank line.

    Args:
        line: the text of the line.
        path: the file, for error messages.
        number: the 1-based line number, for error messages.
    """
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{path} line {number} is not valid JSON ({error.msg}): {line[:80]!r}") from error
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        raise UserError(f"{path} line {number} must be a JSON object with an integer 'step', got {line[:80]!r}")
    return row


def read_evaluation(run_dir: Path) -> Evaluation:
    """Load the metrics table and the optional ``reference.json``, ``selection.json`` and ``probes.json``.

    Args:
        run_dir: the run folder.
    """
    folder = Path(run_dir) / "evaluation"
    rows = read_metrics(run_dir)
    if not rows:
        raise UserError(f"{folder / 'metrics.jsonl'} has no evaluations: nothing to report")
    reference = _read_optional_json(folder / "reference.json") or {}
    ceilings = {
        key: None if value is None else float(value)
        for key, value in reference.items()
        if key not in CEILING_EXTRA_KEYS and (value is None or _is_number(value))
    }
    selection = _read_optional_json(folder / "selection.json")
    recorded = None if selection is None else _parse_selection(selection, folder / "selection.json")
    grid_rows = read_grid_rows(folder / "probes.json")
    return Evaluation(rows, ceilings, reference.get("num_reference_images"), recorded, grid_rows)


def _read_optional_json(path: Path) -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or None if the file does not exist.

    Args:
        path: the JSON file.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _parse_selection(data: Mapping[str, Any], path: Path) -> RecordedSelection:
    """A ``selection.json`` object as a :class:`RecordedSelection`; JSON's string step keys become integers.

    Args:
        data: the parsed JSON object.
        path: the file, for error messages.
    """
    try:
        return RecordedSelection(
            step=int(data["step"]),
            reason=str(data.get("reason", "")),
            candidates=tuple(int(step) for step in data.get("candidates", ())),
            rejected={int(step): str(why) for step, why in data.get("rejected", {}).items()},
            rule=data.get("rule"),
            export=data.get("export"),
            checkpoint=data.get("checkpoint"),
            strength=data.get("strength"),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{path} is malformed ({error!r}): expected integer 'step' and step-keyed 'rejected'"
        ) from error


def read_grid_rows(path: Path) -> list[str]:
    """Labels of the evaluation grids' rows, top to bottom, from ``probes.json``; empty when it is missing.

    Args:
        path: the ``probes.json`` file.
    """
    data = _read_optional_json(path)
    if data is None:
        return []
    try:
        columns, probes = int(data["columns"]), list(data["probes"])
        return [grid_row_label(probes[start : start + columns]) for start in range(0, len(probes), max(columns, 1))]
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(f"{path} is malformed ({error!r}): expected 'columns' and a list of 'probes'") from error


def grid_row_label(probes: Sequence[Mapping[str, Any]]) -> str:
    """E.g. ``a sks dog in the snow`` (seeds 0, 1): the prompts of one grid row with their seeds.

    Args:
        probes: the row's probes (``prompt``, ``seed``, ``class_prompt``), left to right.
    """
    parts = []
    for prompt in dict.fromkeys(str(probe["prompt"]) for probe in probes):
        same = [probe for probe in probes if probe["prompt"] == prompt]
        kind = "bare class prompt, " if any(probe.get("class_prompt") for probe in same) else ""
        seeds = ", ".join(str(probe["seed"]) for probe in same)
        parts.append(f"`{prompt}` ({kind}seed{'s' if len(same) > 1 else ''} {seeds})")
    return "; ".join(parts)


def read_curves(run_dir: Path) -> dict[str, Points]:
    """Every scalar of the run's TensorBoard event files (``epoch`` aside) as (step, value) points, in step order;
    a step logged twice (a resumed run) keeps its last value.

    Args:
        run_dir: the run folder (holds ``events.out.tfevents.*``).
    """
    if not any(Path(run_dir).glob("events.out.tfevents.*")):
        return {}
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        if tag not in SKIPPED_SCALARS:
            curves[tag] = sorted({event.step: event.value for event in events.Scalars(tag)}.items())
    return curves


def read_samples(run_dir: Path) -> list[tuple[int, list[tuple[int, int, Path]]]]:
    """The SamplePreview images: (step, [(prompt index, seed, file), ...]) per ``samples/step_N/`` folder.

    Args:
        run_dir: the run folder.
    """
    found = []
    for folder in Path(run_dir).glob("samples/step_*"):
        step = folder.name.removeprefix("step_")
        matches = [(SAMPLE_FILE.fullmatch(path.name), path) for path in folder.iterdir()] if folder.is_dir() else []
        images = sorted((int(match[1]), int(match[2]), path) for match, path in matches if match)
        if step.isdigit() and images:
            found.append((int(step), images))
    return sorted(found)


def sample_prompts(run_dir: Path) -> list[str]:
    """The prompts of the run's SamplePreview callback, from its ``config.yaml``; empty when unknown.

    Args:
        run_dir: the run folder.
    """
    path = Path(run_dir) / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text()) if path.is_file() else None
    except yaml.YAMLError:
        return []
    trainer = config.get("trainer") if isinstance(config, dict) else None
    callbacks = trainer.get("callbacks") if isinstance(trainer, dict) else None
    for callback in callbacks if isinstance(callbacks, list) else []:
        if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith("SamplePreview"):
            prompts = (callback.get("init_args") or {}).get("prompts")
            return [str(prompt) for prompt in prompts] if isinstance(prompts, list) else []
    return []


# -- the metrics ------------------------------------------------------------------------------------------------


def metric_names(rows: Sequence[Row]) -> list[str]:
    """The metric keys (``val/...``) of the table, in order of first appearance; timings are not plotted.

    Args:
        rows: the metrics table.
    """
    names: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith("val/") and _is_number(value):
                names.setdefault(key)
    return list(names)


def _is_number(value: Any) -> bool:
    """True for ints and floats, False for booleans and everything else.

    Args:
        value: a JSON value.
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def better(metric: str) -> str | None:
    """``higher`` or ``lower``: which values of ``metric`` are better; None when unknown.

    Args:
        metric: a metric key or TensorBoard tag.
    """
    return BETTER.get(metric) or ("lower" if metric.endswith("loss") else None)
