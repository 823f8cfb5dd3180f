"""Does sdft's selection rule pick better steps than the rules a sceptic would use instead? Measured on the toy
world, where an oracle knows what every image shows.

    uv run python scripts/benchmark_selection.py [--subjects all|development|held-out] [--seeds 0 1] [--jobs 2]
        [--device cpu|cuda] [--work runs/selection] [--report reports/selection_benchmark.md] [--quick]

Every run fine-tunes ``builtin:toyworld`` on 5 photos of one novel subject (:mod:`sdft.toyworld.subjects`: 4
development subjects, on which the rule may be tuned, and 4 held-out ones, only ever judged) through ``sdft fit``,
with the toy world's CLIP and DINO scoring the evaluator's probes at every checkpoint, exactly as a user's run
would. The grid crosses the subject, a seed, and a configuration in which the best step comes early or late: a LoRA
at learning rates that under-fit, fit and over-fit, and full fine-tuning that fits and over-fits.

The judge (:mod:`sdft.toyworld.judge`, fixed before the runs: the report names its commit, and the benchmark
refuses to run while the judge or the oracle has uncommitted changes) samples every checkpoint with ``sdft generate``
on 16 prompts x 4 seeds the evaluator never uses, and scores each image ``likeness x context``. The rules
(``scripts/selection_rules.py``): sdft's as run, its means-only and DIV variants, the last step, every fixed step, no
fine-tuning, the lowest training and validation loss, the highest DINO and CLIP-I alone, and the cross-fitted
oracle. Statistics are paired per run with 95% bootstrap intervals that resample subjects; the headline is on the
held-out subjects. Finished fits and judges are kept in ``--work`` and reused, so an interrupted grid continues.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image
from selection_report import run_facts, write_report
from selection_rules import rule_choices, rule_scores

from sdft.reporting.records import read_metrics
from sdft.toyworld.judge import JUDGE_SEEDS, judge_image, judge_prompts, judge_steps
from sdft.toyworld.subjects import DEVELOPMENT_SUBJECTS, HELD_OUT_SUBJECTS, Subject, subject_photos

ROOT = Path(__file__).resolve().parent.parent
SDFT = Path(sys.executable).parent / "sdft"
SUBJECT_SETS = {"development": DEVELOPMENT_SUBJECTS, "held-out": HELD_OUT_SUBJECTS}
#: (method, fit) -> learning rate: under-fit, fit and over-fit the subject in ``STEPS`` steps
CONFIGURATIONS = {
    ("lora", "under"): 1e-3,
    ("lora", "fit"): 3e-3,
    ("lora", "over"): 1e-2,
    ("full", "fit"): 1e-4,
    ("full", "over"): 4e-4,
}
STEPS, EVERY = 400, 50
GUIDANCE, INFERENCE_STEPS = 4.0, 20
#: the evaluator's probes at each checkpoint: the subject's 8 evaluation prompts x images per prompt
PROBE_IMAGES, CLASS_IMAGES = 2, 2
#: the judge's files that must be committed before a run (the report names their commit)
JUDGE_FILES = ("sdft/toyworld/judge.py", "sdft/toyworld/oracle.py", "scripts/selection_rules.py")


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of the grid."""

    subject_set: str
    subject_index: int
    method: str
    fit: str
    seed: int
    steps: int = STEPS

    @property
    def subject(self) -> Subject:
        return SUBJECT_SETS[self.subject_set][self.subject_index]

    @property
    def name(self) -> str:
        return f"{self.subject.identifier}-{self.method}-{self.fit}-seed{self.seed}"

    @property
    def learning_rate(self) -> float:
        return CONFIGURATIONS[(self.method, self.fit)]


def all_runs(subject_sets: Sequence[str], seeds: Sequence[int], steps: int = STEPS) -> list[Run]:
    return [
        Run(subject_set, index, method, fit, seed, steps)
        for subject_set in subject_sets
        for index in range(len(SUBJECT_SETS[subject_set]))
        for seed in seeds
        for method, fit in CONFIGURATIONS
    ]


@dataclass(frozen=True)
class Models:
    """The base model and the evaluator's backbones every run uses."""

    base: str = "builtin:toyworld"
    clip: str = "builtin:toyworld-clip"
    dino: str = "builtin:toyworld-dino"


def run_config(run: Run, photos: Path, work: Path, models: Models, device: str) -> dict:
    """The ``sdft fit`` configuration of ``run``: a user's configuration, with checkpoints and evaluations every
    ``EVERY`` steps and the training loss logged at every step."""
    subject = run.subject
    method = {
        "lora": ("sdft.methods.LoRAFineTuner", {"rank": 8, "alpha": 8}),
        "full": ("sdft.methods.FullFineTuner", {}),
    }
    class_path, init_args = method[run.method]
    family = {"pretrained_model_name_or_path": models.base}
    init_args = init_args | {
        "family": {"class_path": "sdft.families.StableDiffusion", "init_args": family},
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": run.learning_rate, "weight_decay": 0.0}},
    }
    data = {
        "instance_dir": str(photos),
        "instance_prompt": f"a photo of {subject.name}",
        "resolution": 64,
        "random_flip": 0.5,
        "batch_size": 2,
        "seed": run.seed,
    }
    evaluator = {
        "every_n_steps": EVERY,
        "prompts": str(photos / "prompts.txt"),
        "num_prompts": None,
        "images_per_prompt": PROBE_IMAGES,
        "class_images": CLASS_IMAGES,
        "num_inference_steps": INFERENCE_STEPS,
        "guidance_scale": GUIDANCE,
        "clip_model": models.clip,
        "dino_model": models.dino,
    }
    checkpoint = {"every_n_train_steps": EVERY, "save_top_k": -1, "filename": "step={step:06d}"}
    trainer = {
        "accelerator": device,
        "devices": 1,
        "max_steps": run.steps,
        "val_check_interval": EVERY,
        "check_val_every_n_epoch": None,
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": str(work), "name": run.name, "version": 0},
        },
        "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": checkpoint},
            {"class_path": "sdft.callbacks.SubjectEvaluator", "init_args": evaluator},
        ],
    }
    return {
        "seed_everything": run.seed,
        "trainer": trainer,
        "model": {"class_path": class_path, "init_args": init_args},
        "data": {"class_path": "sdft.data.SubjectDataModule", "init_args": data},
    }


def say(text: str) -> None:
    print(text, flush=True)


def execute(run: Run, work: Path, models: Models, device: str) -> Path:
    """Fit ``run`` and sample its checkpoints for the judge (each skipped when already done); return its folder."""
    run_dir, photos = work / run.name / "version_0", photo_folder(work, run)
    if not (run_dir / "evaluation" / "selection.json").is_file():
        config = work / "configs" / f"{run.name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(run_config(run, photos, work, models, device), sort_keys=False))
        started = time.perf_counter()
        command([str(SDFT), "fit", "--config", str(config)], work / "logs" / f"{run.name}.fit.log")
        say(f"{run.name}: fit in {time.perf_counter() - started:.0f} s")
    judged, steps = run_dir / "judge", [row["step"] for row in read_metrics(run_dir)]
    prompts = judge_prompts(run.subject)
    if not judge_complete(judged, len(steps) * len(prompts) * len(JUDGE_SEEDS)):
        shutil.rmtree(judged, ignore_errors=True)  # an interrupted judge's images
        started = time.perf_counter()
        command(
            [str(SDFT), "generate", json.dumps(prompts), "--run", str(run_dir),
             "--compare", "checkpoints", "--checkpoint_steps", json.dumps(steps), "--seeds", json.dumps(JUDGE_SEEDS),
             "--num_inference_steps", str(INFERENCE_STEPS), "--guidance_scales", json.dumps([GUIDANCE]),
             "--batch_size", str(len(JUDGE_SEEDS)), "--device", device, "--dtype", "float32",
             "--output", str(judged)],
            work / "logs" / f"{run.name}.judge.log",
        )  # fmt: skip
        say(f"{run.name}: judged in {time.perf_counter() - started:.0f} s")
    return run_dir


def photo_folder(work: Path, run: Run) -> Path:
    """The subject's photos for the run's seed (written once, shared by the runs of that subject and seed)."""
    return work / "subjects" / f"{run.subject.identifier}-seed{run.seed}"


def judge_complete(judged: Path, images: int) -> bool:
    """Whether ``sdft generate`` finished: it records the images made so far after each step, the grids at the end."""
    if not (judged / "generation.json").is_file():
        return False
    index = json.loads((judged / "generation.json").read_text())
    return bool(index["grids"]) and len(index["images"]) == images


def command(arguments: list[str], log: Path) -> None:
    """Run an sdft command on one CPU thread (the grid runs several at once), its output into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as file:
        done = subprocess.run(arguments, stdout=file, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(arguments[:2])} failed ({done.returncode}); see {log}")


def judge_run(run_dir: Path, subject: Subject) -> dict[int, dict]:
    """The judge's reading of every sampled image of a run, summarized per step (and per half of the seeds)."""
    index = json.loads((run_dir / "judge" / "generation.json").read_text())
    records = []
    for record in index["images"]:
        image = Image.open(run_dir / "judge" / record["file"])
        records.append((int(record["step"]), int(record["seed"]), judge_image(image, record["prompt"], subject)))
    return judge_steps(records)


def result_of(run: Run, run_dir: Path) -> dict:
    """One run's record in the report: its rules' picks and scores and the judge's per-step readings."""
    judged = judge_run(run_dir, run.subject)
    choices = rule_choices(run_dir, judged, EVERY)
    return {
        "name": run.name,
        "subject": run.subject.identifier,
        "subject_set": run.subject_set,
        "run": {"method": run.method, "fit": run.fit, "seed": run.seed, "learning_rate": run.learning_rate},
        "choices": choices,
        "scores": rule_scores(choices, judged),
        "judge": {str(step): values for step, values in judged.items()},
    }


def judge_commit() -> str:
    """The commit of the judge's files; refuses to run while they have uncommitted changes."""
    changed = subprocess.run(["git", "status", "--porcelain", *JUDGE_FILES], capture_output=True, text=True, cwd=ROOT)
    if changed.stdout.strip():
        raise SystemExit(f"commit the judge before running the benchmark: {changed.stdout.strip()}")
    found = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", *JUDGE_FILES], capture_output=True, text=True, cwd=ROOT
    )
    return found.stdout.strip()


def run_grid(runs: list[Run], work: Path, models: Models, jobs: int, device: str) -> dict[Run, Path]:
    """Write each subject's photos, then fit and judge every run, ``jobs`` at a time."""
    for run in runs:
        if not photo_folder(work, run).is_dir():
            subject_photos(photo_folder(work, run), run.subject, seed=run.seed)
    with ThreadPoolExecutor(jobs) as pool:
        return dict(zip(runs, pool.map(lambda run: execute(run, work, models, device), runs), strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "selection", help="run folders (kept)")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "selection_benchmark.md")
    parser.add_argument("--subjects", choices=("all", "development", "held-out"), default="all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one CPU thread each")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for fitting and judging")
    parser.add_argument("--quick", action="store_true", help="two short runs: a check of the pipeline, not a result")
    for name, default in vars(Models()).items():
        parser.add_argument(f"--{name}", default=default, help=f"default {default}")
    options = parser.parse_args(argv)
    commit = judge_commit()
    sets = list(SUBJECT_SETS) if options.subjects == "all" else [options.subjects]
    runs = all_runs(sets, options.seeds)
    if options.quick:
        runs = [Run("development", 0, "lora", "fit", 0, 2 * EVERY), Run("held-out", 0, "full", "over", 0, 2 * EVERY)]
    work = options.work.resolve()
    started = time.time()
    folders = run_grid(runs, work, Models(options.base, options.clip, options.dino), options.jobs, options.device)
    results = [result_of(run, folders[run]) for run in runs]
    facts = run_facts(commit, options.jobs, (time.time() - started) / 60, options.device)
    write_report(options.report, results, facts)
    print(f"wrote {options.report} and {options.report.with_suffix('.json')}")


if __name__ == "__main__":
    main()
