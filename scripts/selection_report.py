"""The selection benchmark's report: tables per subject set, the duels of sdft's rule against every other rule,
the goals as measured, every run, and a figure; written from the runs' results by ``benchmark_selection.py``."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path

import numpy as np
from selection_rules import TIE, best_fixed_step, summarize

#: the rules the goals name: sdft must beat each with an interval that excludes zero (held-out subjects)
GOAL_RIVALS = ("last", "no fine-tuning", "dino alone")
#: strict presence the oracle's step must reach, and in how many runs
PRESENCE_GOAL, PRESENCE_SHARE = 0.8, 0.8


def run_facts(commit: str, jobs: int, minutes: float, device: str) -> dict:
    import diffusers
    import lightning
    import torch

    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, device {device}",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, diffusers {diffusers.__version__}",
        "command": shlex.join(["uv", "run", "python", *sys.argv]),
        "judge_commit": commit,
        "jobs": jobs,
        "minutes": minutes,
    }


def interval(values: Sequence[float]) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def rule_table(summary: Mapping) -> list[str]:
    """Markdown: every rule's mean judge score and regret against the cross-fitted oracle, with intervals."""
    lines = ["| rule | mean score | 95% CI | regret (oracle - rule) | 95% CI |", "|---|---|---|---|---|"]
    for rule, row in sorted(summary["rules"].items(), key=lambda item: -item[1]["score"]):
        lines.append(
            f"| {rule} | {row['score']:.3f} | {interval(row['score_ci'])} | {row['regret']:.3f} | "
            f"{interval(row['regret_ci'])} |"
        )
    return lines


def duel_table(summary: Mapping, best_fixed: str) -> list[str]:
    """Markdown: sdft's rule against every other rule, paired per run."""
    lines = [
        f"| sdft against | wins | ties (within {TIE}) | losses | mean gain | 95% CI (subjects resampled) |",
        "|---|---|---|---|---|---|",
    ]
    for rule, duel in sorted(summary["duels"].items(), key=lambda item: -item[1]["gap"]):
        name = f"{rule} (best fixed step on development)" if rule == best_fixed else rule
        lines.append(
            f"| {name} | {duel['wins']} | {duel['ties']} | {duel['losses']} | {duel['gap']:+.3f} | "
            f"{interval(duel['gap_ci'])} |"
        )
    return lines


def oracle_presence(results: Sequence[Mapping]) -> list[float]:
    """Per run, the strict presence of the oracle's (first cross-fitted) pick: its share of judged images in which
    every feature of the subject is read."""
    return [result["judge"][str(result["choices"]["oracle"])]["present"] for result in results]


def goals(summary: Mapping, best_fixed: str, results: Sequence[Mapping]) -> list[str]:
    """The goals, each with what was measured and whether it is met."""
    lines = []
    for rival in (*GOAL_RIVALS, best_fixed):
        duel = summary["duels"][rival]
        met = "met" if duel["gap_ci"][0] > 0 else "not met"
        lines.append(f"- sdft beats {rival}: {duel['gap']:+.3f} {interval(duel['gap_ci'])}: **{met}**")
    ours, last = summary["rules"]["sdft"]["regret"], summary["rules"]["last"]["regret"]
    met = "met" if ours <= last / 4 else "not met"
    lines.append(f"- regret at most a quarter of the last step's: {ours:.3f} against {last:.3f} / 4: **{met}**")
    presence = oracle_presence(results)
    share = float(np.mean([value >= PRESENCE_GOAL for value in presence]))
    met = "met" if share >= PRESENCE_SHARE else "not met"
    lines.append(
        f"- the oracle's step shows the subject (strict presence >= {PRESENCE_GOAL}) in {share:.0%} of runs "
        f"(goal {PRESENCE_SHARE:.0%}; median presence {np.median(presence):.2f}): **{met}**"
    )
    return lines


def subject_set_section(title: str, results: Sequence[Mapping], best_fixed: str) -> tuple[list[str], dict]:
    """One subject set's tables and goals, and its summary."""
    summary = summarize(results)
    lines = [
        f"## {title}: {summary['runs']} runs, {summary['subjects']} subjects",
        "",
        "### Goals",
        "",
        *goals(summary, best_fixed, results),
        "",
        "### sdft's rule against each other rule",
        "",
        *duel_table(summary, best_fixed),
        "",
        "### Every rule",
        "",
        *rule_table(summary),
        "",
    ]
    return lines, summary


def runs_table(results: Sequence[Mapping]) -> list[str]:
    """Markdown: every run's picks (step and score) for the main rules."""
    rules = ("sdft", "last", "no fine-tuning", "dino alone", "oracle")
    lines = ["| run | set | lr | " + " | ".join(f"{rule}: step (score)" for rule in rules) + " |"]
    lines.append("|---|---|---|" + "---|" * len(rules))
    for result in results:
        cells = [f"{result['choices'][rule]} ({result['scores'][rule]:.3f})" for rule in rules]
        lines.append(
            f"| {result['name']} | {result['subject_set']} | {result['run']['learning_rate']:g} | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def plot_regret(summary: Mapping, path: Path) -> None:
    """A bar per rule: its mean regret against the oracle, with the clustered interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rules = sorted((rule for rule in summary["rules"] if rule != "oracle"), key=lambda r: summary["rules"][r]["regret"])
    means = [summary["rules"][rule]["regret"] for rule in rules]
    bounds = [summary["rules"][rule]["regret_ci"] for rule in rules]
    errors = np.array([[mean - low, high - mean] for mean, (low, high) in zip(means, bounds, strict=True)]).T
    figure = Figure(figsize=(8, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = ["tab:green" if rule.startswith("sdft") else "tab:grey" for rule in rules]
    axes.bar(rules, means, yerr=np.maximum(errors, 0), capsize=3, color=colors)
    axes.set_ylabel("regret (oracle - rule)")
    axes.set_title("held-out subjects: judge score each rule loses to the cross-fitted oracle (95% CI)", fontsize=9)
    axes.tick_params(axis="x", labelrotation=60, labelsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def write_report(path: Path, results: Sequence[Mapping], facts: Mapping) -> None:
    """``path`` (markdown), its ``.json`` twin and the regret figure beside it."""
    by_set = {name: [r for r in results if r["subject_set"] == name] for name in ("held-out", "development")}
    development = summarize(by_set["development"]) if by_set["development"] else None
    best_fixed = best_fixed_step(development or summarize(results))
    lines = [
        "# Selection benchmark: the step sdft picks against the rules a sceptic would use",
        "",
        f"{facts['date']}; {facts['machine']}; {facts['versions']}.",
        f"Command: `{facts['command']}` ({len(results)} runs, {facts['jobs']} at a time, "
        f"{facts['minutes']:.0f} minutes of wall time in this invocation; finished runs are reused).",
        f"Judge: `sdft/toyworld/judge.py`, `oracle.py` and `scripts/selection_rules.py` at commit "
        f"`{facts['judge_commit']}`, committed before the runs.",
        "",
        "Each run fine-tunes `builtin:toyworld` on 5 photos of a novel subject; the judge scores every checkpoint on",
        "64 images (16 prompts x 4 seeds the evaluator never uses): likeness of the subject x the prompt's context.",
        "Rules and statistics: `scripts/selection_rules.py`. Intervals resample subjects, not runs.",
        "",
    ]
    summaries = {}
    for name, title in (("held-out", "Held-out subjects (the result)"), ("development", "Development subjects")):
        if by_set[name]:
            section, summaries[name] = subject_set_section(title, by_set[name], best_fixed)
            lines += section
    if by_set["held-out"]:
        figure = path.with_suffix("") / "regret.png"
        plot_regret(summaries["held-out"], figure)
        lines += [f"![regret]({path.stem}/regret.png)", ""]
    lines += ["## Every run", "", *runs_table(results), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    record = {"facts": dict(facts), "summaries": summaries, "results": list(results)}
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
