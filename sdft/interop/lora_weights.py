"""Adapter weights independent of any file format: one layer per adapted module, by module path.

A module path is ``<pipeline component>.<module name in the loaded model>``, e.g.
``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` or
``text_encoder.encoder.layers.0.self_attn.q_proj`` (the names of the installed transformers, which may lack
``text_model.``). A layer is a :class:`LoraLayer` (LoRA, or DoRA with its magnitude), or a LyCORIS
:class:`~sdft.interop.lycoris.LokrLayer` / :class:`~sdft.interop.lycoris.LohaLayer`. Readers and writers of every
format (diffusers / peft, kohya / A1111 / ComfyUI / LyCORIS) convert to and from this, and merging, resizing and
extraction work on it. :func:`adapted_weight` is the weight a consumer computes from a layer and the base weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdft.interop.lycoris import LOHA_NAMES, LOKR_NAMES, LohaLayer, LokrLayer, decomposed_weight


@dataclass(frozen=True)
class LoraLayer:
    """One LoRA module: ``W + (alpha / rank) * up @ down``; with a magnitude, DoRA's decomposition of that weight
    (see :func:`sdft.interop.lycoris.decomposed_weight`).

    Attributes:
        down: (rank, in_features), or (rank, in_channels, kh, kw) for a convolution.
        up: (out_features, rank), or (out_channels, rank, 1, 1) for a convolution.
        alpha: the trained alpha; the update is scaled by ``alpha / rank``.
        magnitude: DoRA's magnitude: (out,) as peft trains it, or a kohya ``dora_scale``; None for plain LoRA.
    """

    down: Tensor
    up: Tensor
    alpha: float
    magnitude: Tensor | None = None

    def __post_init__(self) -> None:
        if self.down.shape[0] != self.up.shape[1]:
            raise ValueError(f"LoRA down {tuple(self.down.shape)} and up {tuple(self.up.shape)} differ in rank")

    @property
    def kind(self) -> str:
        return "lora" if self.magnitude is None else "dora"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def out_features(self) -> int:
        return self.up.shape[0]

    def fits(self, shape: torch.Size) -> bool:
        """Whether the layer adapts a weight of ``shape``."""
        return self.up.shape[0] == shape[0] and tuple(self.down.shape[1:]) == tuple(shape[1:])

    def delta(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The low-rank update ``scale * up @ down`` in the module weight's shape (a convolution's kernel included)."""
        down, up = self.down.to(dtype), self.up.to(dtype)
        product = up.flatten(1) @ down.flatten(1)
        if down.dim() == 4:
            return (product * self.scale).reshape(up.shape[0], *down.shape[1:])
        return product * self.scale

    def update(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
        """The low-rank update in the weight's ``shape``."""
        return self.delta(dtype).reshape(shape)

    def cast(self, dtype: torch.dtype) -> LoraLayer:
        """The same layer with its tensors in ``dtype``."""
        magnitude = None if self.magnitude is None else self.magnitude.to(dtype)
        return LoraLayer(self.down.to(dtype), self.up.to(dtype), self.alpha, magnitude)


#: one adapted module of any kind
AdapterLayer = LoraLayer | LokrLayer | LohaLayer
#: what each adapter kind is called in words
KIND_NAMES = {"lora": "LoRA", "dora": "DoRA", "lokr": "LoKr", "loha": "LoHa"}


def adapted_weight(layer: AdapterLayer, weight: Tensor) -> Tensor:
    """The weight a layer makes of the base ``weight`` (float32): ``W + update``, or DoRA's decomposition of it
    where the layer has a magnitude (the formula ComfyUI and LyCORIS apply)."""
    update = layer.update(weight.shape)
    if layer.magnitude is None:
        return weight.float() + update
    return decomposed_weight(weight, update, layer.magnitude)


#: module path -> layer
LoraWeights = dict[str, AdapterLayer]


def lora_weights_of(components: Mapping[str, nn.Module], adapter: str = "default") -> LoraWeights:
    """The layers of live peft-adapted modules (what a :class:`sdft.methods.LoRAFineTuner` trains): peft's LoRA and
    DoRA layers as :class:`LoraLayer`, its LoKr and LoHa layers as LyCORIS layers with the same update.

    Args:
        components: pipeline component name -> module carrying peft adapter layers (e.g. ``{"unet": unet}``).
        adapter: the peft adapter name.
    """
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer as PeftLoraLayer

    weights: LoraWeights = {}
    for component, module in components.items():
        for name, layer in module.named_modules():
            if isinstance(layer, PeftLoraLayer) and adapter in layer.lora_A:
                weights[f"{component}.{name}"] = peft_lora_layer(layer, adapter)
            elif isinstance(layer, LoKrLayer | LoHaLayer) and adapter in layer.r:
                weights[f"{component}.{name}"] = peft_lycoris_layer(layer, adapter)
    return weights


def peft_lora_layer(layer: nn.Module, adapter: str) -> LoraLayer:
    """A peft LoRA layer's adapter (its magnitude too, for DoRA)."""
    magnitudes = layer.lora_magnitude_vector
    return LoraLayer(
        down=layer.lora_A[adapter].weight.detach().clone(),
        up=layer.lora_B[adapter].weight.detach().clone(),
        alpha=float(layer.scaling[adapter] * layer.r[adapter]),
        magnitude=magnitudes[adapter].weight.detach().clone() if adapter in magnitudes else None,
    )


def peft_lycoris_layer(layer: nn.Module, adapter: str) -> LokrLayer | LohaLayer:
    """A peft LoKr or LoHa layer's adapter, its update the same: peft's ``alpha / r`` is the layer's alpha over its
    rank, or (a LoKr of two whole factors, which LyCORIS does not scale) carried by ``w1``."""
    from peft.tuners.lokr import LoKrLayer

    lokr = isinstance(layer, LoKrLayer)
    tensors = {
        name: getattr(layer, name)[adapter].detach().clone()
        for name in (LOKR_NAMES if lokr else LOHA_NAMES)
        if adapter in getattr(layer, name)
    }
    scaling = float(layer.scaling[adapter])
    if not lokr:
        return LohaLayer(tensors, scaling * layer.r[adapter])
    found = LokrLayer(tensors, scaling * layer.r[adapter])
    return found if found.rank is not None else found.with_factor(scaling)


@torch.no_grad()
def load_lora_weights_into(components: Mapping[str, nn.Module], weights: LoraWeights, adapter: str = "default") -> None:
    """Copy layers into live peft-adapted modules of the same kind and shapes (the inverse of
    :func:`lora_weights_of`).

    Each layer's tensors go into the adapter of its module, the first factor (LoRA's up, LoKr's ``w1``, LoHa's
    ``w1_a``) rescaled so that the module's own ``alpha / rank`` gives the layer's update; a DoRA magnitude is
    copied as it is.

    Args:
        components: pipeline component name -> module carrying peft adapter layers.
        weights: the layers by module path; each module must carry ``adapter`` with the layer's kind and shapes.
        adapter: the peft adapter name.
    """
    for path, layer in weights.items():
        component, _, name = path.partition(".")
        module = components[component].get_submodule(name)
        factor = layer.scale / module.scaling[adapter]
        if isinstance(layer, LoraLayer):
            if module.r[adapter] != layer.rank:
                raise ValueError(f"{path} has rank {module.r[adapter]}, its LoRA weights {layer.rank}")
            module.lora_A[adapter].weight.copy_(layer.down)
            module.lora_B[adapter].weight.copy_(layer.up * factor)
            if layer.magnitude is not None:
                module.lora_magnitude_vector[adapter].weight.copy_(layer.magnitude.reshape(-1))
            continue
        scaled = layer.with_factor(factor)
        for tensor_name, tensor in scaled.tensors.items():
            getattr(module, tensor_name)[adapter].copy_(tensor)


def diffusers_state_dict(weights: LoraWeights, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The peft-layout state dict diffusers' ``load_lora_weights`` takes (``<module path>.lora_A.weight`` /
    ``.lora_B.weight``, and a DoRA's ``.lora_magnitude_vector``), each layer's scale folded into ``lora_B`` so that
    it loads at alpha = rank, as diffusers reads a file without alphas.

    Args:
        weights: module path -> LoRA or DoRA layer (a DoRA's magnitude per output row, as diffusers reads it).
        dtype: the tensors' dtype; each layer's own when None.
    """
    tensors = {}
    for module, layer in weights.items():
        if not diffusers_loads(layer):
            raise ValueError(f"{module}: a {KIND_NAMES[layer.kind]} layer that diffusers' LoRA loader cannot take")
        dtype_of = dtype or layer.up.dtype
        tensors[f"{module}.lora_A.weight"] = layer.down.to(dtype_of).contiguous()
        tensors[f"{module}.lora_B.weight"] = (layer.up.float() * layer.scale).to(dtype_of).contiguous()
        if layer.magnitude is not None:
            tensors[f"{module}{MAGNITUDE}"] = layer.magnitude.reshape(-1).to(dtype_of).contiguous()
    return tensors


#: the key suffix of a DoRA magnitude in diffusers files. peft writes ``.lora_magnitude_vector`` and reads either;
#: transformers' adapter loader (diffusers' path for text encoders) finds it only with ``.weight``.
MAGNITUDE = ".lora_magnitude_vector.weight"


def magnitudes_as_weights(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A peft state dict with each DoRA magnitude key ending in :data:`MAGNITUDE`, which every loader finds."""
    return {key + ".weight" if key.endswith(".lora_magnitude_vector") else key: value for key, value in state.items()}


def rows_magnitude(layer: AdapterLayer) -> bool:
    """Whether a layer has no magnitude or one value per output row (peft's DoRA), not one per input column."""
    return layer.magnitude is None or layer.magnitude.numel() == layer.out_features == layer.magnitude.shape[0]


def diffusers_loads(layer: AdapterLayer) -> bool:
    """Whether diffusers' ``load_lora_weights`` can load the layer: LoRA, or DoRA with its magnitude per output row."""
    return isinstance(layer, LoraLayer) and rows_magnitude(layer)
