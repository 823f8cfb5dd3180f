"""The files and folders a user gives, checked by their headers before any model loads: checkpoints that are not
sdft's, a LoRA where a checkpoint goes, a LoRA of another model, a run folder that cannot be written, a disk too
small for the first checkpoint; each is one line naming the file and the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from training import brief_fit

from sdft.checkpointing import check_checkpoint_file
from sdft.cli import main
from sdft.errors import UserError
from sdft.families import StableDiffusion
from sdft.interop.formats import check_lora_fits
from sdft.lightning_cli import configured_fit
from sdft.storage import check_run_storage


def sdft_error(capsys, *argv: str) -> str:
    """Run ``sdft argv``; assert it exits 2 with one line on stderr; return that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    return error


class Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code a malicious file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files given where a checkpoint goes, each with what its error says."""
    good = folder / "good.ckpt"
    torch.save({"global_step": 3, "state_dict": {"w": torch.ones(1000)}}, good)
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:2000])
    random = folder / "random.ckpt"
    random.write_bytes(os.urandom(5000))
    pickled = folder / "pickled.ckpt"
    torch.save({"global_step": 5, "state_dict": {}, "payload": Payload(folder / "pwned")}, pickled)
    lora = folder / "pytorch_lora_weights.safetensors"
    save_file({"unet.a.lora_A.weight": torch.zeros(4, 8)}, lora)
    foreign = folder / "weights.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    return {
        "truncated": (truncated, "cannot be read"),
        "random": (random, "cannot be read"),
        "pickled": (pickled, "holds objects that unpickling would build by running code"),
        "lora": (lora, "is a safetensors file (a LoRA or an exported model), not a checkpoint of sdft fit"),
        "foreign": (foreign, "is not a checkpoint of sdft fit (it holds no state_dict)"),
        "missing": (folder / "step=000040.ckpt", "not found"),
    }


@pytest.mark.parametrize("kind", ["truncated", "random", "pickled", "lora", "foreign", "missing"])
def test_a_file_that_is_no_checkpoint_of_sdft_fit_is_refused_by_its_header(kind, tmp_path):
    path, expected = bad_checkpoints(tmp_path)[kind]
    with pytest.raises(UserError) as error:
        check_checkpoint_file(path)
    message = str(error.value)
    assert message.startswith("--ckpt_path: ") and str(path) in message and expected in message
    assert "\n" not in message and not (tmp_path / "pwned").exists()
    check_checkpoint_file(tmp_path / "good.ckpt")
    check_checkpoint_file("last")


def test_sdft_export_of_a_lora_or_a_missing_checkpoint_is_one_line_before_the_run_is_read(capsys, tmp_path):
    files = bad_checkpoints(tmp_path)
    lora, missing = files["lora"][0], files["missing"][0]
    error = sdft_error(capsys, "export", str(lora))
    assert error.startswith(f"sdft: error: sdft export: {lora} is a safetensors file")
    error = sdft_error(capsys, "export", str(missing))
    assert error == (
        f"sdft: error: sdft export: checkpoint {missing} not found; pass an existing .ckpt file (e.g. from "
        "<run>/checkpoints/)"
    )
    error = sdft_error(capsys, "export", str(tmp_path / "good.ckpt"))  # a checkpoint outside a run folder
    assert "config.yaml not found: pass a run folder" in error


def test_a_lora_of_another_model_is_refused_from_its_file_and_the_models_configs(tiny_sdxl, tiny_sd1, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    pipeline.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, parameter in pipeline.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.ones_(parameter)
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(pipeline.unet), weight_name="sdxl.safetensors"
    )
    family = StableDiffusion(str(tiny_sd1))
    with pytest.raises(UserError) as error:
        check_lora_fits(tmp_path / "sdxl.safetensors", family, "model.init_args.init_lora")
    assert str(error.value).startswith(f"model.init_args.init_lora: {tmp_path / 'sdxl.safetensors'} adapts ")
    assert "it is a LoRA of another model family or layout" in str(error.value)
    assert not family.is_loaded
    check_lora_fits(None, family, "model.init_args.init_lora")
    check_lora_fits(tmp_path / "not-there.safetensors", family, "model.init_args.init_lora")  # named when read


def test_sdft_fit_refuses_a_bad_checkpoint_or_a_foreign_init_lora_in_one_line_before_loading(
    capsys, tmp_path, monkeypatch
):
    def refuse_loading(*arguments, **options):
        raise AssertionError("a model loaded")

    monkeypatch.setattr("sdft.families.StableDiffusion.load", refuse_loading)
    config = ["fit", "--config", "configs/quickstart_tiny.yaml", f"--trainer.logger.init_args.save_dir={tmp_path}"]
    files = bad_checkpoints(tmp_path)
    for kind in ("pickled", "lora", "truncated"):
        error = sdft_error(capsys, *config, f"--ckpt_path={files[kind][0]}")  # one line, nothing loaded
        assert error.startswith("sdft: error: --ckpt_path: ") and str(files[kind][0]) in error
    assert not (tmp_path / "pwned").exists()
    lora = tmp_path / "other.safetensors"
    save_file({"unet.down_blocks.9.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8)}, lora)
    error = sdft_error(capsys, *config, f"--model.init_args.init_lora={lora}")
    assert error.startswith(f"sdft: error: model.init_args.init_lora: {lora}")


def quickstart_fit(tmp_path: Path, save_dir: Path, *options: str):
    """The quickstart's trainer and fine-tuner writing under ``save_dir``, configured and checked, nothing loaded."""
    argv = ["--config", "configs/quickstart_tiny.yaml", f"--trainer.logger.init_args.save_dir={save_dir}", *options]
    trainer, model, _ = configured_fit(argv)
    return trainer, model


def test_a_run_folder_under_a_file_is_refused_before_any_model_loads(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs go")
    trainer, model = quickstart_fit(tmp_path, tmp_path / "runs" / "more")
    with pytest.raises(UserError) as error:
        check_run_storage(trainer, model)
    assert str(error.value) == (
        f"trainer.logger.init_args.save_dir: {tmp_path / 'runs' / 'more' / 'quickstart'} cannot be made, "
        f"{tmp_path / 'runs'} is a file; choose a folder in a writable place"
    )
    assert not model.family.is_loaded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: the probe cannot fail as root")
def test_a_run_folder_that_cannot_be_written_is_refused_by_a_probe_file(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    trainer, model = quickstart_fit(tmp_path, locked)
    with pytest.raises(UserError, match=r"trainer.logger.init_args.save_dir: .*locked/quickstart cannot be written"):
        check_run_storage(trainer, model)
    assert list(locked.iterdir()) == []


def test_a_disk_too_small_for_the_first_checkpoint_is_refused_and_the_probe_leaves_nothing(tmp_path, monkeypatch):
    trainer, model = quickstart_fit(tmp_path, tmp_path / "runs")
    check_run_storage(trainer, model)
    assert list(tmp_path.iterdir()) == []  # the probe file is gone, no folder was made
    usage = os.statvfs(tmp_path)

    class Usage:
        total, used, free = usage.f_blocks * usage.f_frsize, 0, 1000

    monkeypatch.setattr("sdft.storage.shutil.disk_usage", lambda path: Usage)
    with pytest.raises(UserError) as error:
        check_run_storage(trainer, model)
    message = str(error.value)
    assert message.startswith(f"trainer.logger.init_args.save_dir: {tmp_path / 'runs' / 'quickstart'} has ")
    assert "the first checkpoint and the export of this fit need about" in message and "free disk space" in message
    assert not model.family.is_loaded


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return brief_fit("configs/quickstart_tiny.yaml", tmp_path_factory.mktemp("run"), {}, evaluate=False, max_steps=2)


def test_a_full_disk_during_sdft_export_is_one_line_and_keeps_the_earlier_export(run, capsys, monkeypatch):
    checkpoint = run / "checkpoints" / "step=000002.ckpt"
    main(["export", str(checkpoint)])
    export = run / "exports" / "step=000002"
    before = {path.name: path.read_bytes() for path in export.iterdir()}

    def no_space(*arguments, **options) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", no_space)
    capsys.readouterr()
    error = sdft_error(capsys, "export", str(checkpoint))
    assert error == (
        f"sdft: error: cannot write {export} (No space left on device): free disk space and run it again; what was "
        "there is kept"
    )
    assert {path.name: path.read_bytes() for path in export.iterdir()} == before
    assert [path.name for path in export.parent.iterdir()] == ["step=000002"]
