"""Compare the methods' footprints: what each trains on Stable Diffusion 1.5's shapes, and step time, checkpoint and
export sizes measured on the tiny model; write reports/methods_benchmark.md.

    uv run python scripts/benchmark_methods.py [--steps 20]

SD 1.5 shapes are built on the ``meta`` device (no weights, no download): the trained-parameter counts and the
checkpoint sizes they imply (fp32 weights plus AdamW's two moments) are exact for the real model. The tiny-model
figures are measured: seconds per optimizer step on this machine (batch 2 at 32 px, after two warm-up steps),
and the sizes of a real checkpoint and export.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path

import torch
from benchmark_quickstart import machine, versions
from diffusers import UNet2DConditionModel
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdft import assets
from sdft.data import SubjectDataModule
from sdft.data.toy import write_toy_class
from sdft.families import StableDiffusion
from sdft.files import write_text_atomic
from sdft.methods import DiffusionFineTuner, FullFineTuner, LoRAFineTuner, PivotalTuning, TextualInversion

ROOT = Path(__file__).resolve().parents[1]

#: SD 1.5's UNet (diffusers config of stable-diffusion-v1-5) and CLIP ViT-L/14 text encoder
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_TEXT = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)

#: method -> (class, its options); prior preservation is a data matter and does not change the footprint
METHODS = {
    "LoRA r16 (UNet)": (LoRAFineTuner, {"rank": 16}),
    "LoRA r16 (UNet + text encoder)": (LoRAFineTuner, {"rank": 16, "train_text_encoder": True}),
    "DreamBooth (full UNet)": (FullFineTuner, {}),
    "DreamBooth (full UNet + text encoder)": (FullFineTuner, {"train_text_encoder": True}),
    "textual inversion (1 vector)": (TextualInversion, {"placeholder_token": "<sks>", "initializer_token": "toy"}),
    "pivotal tuning (2 vectors + LoRA r16)": (
        PivotalTuning,
        {"placeholder_token": "<sks>", "initializer_token": "toy", "num_vectors": 2, "rank": 16},
    ),
}


def sd15_on_meta(method: type[DiffusionFineTuner], options: dict) -> DiffusionFineTuner:
    """The method on SD 1.5's UNet and text encoder built on the meta device (shapes only)."""
    family = StableDiffusion("stable-diffusion-v1-5 shapes")
    with torch.device("meta"):
        family.unet = UNet2DConditionModel(**SD15_UNET)
        family.text_encoder = CLIPTextModel(SD15_TEXT)
    family.tokenizer = CLIPTokenizer.from_pretrained(assets.resolve("builtin:tiny-sd1"), subfolder="tokenizer")
    family.requires_grad_(False)
    model = method(family, **options)
    model.configure_trainable()
    return model


def trained_numel(model: DiffusionFineTuner) -> int:
    return sum(tensor.numel() for tensor in model.trainable_state_dict().values())


class StepTimer(Callback):
    """Wall time of the optimizer steps after the warm-up ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.seconds = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.started = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.started


def measure_tiny(method: type[DiffusionFineTuner], options: dict, steps: int, root: Path, prior: bool) -> dict:
    """Train on the tiny model; return seconds per step, checkpoint and export sizes."""
    optimizer = lambda params: torch.optim.AdamW(params, lr=1e-3)  # noqa: E731
    tiny = {key: 4 if key == "rank" else value for key, value in options.items()}
    model = method(StableDiffusion("builtin:tiny-sd1"), optimizer=optimizer, **tiny)
    prompt = "a photo of <sks> toy" if "placeholder_token" in options else "a photo of sks toy"
    class_options = {"class_prompt": "a photo of a toy", "class_dir": str(root / "class"), "num_class_images": 8}
    data = SubjectDataModule(
        "builtin:toy-subject", prompt, resolution=32, batch_size=2, **(class_options if prior else {})
    )
    timer = StepTimer(warmup=2)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", every_n_train_steps=steps, filename="last")
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps + 2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer, checkpoint],
    )
    trainer.fit(model, datamodule=data)
    model.export(root / "export")
    export_bytes = sum(path.stat().st_size for path in (root / "export").rglob("*") if path.is_file())
    return {
        "seconds_per_step": timer.seconds / steps,
        "checkpoint_bytes": next((root / "checkpoints").glob("*.ckpt")).stat().st_size,
        "export_bytes": export_bytes,
    }


def size(num_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if num_bytes < 1000 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    raise AssertionError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per method on the tiny model")
    steps = parser.parse_args().steps
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        write_toy_class(Path(scratch) / "class", num_images=8, size=64, seed=1)
        for name, (method, options) in METHODS.items():
            numel = trained_numel(sd15_on_meta(method, options))
            root = Path(scratch) / name.replace(" ", "_")
            root.mkdir()
            (root / "class").symlink_to(Path(scratch) / "class")
            tiny = measure_tiny(method, options, steps, root, prior=method is not TextualInversion)
            rows.append((name, numel, tiny))
    date = datetime.date.today().isoformat()
    lines = [
        "# Methods: what trains and what it costs",
        "",
        f"Measured {date} on {machine()}; {versions()}.",
        "Command: `uv run python scripts/benchmark_methods.py`.",
        "",
        "SD 1.5 columns: trained tensors of each method on SD 1.5's UNet and CLIP ViT-L/14 text encoder (built on",
        "the meta device), and the checkpoint that implies (fp32 weights + AdamW's two moments; exports hold the",
        "weights alone, plus the frozen rest for a full pipeline). Tiny-model columns: measured on this machine,",
        f"{steps} optimizer steps of batch 2 at 32 px after two warm-up steps, with prior preservation (one class",
        "image per instance image) for all but textual inversion.",
        "",
        "| method | SD 1.5 trained parameters | SD 1.5 checkpoint | tiny: s/step | tiny: checkpoint | tiny: export |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, numel, tiny in rows:
        lines.append(
            f"| {name} | {numel:,} | {size(12 * numel)} | {tiny['seconds_per_step']:.3f} | "
            f"{size(tiny['checkpoint_bytes'])} | {size(tiny['export_bytes'])} |"
        )
    output = ROOT / "reports" / "methods_benchmark.md"
    write_text_atomic(output, "\n".join(lines) + "\n")
    print(output.read_text())


if __name__ == "__main__":
    main()
