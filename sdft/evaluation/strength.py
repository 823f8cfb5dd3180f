"""The strength at which an adapter works: the chosen step scored at several adapter scales, with the step
selection's rule applied across the scales.

A LoRA is used at a strength (diffusers' adapter weight, ComfyUI's and A1111's strength), and some are only right
above 1. The chosen step is scored at each scale with the probes of every step, each scale's metrics are compared
probe by probe with the base model's (scale 0) exactly as steps are, and the rule keeps the scale of highest subject
fidelity whose prompt fidelity and prior did not clearly move beyond their margins; near-ties go to the weaker scale,
which has drifted less from the base model.

``selection.json`` records it as ``strength``::

    {"scales": [0.5, 0.75, 1.0, 1.25, 1.5],
     "rows": [{"scale": 0.5, "val/dino": ..., "se": {...}, "grid": "evaluation/strength_0.50.png"}, ...],
     "scale": 1.25, "reason": "scale 1.25 has val/dino ...", "rejected": {"1.5": "val/clip_t ..."}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sdft.errors import UserError
from sdft.evaluation.selection import Axis, Row, select_step

#: the scales the evaluator scores by default
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass(frozen=True)
class Strength:
    """The recommended scale, why, and why the other scales were not recommended.

    Attributes:
        scale: the recommended strength.
        reason: the rule's sentence.
        rejected: scale -> why it broke the constraints.
    """

    scale: float
    reason: str
    rejected: Mapping[float, str]


def check_scales(scales: Sequence[float] | None) -> tuple[float, ...]:
    """The scales to score, ascending; raise a one-line error for a scale that is not positive or a repeat.

    Args:
        scales: the configured scales (``SubjectEvaluator.scales``); None or empty scores none.
    """
    if not scales:
        return ()
    bad = [scale for scale in scales if not scale > 0]
    if bad:
        raise UserError(f"SubjectEvaluator.scales must be positive adapter strengths (e.g. [0.5, 1.0, 1.5]), got {bad}")
    if len(set(scales)) != len(scales):
        raise UserError(f"SubjectEvaluator.scales has repeated values: {list(scales)}")
    return tuple(sorted(float(scale) for scale in scales))


def select_scale(
    base: Row,
    rows: Mapping[float, Row],
    base_scores: Mapping[str, Sequence[float]] | None = None,
    scores: Mapping[float, Mapping[str, Sequence[float]]] | None = None,
    **rule: Any,
) -> Strength:
    """The scale the selection rule keeps among ``rows``, against the base model's row as the baseline.

    Args:
        base: the base model's metrics (its ``step`` is ignored).
        rows: scale -> the metrics of the chosen step at that scale.
        base_scores: the base model's per-probe scores (metric -> probe order), for paired comparisons.
        scores: scale -> the per-probe scores at that scale, in the same probe order.
        rule: :func:`~sdft.evaluation.selection.select_step`'s options (fidelity, margins, tie tolerance, ...).
    """
    scales = sorted(rows)
    label = {0: "0", **{index + 1: f"{scale:g}" for index, scale in enumerate(scales)}}
    axis = Axis("scale", "scales", "scale above 0", "weaker", label.__getitem__)
    table = [{**base, "step": 0}, *({**rows[scale], "step": index + 1} for index, scale in enumerate(scales))]
    indexed = {index + 1: (scores or {})[scale] for index, scale in enumerate(scales) if scale in (scores or {})}
    paired = {0: base_scores, **indexed} if base_scores else {}
    selection = select_step(table, **rule, scores=paired, axis=axis)
    rejected = {scales[key - 1]: why for key, why in selection.rejected.items()}
    chosen = scales[selection.step - 1] if selection.step else 0.0  # 0: no scale has finite metrics
    return Strength(chosen, selection.reason, rejected)


def strength_record(strength: Strength, rows: Mapping[float, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``strength`` entry of ``selection.json`` (see the module docstring)."""
    return {
        "scales": sorted(rows),
        "rows": [{"scale": scale, **rows[scale]} for scale in sorted(rows)],
        "scale": strength.scale,
        "reason": strength.reason,
        "rejected": {f"{scale:g}": why for scale, why in strength.rejected.items()},
    }
