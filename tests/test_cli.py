"""The sdft command: help, every shipped config, and a whole quickstart-style run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from training import brief_fit

from sdft.cli import main
from sdft.methods.lora import LORA_WEIGHTS
from sdft.runs import model_from_config

CONFIGS = sorted(Path(__file__).parents[1].joinpath("configs").rglob("*.yaml"))


def test_help_lists_every_command(capsys):
    main(["--help"])
    listed = capsys.readouterr().out
    tools = ("evaluate", "evaluate-run", "export", "report", "generate", "merge", "extract", "prepare", "convert")
    for command in ("fit", "validate", *tools, "tiny-model"):
        assert f"\n  {command} " in listed


def test_fit_help_documents_the_method_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", "sdft.methods.LoRAFineTuner", "--model.help", "sdft.methods.LoRAFineTuner"])
    assert exit_info.value.code == 0
    assert "LoRA alpha" in capsys.readouterr().out


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(c.parents[1])) for c in CONFIGS])
def test_every_shipped_config_parses_and_builds_its_model(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] > 0
    model_from_config(config)  # instantiates the method and family without loading weights


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """The quickstart config for four steps at 32 px, with checkpoints, samples and evaluations every two."""
    lr = "--model.init_args.optimizer.init_args.lr=0.05"  # large enough that the evaluations differ between steps
    return brief_fit("configs/quickstart_tiny.yaml", tmp_path_factory.mktemp("cli"), {}, lr, max_steps=4)


def test_fit_leaves_a_complete_run_folder(quick_run):
    assert (quick_run / "config.yaml").is_file()
    assert sorted(p.name for p in (quick_run / "checkpoints").iterdir()) == ["step=000002.ckpt", "step=000004.ckpt"]
    assert (quick_run / "final" / LORA_WEIGHTS).is_file() and (quick_run / "best" / LORA_WEIGHTS).is_file()
    assert (quick_run / "evaluation" / "selection.json").is_file()
    assert sorted(p.name for p in (quick_run / "samples").iterdir()) == ["step_000000", "step_000002", "step_000004"]
    assert len(list((quick_run / "samples" / "step_000004").glob("*.png"))) == 2
    events = EventAccumulator(str(quick_run), size_guidance={"images": 0})
    events.Reload()
    assert {"train/loss", "val/loss", "lr-AdamW"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Images("samples/grid")] == [0, 2, 4]


def test_export_tool_writes_the_checkpoint_adapter(quick_run):
    main(["export", str(quick_run / "checkpoints" / "step=000004.ckpt")])
    exported = load_file(quick_run / "exports" / "step=000004" / LORA_WEIGHTS)
    final = load_file(quick_run / "final" / LORA_WEIGHTS)
    assert exported.keys() == final.keys()
    assert all(torch.equal(exported[key], final[key]) for key in final)
    first = load_file(Path(main_export(quick_run, "step=000002")))
    assert not all(torch.equal(first[key], final[key]) for key in final)


def main_export(run: Path, name: str) -> Path:
    main(["export", str(run / "checkpoints" / f"{name}.ckpt"), "--output", str(run / name)])
    return run / name / LORA_WEIGHTS


def test_validate_scores_a_checkpoint(quick_run, capsys, tmp_path):
    main(
        [
            "validate",
            "--config",
            str(quick_run / "config.yaml"),
            "--ckpt_path",
            str(quick_run / "checkpoints" / "step=000004.ckpt"),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    assert "val/loss" in capsys.readouterr().out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_evaluate_run_rescores_every_checkpoint_like_training_did(quick_run, capsys):
    main(["evaluate-run", str(quick_run)])
    posthoc = read_jsonl(quick_run / "evaluation" / "posthoc.jsonl")
    during = read_jsonl(quick_run / "evaluation" / "metrics.jsonl")
    assert [row["step"] for row in posthoc] == [row["step"] for row in during] == [0, 2, 4]
    for after, before in zip(posthoc, during, strict=True):
        for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres"):
            assert after[key] == pytest.approx(before[key], abs=1e-6)
    # the rows differ from step to step, so matching them row by row checks that each checkpoint's weights were used
    assert max(abs(during[0][key] - during[-1][key]) for key in ("val/clip_i", "val/dino")) > 1e-3
    assert "selected step" in capsys.readouterr().out
