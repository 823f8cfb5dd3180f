"""Pick the checkpoint step to keep from a table of evaluated metrics.

A weighted sum of image and text similarity is sensitive to its weight (arXiv 2505.20975), so the rule is a
constraint one: maximise subject fidelity (DINO by default) among the steps whose prompt fidelity (CLIP-T) did not
drop, and whose prior preservation (PRES) did not rise, by more than a margin from the base model; near-ties go to
the earlier step, which has drifted less. The DreamBooth user study finds DINO gaps of ~0.1 and CLIP-T gaps of
~0.05 noticeable (arXiv 2208.12242), hence the default margins.

Each row is a mapping ``{"step": int, "val/clip_i": ..., "val/clip_t": ..., "val/dino": ..., "val/pres": ...}``;
the row with the lowest step (normally step 0, the base model) is the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sdft.errors import UserError

CLIP_T = "val/clip_t"
PRES = "val/pres"
EPSILON = 1e-9

Row = Mapping[str, float]


@dataclass(frozen=True)
class Selection:
    """The chosen step, a sentence saying why, the steps that met the constraints and why the others did not."""

    step: int
    reason: str
    candidates: tuple[int, ...] = ()
    rejected: Mapping[int, str] = field(default_factory=dict)


def select_step(
    rows: Sequence[Row],
    fidelity: str = "val/dino",
    clip_t_margin: float | None = 0.03,
    pres_margin: float | None = 0.05,
    tie_tolerance: float = 0.02,
) -> Selection:
    """Max ``fidelity`` s.t. CLIP-T >= base - clip_t_margin and PRES <= base + pres_margin; ties go earlier.

    Only steps after the baseline compete. Among the candidates, the earliest step whose fidelity is within
    ``tie_tolerance`` of the best wins. If no step meets the constraints, nothing is raised: the same tie rule is
    applied to all steps after the baseline and the reason says that no step met them, so a run always yields a
    checkpoint and the report shows the warning. A step with a nan or infinite metric is never chosen: it is
    rejected, and when every step after the baseline has one, the baseline is kept.

    Args:
        rows: the metrics table, one mapping per evaluated step.
        fidelity: the metric key to maximise.
        clip_t_margin: allowed CLIP-T drop from the baseline; None disables the constraint.
        pres_margin: allowed PRES rise from the baseline; None disables the constraint.
        tie_tolerance: fidelity gap within which an earlier step is preferred to the best one.
    """
    keys = [fidelity] + [key for key, margin in ((CLIP_T, clip_t_margin), (PRES, pres_margin)) if margin is not None]
    baseline, *evaluated = sorted_rows(rows, keys, tie_tolerance)
    if not evaluated:
        return Selection(int(baseline["step"]), f"only the baseline step {baseline['step']} was evaluated")
    nonfinite = nonfinite_steps(evaluated, keys)
    trained = [row for row in evaluated if int(row["step"]) not in nonfinite]
    if not trained:
        reason = f"no step after the baseline has finite metrics; keeping the baseline step {baseline['step']}"
        return Selection(int(baseline["step"]), reason, (), nonfinite)
    rejected = {**nonfinite, **rejected_steps(trained, baseline, clip_t_margin, pres_margin)}
    candidates = [row for row in trained if int(row["step"]) not in rejected]
    constraints = describe_constraints(baseline, clip_t_margin, pres_margin)
    if not candidates:
        chosen = earliest_near_best(trained, fidelity, "max", tie_tolerance)
        choice = describe_choice(chosen, trained, fidelity, "max", tie_tolerance)
        return Selection(int(chosen["step"]), f"no step after the baseline met {constraints}; {choice}", (), rejected)
    chosen = earliest_near_best(candidates, fidelity, "max", tie_tolerance)
    reason = describe_choice(chosen, candidates, fidelity, "max", tie_tolerance) + f", subject to {constraints}"
    return Selection(int(chosen["step"]), reason, tuple(int(row["step"]) for row in candidates), rejected)


def select_single(rows: Sequence[Row], monitor: str, mode: str = "max", tie_tolerance: float = 0.0) -> Selection:
    """The step with the best value of one metric, the baseline included; near-ties go to the earlier step.

    Args:
        rows: the metrics table, one mapping per evaluated step.
        monitor: the metric key to optimise.
        mode: ``max`` or ``min``.
        tie_tolerance: gap within which an earlier step is preferred to the best one.
    """
    if mode not in ("max", "min"):
        raise UserError(f"mode must be 'max' or 'min', got {mode!r}")
    evaluated = sorted_rows(rows, [monitor], tie_tolerance)
    ordered = [row for row in evaluated if math.isfinite(row[monitor])]
    if not ordered:
        raise ValueError(f"no evaluated step has a finite {monitor}: {[row[monitor] for row in evaluated]}")
    chosen = earliest_near_best(ordered, monitor, mode, tie_tolerance)
    reason = describe_choice(chosen, ordered, monitor, mode, tie_tolerance)
    return Selection(int(chosen["step"]), reason, tuple(int(row["step"]) for row in ordered))


def sorted_rows(rows: Sequence[Row], keys: Sequence[str], tie_tolerance: float) -> list[Row]:
    """Validate the table and sort it by step.

    Args:
        rows: the metrics table.
        keys: metric keys every row must have.
        tie_tolerance: must be >= 0.
    """
    if not rows:
        raise ValueError("the metrics table is empty: evaluate at least one step before selecting")
    if tie_tolerance < 0:
        raise UserError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    for row in rows:
        missing = [key for key in ["step", *keys] if key not in row]
        if missing:
            raise ValueError(f"metrics row {dict(row)} lacks {missing}; log them or disable the constraint")
    steps = [int(row["step"]) for row in rows]
    if len(set(steps)) != len(steps):
        raise ValueError(f"the metrics table has duplicate steps: {sorted(steps)}")
    return sorted(rows, key=lambda row: int(row["step"]))


def nonfinite_steps(rows: Sequence[Row], keys: Sequence[str]) -> dict[int, str]:
    """Step -> why it cannot be chosen, for the rows with a nan or infinite metric among ``keys``.

    Args:
        rows: the steps after the baseline.
        keys: the metric keys the rule reads.
    """
    found = {int(row["step"]): [key for key in keys if not math.isfinite(row[key])] for row in rows}
    return {step: f"{', '.join(bad)} not finite (nan or inf)" for step, bad in found.items() if bad}


def rejected_steps(
    rows: Sequence[Row], baseline: Row, clip_t_margin: float | None, pres_margin: float | None
) -> dict[int, str]:
    """Step -> why it breaks the constraints, for the rows that break them.

    Args:
        rows: the steps after the baseline.
        baseline: the base model's row.
        clip_t_margin: allowed CLIP-T drop, or None.
        pres_margin: allowed PRES rise, or None.
    """
    violations = {int(row["step"]): constraint_violations(row, baseline, clip_t_margin, pres_margin) for row in rows}
    return {step: "; ".join(reasons) for step, reasons in violations.items() if reasons}


def constraint_violations(row: Row, baseline: Row, clip_t_margin: float | None, pres_margin: float | None) -> list[str]:
    """Human-readable reasons why ``row`` breaks the CLIP-T floor or the PRES ceiling; empty if it does not.

    Args:
        row: the step under test.
        baseline: the base model's row.
        clip_t_margin: allowed CLIP-T drop, or None.
        pres_margin: allowed PRES rise, or None.
    """
    violations = []
    if clip_t_margin is not None and row[CLIP_T] < baseline[CLIP_T] - clip_t_margin - EPSILON:
        floor = baseline[CLIP_T] - clip_t_margin
        violations.append(f"{CLIP_T} {row[CLIP_T]:.4f} < {floor:.4f} (base {baseline[CLIP_T]:.4f} - {clip_t_margin})")
    if pres_margin is not None and row[PRES] > baseline[PRES] + pres_margin + EPSILON:
        ceiling = baseline[PRES] + pres_margin
        violations.append(f"{PRES} {row[PRES]:.4f} > {ceiling:.4f} (base {baseline[PRES]:.4f} + {pres_margin})")
    return violations


def earliest_near_best(rows: Sequence[Row], key: str, mode: str, tie_tolerance: float) -> Row:
    """The earliest row whose ``key`` is within ``tie_tolerance`` of the best value.

    Args:
        rows: rows sorted by step.
        key: the metric key.
        mode: ``max`` or ``min``.
        tie_tolerance: gap within which a row counts as tied with the best.
    """
    best = (max if mode == "max" else min)(row[key] for row in rows)
    return next(row for row in rows if abs(row[key] - best) <= tie_tolerance + EPSILON)


def describe_constraints(baseline: Row, clip_t_margin: float | None, pres_margin: float | None) -> str:
    """E.g. ``val/clip_t >= 0.2900 (base 0.3200 - 0.03) and val/pres <= 0.5500 (base 0.5000 + 0.05)``.

    Args:
        baseline: the base model's row.
        clip_t_margin: allowed CLIP-T drop, or None.
        pres_margin: allowed PRES rise, or None.
    """
    parts = []
    if clip_t_margin is not None:
        floor = baseline[CLIP_T] - clip_t_margin
        parts.append(f"{CLIP_T} >= {floor:.4f} (base {baseline[CLIP_T]:.4f} - {clip_t_margin})")
    if pres_margin is not None:
        ceiling = baseline[PRES] + pres_margin
        parts.append(f"{PRES} <= {ceiling:.4f} (base {baseline[PRES]:.4f} + {pres_margin})")
    return " and ".join(parts) if parts else "no constraints"


def describe_choice(chosen: Row, rows: Sequence[Row], key: str, mode: str, tie_tolerance: float) -> str:
    """A sentence naming the chosen step, its value and the best value among ``rows``.

    Args:
        chosen: the selected row.
        rows: the rows it competed with.
        key: the metric key.
        mode: ``max`` or ``min``.
        tie_tolerance: the tie gap used.
    """
    best_row = (max if mode == "max" else min)(rows, key=lambda row: row[key])
    steps = ", ".join(str(int(row["step"])) for row in rows)
    text = f"step {int(chosen['step'])} has {key} {chosen[key]:.4f}"
    if best_row is chosen or best_row[key] == chosen[key]:
        return text + f", the {'highest' if mode == 'max' else 'lowest'} among steps [{steps}]"
    best = f"{best_row[key]:.4f} at step {int(best_row['step'])}"
    return text + f", within {tie_tolerance} of the best {best}, and is earlier, among steps [{steps}]"
