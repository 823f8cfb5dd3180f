"""Does sdft's selection rule pick a better step than the last one or the lowest loss? Measured on the toy world,
where an oracle knows what every image shows.

    uv run python scripts/benchmark_selection.py [--jobs 2] [--work runs/selection] [--quick]
        [--report reports/selection_benchmark.md]

Every run fine-tunes ``builtin:toyworld`` on the photos of a novel subject (:mod:`sdft.toyworld.subjects`: a
creature with a hat that the world never draws) through ``sdft fit``, with the toy world's CLIP and DINO
(``builtin:toyworld-clip`` / ``-dino``) scoring the evaluator's probes at every checkpoint, exactly as a user's run
would. The runs cross the method (LoRA, full fine-tuning), prior preservation (off, on), a learning rate that
under-fits, fits and over-fits, and a seed (each seed with its own subject). For each run, five rules choose a step:

- **sdft**: the evaluator's rule (``evaluation/selection.json``): the best DINO among the steps whose CLIP-T and PRES
  stay within their margins of the base model's;
- **last**: the last step;
- **train loss**: the step whose training loss, averaged over the steps since the previous checkpoint, is lowest;
- **val loss**: the step with the lowest fixed-noise validation loss (``val/loss``, the instance photos at fixed
  noise levels and noise);
- **oracle**: the step the judge scores best (the ceiling).

The judge is :mod:`sdft.toyworld.oracle`, which sdft never uses: ``sdft generate`` samples every checkpoint of the
run for the subject's evaluation prompts at seeds the evaluator never uses, and each image scores
``presence x context``: how much of the subject (in the colour the prompt asks for) the image shows, the mean of
five features (:func:`~sdft.toyworld.oracle.subject_likeness`: body colour, pattern, silhouette, hat, eyes), times
the share of the prompt's background and position that the image shows. A step's score is the mean over its
images; the subject at the cost of the prompt, or the prompt without the subject, scores low.

The report gives, per rule, the mean judge score of the steps it picks and its mean regret (the oracle's score minus
its own), and for sdft's rule against each other the share of runs it wins, ties (scores within 0.01) and loses,
with 95% bootstrap intervals over runs. Finished runs are kept in ``--work`` and skipped on a rerun, so an
interrupted benchmark continues. ``--quick`` runs two short runs only (a check of the pipeline, not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from sdft.reporting.records import read_curves, read_metrics
from sdft.toyworld import oracle, parse_caption
from sdft.toyworld.subjects import Subject, subject_photos, subject_prompts

ROOT = Path(__file__).resolve().parent.parent
SDFT = Path(sys.executable).parent / "sdft"
#: the novel subjects, one per seed: the default striped orange creature, and a dotted purple one
SUBJECTS = (Subject(), Subject(identifier="zwx", color="purple", pattern="dotted"))
#: learning rates per method that under-fit, fit and over-fit the subject in ``STEPS`` steps
LEARNING_RATES = {
    "lora": {"under": 1e-3, "fit": 3e-3, "over": 1e-2},
    "full": {"under": 3e-5, "fit": 1e-4, "over": 4e-4},
}
STEPS, EVERY = 400, 50
#: the evaluator's probes: seeds 0 and 1; the judge's: others
JUDGE_SEEDS = (100, 101)
GUIDANCE, INFERENCE_STEPS = 4.0, 20
#: the evaluator's probes at each checkpoint: prompts (of the subject's 8, evenly spread) x images per prompt
PROBE_PROMPTS, PROBE_IMAGES = 4, 2
#: judge scores this close count as a tie
TIE = 0.01
RULES = ("sdft", "last", "train loss", "val loss", "oracle")


@dataclass(frozen=True)
class Run:
    """One fine-tuning run of the benchmark."""

    method: str
    prior: bool
    fit: str
    seed: int
    steps: int = STEPS

    @property
    def name(self) -> str:
        return f"{self.method}-{'prior' if self.prior else 'noprior'}-{self.fit}-seed{self.seed}"

    @property
    def subject(self) -> Subject:
        return SUBJECTS[self.seed % len(SUBJECTS)]

    @property
    def learning_rate(self) -> float:
        return LEARNING_RATES[self.method][self.fit]


def all_runs(seeds: Sequence[int], steps: int = STEPS) -> list[Run]:
    return [
        Run(method, prior, fit, seed, steps)
        for seed in seeds
        for method in LEARNING_RATES
        for prior in (False, True)
        for fit in ("under", "fit", "over")
    ]


# -- one run ----------------------------------------------------------------------------------------------------------


def run_config(run: Run, photos: Path, work: Path, models: Models) -> dict:
    """The ``sdft fit`` configuration of ``run``: the user's configuration, with checkpoints and evaluations at
    every ``EVERY`` steps and the training loss logged at every step."""
    subject = run.subject
    method = {
        "lora": {"class_path": "sdft.methods.LoRAFineTuner", "init_args": {"rank": 8, "alpha": 8}},
        "full": {"class_path": "sdft.methods.FullFineTuner", "init_args": {}},
    }[run.method]
    method["init_args"] |= {
        "family": {
            "class_path": "sdft.families.StableDiffusion",
            "init_args": {"pretrained_model_name_or_path": models.base},
        },
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": run.learning_rate, "weight_decay": 0.0}},
        "export_formats": ["diffusers"] if run.method == "lora" else None,
    }
    if run.method == "full":
        del method["init_args"]["export_formats"]
    data = {
        "instance_dir": str(photos),
        "instance_prompt": f"a photo of {subject.name}",
        "resolution": 64,
        "random_flip": 0.5,
        "batch_size": 2,
        "seed": run.seed,
    }
    if run.prior:
        data |= {
            "class_prompt": f"a photo of a {subject.class_noun}",
            "class_dir": str(work / f"class_images_seed{run.seed}"),  # generated with the run's seed
            "num_class_images": 20,
            "class_generation_steps": INFERENCE_STEPS,
        }
    checkpoint = {"every_n_train_steps": EVERY, "save_top_k": -1, "filename": "step={step:06d}"}
    evaluator = {
        "every_n_steps": EVERY,
        "prompts": str(photos / "prompts.txt"),
        "num_prompts": PROBE_PROMPTS,
        "images_per_prompt": PROBE_IMAGES,
        "class_images": 2,
        "num_inference_steps": INFERENCE_STEPS,
        "guidance_scale": GUIDANCE,
        "clip_model": models.clip,
        "dino_model": models.dino,
    }
    return {
        "seed_everything": run.seed,
        "trainer": {
            "accelerator": "cpu",
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
        },
        "model": method,
        "data": {"class_path": "sdft.data.SubjectDataModule", "init_args": data},
    }


def say(text: str) -> None:
    print(text, flush=True)


@dataclass(frozen=True)
class Models:
    """The base model and the evaluator's backbones every run uses."""

    base: str = "builtin:toyworld"
    clip: str = "builtin:toyworld-clip"
    dino: str = "builtin:toyworld-dino"


def execute(run: Run, work: Path, models: Models) -> Path:
    """Fit ``run`` and sample its checkpoints for the judge (each skipped if already done); return its folder."""
    run_dir = work / run.name / "version_0"
    photos = work / "subjects" / f"seed{run.seed}"
    if not (run_dir / "evaluation" / "selection.json").is_file():
        config = work / "configs" / f"{run.name}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump(run_config(run, photos, work, models), sort_keys=False))
        started = time.perf_counter()
        command([str(SDFT), "fit", "--config", str(config)], work / "logs" / f"{run.name}.fit.log")
        say(f"{run.name}: fit in {time.perf_counter() - started:.0f} s")
    judged, steps = run_dir / "judge", [row["step"] for row in read_metrics(run_dir)]
    if not judge_complete(judged, steps, len(subject_prompts(run.subject))):
        shutil.rmtree(judged, ignore_errors=True)  # an interrupted judge's images
        started = time.perf_counter()
        command(
            [str(SDFT), "generate", json.dumps(subject_prompts(run.subject)), "--run", str(run_dir),
             "--compare", "checkpoints", "--checkpoint_steps", json.dumps(steps), "--seeds", json.dumps(JUDGE_SEEDS),
             "--num_inference_steps", str(INFERENCE_STEPS), "--guidance_scales", json.dumps([GUIDANCE]),
             "--batch_size", str(len(JUDGE_SEEDS)), "--device", "cpu", "--output", str(judged)],
            work / "logs" / f"{run.name}.judge.log",
        )  # fmt: skip
        say(f"{run.name}: judged in {time.perf_counter() - started:.0f} s")
    return run_dir


def judge_complete(judged: Path, steps: list[int], prompts: int) -> bool:
    """Whether ``sdft generate`` finished sampling every step: it records the images made so far after each step,
    and the grids only at the end."""
    if not (judged / "generation.json").is_file():
        return False
    index = json.loads((judged / "generation.json").read_text())
    return bool(index["grids"]) and len(index["images"]) == len(steps) * prompts * len(JUDGE_SEEDS)


def command(arguments: list[str], log: Path) -> None:
    """Run an sdft command on one CPU thread (the benchmark runs several at once), its output into ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("w") as file:
        done = subprocess.run(arguments, stdout=file, stderr=subprocess.STDOUT, env=environment, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"{shlex.join(arguments[:2])} failed ({done.returncode}); see {log}")


# -- the judge and the rules ------------------------------------------------------------------------------------------


def judge_image(image: Image.Image, prompt: str, subject: Subject) -> tuple[float, float]:
    """(presence, context) of one generated image: how much of the subject, in the colour the prompt names, its main
    object shows (:func:`~sdft.toyworld.oracle.subject_likeness`: colour, pattern, silhouette, hat and eyes); and
    the share of the prompt's background and position that the image shows."""
    expected = parse_caption(prompt)
    asked = replace(subject, color=expected.get("color", subject.color))
    presence = oracle.subject_likeness(image, asked)["likeness"]
    context = {key: value for key, value in expected.items() if key in ("background", "position")}
    agrees = oracle.score(image, context)
    return presence, float(np.mean(list(agrees.values()))) if agrees else 1.0


def judge_run(run_dir: Path, subject: Subject) -> dict[int, dict[str, float]]:
    """Per evaluated step: the judge's mean score, presence and context over the step's images."""
    index = json.loads((run_dir / "judge" / "generation.json").read_text())
    scores: dict[int, list[tuple[float, float]]] = {}
    for record in index["images"]:
        image = Image.open(run_dir / "judge" / record["file"]).convert("RGB")
        scores.setdefault(int(record["step"]), []).append(judge_image(image, record["prompt"], subject))
    return {
        step: {
            "score": float(np.mean([presence * context for presence, context in values])),
            "presence": float(np.mean([presence for presence, _ in values])),
            "context": float(np.mean([context for _, context in values])),
        }
        for step, values in sorted(scores.items())
    }


def choices(run_dir: Path, judged: dict[int, dict[str, float]]) -> dict[str, int]:
    """The step each rule picks among the evaluated steps after the first."""
    steps = sorted(judged)[1:]
    curves = read_curves(run_dir)
    train = curves.get("train/loss", [])

    def window_loss(step: int) -> float:
        values = [value for logged, value in train if step - EVERY <= logged < step]
        return float(np.mean(values)) if values else float("inf")

    validation = dict(curves.get("val/loss", []))
    selection = json.loads((run_dir / "evaluation" / "selection.json").read_text())
    return {
        "sdft": int(selection["step"]),
        "last": steps[-1],
        "train loss": min(steps, key=window_loss),
        "val loss": min(steps, key=lambda step: nearest(validation, step)),
        "oracle": max(steps, key=lambda step: judged[step]["score"]),
    }


def nearest(values: dict[int, float], step: int) -> float:
    """The value logged at ``step``, or at the closest logged step (Lightning logs validation one step off)."""
    if not values:
        return float("inf")
    return values[min(values, key=lambda logged: (abs(logged - step), logged))]


# -- the report -------------------------------------------------------------------------------------------------------


def bootstrap(values: np.ndarray, statistic: Callable[[np.ndarray], float], seed: int = 0) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of ``statistic`` over the rows of ``values`` (2,000 resamples)."""
    rng = np.random.default_rng(seed)
    draws = [statistic(values[rng.integers(len(values), size=len(values))]) for _ in range(2000)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(low), float(high)


def summarize(results: list[dict]) -> dict:
    """Per rule: mean score and regret with intervals; sdft against each other rule: wins, ties, losses."""
    scores = np.array([[result["scores"][rule] for rule in RULES] for result in results])
    oracle_column = scores[:, RULES.index("oracle")]
    table = {}
    for column, rule in enumerate(RULES):
        regret = oracle_column - scores[:, column]
        table[rule] = {
            "score": float(scores[:, column].mean()),
            "score_ci": bootstrap(scores[:, column], np.mean),
            "regret": float(regret.mean()),
            "regret_ci": bootstrap(regret, np.mean),
        }
    ours = scores[:, RULES.index("sdft")]
    duels = {}
    for rule in ("last", "train loss", "val loss"):
        gap = ours - scores[:, RULES.index(rule)]
        duels[rule] = {
            "wins": int((gap > TIE).sum()),
            "ties": int((np.abs(gap) <= TIE).sum()),
            "losses": int((gap < -TIE).sum()),
            "gap": float(gap.mean()),
            "gap_ci": bootstrap(gap, np.mean),
        }
    return {"rules": table, "duels": duels, "runs": len(results)}


def components(results: list[dict]) -> dict[str, dict[str, float]]:
    """Mean judge score, presence and context of the base model (step 0) and of the step each rule picks."""
    picked = {"base model (step 0)": [result["judge"]["0"] for result in results]}
    picked |= {rule: [result["judge"][str(result["choices"][rule])] for result in results] for rule in RULES}
    return {
        name: {key: float(np.mean([value[key] for value in values])) for key in ("score", "presence", "context")}
        for name, values in picked.items()
    }


def plot(results: list[dict], summary: dict, folder: Path) -> list[str]:
    """Two figures: each rule's mean regret with its interval, and judge curves of a few runs with each rule's pick."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    figure = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    rules = [rule for rule in RULES if rule != "oracle"]
    means = [summary["rules"][rule]["regret"] for rule in rules]
    errors = np.array([[mean - summary["rules"][rule]["regret_ci"][0], summary["rules"][rule]["regret_ci"][1] - mean]
                       for rule, mean in zip(rules, means, strict=True)]).T  # fmt: skip
    axes.bar(rules, means, yerr=errors, capsize=4, color=["tab:green", "tab:grey", "tab:grey", "tab:grey"])
    axes.set_ylabel("regret (oracle best - chosen)")
    axes.set_title(f"judge score lost by each rule, mean of {len(results)} runs (95% CI)", fontsize=9)
    figure.tight_layout()
    figure.savefig(folder / "regret.png")
    shown = [result for result in results if result["run"]["seed"] == results[0]["run"]["seed"]]
    figure = Figure(figsize=(9, 2.2 * -(-len(shown) // 3)), dpi=100)
    FigureCanvasAgg(figure)
    markers = {"sdft": ("o", "tab:green"), "last": ("s", "tab:grey"), "train loss": ("v", "tab:blue"),
               "val loss": ("^", "tab:purple"), "oracle": ("*", "tab:red")}  # fmt: skip
    for index, result in enumerate(shown):
        axes = figure.add_subplot(-(-len(shown) // 3), 3, index + 1)
        steps = sorted(int(step) for step in result["judge"])
        axes.plot(steps, [result["judge"][str(step)]["score"] for step in steps], color="black", linewidth=1)
        for rule, step in result["choices"].items():
            marker, color = markers[rule]
            axes.plot([step], [result["judge"][str(step)]["score"]], marker, color=color, label=rule, markersize=7)
        axes.set_title(result["name"], fontsize=8)
        axes.tick_params(labelsize=7)
    figure.axes[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(folder / "runs.png")
    return ["regret.png", "runs.png"]


def reading(summary: dict, parts: dict[str, dict[str, float]], results: list[dict]) -> str:
    """What the measurements say, in words, numbers filled in; including where the rule loses."""
    duels, base, ours = summary["duels"], parts["base model (step 0)"], parts["sdft"]
    names = {
        "last": "the last step",
        "train loss": "the lowest training loss",
        "val loss": "the lowest validation loss",
    }
    gains = ", ".join(
        f"{names[rule]} by {duel['gap']:+.3f} {interval(duel['gap_ci'])} (wins {duel['wins']}, loses {duel['losses']})"
        for rule, duel in duels.items()
    )
    lost = sorted({result["name"] for result in results if result["scores"]["sdft"] < result["scores"]["last"] - TIE})
    return (
        f"Over {summary['runs']} runs, sdft's rule beats {gains}, and its regret against the oracle's step is "
        f"{summary['rules']['sdft']['regret']:.3f} against {summary['rules']['last']['regret']:.3f} for the last "
        f"step. The gain comes mostly from the prompts' context: over-fitting steps lose their backgrounds "
        f"(context {parts['last']['context']:.2f} at the last step, {ours['context']:.2f} at sdft's choice), and "
        f"the CLIP-T floor keeps the rule off them. The subject itself is learnt only in part in "
        f"{results[0]['run']['steps']} steps at these learning rates: presence {ours['presence']:.3f} at sdft's "
        f"choice and {parts['oracle']['presence']:.3f} at the oracle's, against {base['presence']:.3f} for the "
        f"base model, whose samples keep every prompt's context; so the base model (score {base['score']:.3f}) "
        f"scores about as well as the trained steps any rule but the oracle picks. The rule loses to the last "
        f"step in {len(lost)} runs ({', '.join(lost) or 'none'}); the evaluator scores "
        f"{PROBE_PROMPTS * PROBE_IMAGES} probe images a step, "
        f"so its DINO and CLIP-T are noisy at this scale."
    )


def interval(values: tuple[float, float]) -> str:
    return f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def write_report(path: Path, results: list[dict], summary: dict, figures: list[str], facts: dict) -> None:
    """The markdown report: headline, tables, per-run choices, figures, and how it was made."""
    rules, duels = summary["rules"], summary["duels"]
    lines = [
        "# Selection benchmark: the step sdft picks against the last step and the lowest loss",
        "",
        f"{facts['date']}; {facts['machine']}; {facts['versions']}.",
        f"Command: `{facts['command']}`. The {len(results)} runs took {facts['run_minutes']:.0f} minutes of wall time",
        f"from the first fit to the last judge, {facts['jobs']} at a time (fit and judge of a run: "
        f"{facts['minutes_per_run']:.1f} minutes on average).",
        "",
        "Each run fine-tunes the toy world's base model (`builtin:toyworld`) on 5 photos of a novel subject; the",
        "judge (`sdft.toyworld.oracle`, never used by sdft) scores every checkpoint's samples of the subject's",
        "evaluation prompts at seeds the evaluator never saw: presence of the subject x share of the prompt's",
        "background and position shown. See the docstring of `scripts/benchmark_selection.py` for the rules.",
        "",
        "## Judge score of the chosen step, per rule",
        "",
        "| rule | mean score | 95% CI | mean regret (oracle - rule) | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for rule in RULES:
        row = rules[rule]
        lines.append(
            f"| {rule} | {row['score']:.3f} | [{row['score_ci'][0]:.3f}, {row['score_ci'][1]:.3f}] | "
            f"{row['regret']:.3f} | [{row['regret_ci'][0]:.3f}, {row['regret_ci'][1]:.3f}] |"
        )
    lines += [
        "",
        f"## sdft's rule against each other rule, over {summary['runs']} runs (a tie: scores within {TIE})",
        "",
        "| against | sdft wins | ties | sdft loses | mean score gain | 95% CI |",
        "|---|---|---|---|---|---|",
    ]
    for rule, duel in duels.items():
        lines.append(
            f"| {rule} | {duel['wins']} | {duel['ties']} | {duel['losses']} | {duel['gap']:+.3f} | "
            f"{interval(duel['gap_ci'])} |"
        )
    parts = components(results)
    lines += [
        "",
        "## What the judge sees at the chosen steps",
        "",
        "Presence: how much of the subject the samples show (a drawing of the subject scores 0.98; an image without",
        "it about 0.2, from the features a blob shares with it by chance). Context: the share of the prompts'",
        "backgrounds and positions shown.",
        "",
        "| steps | score | presence | context |",
        "|---|---|---|---|",
        *[
            f"| {name} | {row['score']:.3f} | {row['presence']:.3f} | {row['context']:.3f} |"
            for name, row in parts.items()
        ],
        "",
        "## Reading the result",
        "",
        reading(summary, parts, results),
        "",
        *[f"![{name}]({path.stem}/{name})" for name in figures],
        "",
        "## Every run",
        "",
    ]
    lines += ["| run | lr | " + " | ".join(f"{rule} step (score)" for rule in RULES) + " |"]
    lines += ["|---|---|" + "---|" * len(RULES)]
    for result in results:
        cells = [f"{result['choices'][rule]} ({result['scores'][rule]:.3f})" for rule in RULES]
        lines.append(f"| {result['name']} | {result['run']['learning_rate']:g} | " + " | ".join(cells) + " |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def run_times(work: Path, runs: list[Run]) -> tuple[float, float]:
    """(minutes from the first fit's start to the last judge's end, mean minutes per run), read from the files'
    times: a run's configuration is written as its fit starts, its judge's index last."""
    spans = [
        ((work / "configs" / f"{run.name}.yaml").stat().st_mtime,
         (work / run.name / "version_0" / "judge" / "generation.json").stat().st_mtime)
        for run in runs
    ]  # fmt: skip
    return (max(end for _, end in spans) - min(start for start, _ in spans)) / 60, float(
        np.mean([end - start for start, end in spans]) / 60
    )


def run_facts() -> dict:
    import diffusers
    import lightning
    import torch

    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "versions": f"python {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {lightning.__version__}, diffusers {diffusers.__version__}",
        "command": shlex.join(["uv", "run", "python", *sys.argv]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "selection", help="run folders (kept)")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "selection_benchmark.md")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one CPU thread each")
    parser.add_argument("--quick", action="store_true", help="two short runs: a check of the pipeline, not a result")
    for name, default in vars(Models()).items():
        parser.add_argument(f"--{name}", default=default, help=f"default {default}")
    options = parser.parse_args(argv)
    options.models = Models(options.base, options.clip, options.dino)
    work = options.work.resolve()
    runs = all_runs(options.seeds)
    if options.quick:
        runs = [Run("lora", False, "fit", 0, steps=2 * EVERY), Run("full", True, "over", 1, steps=2 * EVERY)]
    for seed in sorted({run.seed for run in runs}):
        if not (work / "subjects" / f"seed{seed}").is_dir():
            subject_photos(work / "subjects" / f"seed{seed}", SUBJECTS[seed % len(SUBJECTS)], seed=seed)
    # one prior run per seed first, alone: it generates the class images the seed's other prior runs share
    first = list({run.seed: run for run in reversed(runs) if run.prior}.values())
    folders = {run: execute(run, work, options.models) for run in first}
    with ThreadPoolExecutor(options.jobs) as pool:
        rest = [run for run in runs if run not in folders]
        folders |= dict(zip(rest, pool.map(lambda run: execute(run, work, options.models), rest), strict=True))
    results = []
    for run in runs:
        run_dir = folders[run]
        judged = judge_run(run_dir, run.subject)
        chosen = choices(run_dir, judged)
        results.append({
            "name": run.name,
            "run": {"method": run.method, "prior": run.prior, "fit": run.fit, "seed": run.seed,
                    "learning_rate": run.learning_rate, "steps": run.steps},
            "choices": chosen,
            "scores": {rule: judged[step]["score"] for rule, step in chosen.items()},
            "judge": {str(step): values for step, values in judged.items()},
        })  # fmt: skip
    summary = summarize(results)
    figures = plot(results, summary, options.report.with_suffix(""))
    run_minutes, minutes_per_run = run_times(work, runs)
    facts = run_facts() | {"run_minutes": run_minutes, "minutes_per_run": minutes_per_run, "jobs": options.jobs}
    write_report(options.report, results, summary, figures, facts)
    data = options.report.with_suffix(".json")
    data.write_text(json.dumps({"summary": summary, "results": results}, indent=1))
    print(f"wrote {options.report} and {data}")
    return summary


if __name__ == "__main__":
    main()
