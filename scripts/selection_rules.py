"""The rules the selection benchmark compares, each read from a finished run's files, and the statistics of the
comparison (paired per run, with bootstrap intervals that resample subjects, not runs).

A rule picks one evaluated step of a run. sdft's rule is read from ``evaluation/selection.json`` (what the user got)
and recomputed in two variants from ``metrics.jsonl`` and ``scores.jsonl``: on the means alone (the rule before it
read the noise) and with a DIV constraint. The baselines a sceptic asks for: the last step, every fixed step, no
fine-tuning (step 0), the lowest training loss, the lowest validation loss, the highest DINO alone and the highest
CLIP-I alone. The oracle's pick is cross-fitted (:func:`sdft.toyworld.judge.cross_fitted_oracle`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from sdft.evaluation.selection import select_single, select_step
from sdft.reporting.records import read_curves, read_metrics, read_scores
from sdft.toyworld.judge import cross_fitted_oracle

#: the DIV margin of the "sdft + div" variant: a drop of the within-prompt diversity beyond it is a collapse
DIV_MARGIN = 0.05
#: rules with a fixed meaning; "step N" rules are added per evaluated step
RULES = (
    "sdft",
    "sdft (means only)",
    "sdft + div",
    "last",
    "no fine-tuning",
    "train loss",
    "val loss",
    "dino alone",
    "clip-i alone",
    "oracle",
)
#: judge scores this close count as a tie
TIE = 0.01


def rule_choices(run_dir: Path, judged: Mapping[int, Mapping], every: int) -> dict[str, int]:
    """The step each rule picks among the evaluated steps after the base model (step 0 for "no fine-tuning"; the
    oracle's first cross-fitted pick, for display).

    Args:
        run_dir: the run folder.
        judged: :func:`sdft.toyworld.judge.judge_steps`' result for the run.
        every: the steps between checkpoints (the training-loss window).
    """
    rows, scores = read_metrics(run_dir), read_scores(run_dir)
    selection = json.loads((run_dir / "evaluation" / "selection.json").read_text())
    rule = dict(selection["rule"])
    steps = [row["step"] for row in rows][1:]
    trained = rows[1:]
    curves = read_curves(run_dir)
    return {
        "sdft": int(selection["step"]),
        "sdft (means only)": select_step(rows, **(rule | {"confidence": 0.5, "div_margin": None})).step,
        "sdft + div": select_step(rows, **(rule | {"div_margin": DIV_MARGIN}), scores=scores).step,
        "last": steps[-1],
        "no fine-tuning": rows[0]["step"],
        "train loss": min(steps, key=window_loss(curves.get("train/loss", []), every)),
        "val loss": min(steps, key=lambda step: nearest(dict(curves.get("val/loss", [])), step)),
        "dino alone": select_single(trained, "val/dino").step,
        "clip-i alone": select_single(trained, "val/clip_i").step,
        "oracle": cross_fitted_oracle(judged, steps)[1][0],
        **{f"step {step}": step for step in steps},
    }


def rule_scores(choices: Mapping[str, int], judged: Mapping[int, Mapping]) -> dict[str, float]:
    """The judge's score of each rule's pick; the oracle's is its cross-fitted score."""
    steps = sorted(step for step in judged if step != min(judged))
    found = {rule: judged[step]["score"] for rule, step in choices.items()}
    found["oracle"] = cross_fitted_oracle(judged, steps)[0]
    return found


def window_loss(train: Sequence[tuple[int, float]], every: int) -> Callable[[int], float]:
    """A step's training loss: the mean of the losses logged since the previous checkpoint."""

    def loss(step: int) -> float:
        values = [value for logged, value in train if step - every <= logged < step]
        return float(np.mean(values)) if values else float("inf")

    return loss


def nearest(values: Mapping[int, float], step: int) -> float:
    """The value logged at ``step``, or at the closest logged step (Lightning logs validation one step off)."""
    if not values:
        return float("inf")
    return values[min(values, key=lambda logged: (abs(logged - step), logged))]


# -- statistics ---------------------------------------------------------------------------------------------------


def clustered_interval(
    values: np.ndarray, clusters: Sequence[str], statistic: Callable[[np.ndarray], float] = np.mean, seed: int = 0
) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of ``statistic`` that resamples whole clusters (subjects) with
    replacement, keeping each subject's runs together: runs of one subject are not independent evidence.

    Args:
        values: one value per run.
        clusters: the cluster (subject) of each run.
        statistic: what to compute on the resampled values.
        seed: the bootstrap's seed.
    """
    names = sorted(set(clusters))
    members = {name: np.array([i for i, cluster in enumerate(clusters) if cluster == name]) for name in names}
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(2000):
        picked = rng.integers(len(names), size=len(names))
        draws.append(statistic(values[np.concatenate([members[names[index]] for index in picked])]))
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def duel(ours: np.ndarray, theirs: np.ndarray, clusters: Sequence[str]) -> dict:
    """sdft against one rule: wins, ties and losses by run, the mean paired gain and its clustered interval."""
    gap = ours - theirs
    return {
        "wins": int((gap > TIE).sum()),
        "ties": int((np.abs(gap) <= TIE).sum()),
        "losses": int((gap < -TIE).sum()),
        "gap": float(gap.mean()),
        "gap_ci": clustered_interval(gap, clusters),
    }


def summarize(results: Sequence[Mapping], baseline: str = "sdft") -> dict:
    """Per rule: mean score and regret against the oracle with clustered intervals; ``baseline`` against every
    other rule: the paired duel. Each result has ``subject`` and ``scores`` (rule -> judge score)."""
    clusters = [result["subject"] for result in results]
    rules = [rule for rule in results[0]["scores"] if all(rule in result["scores"] for result in results)]
    table = {rule: np.array([result["scores"][rule] for result in results]) for rule in rules}
    summary = {"runs": len(results), "subjects": len(set(clusters)), "rules": {}, "duels": {}}
    for rule, scores in table.items():
        regret = table["oracle"] - scores
        summary["rules"][rule] = {
            "score": float(scores.mean()),
            "score_ci": clustered_interval(scores, clusters),
            "regret": float(regret.mean()),
            "regret_ci": clustered_interval(regret, clusters),
        }
    for rule in rules:
        if rule not in (baseline, "oracle"):
            summary["duels"][rule] = duel(table[baseline], table[rule], clusters)
    return summary


def best_fixed_step(summary: Mapping) -> str:
    """The fixed-step rule ("step N") with the highest mean score in a summary."""
    fixed = [rule for rule in summary["rules"] if rule.startswith("step ")]
    return max(fixed, key=lambda rule: summary["rules"][rule]["score"])
