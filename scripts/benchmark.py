"""Time sdft against diffusers' DreamBooth-LoRA script and a bare PyTorch loop; write reports/benchmarks.md.

    uv run python scripts/benchmark.py [--sizes tiny small] [--repeats 3] [--steps 20 120] [--device cpu|cuda]
        [--reference-script .../examples/dreambooth/train_dreambooth_lora.py] [--output reports/benchmarks.md]

Each size is one model folder and one folder of photos, trained with the settings of the size's sdft LoRA config
(prompt, resolution, batch size, rank, learning rate, workers, gradient checkpointing; float32 on a CPU, bf16 on a
GPU). For every repeat, in this order:

- sdft: ``sdft fit`` with the config, less its sample previews, evaluator and validation loop, and with one
  checkpoint after the last step, as a new process;
- the reference: diffusers' ``train_dreambooth_lora.py`` (for SDXL, SD3 and FLUX.1 its siblings
  ``train_dreambooth_lora_{sdxl,sd3,flux}.py`` beside it) with checkpointing and validation off, as a new process;
- the bare loop (scripts/bare_loop.py): sdft's numerical work of each step (the batch sdft draws, its inputs and
  loss, backward pass, clipping, optimizer and scheduler step) and nothing else, as a new process: the limit for
  any trainer. Before the rounds, its losses are checked to be sdft's ``train/loss`` (``check_bare_loop``); a size
  where sdft's step beats it by more than the noise of the rounds is not reported.

All three run under scripts/step_recorder.py, which notes when each optimizer step returns. Time to first step
runs from the launch of the process (imports included) to its first step; the steady step is
``(t[total] - t[warm-up]) / (total - warm-up)`` over those notes; peak memory is the process's peak RSS (``VmHWM``)
on a CPU and ``torch.cuda.max_memory_allocated`` on a GPU. A last sdft run per size keeps the config's callbacks
(the evaluator with the tiny built-in CLIP and DINO backbones) and gives the evaluator's share of its wall time.
Measurements wait for a quiet machine, are journalled in ``--work-dir`` (a rerun with it skips those done) and are
reported as medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import yaml
from bare_loop import check_bare_loop
from benchmark_report import BARE, EVALUATED, REFERENCE, SDFT, megabytes, ratios, report
from benchmark_runs import (
    EVALUATOR,
    ROOT,
    Setup,
    Size,
    TrainingSettings,
    build_cli,
    measure_bare_loop,
    measure_reference,
    measure_sdft,
    sdft_configs,
)
from real_architectures import build_flux_dev, build_sd15, build_sd35_medium, build_sdxl

from sdft.data.toy import write_toy_subject
from sdft.files import write_text_atomic
from sdft.tiny_models import build_small_sd1, build_tiny_sd1

#: a measurement starts once the 1-minute load average is at most this (a trainer's own threads count one per core,
#: so 2.5 on two cores) and other processes use at most OTHERS_CPU of the CPUs, or after --patience seconds; it is
#: made again (up to --attempts times) when other processes used more than OTHERS_CPU while it ran
QUIET_LOAD = (os.cpu_count() or 1) + 0.5
OTHERS_CPU = 0.1
#: photos per batch of the size's config: the reference's loader ends every epoch with a short batch otherwise
PHOTOS_PER_BATCH = 4

SD1_SCRIPT = "train_dreambooth_lora.py"
#: the real models' shapes with random weights (scripts/real_architectures.py)
RANDOM = "shapes, random weights"
TINY_CONFIG = "configs/quickstart_tiny.yaml"
SIZES = {
    "tiny": Size(build_tiny_sd1, TINY_CONFIG, 64, SD1_SCRIPT, "`builtin:tiny-sd1` (UNet 32-64 channels)"),
    "small": Size(build_small_sd1, TINY_CONFIG, 128, SD1_SCRIPT, "`build_small_sd1` (UNet 64-256)"),
    "sd15": Size(build_sd15, "configs/sd15/lora.yaml", 512, SD1_SCRIPT, f"SD 1.5 {RANDOM}"),
    "sdxl": Size(build_sdxl, "configs/sdxl/lora.yaml", 1024, "train_dreambooth_lora_sdxl.py", f"SDXL base {RANDOM}"),
    "sd3": Size(
        build_sd35_medium, "configs/sd3/lora.yaml", 512, "train_dreambooth_lora_sd3.py", f"SD3.5 medium {RANDOM}"
    ),
    "flux": Size(
        build_flux_dev, "configs/flux/lora.yaml", 512, "train_dreambooth_lora_flux.py", f"FLUX.1-dev {RANDOM}"
    ),
}
DEFAULT_SIZES = {"cpu": ["tiny", "small"], "cuda": ["sd15", "sdxl", "sd3", "flux"]}


# -- a quiet machine ----------------------------------------------------------------------------------------------


def busy_seconds() -> float | None:
    """CPU seconds every process has spent busy since boot (Linux's /proc/stat); None where there is none."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    user, nice, system, _, _, irq, softirq, steal = map(int, stat.read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and its waited-for children."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def cpu_mark() -> tuple[float, float | None, float]:
    """Now: the time, the machine's busy CPU seconds and this process's (with its children's)."""
    return time.monotonic(), busy_seconds(), own_seconds()


def others_since(mark: tuple[float, float | None, float]) -> float | None:
    """The share of the machine's CPU time that other processes used since ``mark``; None where unknown."""
    started, busy, own = mark
    if busy is None:
        return None
    others = (busy_seconds() - busy) - (own_seconds() - own)
    return max(0.0, others) / ((time.monotonic() - started) * (os.cpu_count() or 1))


def wait_for_quiet(patience: float) -> tuple[float, float]:
    """Wait until the 1-minute load average is at most :data:`QUIET_LOAD` and other processes use at most
    :data:`OTHERS_CPU` of the CPUs over 5 s, or until ``patience`` seconds have passed; return the load then and the
    seconds waited."""
    started = time.monotonic()
    while True:
        mark = cpu_mark()
        time.sleep(5)
        load, others = os.getloadavg()[0], others_since(mark)
        quiet = load <= QUIET_LOAD and (others is None or others <= OTHERS_CPU)
        if quiet or time.monotonic() - started >= patience:
            return load, time.monotonic() - started


class Journal:
    """Measurements, one JSON line each, kept in a file so that a rerun skips the ones done.

    A measurement starts once the machine is quiet (:func:`wait_for_quiet`, at most ``patience`` seconds) and is made
    again, up to ``attempts`` times in all, when other processes took more than :data:`OTHERS_CPU` of the CPUs while
    it ran.
    """

    def __init__(self, path: Path, patience: float, attempts: int) -> None:
        self.path, self.patience, self.attempts = path, patience, attempts
        self.rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def has(self, size: str, trainer: str, repeat: int) -> bool:
        return any((row["size"], row["trainer"], row["repeat"]) == (size, trainer, repeat) for row in self.rows)

    def measure(self, size: str, trainer: str, repeat: int, run: Callable[[], dict]) -> None:
        """Measure once the machine is quiet, unless the journal has it; print and keep its row."""
        if self.has(size, trainer, repeat):
            return
        for attempt in range(1, self.attempts + 1):
            row = {"size": size, "trainer": trainer, "repeat": repeat, "attempt": attempt}
            row["load_before"] = os.getloadavg()[0]
            row["load_start"], row["waited_s"] = wait_for_quiet(self.patience)
            mark = cpu_mark()
            row |= run()
            row["others_cpu"] = others_since(mark)
            print(progress_line(row), flush=True)
            if row["others_cpu"] is None or row["others_cpu"] <= OTHERS_CPU:
                break
        with self.path.open("a") as journal:
            journal.write(json.dumps(row) + "\n")
        self.rows.append(row)


def progress_line(row: dict) -> str:
    first = f"first step {row['first_step_s']:.1f} s, " if "first_step_s" in row else ""
    peak = f", peak {megabytes(row['peak_bytes'])}" if "peak_bytes" in row else ""
    others = "" if row["others_cpu"] is None else f", others' CPU {row['others_cpu']:.0%}"
    load = f"load {row['load_start']:.1f}" + (f" after waiting {row['waited_s']:.0f} s" if row["waited_s"] > 6 else "")
    name = f"{row['size']} {row['trainer']} #{row['repeat'] + 1}" + (
        f" (attempt {row['attempt']})" * (row["attempt"] > 1)
    )
    return f"{name}: {first}{row['step_s']:.4f} s/step{peak} ({load}{others})"


# -- the schedule -------------------------------------------------------------------------------------------------


def prepare(name: str, options: argparse.Namespace, work: Path) -> tuple[Setup, TrainingSettings]:
    """The size's model folder and photos in ``work`` (built unless already there) and its training settings."""
    size, model, photos = SIZES[name], work / "models" / name, work / "photos" / name
    if not (model / "model_index.json").exists():
        print(f"building the {name} model in {model}", flush=True)
        size.build(model, 0)
    setup = Setup(name, size, model, photos, options.device, *options.steps, pycache=work / "pycache")
    settings = TrainingSettings.of(build_cli(sdft_configs(setup, work / "runs" / name / "settings")))
    if not photos.is_dir():
        count = PHOTOS_PER_BATCH * settings.batch_size
        write_toy_subject(photos, num_images=count, size=max(128, size.resolution))
    return setup, settings


def measure_size(
    setup: Setup, settings: TrainingSettings, journal: Journal, repeats: int, script: Path | None, work: Path
) -> None:
    """Alternate sdft, the reference and the bare loop ``repeats`` times, then one sdft run with the evaluator."""
    runs = work / "runs" / setup.name
    trainers = (SDFT, BARE) if script is None else (SDFT, REFERENCE, BARE)
    if not all(journal.has(setup.name, trainer, repeat) for trainer in trainers for repeat in range(repeats)):
        check_bare_loop(setup, runs / "bare-check")
        warm_up(setup, script, settings, runs / "warm-up")
    for repeat in range(repeats):
        measure_round(setup, journal, repeat, script, settings, runs)
    callbacks = yaml.safe_load((ROOT / setup.size.config).read_text())["trainer"].get("callbacks", [])
    if any(callback["class_path"] == EVALUATOR for callback in callbacks):
        journal.measure(setup.name, EVALUATED, 0, lambda: measure_sdft(setup, runs / "evaluated", evaluated=True))


def warm_up(setup: Setup, script: Path | None, settings: TrainingSettings, folder: Path) -> None:
    """Two steps of sdft and of the reference, not measured: their bytecode caches written and the model's files
    in the page cache, so that the first measured run starts as the later ones do."""
    short = replace(setup, warmup=1, steps=2)
    print(f"warming up on {setup.name}", flush=True)
    measure_sdft(short, folder / "sdft")
    if script is not None:
        measure_reference(short, script, settings, folder / "reference")


def measure_round(
    setup: Setup, journal: Journal, repeat: int, script: Path | None, settings: TrainingSettings, runs: Path
) -> None:
    """sdft, then the reference (when there is a script), then the bare loop."""
    journal.measure(setup.name, SDFT, repeat, lambda: measure_sdft(setup, runs / f"sdft-{repeat}"))
    if script is not None:
        folder = runs / f"reference-{repeat}"
        journal.measure(setup.name, REFERENCE, repeat, lambda: measure_reference(setup, script, settings, folder))
    journal.measure(setup.name, BARE, repeat, lambda: measure_bare_loop(setup, runs / f"bare-{repeat}"))


def reference_script(given: Path | None, size: Size) -> Path | None:
    """diffusers' script for the size's family: ``given`` or its sibling; None when not given or not there."""
    if given is None:
        return None
    script = given.with_name(size.reference)
    if not script.is_file():
        print(f"no {script}: the reference is not run for this size", flush=True)
        return None
    return script


# -- the command ----------------------------------------------------------------------------------------------------


def parse_options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZES, help="default: tiny small; sd15 sdxl sd3 flux on cuda")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of sdft, reference, bare loop per size")
    parser.add_argument("--steps", type=int, nargs=2, default=[20, 120], metavar=("WARMUP", "TOTAL"))
    parser.add_argument("--reference-script", type=Path, help="diffusers' examples/dreambooth/train_dreambooth_lora.py")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--output", type=Path, default=ROOT / "reports" / "benchmarks.md")
    parser.add_argument("--patience", type=float, default=300, help="seconds a measurement waits for a quiet machine")
    parser.add_argument("--attempts", type=int, default=3, help="tries when other processes take the CPUs")
    parser.add_argument("--work-dir", type=Path, help="models, runs and the journal, kept to resume; default: a temp")
    options = parser.parse_args(argv)
    if not 1 <= options.steps[0] < options.steps[1]:
        parser.error(f"--steps WARMUP TOTAL needs 1 <= WARMUP < TOTAL, got {options.steps}")
    options.sizes = options.sizes or DEFAULT_SIZES[options.device]
    return options


def check_resumable(work: Path, options: argparse.Namespace) -> None:
    """Refuse to mix measurements of other steps, device or reference into a work folder's journal."""
    identity = {"steps": options.steps, "device": options.device, "reference": str(options.reference_script)}
    stored = work / "options.json"
    if stored.exists() and json.loads(stored.read_text()) != identity:
        sys.exit(f"{work} holds measurements made with {stored.read_text()}; use another --work-dir")
    stored.write_text(json.dumps(identity))


def main(argv: list[str] | None = None) -> str:
    """Measure, write the report to ``--output`` and return it."""
    argv = sys.argv[1:] if argv is None else argv
    options = parse_options(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = options.work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        check_resumable(work, options)
        journal, sections, scripts = Journal(work / "measurements.jsonl", options.patience, options.attempts), [], []
        for name in options.sizes:
            setup, settings = prepare(name, options, work)
            script = reference_script(options.reference_script, setup.size)
            measure_size(setup, settings, journal, options.repeats, script, work)
            sections.append((setup, settings))
            scripts += [script] if script is not None and script not in scripts else []
            print(ratios(setup, journal.rows), flush=True)
            if options.work_dir is None:  # the GPU sizes' folders take tens of GB
                shutil.rmtree(setup.model)
    text = report(journal.rows, sections, scripts, options, argv, (QUIET_LOAD, OTHERS_CPU))
    write_text_atomic(options.output, text)
    return text


if __name__ == "__main__":
    print(main())
