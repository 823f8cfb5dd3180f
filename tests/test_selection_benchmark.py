"""scripts/benchmark_selection.py: each rule picks its step from a run's records, the statistics resample subjects,
the report states the goals as measured, and the grid's configurations are what sdft fit reads (the grid itself is
run by the script)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from script_modules import script_modules

from sdft.toyworld.judge import JUDGE_SEEDS, Judgement, judge_steps


@pytest.fixture(scope="module")
def scripts():
    with script_modules("benchmark_selection", "selection_rules", "selection_report") as modules:
        yield vars(modules)


def write_run(folder: Path, rows: list[dict], scores: dict[int, dict], train: dict, validation: dict, picked: int):
    """A run folder with TensorBoard scalars, metrics.jsonl, scores.jsonl and selection.json, as sdft fit leaves."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for tag, values in (("train/loss", train), ("val/loss", validation)):
        for step, value in values.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    (folder / "evaluation").mkdir(parents=True)
    (folder / "evaluation" / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    lines = "".join(json.dumps({"step": step, **values}) + "\n" for step, values in scores.items())
    (folder / "evaluation" / "scores.jsonl").write_text(lines)
    rule = {"fidelity": "val/dino", "clip_t_margin": 0.03, "pres_margin": None, "tie_tolerance": 0.02}
    (folder / "evaluation" / "selection.json").write_text(json.dumps({"step": picked, "rule": rule}))
    return folder


def judged_run(step_scores: dict[int, float]) -> dict:
    records = [
        (step, seed, Judgement(score, 1.0, score > 0.5)) for step, score in step_scores.items() for seed in JUDGE_SEEDS
    ]
    return judge_steps(records)


def test_each_rule_picks_its_step(scripts, tmp_path):
    rules = scripts["selection_rules"]
    # per-probe CLIP-T: step 4 drops 0.04 on every probe (rejected), step 6 drops 0.04 on average but noisily
    clip_t = {0: [0.3] * 4, 2: [0.3] * 4, 4: [0.26] * 4, 6: [0.3, 0.1, 0.5, 0.14]}
    dino = {0: 0.1, 2: 0.5, 4: 0.8, 6: 0.7}
    clip_i = {0: 0.1, 2: 0.9, 4: 0.5, 6: 0.6}
    div = {0: [0.3] * 2, 2: [0.3] * 2, 4: [0.3] * 2, 6: [0.0, 0.02]}
    rows = [
        {"step": s, "val/dino": dino[s], "val/clip_i": clip_i[s], "val/clip_t": float(np.mean(clip_t[s])),
         "val/div": float(np.mean(div[s]))}
        for s in dino
    ]  # fmt: skip
    scores = {s: {"val/dino": [dino[s]] * 4, "val/clip_t": clip_t[s], "val/div": div[s]} for s in dino}
    train = {0: 1.0, 1: 0.9, 2: 0.2, 3: 0.3, 4: 0.5, 5: 0.5}  # steps 2-3 (checkpoint 4) have the lowest mean
    validation = {2: 0.4, 4: 0.6, 6: 0.1}
    run = write_run(tmp_path / "run", rows, scores, train, validation, picked=6)
    judged = judged_run({0: 0.0, 2: 0.5, 4: 0.7, 6: 0.3})
    choices = rules.rule_choices(run, judged, every=2)
    assert choices == {
        "sdft": 6, "sdft (means only)": 2, "sdft + div": 2, "last": 6, "no fine-tuning": 0, "train loss": 4,
        "val loss": 6, "dino alone": 4, "clip-i alone": 2, "oracle": 4, "step 2": 2, "step 4": 4, "step 6": 6,
    }  # fmt: skip
    scored = rules.rule_scores(choices, judged)
    assert scored["last"] == pytest.approx(0.3) and scored["no fine-tuning"] == 0.0
    assert scored["oracle"] == pytest.approx(0.7)  # steady scores: the cross-fitted oracle loses nothing


def test_intervals_resample_subjects_not_runs(scripts):
    rules = scripts["selection_rules"]
    # one subject's 10 runs all gain 1.0, another's 10 all gain 0.0: 20 runs, but only 2 independent subjects
    gains = np.array([1.0] * 10 + [0.0] * 10)
    clustered = rules.clustered_interval(gains, ["a"] * 10 + ["b"] * 10)
    by_run = rules.clustered_interval(gains, [str(index) for index in range(20)])
    assert clustered == pytest.approx((0.0, 1.0))
    assert 0.2 < by_run[0] < by_run[1] < 0.8  # treating runs as independent would claim a gain


def test_the_summary_duels_every_rule_and_names_the_best_fixed_step(scripts):
    rules = scripts["selection_rules"]
    results = [
        {"subject": subject, "scores": {"sdft": s, "last": last, "step 50": a, "step 100": b, "oracle": o}}
        for subject, s, last, a, b, o in [
            ("a", 0.5, 0.2, 0.3, 0.4, 0.6),
            ("a", 0.4, 0.4, 0.1, 0.2, 0.5),
            ("b", 0.3, 0.3, 0.3, 0.35, 0.3),
        ]
    ]
    summary = rules.summarize(results)
    assert summary["rules"]["sdft"]["regret"] == pytest.approx((0.1 + 0.1 + 0.0) / 3)
    assert {key: summary["duels"]["last"][key] for key in ("wins", "ties", "losses")} == {
        "wins": 1, "ties": 2, "losses": 0,
    }  # fmt: skip
    assert set(summary["duels"]) == {"last", "step 50", "step 100"}
    assert rules.best_fixed_step(summary) == "step 100"


def test_the_report_states_each_goal_as_measured(scripts, tmp_path):
    report = scripts["selection_report"]
    judge = {"0": {"present": 0.0}, "50": {"present": 0.9}, "100": {"present": 0.5}}
    results = []
    for index in range(8):
        subject_set = "held-out" if index % 2 else "development"
        scores = {"sdft": 0.5, "last": 0.2, "no fine-tuning": 0.1, "dino alone": 0.45 + index * 0.01,
                  "step 50": 0.4, "step 100": 0.3, "oracle": 0.55}  # fmt: skip
        choices = {rule: 50 for rule in scores} | {"last": 100, "no fine-tuning": 0}
        results.append({"name": f"run{index}", "subject": f"s{index // 2}", "subject_set": subject_set, "judge": judge,
                        "run": {"learning_rate": 1e-3}, "choices": choices, "scores": scores})  # fmt: skip
    facts = {"date": "2026-12-07", "machine": "m", "versions": "v", "command": "c", "judge_commit": "abc123",
             "jobs": 2, "minutes": 1.0}  # fmt: skip
    path = tmp_path / "selection.md"
    report.write_report(path, results, facts)
    text = path.read_text()
    assert "at commit `abc123`, committed before the runs" in text.replace("\n", " ")
    assert "- sdft beats last: +0.300 [+0.300, +0.300]: **met**" in text
    assert "step 50 (best fixed step on development)" in text
    assert "- sdft beats dino alone: +0.010 [-0.010, +0.030]: **not met**" in text
    assert "- regret at most a quarter of the last step's: 0.050 against 0.350 / 4: **met**" in text
    assert "in 100% of runs (goal 80%; median presence 0.90): **met**" in text
    assert (tmp_path / "selection" / "regret.png").is_file()
    assert json.loads(path.with_suffix(".json").read_text())["facts"]["judge_commit"] == "abc123"


def test_the_grid_configurations_are_what_sdft_fit_reads(scripts, tmp_path):
    bench = scripts["benchmark_selection"]
    runs = bench.all_runs(["development", "held-out"], [0, 1])
    assert len(runs) == 8 * 2 * len(bench.CONFIGURATIONS) and len({run.name for run in runs}) == len(runs)
    lora = bench.run_config(runs[0], tmp_path / "photos", tmp_path, bench.Models(), "cpu")
    full = next(run for run in runs if run.method == "full" and run.subject_set == "held-out")
    config = bench.run_config(full, tmp_path / "photos", tmp_path, bench.Models(), "cuda")
    assert lora["model"]["init_args"]["optimizer"]["init_args"]["lr"] == bench.CONFIGURATIONS[("lora", "under")]
    assert config["trainer"]["accelerator"] == "cuda"
    assert config["data"]["init_args"]["instance_prompt"] == f"a photo of {full.subject.name}"
    assert yaml.safe_load(yaml.safe_dump(config)) == config
