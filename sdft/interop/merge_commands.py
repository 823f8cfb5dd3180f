"""The ``sdft merge`` and ``sdft extract`` commands: merge LoRAs, fuse a LoRA into its base model, merge whole
models, extract a LoRA from a fine-tuned model and its base, and resize a LoRA.

Models are diffusers folders (or ``builtin:tiny-*``); a model output is a diffusers folder, or an original-layout
single ``.safetensors`` file (SD 1.x/2.x, SDXL) when its name ends in ``.safetensors``. LoRA files are read in any
format sdft reads (diffusers, kohya / A1111 / ComfyUI, LyCORIS) and written as LoRAs in diffusers' or kohya's format.
The adapter kinds each command takes: ``merge loras`` and ``extract --resize`` LoRA, and LoKr and LoHa with a
``rank`` (turned into LoRAs by truncated SVD); ``merge fuse`` LoRA, DoRA, LoKr and LoHa. This module imports
only what parsing needs; the work is :mod:`sdft.interop.merge_operations`'.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdft.errors import UserError

if TYPE_CHECKING:
    import torch

Precision = Literal["float32", "float16", "bfloat16"]
LoraFormat = Literal["diffusers", "kohya"]


def torch_dtype(name: str | None) -> torch.dtype | None:
    """The torch dtype called ``name``; None for None (torch loads only when a command runs)."""
    import torch

    return None if name is None else getattr(torch, name)


def check_rank(rank: int | None, argument: str) -> None:
    """Refuse a rank below 1, naming the argument."""
    if rank is not None and rank < 1:
        raise UserError(f"{argument} must be a positive integer, got {rank}")


def check_lora_output(output: Path) -> None:
    """Refuse a LoRA output whose name does not end in ``.safetensors``."""
    if Path(output).suffix != ".safetensors":
        raise UserError(f"output: {output} must be a .safetensors file name for the LoRA")


class Merge:
    """Merge LoRAs, fuse a LoRA into its base model, or merge two or three whole models."""

    def loras(
        self,
        model: str,
        loras: list[str],
        output: Path,
        weights: list[float] | None = None,
        rank: int | None = None,
        format: LoraFormat = "diffusers",
        dtype: Precision = "float32",
    ) -> None:
        """Merge LoRAs into one: exactly, with their ranks side by side, or cut to one rank by truncated SVD.
        Takes LoRA files, and LoKr and LoHa files with a rank; a DoRA only fuses (merge fuse).

        Args:
            model: the base model the LoRAs were trained on (a diffusers folder or builtin:tiny-*).
            loras: the LoRA files (diffusers, kohya, ComfyUI, LyCORIS), as a list: '[a.safetensors,b.safetensors]'.
            output: the merged LoRA file (.safetensors).
            weights: one multiplier per LoRA; 1 for each when omitted.
            rank: the merged rank (truncated SVD of each module's summed update; prints the error); omitted:
                exact, the ranks concatenated (LoRA files only).
            format: the merged file's format: diffusers, or kohya (for ComfyUI, A1111, kohya sd-scripts).
            dtype: the dtype of the written tensors.
        """
        weights = [1.0] * len(loras) if weights is None else weights
        if not loras or len(weights) != len(loras):
            raise UserError(f"weights: give one weight per LoRA ({len(loras)} LoRAs), got {len(weights)}")
        check_rank(rank, "rank")
        check_lora_output(output)
        from sdft.interop.merge_operations import merge_lora_files

        files = [Path(lora) for lora in loras]
        path, errors = merge_lora_files(model, files, weights, rank, Path(output), format, torch_dtype(dtype))
        print(path)
        if rank is not None:
            print(errors.summary())

    def fuse(self, model: str, lora: Path, output: Path, scale: float = 1.0, dtype: Precision | None = None) -> None:
        """Fuse a LoRA, DoRA, LoKr or LoHa into its base model's weights; write a diffusers folder or a single-file
        checkpoint.

        Args:
            model: the LoRA's base model (a diffusers folder or builtin:tiny-*).
            lora: the adapter file (diffusers, kohya, ComfyUI, LyCORIS).
            output: a folder for a diffusers model, or a .safetensors name for an original-layout single file
                (SD 1.x/2.x, SDXL) that AUTOMATIC1111 and ComfyUI load.
            scale: the LoRA's strength (1 = as trained).
            dtype: the dtype of the written weights; omitted: the base model's.
        """
        from sdft.interop.merge_operations import fuse_lora_file

        print(fuse_lora_file(model, Path(lora), Path(output), scale, torch_dtype(dtype)))

    def models(
        self,
        model_a: str,
        model_b: str,
        output: Path,
        model_c: str | None = None,
        multiplier: float = 0.5,
        multipliers: dict[str, float] | None = None,
        dtype: Precision | None = None,
    ) -> None:
        """Merge whole models: weighted sum (1 - m) A + m B, or add-difference A + m (B - C) when model_c is given.

        Args:
            model_a: the first model (a diffusers folder); its tokenizers and scheduler are kept.
            model_b: the second model, of the same architecture.
            output: a folder for a diffusers model, or a .safetensors name for an original-layout single file
                (SD 1.x/2.x, SDXL).
            model_c: the model subtracted from model_b (add-difference), e.g. model_b's own base.
            multiplier: m for every component.
            multipliers: m per component, e.g. '{unet: 0.7, text_encoder: 0}'; 0 keeps model_a's component.
            dtype: the dtype of the written weights; omitted: model_a's.
        """
        from sdft.interop.merge_operations import merge_model_folders

        models = {"model_a": model_a, "model_b": model_b}
        if model_c is not None:
            models["model_c"] = model_c
        print(merge_model_folders(models, Path(output), multiplier, multipliers or {}, torch_dtype(dtype)))


def extract(
    base: str,
    output: Path,
    tuned: str | None = None,
    resize: Path | None = None,
    rank: int = 16,
    conv_rank: int | None = None,
    modules: Literal["attention", "linear"] = "attention",
    text_encoders: bool = False,
    min_difference: float = 1e-4,
    device: str | None = None,
    format: LoraFormat = "diffusers",
    dtype: Precision = "float32",
) -> None:
    """Extract a LoRA from a fine-tuned model and its base (truncated SVD of each weight's change), or resize a LoRA
    (or turn a LoKr or LoHa into a LoRA of the given rank; a DoRA is refused: fuse it first).

    Prints the relative Frobenius error of the result (overall and worst module).

    Args:
        base: the base model (a diffusers folder or builtin:tiny-*): the one tuned was fine-tuned from, or the one
            the LoRA to resize was trained on.
        output: the LoRA file to write (.safetensors).
        tuned: the fine-tuned model (a diffusers folder, e.g. a full fine-tune's export).
        resize: instead of tuned: a LoRA, LoKr or LoHa file to bring to the given rank.
        rank: the rank of the Linear modules (at most; exact when the change's rank is lower).
        conv_rank: also extract the denoiser's Conv2d modules, at this rank.
        modules: attention: the modules the family's LoRA adapts by default (attention projections; for Flux.1
            also the feed-forward layers); linear: every Linear layer.
        text_encoders: also extract the text encoders a LoRA may adapt (the CLIPs, never T5).
        min_difference: leave out modules whose weight changed by at most this fraction (Frobenius norm).
        device: where the SVDs run; cuda when available, else cpu.
        format: the written file's format: diffusers, or kohya (for ComfyUI, A1111, kohya sd-scripts).
        dtype: the dtype of the written tensors.
    """
    check_lora_output(output)
    check_rank(rank, "rank")
    check_rank(conv_rank, "conv_rank")
    if (tuned is None) == (resize is None):
        raise UserError("tuned, resize: give one, tuned (a fine-tuned model) or resize (a LoRA file)")
    from sdft.interop import merge_operations as operations

    if resize is not None:
        written = operations.resize_lora_file(base, Path(resize), rank, Path(output), format, torch_dtype(dtype))
    else:
        options = operations.ExtractionOptions(rank, conv_rank, modules, text_encoders, min_difference, device)
        written = operations.extract_lora_file(tuned, base, Path(output), options, format, torch_dtype(dtype))
    path, count, errors = written
    print(path)
    print(f"{count} modules; {errors.summary()}")
