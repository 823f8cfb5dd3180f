"""Data parallelism equals one process: two CPU processes (gloo) with half the batch each, under DDP or sharded
(FSDP2, :class:`sdft.sharding.ShardedStrategy`), log the same per-step losses, train the same weights and write one
export, with prior preservation and class images generated across the ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from families import FAMILY_CASES, FamilyCase
from lightning.pytorch import Callback
from PIL import Image
from safetensors.torch import load_file

from sdft.assets import resolve
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


#: previews mid-run: sampling between steps (the whole model on rank 0 alone) must leave training unchanged
PREVIEW = {
    "class_path": "sdft.callbacks.SamplePreview",
    "init_args": {"prompts": ["a toy"], "every_n_steps": 2, "num_images_per_prompt": 1, "num_inference_steps": 2},
}
#: the trainer.strategy of each way of running
STRATEGIES = {
    "single": "auto",
    "ddp": "ddp_spawn",
    "sharded": {"class_path": "sdft.sharding.ShardedStrategy"},
    "ddp_launched": "ddp",  # the other rank started by running the command again, as under torchrun
}
#: strategies whose launcher runs the command again for the other rank: they run as an ``sdft fit`` subprocess
LAUNCHED = ("sharded", "ddp_launched")


class PoisonGradients(Callback):
    """Fills one rank's first gradient with nan before the optimizer step that makes ``step`` steps (after DDP
    has averaged the gradients), as an overflow on one device would."""

    def __init__(self, step: int, rank: int = 0) -> None:
        self.step, self.rank = step, rank

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 == self.step and trainer.global_rank == self.rank:
            next(param for param in pl_module.parameters() if param.grad is not None).grad.fill_(float("nan"))


@pytest.fixture(autouse=True)
def built_assets() -> None:
    """The built-in model and photos, built before two ranks would race to build them."""
    for name in ("builtin:tiny-sd1", "builtin:toy-subject"):
        resolve(name)


def write_config(folder: Path, method: str, strategy: str, family: dict = FAMILY, **trainer) -> Path:
    """A 3-step run of ``method`` with prior preservation, on one CPU process or two, the global batch fixed."""
    devices = 1 if strategy == "single" else 2
    model, prompt = METHODS[method]
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": devices,
            "strategy": STRATEGIES[strategy],
            "max_steps": STEPS,
            "log_every_n_steps": 1,
            "limit_val_batches": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(folder), "name": "run"},
            },
            "callbacks": [PREVIEW],
            **trainer,
        },
        "model": {
            "class_path": model["class_path"],
            "init_args": {**model["init_args"], "family": family, "optimizer": OPTIMIZER},
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


def run(folder: Path, method: str, strategy: str, *options: str, family: dict = FAMILY, **trainer) -> Path:
    """Fit into ``folder``: in this process, or for a strategy whose launcher starts the other rank by running the
    command again (``LAUNCHED``) as an ``sdft fit`` subprocess."""
    folder.mkdir(exist_ok=True)
    command = ["fit", "--config", str(write_config(folder, method, strategy, family, **trainer)), *options]
    if strategy in LAUNCHED:
        subprocess.run([sys.executable, "-m", "sdft.cli", *command], check=True, env=os.environ.copy())
    else:
        main(command)
    return folder / "run" / "version_0"


def exported_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file of the final export, keyed by file and tensor name."""
    files = sorted((run_dir / "final").rglob("*.safetensors"))
    assert files, "no export"
    return {f"{path.relative_to(run_dir)}:{key}": value for path in files for key, value in load_file(path).items()}


def class_images(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(path)) for path in sorted((folder / "class-images").glob("*.png"))]


def check_equal_runs(
    tmp_path: Path, method: str, strategy: str, family: dict = FAMILY, tolerance: float = 1e-5
) -> None:
    single = run(tmp_path / "single", method, "single", family=family)
    parallel = run(tmp_path / strategy, method, strategy, family=family)
    runs = (("single", single), ("parallel", parallel))
    losses = {name: dict(read_curves(folder)["train/loss"]) for name, folder in runs}
    assert sorted(losses["parallel"]) == list(range(STEPS))
    assert losses["parallel"] == pytest.approx(losses["single"], rel=1e-5)
    prior = {name: dict(read_curves(folder)["train/prior_loss"]) for name, folder in runs}
    assert prior["parallel"] == pytest.approx(prior["single"], rel=1e-5)
    check_equal_exports(parallel, single, tolerance)
    # one run folder, one export, the previews; the class images the two ranks made are the ones one process makes
    assert sorted(path.name for path in (tmp_path / strategy / "run").iterdir()) == ["version_0"]
    previews = sorted(path.name for path in (parallel / "samples").iterdir())
    assert previews == ["step_000000", "step_000002", "step_000003"]
    generated = class_images(tmp_path / strategy)
    assert len(generated) == 3
    for made, alone in zip(generated, class_images(tmp_path / "single"), strict=True):
        assert np.array_equal(made, alone)


def check_equal_exports(run_dir: Path, expected_run_dir: Path, tolerance: float = 1e-5) -> None:
    trained, expected = exported_tensors(run_dir), exported_tensors(expected_run_dir)
    assert trained.keys() == expected.keys()
    for key, value in expected.items():
        # per tensor, against its largest entry: full fine-tuning sums many more rounding steps than a LoRA
        assert (trained[key] - value).abs().max() <= tolerance * value.abs().max(), key


# DDP is the fast representative of the multi-process runs; the sharded twin runs with the slow tests
@pytest.mark.parametrize("strategy", ["ddp", pytest.param("sharded", marks=pytest.mark.slow)])
def test_lora_on_two_processes_equals_one(strategy, tmp_path):
    check_equal_runs(tmp_path, "lora", strategy)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "sharded"])
@pytest.mark.parametrize("method", ["full", "textual_inversion"])
def test_two_processes_equal_one(method, strategy, tmp_path):
    check_equal_runs(tmp_path, method, strategy)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "sharded"])
def test_a_transformer_family_with_t5_on_two_processes_equals_one(strategy, tmp_path):
    """Flux.1: the transformer's meta-device build on rank 1 and T5 (whose dropout must stay off) scale the same."""
    resolve("builtin:tiny-flux")
    flux = {"class_path": "sdft.families.Flux", "init_args": {"pretrained_model_name_or_path": "builtin:tiny-flux"}}
    check_equal_runs(tmp_path, "lora", strategy, flux, tolerance=5e-5)  # Flux's deeper sums round more


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "sharded"])
@pytest.mark.parametrize(
    ("family", "builtin"),
    [
        ("ZImage", "tiny-zimage"),
        ("Flux2Klein", "tiny-flux2-klein"),
        ("QwenImage", "tiny-qwen-image"),
        ("Flux2", "tiny-flux2-dev"),
    ],
)
def test_a_family_with_a_language_model_encoder_on_two_processes_equals_one(family, builtin, strategy, tmp_path):
    """Z-Image, FLUX.2 and Qwen-Image: conditioning by a language model (Z-Image's and Qwen-Image's padded, with their
    masks) scales the same."""
    resolve(f"builtin:{builtin}")
    chosen = {
        "class_path": f"sdft.families.{family}",
        "init_args": {"pretrained_model_name_or_path": f"builtin:{builtin}"},
    }
    check_equal_runs(tmp_path, "lora", strategy, chosen, tolerance=5e-5)


@pytest.mark.slow
def test_a_sharded_run_resumes_from_its_single_file_checkpoint(tmp_path):
    """Checkpoints of a sharded run hold the gathered trained tensors in one file; resuming from step 2 on two
    processes ends with the uninterrupted run's export."""
    checkpoints = {
        "callbacks": [
            PREVIEW,
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"every_n_train_steps": 2, "save_top_k": -1, "filename": "{step}"},
            },
        ]
    }
    whole = run(tmp_path / "whole", "full", "sharded", **checkpoints)
    checkpoint = whole / "checkpoints" / "step=2.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(key.startswith("family.unet.") for key in state)  # the trained UNet, gathered; no VAE
    resumed = run(tmp_path / "resumed", "full", "sharded", f"--ckpt_path={checkpoint}", **checkpoints)
    assert dict(read_curves(resumed)["train/loss"])[STEPS - 1] == pytest.approx(
        dict(read_curves(whole)["train/loss"])[STEPS - 1], rel=1e-5
    )
    check_equal_exports(resumed, whole)


@pytest.mark.parametrize("case", FAMILY_CASES, ids=lambda c: c.name)
def test_a_rank_that_receives_its_shards_reads_no_denoiser_weights(case: FamilyCase):
    """Ranks other than 0 of a sharded run build the denoiser from its config on the meta device: no rank but the
    first holds a whole copy of it (``shard_family`` then fills the shards from rank 0)."""
    family = case.family()
    family.load_denoiser_weights = False
    family.load()
    assert all(tensor.is_meta for tensor in [*family.denoiser.parameters(), *family.denoiser.buffers()])
    assert not any(parameter.is_meta for parameter in family.vae.parameters())
    loaded = case.family()
    loaded.load()
    assert type(family.denoiser) is type(loaded.denoiser)
    shapes = {name: tensor.shape for name, tensor in loaded.denoiser.state_dict().items()}
    assert {name: tensor.shape for name, tensor in family.denoiser.state_dict().items()} == shapes


@pytest.mark.slow
@pytest.mark.parametrize("strategy", LAUNCHED)
def test_sigterm_on_two_processes_saves_the_step_and_resumes_to_the_uninterrupted_run(strategy, tmp_path):
    """Both ranks get SIGTERM after step 2 (as a scheduler sends it): the ranks agree on the step, save it, exit 143,
    and ``--ckpt_path last`` continues to the uninterrupted run's losses and export."""
    whole = run(tmp_path / "whole", "lora", strategy)
    signal = {"class_path": "test_interruption.SendSignal", "init_args": {"number": 15, "step": 2}}
    folder = tmp_path / "interrupted"
    folder.mkdir()
    config = write_config(folder, "lora", strategy, callbacks=[PREVIEW, signal])
    environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    command = [sys.executable, "-m", "sdft.cli", "fit", "--config", str(config)]
    stopped = subprocess.run(command, env=environment, check=False, capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    interrupted = folder / "run" / "version_0"
    saved = [path.name for path in (interrupted / "checkpoints").glob("*.ckpt")]
    assert len(saved) == 1 and saved[0].endswith("step=2.ckpt"), saved  # Lightning's default name for the step
    write_config(folder, "lora", strategy, callbacks=[PREVIEW])  # the same run without the signal
    subprocess.run([*command, "--ckpt_path", "last"], env=environment, check=True)
    assert sorted(path.name for path in (folder / "run").iterdir()) == ["version_0"]
    losses = {
        name: dict(read_curves(run_dir)["train/loss"]) for name, run_dir in (("whole", whole), ("resumed", interrupted))
    }
    assert losses["resumed"][STEPS - 1] == pytest.approx(losses["whole"][STEPS - 1], rel=1e-5)
    check_equal_exports(interrupted, whole)


@pytest.mark.slow
def test_a_fault_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    """nonfinite: skip under DDP, a nan gradient on rank 1 alone: both ranks drop step 2, so rank 0's weights are
    those of one process that dropped it (had rank 0 stepped, its export would differ)."""

    def poisoned(rank: int) -> list[dict]:
        return [
            PREVIEW,
            {"class_path": "test_parallel_training.PoisonGradients", "init_args": {"step": 2, "rank": rank}},
        ]

    skip = "--model.init_args.nonfinite=skip"
    single = run(tmp_path / "single", "lora", "single", skip, callbacks=poisoned(0))
    parallel = run(tmp_path / "ddp", "lora", "ddp", skip, callbacks=poisoned(1))
    for run_dir in (single, parallel):
        assert (
            dict(read_curves(run_dir)["train/skipped_steps"])
            and max(value for _, value in read_curves(run_dir)["train/skipped_steps"]) == 1.0
        )
    losses = {
        name: dict(read_curves(run_dir)["train/loss"]) for name, run_dir in (("single", single), ("ddp", parallel))
    }
    assert losses["ddp"] == pytest.approx(losses["single"], rel=1e-5)
    check_equal_exports(parallel, single)


@pytest.mark.slow
def test_aspect_ratio_buckets_on_two_processes_equal_one(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, size in enumerate([(96, 64), (108, 72), (64, 64), (64, 96)]):
        Image.effect_noise(size, 40 + 10 * index).convert("RGB").save(photos / f"{index}.png")
    options = (f"--data.init_args.instance_dir={photos}", "--data.init_args.resolution=64")
    options += ("--data.init_args.buckets=16",)
    single = run(tmp_path / "single", "lora", "single", *options)
    parallel = run(tmp_path / "ddp", "lora", "ddp", *options)
    losses = {name: dict(read_curves(folder)["train/loss"]) for name, folder in (("1", single), ("2", parallel))}
    assert sorted(losses["2"]) == list(range(STEPS))
    assert losses["2"] == pytest.approx(losses["1"], rel=1e-5)
    check_equal_exports(parallel, single)
