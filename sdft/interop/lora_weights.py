"""LoRA weights independent of any file format: one :class:`LoraLayer` per adapted module, by module path.

A module path is ``<pipeline component>.<module name in the loaded model>``, e.g.
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` or
``text_encoder.encoder.layers.0.self_attn.q_proj`` (the names of the installed transformers, which may lack
``text_model.``). Readers and writers of every format (diffusers / peft, kohya / A1111 / ComfyUI) convert to and from
this, and merging, resizing and extraction work on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LoraLayer:
    """One adapted module: ``W + (alpha / rank) * up @ down``.

    Attributes:
        down: (rank, in_features), or (rank, in_channels, kh, kw) for a convolution.
        up: (out_features, rank), or (out_channels, rank, 1, 1) for a convolution.
        alpha: the trained alpha; the update is scaled by ``alpha / rank``.
    """

    down: Tensor
    up: Tensor
    alpha: float

    def __post_init__(self) -> None:
        if self.down.shape[0] != self.up.shape[1]:
            raise ValueError(f"LoRA down {tuple(self.down.shape)} and up {tuple(self.up.shape)} differ in rank")

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight update ``scale * up @ down`` in the module weight's shape (a convolution's kernel included)."""
        down, up = self.down.to(dtype), self.up.to(dtype)
        product = up.flatten(1) @ down.flatten(1)
        if down.dim() == 4:
            return (product * self.scale).reshape(up.shape[0], *down.shape[1:])
        return product * self.scale


#: module path -> layer
LoraWeights = dict[str, LoraLayer]


def lora_weights_of(components: Mapping[str, nn.Module], adapter: str = "default") -> LoraWeights:
    """The LoRA layers of live peft-adapted modules (what a :class:`sdft.methods.LoRAFineTuner` trains).

    Args:
        components: pipeline component name -> module carrying peft LoRA layers (e.g. ``{"unet": unet}``).
        adapter: the peft adapter name.
    """
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    weights: LoraWeights = {}
    for component, module in components.items():
        for name, layer in module.named_modules():
            if isinstance(layer, PeftLoraLayer) and adapter in layer.lora_A:
                rank = layer.r[adapter]
                weights[f"{component}.{name}"] = LoraLayer(
                    down=layer.lora_A[adapter].weight.detach().clone(),
                    up=layer.lora_B[adapter].weight.detach().clone(),
                    alpha=float(layer.scaling[adapter] * rank),
                )
    return weights


@torch.no_grad()
def load_lora_weights_into(components: Mapping[str, nn.Module], weights: LoraWeights, adapter: str = "default") -> None:
    """Copy LoRA weights into live peft-adapted modules (the inverse of :func:`lora_weights_of`).

    Each layer's down and up go into the adapter of its module, the up rescaled so that the module's own
    ``alpha / rank`` gives the layer's update ``scale * up @ down``.

    Args:
        components: pipeline component name -> module carrying peft LoRA layers.
        weights: the layers by module path; each module must carry ``adapter`` at the layer's rank.
        adapter: the peft adapter name.
    """
    for path, layer in weights.items():
        component, _, name = path.partition(".")
        module = components[component].get_submodule(name)
        if module.r[adapter] != layer.rank:
            raise ValueError(f"{path} has rank {module.r[adapter]}, its LoRA weights {layer.rank}")
        module.lora_A[adapter].weight.copy_(layer.down)
        module.lora_B[adapter].weight.copy_(layer.up * (layer.scale / module.scaling[adapter]))


def diffusers_state_dict(weights: LoraWeights, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The peft-layout state dict diffusers' ``load_lora_weights`` takes (``<module path>.lora_A.weight`` /
    ``.lora_B.weight``), each layer's scale folded into ``lora_B`` so that it loads at alpha = rank, as diffusers reads
    a file without alphas.

    Args:
        weights: module path -> layer.
        dtype: the tensors' dtype; each layer's own when None.
    """
    tensors = {}
    for module, layer in weights.items():
        dtype_of = dtype or layer.up.dtype
        tensors[f"{module}.lora_A.weight"] = layer.down.to(dtype_of).contiguous()
        tensors[f"{module}.lora_B.weight"] = (layer.up.float() * layer.scale).to(dtype_of).contiguous()
    return tensors
