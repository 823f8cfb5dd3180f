"""scripts/benchmark.py: the step recorder, the bare loop on sdft's inputs, the report's tables, and the whole command
on the tiny model (no reference script)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch
from script_modules import script_modules

THREE_STEPS = """
import torch
weight = torch.nn.Parameter(torch.ones(3))
optimizer = torch.optim.AdamW([weight])
for _ in range(3):
    weight.sum().backward()
    optimizer.step()
"""


@pytest.fixture(scope="module")
def scripts():
    """The benchmark's modules, imported from scripts/ as the script itself imports them."""
    with script_modules(
        "benchmark", "benchmark_runs", "benchmark_report", "bare_loop", "real_architectures", "memory_report"
    ) as modules:
        yield modules


@pytest.fixture(scope="module")
def pycache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bytecode cache for the module's new processes: the first compiles what the later ones import."""
    return tmp_path_factory.mktemp("pycache")


def tiny_setup(scripts, model: Path, photos: Path, pycache: Path):
    tiny = scripts.benchmark.SIZES["tiny"]
    return scripts.benchmark_runs.Setup("tiny", tiny, model, photos, "cpu", 1, 3, pycache=pycache)


def test_step_recorder_notes_when_each_optimizer_step_ends(scripts, pycache, tmp_path):
    program = tmp_path / "three_steps.py"
    program.write_text(THREE_STEPS)
    run = scripts.benchmark_runs.run_recorded([str(program)], tmp_path, pycache)
    steps = run["steps"]
    assert len(steps) == 3 and steps == sorted(steps)
    assert 0 < run["first_step_s"] == steps[0] < run["wall_s"]
    assert run["peak_bytes"] > 10**7  # python and torch at least
    assert scripts.benchmark_runs.steady_step([1.0, 2.0, 4.0, 7.0], warmup=2) == pytest.approx(2.5)


@pytest.mark.slow  # a timed subprocess (13 s); test_bare_loop_losses_are_sdfts is the fast check of the bare loop
def test_bare_loop_times_the_step_on_sdft_inputs(scripts, pycache, tiny_sd1, subject_dir, tmp_path):
    setup = tiny_setup(scripts, tiny_sd1, subject_dir, pycache)
    run = scripts.benchmark_runs.measure_bare_loop(setup, tmp_path / "bare")
    assert 0 < run["step_s"] < 10 and 0 < run["first_step_s"] < run["wall_s"] and run["peak_bytes"] > 10**8
    overrides = (tmp_path / "bare" / "overrides.yaml").read_text()
    assert "SubjectEvaluator" not in overrides and "SamplePreview" not in overrides
    assert "limit_val_batches: 0" in overrides and "every_n_train_steps: 3" in overrides


def test_bare_loop_losses_are_sdfts(scripts, tiny_sd1, subject_dir, tmp_path):
    """The bare loop does sdft's numerical work: its losses are sdft's ``train/loss``, step by step."""
    setup = tiny_setup(scripts, tiny_sd1, subject_dir, tmp_path)
    bare, sdft = scripts.bare_loop.check_bare_loop(setup, tmp_path / "check", steps=2)
    assert bare == sdft and len(bare) == 2 and bare[0] != bare[1]  # bit-identical


def journal_row(trainer: str, repeat: int, step_s: float, **measured: float) -> dict:
    load = {"load_before": 1.0, "load_start": 1.0, "waited_s": 0.0, "others_cpu": 0.01, "attempt": 1}
    return {"size": "tiny", "trainer": trainer, "repeat": repeat, **load, "step_s": step_s, **measured}


def test_report_holds_medians_and_ratios(scripts, tmp_path):
    setup = tiny_setup(scripts, tmp_path, tmp_path, tmp_path)
    settings = scripts.benchmark_runs.TrainingSettings("a photo of sks toy", 2, 0, 8, 3e-3, False)
    process = {"first_step_s": 6.0, "peak_bytes": 10**9, "wall_s": 20.0}
    rows = [
        *(journal_row("sdft", r, s, **process, checkpoint_bytes=320_000) for r, s in enumerate((0.05, 0.04, 0.09))),
        *(journal_row("reference", r, s, first_step_s=8.0, peak_bytes=2e9) for r, s in enumerate((0.1, 0.08, 0.12))),
        *(journal_row("bare loop", r, 0.04) for r in range(3)),
        journal_row("sdft + evaluator", 0, 0.05, **process, evaluation_s=5.0),
    ]
    options = argparse.Namespace(steps=[1, 3], repeats=3, device="cpu", patience=300, attempts=3)
    text = scripts.benchmark_report.report(rows, [(setup, settings)], [], options, [], (2.5, 0.1))
    assert "| steady step | 0.0500 s | 0.1000 s | 0.0400 s | 0.50 | 1.25 (+25%) |" in text
    assert "| time to first step (from launch) | 6.0 s | 8.0 s |" in text
    assert "| peak memory | 1,000 MB | 2,000 MB |" in text
    assert "| checkpoint (`.ckpt`: LoRA + optimizer state) | 0.32 MB |" in text
    assert "| evaluator's share of a fit with it | 25% of 20.0 s |" in text
    assert "steady step 2.00x as fast as the reference's, peak memory 0.50x, time to first step 0.75x" in text
    assert "Steady step over the rounds: sdft 0.0400 to 0.0900 s, reference 0.0800 to 0.1200 s, bare loop" in text
    assert text.count("| tiny | ") == len(rows)


def test_report_refuses_a_size_where_sdft_beats_its_limit(scripts, tmp_path):
    setup = tiny_setup(scripts, tmp_path, tmp_path, tmp_path)
    settings = scripts.benchmark_runs.TrainingSettings("a photo of sks toy", 1, 0, 4, 1e-4, False)
    process = {"first_step_s": 6.0, "peak_bytes": 10**9, "wall_s": 20.0}
    options = argparse.Namespace(steps=[1, 3], repeats=3, device="cpu", patience=300, attempts=3)

    def text(sdft: tuple[float, ...], bare: tuple[float, ...]) -> str:
        rows = [
            *(journal_row("sdft", r, s, **process) for r, s in enumerate(sdft)),
            *(journal_row("bare loop", r, s, **process) for r, s in enumerate(bare)),
        ]
        return scripts.benchmark_report.report(rows, [(setup, settings)], [], options, [], (2.5, 0.1))

    beaten = text((0.030, 0.031, 0.029), (0.040, 0.041, 0.039))
    assert "- tiny: not reported: sdft's steady step (0.0300 s) beats the bare loop's (0.0400 s)" in beaten
    assert "| steady step | 0.0" not in beaten and "| sdft | 3 | 1 |" in beaten  # every round still listed
    assert "| steady step | 0.0" in text((0.038, 0.030, 0.046), (0.040, 0.041, 0.039))  # within the noise


@pytest.mark.slow
def test_benchmark_command_on_the_tiny_model(scripts, tmp_path):
    output = tmp_path / "benchmarks.md"
    arguments = ["--sizes", "tiny", "--repeats", "1", "--steps", "1", "3", "--patience", "0", "--attempts", "1"]
    text = scripts.benchmark.main([*arguments, "--work-dir", str(tmp_path / "work"), "--output", str(output)])
    assert output.read_text() == text
    table = text[text.index("## tiny") : text.index("## Every measurement")]
    step = re.search(r"\| steady step \| ([\d.]+) s \|  \| ([\d.]+) s \|  \| (\d\.\d\d) \(", table)
    first, peak = (
        re.search(r"\| time to first step \(from launch\) \| ([\d.]+) s \|", table),
        re.search(r"\| peak memory \| ([\d,]+) MB \|", table),
    )
    share = re.search(r"\| evaluator's share of a fit with it \| (\d+)% of ([\d.]+) s \|", table)
    assert all(float(number) > 0 for number in (*step.groups(), first[1], peak[1].replace(",", ""), share[2]))
    assert 0 < int(share[1]) < 100
    assert re.search(r"\| checkpoint \(`\.ckpt`: LoRA \+ optimizer state\) \| [\d.]+ MB \|", table)
    assert text.count("| tiny | ") == 3  # sdft, the bare loop, sdft with the evaluator


def test_real_architectures_have_the_published_sizes(scripts):
    real = scripts.real_architectures
    builders = (real.sd15_modules, real.sdxl_modules, real.sd35_medium_modules, real.flux_dev_modules)
    with torch.device("meta"):
        counts = [[sum(p.numel() for p in module.parameters()) for module in build()] for build in builders]
    sd15, sdxl, sd35, flux = counts
    assert sd15 == [859_520_964, 83_653_863, 123_060_480]  # UNet, VAE, CLIP ViT-L/14
    assert sdxl == [123_060_480, 694_659_840, 2_567_463_684, 83_653_863]  # + OpenCLIP bigG, SDXL's UNet
    assert sd35[0] == 2_243_171_520 and sd35[4] == 4_762_310_656  # MMDiT, T5-XXL encoder
    assert flux[0] == 11_901_408_320 and flux[1] == 83_819_683  # FLUX.1-dev transformer, its VAE
    builders = (real.zimage_modules, real.qwen_image_modules, real.flux2_dev_modules, real.flux2_klein_modules)
    with torch.device("meta"):
        counts = [[sum(p.numel() for p in module.parameters()) for module in build()] for build in builders]
    zimage, qwen_image, flux2_dev, flux2_klein = counts
    assert zimage[0] == 6_154_908_736 and zimage[2] == 4_022_468_096  # Z-Image's 6B transformer, Qwen3-4B
    assert qwen_image[0] == 20_430_401_088 and qwen_image[2] == 8_292_166_656  # 20B MMDiT, Qwen2.5-VL-7B
    assert flux2_dev[0] == 32_223_281_152 and flux2_dev[2] == 24_011_361_280  # 32B, Mistral Small 3.1 24B
    assert 3.8e9 < flux2_klein[0] < 4e9 and flux2_klein[2] == zimage[2]  # [klein] 4B with Qwen3-4B


def test_the_memory_plan_of_a_published_architecture(scripts, tmp_path):
    """Configs alone, planned on the meta device: FLUX.2 [klein] 4B's frozen weights are its 7.98B parameters,
    and each switch lowers the training step's plan."""
    footprint, _ = scripts.memory_report.footprint_of("FLUX.2 [klein] 4B", tmp_path)
    combinations = scripts.memory_report.COMBINATIONS.values()
    plans = [scripts.memory_report.plan(footprint, switches, precision="bf16-mixed") for switches in combinations]
    assert plans[0].frozen_total == 4 * sum(t.elements for tensors in footprint.frozen.values() for t in tensors)
    assert 7.9e9 < plans[0].frozen_total / 4 < 8.1e9
    steps = [planned.training for planned in plans]
    assert steps[:6] == sorted(steps[:6], reverse=True) and len(set(steps[:6])) == 6  # nf4 below float8
    assert steps[6] < steps[3]  # offloading the blocks instead of quantizing
    section = "\n".join(scripts.memory_report.architecture_section("FLUX.2 [klein] 4B", footprint, 1.0))
    assert section.count("| + ") == 6 and "**" in section
