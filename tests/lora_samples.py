"""Random LoRAs on the tiny models, and diffusers-format files of them that carry their alpha (as sdft's own
LoRA export writes), for the merge, fuse and extraction tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sdft.interop.lora_weights import LoraLayer, LoraWeights
from sdft.interop.model_folders import ModelFolder


def random_lora(
    folder: ModelFolder,
    targets: dict[str, tuple[str, ...]],
    rank: int,
    alpha: float,
    seed: int,
    size: float = 0.3,
) -> LoraWeights:
    """A LoRA with Gaussian factors on the Linear (and Conv2d) modules of ``folder`` whose names end with the
    given suffixes, per component.

    Args:
        folder: the base model.
        targets: component -> module-name suffixes, e.g. ``{"unet": ("to_q", "to_v")}``.
        rank: every layer's rank.
        alpha: every layer's alpha.
        seed: the factors are a function of this seed.
        size: the factors' standard deviation.
    """
    generator = torch.Generator().manual_seed(seed)
    lora: LoraWeights = {}
    for component, suffixes in targets.items():
        for name, module in folder.load(component).named_modules():
            if not name.endswith(suffixes) or not isinstance(module, nn.Linear | nn.Conv2d):
                continue
            out_dim, *rest = module.weight.shape
            down = torch.randn(rank, *rest, generator=generator) * size
            up = torch.randn(out_dim, rank, *([1, 1] if len(rest) == 3 else []), generator=generator) * size
            lora[f"{component}.{name}"] = LoraLayer(down=down, up=up, alpha=alpha)
    return lora


def write_lora_with_alpha(lora: LoraWeights, directory: Path, pipeline_class: type, rank: int, alpha: float) -> Path:
    """Save ``lora`` (one rank and alpha everywhere) with ``pipeline_class.save_lora_weights`` and its peft config in
    the header, the way sdft's LoRA export does; return the file."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for path, layer in lora.items():
        component, _, name = path.partition(".")
        layers.setdefault(f"{component}_lora_layers", {})[f"{name}.lora_A.weight"] = layer.down
        layers[f"{component}_lora_layers"][f"{name}.lora_B.weight"] = layer.up
    metadata = {}
    for key, tensors in layers.items():
        targets = sorted({name.removesuffix(".lora_A.weight") for name in tensors if name.endswith(".lora_A.weight")})
        config = {"r": rank, "lora_alpha": alpha, "target_modules": targets}
        metadata[key.replace("_lora_layers", "_lora_adapter_metadata")] = config
    pipeline_class.save_lora_weights(directory, **layers, **metadata, weight_name="lora.safetensors")
    return directory / "lora.safetensors"


def summed_update(loras: list[LoraWeights], weights: list[float], path: str) -> torch.Tensor:
    """``sum_i weights[i] * delta_i`` of one module over the LoRAs that adapt it."""
    return sum(weight * lora[path].delta() for lora, weight in zip(loras, weights, strict=True) if path in lora)
