"""Pick the checkpoint step to keep from a table of evaluated metrics.

A weighted sum of image and text similarity is sensitive to its weight (arXiv 2505.20975), so the rule is a
constraint one: maximise subject fidelity (DINO by default) among the steps whose prompt fidelity (CLIP-T) did not
drop, and whose prior preservation (PRES) did not rise, by more than a margin from the base model; near-ties go to
the earlier step, which has drifted less. The DreamBooth user study finds DINO gaps of ~0.1 and CLIP-T gaps of
~0.05 noticeable (arXiv 2208.12242), hence the default margins.

A step's metrics are means over a few probe images, with standard errors often larger than those margins. Given
every probe's score (the evaluator keeps them), the rule compares steps probe by probe, on identical prompts and
seeds (:func:`~sdft.evaluation.uncertainty.paired_difference`): a step is rejected only when its change from the
base model is beyond the margin with the chosen one-sided confidence, and a step is "near the best" unless the best
leads it clearly by more than the tie tolerance.

Each row is a mapping ``{"step": int, "val/clip_i": ..., "val/clip_t": ..., "val/dino": ..., "val/pres": ...}``;
the row with the lowest step (normally step 0, the base model) is the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sdft.errors import UserError
from sdft.evaluation.uncertainty import Difference, one_sided_z, paired_difference

CLIP_T = "val/clip_t"
PRES = "val/pres"
DIV = "val/div"
EPSILON = 1e-9

Row = Mapping[str, float]
#: step -> metric key -> the score of every probe image, in probe order (identical probes at every step)
Scores = Mapping[int, Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class Axis:
    """What the rows of a selection stand for, as its sentences name them: training steps, or the strengths of one
    step's adapter (rows keyed by their index, the baseline's 0).

    Attributes:
        name: one row's kind, e.g. ``step``.
        plural: several rows', e.g. ``steps``.
        after_baseline: the rows that compete, e.g. ``step after the baseline``.
        earlier: what the tie rule prefers, e.g. ``earlier``.
        label: a row's key -> its value as shown.
    """

    name: str = "step"
    plural: str = "steps"
    after_baseline: str = "step after the baseline"
    earlier: str = "earlier"
    label: Callable[[int], str] = str


#: training steps, the rows of :func:`select_step` by default
STEPS = Axis()


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
    div_margin: float | None = None,
    confidence: float = 0.95,
    tie_standard_errors: float = 1.0,
    scores: Scores | None = None,
    axis: Axis = STEPS,
) -> Selection:
    """Max ``fidelity`` s.t. CLIP-T did not clearly drop by more than ``clip_t_margin`` from the base model, nor PRES
    clearly rise by more than ``pres_margin`` (nor DIV clearly drop by more than ``div_margin``); ties go earlier.

    With ``scores`` (every probe's score at every step), steps are compared probe by probe: a constraint rejects a
    step only when the paired difference is beyond the margin at the one-sided ``confidence`` level, and a step ties
    with the best one when the best leads it by no more than ``tie_tolerance`` plus ``tie_standard_errors`` standard
    errors of the paired lead; the earliest tied step wins (the one-standard-error rule of model selection, Breiman et
    al. 1984, with "earliest" as "simplest": it has drifted least). Without scores the differences of the means are
    taken as exact, which is the same rule with no noise.

    Only steps after the baseline compete. If no step meets the constraints, nothing is raised: the tie rule is
    applied to all steps after the baseline and the reason says that no step met them, so a run always yields a
    checkpoint and the report shows the warning. A step with a nan or infinite metric is never chosen: it is
    rejected, and when every step after the baseline has one, the baseline is kept.

    Args:
        rows: the metrics table, one mapping per evaluated step.
        fidelity: the metric key to maximise.
        clip_t_margin: allowed CLIP-T drop from the baseline; None disables the constraint.
        pres_margin: allowed PRES rise from the baseline; None disables the constraint.
        tie_tolerance: fidelity gap within which an earlier step is preferred to the best one.
        div_margin: allowed DIV (``val/div``) drop from the baseline; None disables the constraint.
        confidence: one-sided level at which a change beyond a margin counts as clear (0.5 compares the means alone).
        tie_standard_errors: how many standard errors of the best step's lead count as a tie (0: the means alone).
        scores: step -> metric -> per-probe scores in probe order (``evaluation/scores.jsonl``); None for means.
        axis: what the rows stand for, in the reasons' wording (training steps by default).
    """
    if tie_standard_errors < 0:
        raise UserError(f"tie_standard_errors must be >= 0, got {tie_standard_errors}")
    z = one_sided_z(confidence)
    rule = Rule(
        fidelity, clip_t_margin, pres_margin, div_margin, tie_tolerance, z, tie_standard_errors, scores or {}, axis
    )
    baseline, *evaluated = sorted_rows(rows, rule.keys(), tie_tolerance)
    base = f"the baseline {axis.name} {axis.label(int(baseline['step']))}"
    if not evaluated:
        return Selection(int(baseline["step"]), f"only {base} was evaluated")
    nonfinite = nonfinite_steps(evaluated, rule.keys())
    trained = [row for row in evaluated if int(row["step"]) not in nonfinite]
    if not trained:
        reason = f"no {axis.after_baseline} has finite metrics; keeping {base}"
        return Selection(int(baseline["step"]), reason, (), nonfinite)
    rejected = {**nonfinite, **rule.rejected_steps(trained, baseline)}
    candidates = [row for row in trained if int(row["step"]) not in rejected]
    constraints = rule.describe_constraints(baseline)
    if not candidates:
        chosen, choice = rule.earliest_near_best(trained)
        return Selection(int(chosen["step"]), f"no {axis.after_baseline} met {constraints}; {choice}", (), rejected)
    chosen, choice = rule.earliest_near_best(candidates)
    reason = f"{choice}, subject to {constraints}"
    return Selection(int(chosen["step"]), reason, tuple(int(row["step"]) for row in candidates), rejected)


@dataclass(frozen=True)
class Rule:
    """The constraint rule of :func:`select_step`, with the probe scores its comparisons read."""

    fidelity: str
    clip_t_margin: float | None
    pres_margin: float | None
    div_margin: float | None
    tie_tolerance: float
    z: float
    tie_z: float
    scores: Scores
    axis: Axis = STEPS

    def limits(self) -> list[tuple[str, float, int]]:
        """(metric, margin, direction) of each active constraint: -1 must not drop, +1 must not rise."""
        limits = [(CLIP_T, self.clip_t_margin, -1), (PRES, self.pres_margin, 1), (DIV, self.div_margin, -1)]
        return [(key, margin, direction) for key, margin, direction in limits if margin is not None]

    def keys(self) -> list[str]:
        """The metric keys every row must have."""
        return [self.fidelity] + [key for key, _, _ in self.limits()]

    def difference(self, row: Row, other: Row, key: str) -> Difference:
        """``row - other`` on ``key``: paired over the probes when both steps have scores, else of the means."""
        a, b = (self.scores.get(int(r["step"]), {}).get(key) for r in (row, other))
        if a and b and len(a) == len(b):
            return paired_difference(a, b)
        return Difference(row[key] - other[key])

    def rejected_steps(self, rows: Sequence[Row], baseline: Row) -> dict[int, str]:
        """Step -> why it breaks the constraints, for the rows that break them."""
        violations = {int(row["step"]): self.violations(row, baseline) for row in rows}
        return {step: "; ".join(reasons) for step, reasons in violations.items() if reasons}

    def violations(self, row: Row, baseline: Row) -> list[str]:
        """Why ``row`` clearly moved beyond a margin from the baseline; empty if it did not."""
        found = []
        for key, margin, direction in self.limits():
            change = self.difference(row, baseline, key)
            if direction * (change.lower(self.z) if direction > 0 else change.upper(self.z)) > margin + EPSILON:
                found.append(self.describe_violation(row, baseline, key, margin, direction, change))
        return found

    def describe_violation(
        self, row: Row, baseline: Row, key: str, margin: float, direction: int, change: Difference
    ) -> str:
        """E.g. ``val/clip_t 0.2500 < 0.2700 (base 0.3000 - 0.03)``, with the paired change when it is known."""
        limit = baseline[key] + direction * margin
        sign, relation = ("-", "<") if direction < 0 else ("+", ">")
        text = f"{key} {row[key]:.4f} {relation} {limit:.4f} (base {baseline[key]:.4f} {sign} {margin})"
        if change.count < 2:
            return text
        return text + f", a change of {change.describe()}: beyond the margin at z = {self.z:.2f}"

    def describe_constraints(self, baseline: Row) -> str:
        """E.g. ``val/clip_t >= 0.2900 (base 0.3200 - 0.03) and val/pres <= 0.5500 (base 0.5000 + 0.05)``."""
        parts = []
        for key, margin, direction in self.limits():
            relation, sign = (">=", "-") if direction < 0 else ("<=", "+")
            limit = baseline[key] + direction * margin
            parts.append(f"{key} {relation} {limit:.4f} (base {baseline[key]:.4f} {sign} {margin})")
        if not parts:
            return "no constraints"
        noise = f" (a {self.axis.name} breaks them only beyond the noise, at z = {self.z:.2f})" if self.scores else ""
        return " and ".join(parts) + noise

    def earliest_near_best(self, rows: Sequence[Row]) -> tuple[Row, str]:
        """The earliest row the best one is not clearly ahead of by more than ``tie_tolerance``, and why."""
        best = max(rows, key=lambda row: row[self.fidelity])
        chosen = next(row for row in rows if self.tied(best, row))
        return chosen, self.describe_choice(chosen, best, rows)

    def tied(self, best: Row, row: Row) -> bool:
        """Whether ``best`` leads ``row`` by no more than the tie tolerance, or not clearly more."""
        return self.difference(best, row, self.fidelity).lower(self.tie_z) <= self.tie_tolerance + EPSILON

    def describe_choice(self, chosen: Row, best: Row, rows: Sequence[Row]) -> str:
        """A sentence naming the chosen row, its value, and the best value among ``rows``."""
        key, axis = self.fidelity, self.axis
        named = ", ".join(axis.label(int(row["step"])) for row in rows)
        text = f"{axis.name} {axis.label(int(chosen['step']))} has {key} {chosen[key]:.4f}"
        if best is chosen or best[key] == chosen[key]:
            return text + f", the highest among {axis.plural} [{named}]"
        lead = self.difference(best, chosen, key)
        at_best = f"{best[key]:.4f} at {axis.name} {axis.label(int(best['step']))}"
        near = f"within {self.tie_tolerance} of the best {at_best}"
        if lead.mean > self.tie_tolerance + EPSILON:
            near = (
                f"not clearly below the best {at_best} (which leads by "
                f"{lead.describe()}, within {self.tie_tolerance} + {self.tie_z:g} standard error)"
            )
        return text + f", {near}, and is {axis.earlier}, among {axis.plural} [{named}]"


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
