"""The weights ComfyUI computes from a kohya / LyCORIS file, written after ComfyUI's weight adapters
(``comfy/weight_adapter/lora.py``, ``lokr.py``, ``loha.py``: ``calculate_weight`` at strength 1, no DoRA) apart from
sdft's own formulas: the loader that LoKr and LoHa exports are checked against.

ComfyUI applies a module of the file to the weight of the original model's layer; where the original fuses several
diffusers projections (kohya names, :mod:`sdft.interop.kohya_names`) the parts' weights are stacked first, and the
halves of a swapped module exchanged, then split back into the diffusers modules. A ``lycoris_`` module adapts its
diffusers module's rows of that layer alone.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file
from torch import Tensor

from sdft.interop.kohya_names import kohya_names


def lokr_weight(weight: Tensor, tensors: dict[str, Tensor], alpha: Tensor | None) -> Tensor:
    """``comfy/weight_adapter/lokr.py``: the rank is that of the last split factor; no split factor, no alpha."""
    dim = None
    w1 = tensors.get("lokr_w1")
    if w1 is None:
        dim = tensors["lokr_w1_b"].shape[0]
        w1 = tensors["lokr_w1_a"] @ tensors["lokr_w1_b"]
    w2 = tensors.get("lokr_w2")
    if w2 is None:
        dim = tensors["lokr_w2_b"].shape[0]
        if "lokr_t2" in tensors:
            core, a, b = tensors["lokr_t2"], tensors["lokr_w2_a"], tensors["lokr_w2_b"]
            w2 = torch.einsum("i j k l, j r, i p -> p r k l", core, b, a).contiguous()  # as torch.kron needs
        else:
            w2 = tensors["lokr_w2_a"] @ tensors["lokr_w2_b"]
    if w2.dim() == 4:
        w1 = w1.unsqueeze(2).unsqueeze(2)
    scale = float(alpha) / dim if alpha is not None and dim is not None else 1.0
    return weight + scale * torch.kron(w1, w2).reshape(weight.shape)


def loha_weight(weight: Tensor, tensors: dict[str, Tensor], alpha: Tensor | None) -> Tensor:
    """``comfy/weight_adapter/loha.py``: ``alpha / w1_b.shape[0]`` times the Hadamard product."""
    scale = float(alpha) / tensors["hada_w1_b"].shape[0] if alpha is not None else 1.0
    products = []
    for index in (1, 2):
        a, b = tensors[f"hada_w{index}_a"], tensors[f"hada_w{index}_b"]
        if f"hada_t{index}" in tensors:
            products.append(torch.einsum("i j k l, j r, i p -> p r k l", tensors[f"hada_t{index}"], b, a))
        else:
            products.append(a @ b)
    return weight + scale * (products[0] * products[1]).reshape(weight.shape)


def lora_weight(weight: Tensor, tensors: dict[str, Tensor], alpha: Tensor | None) -> Tensor:
    """``comfy/weight_adapter/lora.py``: ``alpha / rank * up @ down``."""
    up, down = tensors["lora_up.weight"], tensors["lora_down.weight"]
    scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
    return weight + scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


def comfyui_weight(weight: Tensor, tensors: dict[str, Tensor], alpha: Tensor | None) -> Tensor:
    """The weight ComfyUI makes of ``weight`` with one module's tensors (by key suffix) and alpha."""
    if "lokr_w1" in tensors or "lokr_w1_a" in tensors:
        return lokr_weight(weight, tensors, alpha)
    if "hada_w1_a" in tensors:
        return loha_weight(weight, tensors, alpha)
    return lora_weight(weight, tensors, alpha)


@torch.no_grad()
def apply_comfyui(pipeline: DiffusionPipeline, path: Path, components: tuple[str, ...]) -> None:
    """Change ``pipeline``'s weights as ComfyUI applies the kohya / LyCORIS file ``path`` to the original model.

    Args:
        pipeline: a stock diffusers pipeline of the file's base model.
        path: the file.
        components: the pipeline components a file may adapt (the family's ``capabilities.lora_components``).
    """
    state = {key: value.float() for key, value in load_file(path).items()}
    modules = {name: getattr(pipeline, name) for name in components}
    names = kohya_names(type(pipeline), modules)
    for name in dict.fromkeys(key.split(".")[0] for key in state):
        module = names.readable[name]
        tensors = {key.split(".", 1)[1]: value for key, value in state.items() if key.split(".")[0] == name}
        alpha = tensors.pop("alpha", None)
        layers = [modules[part.split(".")[0]].get_submodule(part.split(".", 1)[1]) for part in module.parts]
        weight = torch.cat([layer.weight.float() for layer in layers])
        if module.swapped:
            weight = torch.cat(weight.chunk(2)[::-1])
        weight = comfyui_weight(weight, tensors, alpha)
        if module.swapped:
            weight = torch.cat(weight.chunk(2)[::-1])
        for layer, part in zip(layers, weight.split([layer.weight.shape[0] for layer in layers]), strict=True):
            layer.weight.copy_(part)
