"""How the sdft command treats its user: one-line errors before any model loads, a quick start for light commands,
readable help, a quiet run with a step progress bar, and resumes that continue their run folder."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

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


def config_error(capsys, tmp_path, *options: str) -> str:
    """The error of a quickstart fit with ``options`` and a model path that does not exist (loading it would fail
    with another error, so the error shows the check ran before any model loads)."""
    missing_model = tmp_path / "no-such-model"
    error = fit_error(
        capsys,
        "--config",
        "configs/quickstart_tiny.yaml",
        f"--model.init_args.family.init_args.pretrained_model_name_or_path={missing_model}",
        *options,
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert not missing_model.exists()
    return error


def test_a_bad_setting_is_one_line_naming_the_key_before_any_model_loads(capsys, tmp_path):
    error = config_error(capsys, tmp_path, "--trainer.max_steps=0")
    assert error.strip().splitlines() == [
        "sdft: error: trainer.max_steps must be a positive number of optimizer steps, got 0; sdft trains for a "
        "number of steps, e.g. --trainer.max_steps 1000"
    ]


def test_sdft_debug_shows_the_traceback(monkeypatch, tmp_path):
    monkeypatch.setenv("SDFT_DEBUG", "1")
    with pytest.raises(ValueError, match="trainer.max_steps must be a positive"):
        main(
            ["fit", "--config", "configs/quickstart_tiny.yaml", "--trainer.max_steps=0"]
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
    brief_fit("configs/quickstart_tiny.yaml", tmp_path, {}, "--trainer.enable_progress_bar=true", max_steps=2)
    printed = capsys.readouterr()
    printed = printed.out + printed.err
    assert "steps: 100%" in printed and "2/2" in printed
    assert "Epoch" not in printed and "v_num" not in printed and "Tip:" not in printed
    messages = [str(warning.message) for warning in recwarn]
    assert not [m for m in messages if "LeafSpec" in m or "compute" in m and "update" in m], messages


def test_a_resumed_fit_continues_its_run_folder(tmp_path):
    run = brief_fit("configs/quickstart_tiny.yaml", tmp_path, {}, max_steps=4)
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


def test_ckpt_path_last_resumes_the_newest_checkpoint_or_starts_a_new_run(tmp_path, caplog):
    fresh = brief_fit("configs/quickstart_tiny.yaml", tmp_path, {}, "--ckpt_path=last", evaluate=False, max_steps=2)
    assert "no checkpoint in" in caplog.text and fresh.name == "version_0"
    (fresh / "checkpoints" / ".step=000099.ckpt.partial").write_bytes(b"")  # a staging file is never resumed
    main(
        ["fit", "--config", str(fresh / "config.yaml"), "--ckpt_path", "last", "--trainer.max_steps=4"]
        + ["--trainer.enable_progress_bar=false"]
    )
    assert sorted(path.name for path in fresh.parent.iterdir()) == ["version_0"]
    assert (fresh / "checkpoints" / "step=000004.ckpt").is_file()
    assert yaml.safe_load((fresh / "config.yaml").read_text())["ckpt_path"].endswith("step=000002.ckpt")


def test_ckpt_path_last_needs_the_run_folders_it_searches(capsys):
    error = fit_error(capsys, "--config", "configs/quickstart_tiny.yaml", "--ckpt_path=last", "--trainer.logger=false")
    assert "--ckpt_path last" in error and "trainer.logger" in error


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
        "configs/quickstart_tiny.yaml",
        f"--model.init_args.family.init_args.pretrained_model_name_or_path={missing_model}",
        option.format(missing=tmp_path / "no-such-photos"),
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert len(error.strip().splitlines()) == 1 and re.match(message, error), error


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--model.init_args.optimizer.init_args.lr=0"],
            r"model.init_args.optimizer.init_args.lr must be positive, got 0.0; e.g. lr: 1e-4",
        ),
        (
            ["--model.init_args.optimizer.init_args.lr=-0.001"],
            r"model.init_args.optimizer.init_args.lr must be positive, got -0.001",
        ),
        (
            ["--model.init_args.optimizer.init_args.weight_decay=-1"],
            r"model.init_args.optimizer.init_args: Invalid weight_decay value: -1.0",
        ),
        (["--trainer.max_steps=-5"], r"trainer.max_steps must be a positive number of optimizer steps, got -5;"),
        (
            ["--trainer.accelerator=cpu", "--trainer.precision=16-mixed"],
            r"trainer.precision: 16-mixed computes in float16, which the CPU does not run; use bf16-mixed or 32",
        ),
        (
            ["--trainer.accelerator=cpu", "--trainer.precision=16-true"],
            r"trainer.precision: 16-true computes in float16, which the CPU does not run; use bf16-mixed or 32",
        ),
        (
            ["--trainer.strategy=fsdp"],
            r"trainer.strategy: FSDPStrategy is not supported; shard with .*ShardedStrategy",
        ),
        (
            ['--trainer.strategy={"class_path": "sdft.sharding.ShardedStrategy"}', "--trainer.devices=1"],
            r"trainer.strategy: ShardedStrategy splits the model across devices, and this run has 1; set "
            r"trainer.devices to 2 or more",
        ),
        (
            ["--model.init_args.family=sdft.families.Flux", "--data.init_args.resolution=24"],
            r"data.resolution must be a multiple of 16 for Flux .*, got 24; use e.g. 32",
        ),
        (
            ["--model.init_args.family=sdft.families.Flux", "--data.init_args.buckets=[[48, 24], [32, 32]]"],
            r"each side of the bucket 48x24 \(data.buckets\) must be a multiple of 16 for Flux .*, got 24",
        ),
        (
            ["--data.init_args.buckets=12"],
            r"data.buckets as a step must be a positive multiple of 8 pixels",
        ),
        (
            ["--model=sdft.methods.TextualInversion", "--model.init_args.family=sdft.families.StableDiffusion3"]
            + ["--model.init_args.placeholder_token=<sks>", "--model.init_args.initializer_token=toy"],
            r"model.init_args.family: StableDiffusion3 takes no new tokens, .* or a family that does: StableDiffusion",
        ),
        (
            ["--model=sdft.methods.PivotalTuning", "--model.init_args.family=sdft.families.Flux"]
            + ["--model.init_args.placeholder_token=<sks>", "--model.init_args.initializer_token=toy"],
            r"model.init_args.family: Flux takes no new tokens",
        ),
    ],
    ids=[
        "zero-lr",
        "negative-lr",
        "optimizer-range",
        "negative-steps",
        "fp16-mixed-on-cpu",
        "fp16-true-on-cpu",
        "fsdp",
        "sharded-on-one-device",
        "flux-resolution",
        "flux-bucket-sides",
        "bucket-step",
        "textual-inversion-on-sd3",
        "pivotal-tuning-on-flux",
    ],
)
def test_a_config_mistake_is_one_line_naming_the_key_before_any_model_loads(options, message, capsys, tmp_path):
    error = config_error(capsys, tmp_path, *options)
    assert len(error.strip().splitlines()) == 1 and re.match("sdft: error: " + message, error), error


def quickstart_variant(tmp_path, change) -> str:
    """The quickstart config with a missing model, changed by ``change`` (a function of the parsed YAML); its
    path."""
    config = yaml.safe_load(Path("configs/quickstart_tiny.yaml").read_text())
    config["model"]["init_args"]["family"]["init_args"]["pretrained_model_name_or_path"] = str(tmp_path / "no-model")
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    change(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_missing_max_steps_is_named_before_any_model_loads(capsys, tmp_path):
    error = fit_error(
        capsys, "--config", quickstart_variant(tmp_path, lambda config: config["trainer"].pop("max_steps"))
    )
    assert error.strip() == (
        "sdft: error: trainer.max_steps must be a positive number of optimizer steps, got -1 (not set); sdft trains "
        "for a number of steps, e.g. --trainer.max_steps 1000"
    )


def test_evaluations_off_the_checkpoint_steps_are_refused_before_any_model_loads(capsys, tmp_path):
    def evaluate_every_30(config):
        evaluator = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("SubjectEvaluator"))
        evaluator["init_args"]["every_n_steps"] = 30

    error = fit_error(capsys, "--config", quickstart_variant(tmp_path, evaluate_every_30))
    assert error.strip() == (
        "sdft: error: SubjectEvaluator.every_n_steps=30 is not a multiple of ModelCheckpoint.every_n_train_steps=40: "
        "the best step could have no checkpoint; make it a multiple"
    )
    assert not (tmp_path / "quickstart" / "version_0" / "evaluation").exists()


@pytest.mark.parametrize(
    ("option", "named"),
    [
        ("--model.init_args.rnak=8", "rnak"),
        ("--model.init_args.rank=eight", "rank"),
        ("--trainer.max_stpes=5", "max_stpes"),
    ],
    ids=["unknown-key", "wrong-type", "unknown-trainer-key"],
)
def test_unknown_keys_and_wrong_types_are_named_before_any_model_loads(option, named, capsys, tmp_path):
    missing_model = tmp_path / "no-such-model"
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", "configs/quickstart_tiny.yaml", option,
              f"--model.init_args.family.init_args.pretrained_model_name_or_path={missing_model}"])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert named in error and "no-such-model" not in error.split(named)[0][-200:], error[-600:]


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_model_path_that_is_not_a_model_folder_is_named_in_one_line(kind, capsys, tmp_path):
    model = tmp_path / "models" / "sd15"
    if kind == "file":
        model.parent.mkdir()
        model.write_text("not a model")
    error = fit_error(
        capsys, "--config", "configs/quickstart_tiny.yaml",
        f"--model.init_args.family.init_args.pretrained_model_name_or_path={model}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )  # fmt: skip
    expected = "does not exist; give a diffusers model folder" if kind == "missing" else "is a file; give the base"
    assert error.strip().splitlines() == [error.strip()] and "pretrained_model_name_or_path" in error
    assert expected in error and not (tmp_path / "run").exists() and not (tmp_path / "quickstart").exists()
