"""The markdown report of scripts/benchmark.py's measurements: one table of medians per size, then every run."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shlex
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import accelerate
import torch
import transformers
from benchmark_quickstart import versions

if TYPE_CHECKING:
    from benchmark import Setup, TrainingSettings

#: what a measurement row's ``trainer`` names
SDFT, REFERENCE, BARE, EVALUATED = "sdft", "reference", "bare loop", "sdft + evaluator"
#: the size tables' rows: label, measurement key, format (None: a memory size)
MEASURES = (
    ("steady step", "step_s", "{:.4f} s"),
    ("time to first step (from launch)", "first_step_s", "{:.1f} s"),
    ("peak memory", "peak_bytes", None),
)


def medians(rows: list[dict], size: str) -> dict[str, dict[str, float]]:
    """By trainer, the median over the repeats of every number measured for ``size``."""
    result: dict[str, dict[str, float]] = {}
    for trainer in (SDFT, REFERENCE, BARE, EVALUATED):
        runs = [row for row in rows if (row["size"], row["trainer"]) == (size, trainer)]
        keys = {key for row in runs for key, value in row.items() if type(value) in (int, float)} - {"repeat"}
        if runs:
            result[trainer] = {key: statistics.median(row[key] for row in runs if key in row) for key in keys}
    return result


def megabytes(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:,.0f} MB" if num_bytes >= 1e7 else f"{num_bytes / 1e6:.2f} MB"


def percent(change: float) -> str:
    """A relative change as a signed whole percentage (0% without a sign)."""
    return f"{change:+.0%}" if round(change, 2) else "0%"


def shown(value: float | None, text: str | None) -> str:
    if value is None:
        return ""
    return megabytes(value) if text is None else text.format(value)


def beaten_limit(rows: list[dict], size: str) -> str | None:
    """Why ``size``'s figures cannot stand when sdft's median steady step beats the bare loop's, which does sdft's
    numerical work and nothing else, by more than twice the standard error of the difference of the rounds' means;
    None when it does not (or, with fewer than two rounds each, when the noise is unknown)."""
    steps = {
        trainer: [row["step_s"] for row in rows if (row["size"], row["trainer"]) == (size, trainer)]
        for trainer in (SDFT, BARE)
    }
    if min(len(values) for values in steps.values()) < 2:
        return None
    error = sum(statistics.variance(values) / len(values) for values in steps.values()) ** 0.5
    sdft, bare = (statistics.median(values) for values in steps.values())
    if bare - sdft <= 2 * error:
        return None
    return (
        f"not reported: sdft's steady step ({sdft:.4f} s) beats the bare loop's ({bare:.4f} s), its limit, by "
        f"{bare - sdft:.4f} s, more than twice the standard error of the rounds ({error:.4f} s): the machine was "
        "not quiet or the bare loop did not do sdft's work; measure again"
    )


def size_table(setup: Setup, settings: TrainingSettings, rows: list[dict]) -> list[str]:
    """One size's medians: sdft, the reference and the bare loop side by side, with sdft's ratios to them; in place
    of the table, why not when sdft beats its limit (:func:`beaten_limit`)."""
    found = medians(rows, setup.name)
    sdft, reference, bare = (found.get(trainer, {}) for trainer in (SDFT, REFERENCE, BARE))
    title = f"## {setup.name}: {setup.size.description}"
    beaten = beaten_limit(rows, setup.name)
    if beaten is not None:
        return [title, "", f"{beaten[0].upper()}{beaten[1:]}.", "", spread(rows, setup.name), ""]
    lines = [
        title,
        "",
        f"{setup.size.resolution} px, batch {settings.batch_size}{accumulated(settings.accumulation)}, "
        f"LoRA rank {settings.rank}, learning rate "
        f"{settings.learning_rate:g}, gradient checkpointing {'on' if settings.gradient_checkpointing else 'off'}; "
        f"sdft config `{setup.size.config}`; steady step over steps {setup.warmup} to {setup.steps}.",
        "",
        "| measure | sdft | reference | bare loop | sdft / reference | sdft / bare loop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key, text in MEASURES:
        ours, theirs, limit = sdft.get(key), reference.get(key), bare.get(key)
        to_reference = f"{ours / theirs:.2f}" if ours and theirs else ""
        to_bare = f"{ours / limit:.2f} ({percent(ours / limit - 1)})" if ours and limit else ""
        cells = " | ".join(shown(value, text) for value in (ours, theirs, limit))
        lines.append(f"| {label} | {cells} | {to_reference} | {to_bare} |")
    if sdft.get("checkpoint_bytes"):
        checkpoint = megabytes(sdft["checkpoint_bytes"])
        lines.append(f"| checkpoint (`.ckpt`: LoRA + optimizer state) | {checkpoint} | | | | |")
    evaluated = found.get(EVALUATED)
    if evaluated:
        share = evaluated["evaluation_s"] / evaluated["wall_s"]
        lines.append(f"| evaluator's share of a fit with it | {share:.0%} of {evaluated['wall_s']:.1f} s | | | | |")
    return lines + ["", spread(rows, setup.name), ""]


def spread(rows: list[dict], size: str) -> str:
    """The lowest and highest steady step of each trainer's rounds, in a sentence."""
    parts = []
    for trainer in (SDFT, REFERENCE, BARE):
        steps = [row["step_s"] for row in rows if (row["size"], row["trainer"]) == (size, trainer)]
        if steps:
            parts.append(f"{trainer} {min(steps):.4f} to {max(steps):.4f} s")
    return f"Steady step over the rounds: {', '.join(parts)}."


def accumulated(batches: int) -> str:
    return f", {batches} batches a step" if batches > 1 else ""


def ratios(setup: Setup, rows: list[dict]) -> str:
    """The headline ratios of one size, in a sentence."""
    found = medians(rows, setup.name)
    sdft, reference, bare = (found.get(trainer, {}) for trainer in (SDFT, REFERENCE, BARE))
    beaten = beaten_limit(rows, setup.name)
    if beaten is not None:
        return f"{setup.name}: {beaten}"
    parts = []
    if reference:
        parts.append(
            f"steady step {reference['step_s'] / sdft['step_s']:.2f}x as fast as the reference's, "
            f"peak memory {sdft['peak_bytes'] / reference['peak_bytes']:.2f}x, "
            f"time to first step {sdft['first_step_s'] / reference['first_step_s']:.2f}x the reference's"
        )
    if bare:
        parts.append(f"{percent(sdft['step_s'] / bare['step_s'] - 1)} over the bare loop's step")
    return f"{setup.name}: sdft's " + "; ".join(parts)


def runs_table(rows: list[dict]) -> list[str]:
    lines = [
        "| size | trainer | round | attempt | load before / at start | waited | others' CPU | first step | steady step "
        "| peak memory |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        load = f"{row['load_before']:.1f} / {row['load_start']:.1f}"
        first, peak = shown(row.get("first_step_s"), "{:.1f} s"), shown(row.get("peak_bytes"), None)
        others = shown(row["others_cpu"], "{:.0%}")
        lines.append(
            f"| {row['size']} | {row['trainer']} | {row['repeat'] + 1} | {row['attempt']} | {load} | "
            f"{row['waited_s']:.0f} s | {others} | {first} | {row['step_s']:.4f} s | {peak} |"
        )
    return lines


def machine(device: str) -> str:
    """The system, the CPU's model and cores, torch's threads and, on CUDA, the GPU."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    line = f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores, "
    line += f"torch threads {torch.get_num_threads()}"
    return line + (f", {torch.cuda.get_device_name()}" if device == "cuda" else "")


def script_identity(script: Path) -> str:
    return f"`{script}` (sha256 {hashlib.sha256(script.read_bytes()).hexdigest()[:12]})"


def method(options: argparse.Namespace) -> list[str]:
    warmup, steps = options.steps
    precision = "bf16 (sdft: `bf16-mixed` with frozen weights in bf16)" if options.device == "cuda" else "float32"
    return [
        f"Method: for each size, {options.repeats} rounds of sdft, the reference, the bare loop, in that order, on one",
        "model folder, one folder of photos (4 per batch, so that the reference's loader never ends an epoch with a",
        "short batch) and the same prompt, resolution, batch size, LoRA rank, learning rate and workers, in",
        f"{precision}; each figure is the median of the rounds. Each run is a new process, after one unmeasured",
        "two-step run of sdft and of the reference (bytecode caches written, the model's files in the page cache):",
        "`sdft fit` without previews, evaluator or validation loop and with one checkpoint after the last step;",
        "the reference with checkpointing and validation off (it also clips the gradient norm every step, as by",
        "default). A hook on every optimizer step (`scripts/step_recorder.py`) notes when each step ends: time to",
        "first step runs from the launch of the process to the end of its first step (imports included); the",
        f"steady step is (end of step {steps} - end of step {warmup}) / {steps - warmup}. The bare loop",
        "(`scripts/bare_loop.py`) builds the model with sdft's config parser and does sdft's numerical work of each",
        "step and nothing else: the batch sdft draws at that step, its inputs (cached posteriors sampled, noise and",
        "timesteps drawn as sdft draws them), loss, backward pass, clipping, optimizer and scheduler step; before",
        "the rounds its losses are checked to be sdft's `train/loss`, and a size where sdft's step beats it by more",
        "than twice the standard error of the rounds is not reported. Its start includes sdft's imports and model",
        "loading. Peak memory is the training process's peak RSS",
        "(`VmHWM`) on a CPU and `torch.cuda.max_memory_allocated` on a GPU. sdft caches VAE latents and prompt",
        "embeddings (`model.init_args.cache: memory`, its default); the reference encodes every step's images and",
        "prompts. The evaluator's share comes from one more sdft run with the config's callbacks and validation",
        "(the evaluator with the tiny built-in CLIP and DINO): `evaluation/metrics.jsonl` seconds over the",
        "process's wall time.",
    ]


def load_line(rows: list[dict], options: argparse.Namespace, quiet_load: float, others_cpu: float) -> str:
    waited = [row for row in rows if row["waited_s"] > 6]
    loud = [row for row in rows if row["load_start"] > quiet_load]
    again = [row for row in rows if row["attempt"] > 1]
    starts = [row["load_start"] for row in rows]
    return (
        f"- load: 1-minute load average {min(starts):.1f} to {max(starts):.1f} at the starts of the measurements. "
        f"A measurement starts once the load is at most {quiet_load:g} and other processes use at most "
        f"{others_cpu:.0%} of the CPUs (or after {options.patience:g} s), and is made again (up to {options.attempts} "
        f"times in all) when they took more while it ran: {len(waited)} of {len(rows)} waited, {len(loud)} started "
        f"above the load, {len(again)} were made again"
    )


def report(
    rows: list[dict],
    sections: list[tuple[Setup, TrainingSettings]],
    scripts: list[Path],
    options: argparse.Namespace,
    argv: list[str],
    quiet: tuple[float, float],
) -> str:
    """The markdown report of the rows measured for ``sections``' sizes; ``quiet``: the load average and the other
    processes' share of the CPUs that count as a quiet machine."""
    rows = [row for row in rows if row["size"] in {setup.name for setup, _ in sections}]
    lines = [
        "# Benchmarks: sdft, diffusers' DreamBooth-LoRA script and a bare PyTorch loop",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine(options.device)}",
        f"- versions: {versions()}, transformers {transformers.__version__}, accelerate {accelerate.__version__}",
        f"- reference: {', '.join(map(script_identity, scripts)) or 'not run'}, run with plain `python`",
        f"- command: `uv run python scripts/benchmark.py {shlex.join(argv)}`",
        load_line(rows, options, *quiet),
        "",
        *(f"- {ratios(setup, rows)}" for setup, _ in sections),
        "",
        *method(options),
        "",
    ]
    for setup, settings in sections:
        lines += size_table(setup, settings, rows)
    return "\n".join(lines + ["## Every measurement", "", *runs_table(rows), ""])
