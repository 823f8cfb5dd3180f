"""How the sdft command treats its user: one-line errors before any model loads, a quick start for light commands,
readable help, a quiet run with a step progress bar, and resumes that continue their run folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from training import brief_fit

from sdft.cli import main
from sdft.errors import UserError

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


# A config mistake is one line, before torch, Lightning and diffusers are imported (sdft.config answers from
# schema.json), and the real parser, which parses every line again after the imports, agrees with that answer.

STALE_SCHEMA = "sdft/config/schema.json does not match the code: run `uv run python -m sdft.config.extraction`"
CONFIGS = sorted(Path("configs").rglob("*.yaml"))
RECORD_IMPORTS = """
import atexit, os, sys
atexit.register(lambda: open(os.environ["SDFT_TEST_IMPORTS"], "w").write(
    " ".join(name for name in ("torch", "lightning", "diffusers", "transformers") if name in sys.modules)))
"""
CALLBACK_TYPO = """\
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
    - class_path: sdft.callbacks.SamplePreview
      init_args:
        promts: [a photo of sks creature]
"""


def sdft_command(tmp_path: Path, *arguments: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``sdft <arguments>`` as a user types it; its result and the heavy libraries it imported."""
    (tmp_path / "sitecustomize.py").write_text(RECORD_IMPORTS)
    imports = tmp_path / "imported.txt"
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "PYTHONPATH": path, "SDFT_TEST_IMPORTS": str(imports), "OMP_NUM_THREADS": "1"}
    environment.pop("SDFT_DEBUG", None)
    script = Path(sys.executable).with_name("sdft")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sdft.cli"]
    result = subprocess.run([*command, *arguments], capture_output=True, text=True, env=environment, timeout=300)
    return result, imports.read_text().split()


def written(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--model.init_args.rnak", "8"],
            r"--model.init_args.rnak: unknown key \(sdft.methods.LoRAFineTuner has no option rnak\); "
            r"did you mean rank\?",
        ),
        (
            ["--config", "{tmp}/typo.yaml"],
            r"\S+/typo.yaml:4: model.init_args.rnak: unknown key \(sdft.methods.LoRAFineTuner has no option rnak\); "
            r"did you mean rank\?",
        ),
        (["--trainer.max_stpes=5"], r"--trainer.max_stpes: unknown key; did you mean max_steps\?"),
        (["--model.init_args.rank", "eight"], r"--model.init_args.rank: expects an integer, got 'eight'"),
        (
            ["--config", "{tmp}/steps.yaml"],
            r"\S+/steps.yaml:2: trainer.max_steps: expects an integer, got 'many'",
        ),
        (
            ["--trainer.precision", "bf17"],
            r"--trainer.precision: expects one of 64, 32, 16, .*bf16-mixed.* or null, got 'bf17'; did you mean bf16\?",
        ),
        (["--config", "{tmp}/broken.yaml"], r"\S+/broken.yaml:3:2: not valid YAML: did not find expected key"),
        (["--config", "{tmp}/missing.yaml"], r"--config \S+/missing.yaml: no such file"),
        (["--trainer.strategy", "ddpp"], r"--trainer.strategy: no strategy named 'ddpp'; did you mean ddp\?"),
        (["--trainer.accelerator", "gpux"], r"--trainer.accelerator: no accelerator named 'gpux'; did you mean gpu\?"),
        (
            ["--model.init_args.family", "sdft.families.Fluxx"],
            r"--model.init_args.family: no class sdft.families.Fluxx; did you mean sdft.families.Flux\?",
        ),
        (
            ["--config", "{tmp}/callback.yaml"],
            r"\S+/callback.yaml:6: trainer.callbacks\[1\].init_args.promts: unknown key "
            r"\(sdft.callbacks.SamplePreview has no option promts\); did you mean prompts\?",
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-key-in-a-file",
        "unknown-trainer-key",
        "wrong-type",
        "wrong-type-in-a-file",
        "unknown-precision",
        "yaml-syntax",
        "missing-config",
        "unknown-strategy",
        "unknown-accelerator",
        "unknown-class",
        "callback-typo",
    ],
)
def test_a_config_mistake_is_one_line_before_torch_is_imported(arguments, message, tmp_path):
    written(tmp_path, "typo.yaml", "model:\n  class_path: sdft.methods.LoRAFineTuner\n  init_args:\n    rnak: 8\n")
    written(tmp_path, "steps.yaml", "trainer:\n  max_steps: many\n")
    written(tmp_path, "broken.yaml", "trainer:\n  max_steps: 5\n model: x\n")
    written(tmp_path, "callback.yaml", CALLBACK_TYPO)
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    result, imported = sdft_command(tmp_path, "fit", "--config", "configs/quickstart_tiny.yaml", *arguments)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(result.stderr.splitlines()) == 1 and re.fullmatch("sdft: error: " + message, result.stderr.strip())
    assert imported == [], f"{imported} imported: the mistake was found after the model's libraries loaded"


def test_fit_help_and_print_config_come_before_torch_is_imported(tmp_path):
    result, imported = sdft_command(tmp_path, "fit", "--help")
    assert result.returncode == 0 and "--trainer.max_steps MAX_STEPS" in result.stdout
    assert "--model.help CLASS lists a class's options" in " ".join(result.stdout.split()) and imported == []
    result, imported = sdft_command(tmp_path, "fit", "--config", "configs/quickstart.yaml", "--print_config")
    assert result.returncode == 0 and imported == []
    assert yaml.safe_load(result.stdout)["model"]["init_args"]["rank"] == 8


def test_the_schema_is_extracted_from_the_code():
    from sdft.config.extraction import build_schema, schema_text
    from sdft.config.schema import SCHEMA_FILE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        current = schema_text(build_schema())
    assert SCHEMA_FILE.read_text(encoding="utf-8") == current, STALE_SCHEMA


def answers(argv: list[str], capsys) -> tuple[str, str | None]:
    """What the schema answers (before the imports) and what the real parser answers, each ``("refused", message)``,
    ``("printed", config)`` or ``("deferred", None)`` (the schema leaves the line to the parser)."""
    from sdft.config.preflight import preflight
    from sdft.config.schema import load_schema
    from sdft.lightning_cli import sdft_cli

    assert load_schema() is not None, STALE_SCHEMA
    answered = []
    for parse in (preflight, sdft_cli):
        try:
            printed = parse(argv)
            answered.append(("printed", printed) if isinstance(printed, str) else ("deferred", None))
        except UserError as error:
            answered.append(("refused", str(error)))
        except SystemExit as exit_info:
            assert exit_info.code == 0
            answered.append(("printed", capsys.readouterr().out))
    return answered[0], answered[1]


@pytest.mark.parametrize("config", CONFIGS, ids=[str(config) for config in CONFIGS])
def test_every_shipped_config_prints_the_same_before_and_after_the_imports(config, capsys):
    early, parsed = answers(["fit", "--config", str(config), "--print_config"], capsys)
    assert early == parsed and early[0] == "printed"


@pytest.mark.parametrize(
    "option",
    [
        "--model.init_args.rank=4",
        "--model.init_args.alpha=8",
        "--model.init_args.optimizer.init_args.lr=1e-4",
        "--model.init_args.optimizer=torch.optim.SGD",
        "--model=sdft.methods.FullFineTuner",
        "--model.init_args.family=Flux",
        "--model.rank=4",
        "--model.init_args.target_modules=[to_q, to_k]",
        "--model.init_args.speed.offload_blocks=all",
        "--model.init_args.init_lora=null",
        "--trainer.precision=32",
        "--trainer.devices=1",
        "--trainer.logger=false",
        "--trainer.val_check_interval=0.5",
        "--data.init_args.buckets=[[64, 32], [32, 64]]",
        "--seed_everything=true",
    ],
)
def test_what_the_parser_takes_the_schema_takes_and_prints_alike(option, capsys):
    early, parsed = answers(["fit", "--config", "configs/quickstart_tiny.yaml", option, "--print_config"], capsys)
    assert early == parsed and early[0] == "printed"


@pytest.mark.parametrize(
    "option",
    [
        "--model.init_args.rnak=8",
        "--model.init_args.rank=eight",
        "--model.init_args.adapter=lorra",
        "--model.init_args.speed.frozen_dtype=bf16",
        "--model.init_args.optimizer.init_args.lrr=0.1",
        "--model.init_args.target_blocks=[a]",
        "--model.init_args.family.init_args.revison=x",
        "--model=sdft.methods.Nope",
        "--model.init_args.family=Fluxx",
        "--data.init_args.batch_size=two",
        "--trainer.max_stpes=5",
        "--trainer.precision=bf17",
        "--trainer.callbacks=[{class_path: sdft.callbacks.Nope}]",
        "--seed_everything=abc",
    ],
)
def test_what_the_schema_refuses_the_parser_refuses(option, capsys):
    early, parsed = answers(["fit", "--config", "configs/quickstart_tiny.yaml", option, "--print_config"], capsys)
    assert early[0] == "refused" and parsed[0] == "refused", (early, parsed)


def test_a_class_the_schema_does_not_list_is_left_to_the_parser_and_still_one_line(capsys):
    plugin = '--trainer.plugins={"class_path": "lightning.fabric.plugins.environments.SLURMEnvironment", "init_args": '
    plugin += '{"bogus": 1}}'
    early, parsed = answers(["fit", "--config", "configs/quickstart_tiny.yaml", plugin, "--print_config"], capsys)
    assert early == ("deferred", None) and parsed[0] == "refused"
    assert "bogus" in parsed[1] and len(parsed[1].splitlines()) == 1, parsed[1]


def test_without_the_schema_lightning_refusing_a_name_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sdft.config.preflight.load_schema", lambda: None)
    error = config_error(capsys, tmp_path, "--trainer.strategy=ddpp")
    assert error.strip().startswith("sdft: error: trainer: You selected an invalid strategy name: `strategy='ddpp'`")
    assert len(error.strip().splitlines()) == 1


def test_sdft_debug_shows_the_traceback_of_a_mistake_found_before_the_imports(monkeypatch):
    monkeypatch.setenv("SDFT_DEBUG", "1")
    with pytest.raises(UserError, match="unknown key"):
        main(["fit", "--config", "configs/quickstart_tiny.yaml", "--model.init_args.rnak=8"])
