"""DDP equals one process: two CPU processes (gloo) with half the batch each log the same per-step losses, train the
same weights and write one export, with prior preservation and class images generated across the ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from sdft.cli import main
from sdft.reporting.records import read_curves

STEPS = 3
GLOBAL_BATCH = 2
#: SGD's steps are linear in the gradients, so equal gradients give weights equal up to float rounding (AdamW divides
#: each gradient by its size and magnifies the all-reduce's rounding where a gradient is near zero)
OPTIMIZER = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5, "momentum": 0.9}}
FAMILY = {
    "class_path": "sdft.families.StableDiffusion",
    "init_args": {"pretrained_model_name_or_path": "builtin:tiny-sd1"},
}
#: each method's model section and instance prompt
METHODS = {
    "lora": ({"class_path": "sdft.methods.LoRAFineTuner", "init_args": {"rank": 4, "alpha": 4}}, "a photo of sks toy"),
    "full": ({"class_path": "sdft.methods.FullFineTuner", "init_args": {}}, "a photo of sks toy"),
    "textual_inversion": (
        {
            "class_path": "sdft.methods.TextualInversion",
            "init_args": {"placeholder_token": "<sks>", "initializer_token": "toy"},
        },
        "a photo of <sks> toy",
    ),
}


def write_config(folder: Path, method: str, devices: int) -> Path:
    """A 3-step run of ``method`` with prior preservation on ``devices`` CPU processes, the global batch fixed."""
    model, prompt = METHODS[method]
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "strategy": "ddp_spawn" if devices > 1 else "auto",
            "max_steps": STEPS,
            "log_every_n_steps": 1,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(folder), "name": "run"},
            },
            "callbacks": [],
        },
        "model": {
            "class_path": model["class_path"],
            "init_args": {**model["init_args"], "family": FAMILY, "optimizer": OPTIMIZER},
        },
        "data": {
            "class_path": "sdft.data.SubjectDataModule",
            "init_args": {
                "instance_dir": "builtin:toy-subject",
                "instance_prompt": prompt,
                "resolution": 32,
                "random_flip": 0.5,
                "batch_size": GLOBAL_BATCH // devices,
                "class_prompt": "a photo of a toy",
                "class_dir": str(folder / "class-images"),
                "num_class_images": 3,
                "class_generation_steps": 2,
                "class_generation_batch_size": 1,
            },
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(folder: Path, method: str, devices: int) -> Path:
    folder.mkdir()
    main(["fit", "--config", str(write_config(folder, method, devices))])
    return folder / "run" / "version_0"


def exported_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file of the final export, keyed by file and tensor name."""
    files = sorted((run_dir / "final").rglob("*.safetensors"))
    assert files, "no export"
    return {f"{path.relative_to(run_dir)}:{key}": value for path in files for key, value in load_file(path).items()}


def class_images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in sorted((folder / "class-images").glob("*.png"))]


def check_equal_runs(tmp_path: Path, method: str) -> None:
    single, ddp = run(tmp_path / "single", method, 1), run(tmp_path / "ddp", method, 2)
    losses = {name: dict(read_curves(folder)["train/loss"]) for name, folder in (("single", single), ("ddp", ddp))}
    assert sorted(losses["ddp"]) == list(range(STEPS))
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-5)
    prior = {name: dict(read_curves(folder)["train/prior_loss"]) for name, folder in (("single", single), ("ddp", ddp))}
    assert prior["ddp"] == pytest.approx(prior["single"], rel=1e-5)
    trained, expected = exported_tensors(ddp), exported_tensors(single)
    assert trained.keys() == expected.keys()
    for key, value in expected.items():
        # per tensor, against its largest entry: full fine-tuning sums many more rounding steps than a LoRA
        assert (trained[key] - value).abs().max() <= 1e-5 * value.abs().max(), key
    # one run folder, one export; the class images the two ranks made are the ones one process makes
    assert sorted(path.name for path in (tmp_path / "ddp" / "run").iterdir()) == ["version_0"]
    generated = class_images(tmp_path / "ddp")
    assert len(generated) == 3
    for made, alone in zip(generated, class_images(tmp_path / "single"), strict=True):
        assert np.array_equal(made, alone)


def test_ddp_lora_equals_one_process(tmp_path):
    check_equal_runs(tmp_path, "lora")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "textual_inversion"])
def test_ddp_equals_one_process(method, tmp_path):
    check_equal_runs(tmp_path, method)
