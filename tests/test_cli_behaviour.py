"""How the sdft command treats its user: one-line errors before any model loads, a quick start for light commands,
readable help, a quiet run with a step progress bar, and resumes that continue their run folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from training import brief_fit

from sdft.cli import main

HEAVY = ("torch", "lightning", "diffusers", "transformers")


def fit_error(capsys, *arguments: str) -> str:
    """Run ``sdft fit`` with ``arguments``; assert it exits 2; return what it printed on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *arguments])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_a_bad_setting_is_one_line_naming_the_key_before_any_model_loads(capsys, tmp_path):
    missing_model = tmp_path / "no-such-model"  # loading it would fail with another error
    error = fit_error(
        capsys,
        "--config",
        "configs/quickstart.yaml",
        f"--model.init_args.family.init_args.pretrained_model_name_or_path={missing_model}",
        "--trainer.max_steps=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert error.strip().splitlines() == [
        "sdft: error: trainer.max_steps must be a positive number of optimizer steps, got 0; sdft trains for a "
        "number of steps, e.g. --trainer.max_steps 1000"
    ]
    assert not missing_model.exists()


def test_sdft_debug_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("SDFT_DEBUG", "1")
    with pytest.raises(ValueError, match="trainer.max_steps must be a positive"):
        main(
            ["fit", "--config", "configs/quickstart.yaml", "--trainer.max_steps=0"]
            + [f"--trainer.logger.init_args.save_dir={tmp_path}"]
        )


def test_the_command_module_imports_no_heavy_library():
    code = f"import sys, sdft.cli; print([name for name in {HEAVY!r} if name in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_tool_help_names_the_command_and_reads_as_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: sdft report ")
    assert "``" not in text


def test_a_run_shows_steps_and_no_expected_warnings(tmp_path, capsys, recwarn):
    brief_fit("configs/quickstart.yaml", tmp_path, {}, "--trainer.enable_progress_bar=true", max_steps=2)
    printed = capsys.readouterr()
    printed = printed.out + printed.err
    assert "steps: 100%" in printed and "2/2" in printed
    assert "Epoch" not in printed and "v_num" not in printed and "Tip:" not in printed
    messages = [str(warning.message) for warning in recwarn]
    assert not [m for m in messages if "LeafSpec" in m or "compute" in m and "update" in m], messages


def test_a_resumed_fit_continues_its_run_folder(tmp_path):
    run = brief_fit("configs/quickstart.yaml", tmp_path, {}, max_steps=4)
    (run / "best").rename(tmp_path / "best-before")
    main(
        ["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "step=000002.ckpt")]
        + ["--trainer.enable_progress_bar=false"]
    )
    assert sorted(path.name for path in run.parent.iterdir()) == ["version_0"]
    steps = [json.loads(line)["step"] for line in (run / "evaluation" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 2, 4]
    selection = json.loads((run / "evaluation" / "selection.json").read_text())
    assert (run / "best").is_dir() and selection["export"] == "best"
    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"].endswith("step=000002.ckpt")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "--data.init_args.instance_dir={missing}",
            r"sdft: error: \S*no-such-photos does not exist; set data.instance_dir",
        ),
        ("--data.init_args.resolution=65", r"sdft: error: data.resolution must be a positive multiple of 8"),
        (
            '--trainer.strategy={{"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"}}',
            r"sdft: error: trainer.strategy: ModelParallelStrategy is not supported; shard with .*ShardedStrategy",
        ),
    ],
)
def test_a_data_mistake_is_one_line_before_any_model_loads(option, message, capsys, tmp_path):
    missing_model = tmp_path / "no-such-model"
    error = fit_error(
        capsys,
        "--config",
        "configs/quickstart.yaml",
        f"--model.init_args.family.init_args.pretrained_model_name_or_path={missing_model}",
        option.format(missing=tmp_path / "no-such-photos"),
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert len(error.strip().splitlines()) == 1 and re.match(message, error), error
