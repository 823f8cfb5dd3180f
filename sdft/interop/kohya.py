"""kohya / A1111 / ComfyUI LoRA files (the layout of kohya sd-scripts' ``networks.lora``), and the LyCORIS files
ComfyUI and LyCORIS read in the same names, to and from :data:`~sdft.interop.lora_weights.LoraWeights`.

Each module, named as :mod:`sdft.interop.kohya_names` describes, has ``<name>.lora_down.weight`` (rank, in),
``<name>.lora_up.weight`` (out, rank) and a 0-dim ``<name>.alpha``; the consumers add ``alpha / rank * up @ down``
to the layer's weight. Where the original model fuses several diffusers projections into one layer (SD3 and Flux.1
q, k, v; a Flux.1 single block's ``linear1``), the fused module's down is the parts' downs stacked and its up is
block-diagonal in the parts' ups, so its rank is the sum of theirs and its alpha keeps alpha / rank; a part without
LoRA gets zero rows. Reading splits such a module back into its parts exactly where its up is block-diagonal (as
written here); otherwise (a LoRA trained on the fused layer) every part gets the whole down and its own rows of the
up, which is the same update. A module whose up is all zero reads as no module (it changes nothing).

A LyCORIS module holds its LoKr tensors (``<name>.lokr_w1`` or ``.lokr_w1_a`` / ``.lokr_w1_b``, ``.lokr_w2`` or
``.lokr_w2_a`` / ``.lokr_w2_b``, ``.lokr_t2``) or LoHa tensors (``.hada_w1_a`` ... ``.hada_w2_b``, ``.hada_t1`` /
``.hada_t2``) and its ``.alpha`` (see :mod:`sdft.interop.lycoris` for the formulas); a DoRA module adds
``.dora_scale`` to any of them. A LoHa of fused parts is written exactly as a LoRA's is (its ``w*_a`` block-diagonal,
its ``w*_b`` stacked) and read back row by row. A LoKr of fused parts cannot be one module (a stack of Kronecker
products is not one): each part is written as its own module under its ``lycoris_`` name (SimpleTuner's, which
ComfyUI applies to the part's rows of the fused layer, :mod:`sdft.interop.kohya_names`), the rest of the file as
before; one fused module read from a file splits into its parts where they fall on its ``w1``'s rows. Files of
``lycoris_`` modules (SimpleTuner's, of any family, the SD 1.x/2.x and SDXL UNets included) read module by module, in
diffusers' names and row order; a file that adapts one diffusers module under two names is refused. Files
cannot carry peft's DoRA: its magnitudes are per output row, which A1111 does not read and ComfyUI normalises by the
base weight instead of the adapted one (``comfy/weight_adapter/base.py``, ``weight_decompose``); a ``dora_scale``
read from a file follows LyCORIS's formula, per output row for ``(out, 1)`` and per input column for ``(1, in)``.

The header holds kohya's ``ss_*`` training keys and the Stability AI model spec's ``modelspec.*`` keys
(:func:`kohya_metadata`); consumers read the strength from the ``.alpha`` tensors, never from the header, whose
``modelspec.usage_hint`` only tells a person the strength the evaluation recommends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    Flux2KleinPipeline,
    Flux2Pipeline,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    ZImagePipeline,
)
from safetensors.torch import save_file
from torch import Tensor

from sdft.errors import UserError
from sdft.families import ModelFamily, StableDiffusion
from sdft.interop.kohya_names import KohyaModule, KohyaNames
from sdft.interop.lora_weights import KIND_NAMES, AdapterLayer, LoraLayer, LoraWeights
from sdft.interop.lycoris import LOHA_NAMES, LOKR_NAMES, LohaLayer, LokrLayer, stacked_loha

#: the tensors of one kohya module, by key suffix
DOWN, UP, ALPHA, DORA_SCALE = ".lora_down.weight", ".lora_up.weight", ".alpha", ".dora_scale"
#: the suffixes of a LyCORIS module's LoKr and LoHa tensors
LYCORIS_SUFFIXES = tuple(f".{name}" for name in LOKR_NAMES + LOHA_NAMES)
#: the suffix that tells each kind of module is there
FIRST_SUFFIXES = (DOWN, ".lokr_w1", ".lokr_w1_a", ".hada_w1_a")


def to_kohya(weights: LoraWeights, names: KohyaNames) -> dict[str, Tensor]:
    """LoRA weights -> a kohya state dict (fused modules built as the module docstring says).

    Args:
        weights: the layers by module path; every path must have a kohya name.
        names: the kohya modules of the model the weights adapt.
    """
    unnamed = sorted(set(weights) - set(names.by_path))
    if unnamed:
        raise UserError(
            f"{len(unnamed)} adapted modules have no name in kohya / A1111 / ComfyUI LoRA files (first: "
            f"{unnamed[0]}): leave them out of the LoRA's targets, or export only the diffusers format"
        )
    dora = next((path for path, layer in weights.items() if layer.magnitude is not None), None)
    if dora is not None:
        raise UserError(
            f"{dora} is a DoRA, which kohya / A1111 / ComfyUI files cannot carry (A1111 reads DoRA magnitudes per "
            "input column, ComfyUI normalises per-row ones by the base weight): export only the diffusers format"
        )
    state = {}
    for module in dict.fromkeys(names.by_path[path] for path in weights):
        for name, layer in module_layers(module, weights, names).items():
            state.update(module_tensors(name, layer))
    return state


def module_tensors(name: str, layer: AdapterLayer) -> dict[str, Tensor]:
    """The tensors of one module of a file: a LoRA's down and up or a LyCORIS layer's factors, and the alpha."""
    if isinstance(layer, LoraLayer):
        tensors = {DOWN: layer.down, UP: layer.up}
    else:
        tensors = {f".{key}": tensor for key, tensor in layer.tensors.items()}
    state = {name + suffix: tensor.contiguous() for suffix, tensor in tensors.items()}
    state[name + ALPHA] = torch.tensor(layer.alpha, dtype=torch.float32)
    return state


def module_layers(module: KohyaModule, weights: LoraWeights, names: KohyaNames) -> dict[str, AdapterLayer]:
    """The layers a file holds for one kohya module, by name (see the module docstring): the module's one layer (its
    only part's, halves swapped where the original swaps them, or its fused parts'), or each part's own layer under
    its ``lycoris_`` name where the parts' layers cannot be fused."""
    present = {path: weights[path] for path in module.parts if path in weights}
    kinds = {layer.kind for layer in present.values()}
    if kinds == {"lora"}:
        return {module.name: fused_layer(module, weights)}
    if len(module.parts) == 1:
        layer = present[module.parts[0]]
        return {module.name: swap_halves(layer, module.name) if module.swapped else layer}
    if kinds == {"loha"} and not any(layer.tucker for layer in present.values()):
        parts = [(size, weights.get(path)) for path, size in zip(module.parts, module.sizes, strict=True)]
        return {module.name: stacked_loha(parts)}
    if any(path not in names.lycoris for path in present):
        raise UserError(
            f"the {KIND_NAMES[sorted(kinds)[0]]} of {', '.join(module.parts)} cannot be written as the one module "
            f"{module.name} that kohya / ComfyUI files hold for them, and ComfyUI reads no lycoris_ names of "
            f"{names.model} modules: leave these modules out of the targets, or train adapter: loha or lora"
        )
    return {names.lycoris[path].name: layer for path, layer in present.items()}


def fused_layer(module: KohyaModule, weights: LoraWeights) -> LoraLayer:
    """The one layer of a kohya module: its only part's (halves swapped if the original swaps them), or the parts'
    downs stacked over a block-diagonal up, scaled like the first part present."""
    if len(module.parts) == 1:
        layer = weights[module.parts[0]]
        return swap_halves(layer, module.name) if module.swapped else layer
    present = [(index, weights[path]) for index, path in enumerate(module.parts) if path in weights]
    scale = present[0][1].scale
    down = torch.cat([layer.down for _, layer in present])
    up = present[0][1].up.new_zeros(sum(module.sizes), down.shape[0])
    starts = [sum(module.sizes[:index]) for index in range(len(module.sizes))]
    column = 0
    for index, layer in present:
        rows = slice(starts[index], starts[index] + module.sizes[index])
        up[rows, column : column + layer.rank] = layer.up * (layer.scale / scale)
        column += layer.rank
    return LoraLayer(down, up, scale * down.shape[0])


def swap_halves(layer: AdapterLayer, name: str) -> AdapterLayer:
    """The layer with the two halves of its output rows exchanged (shift, scale <-> scale, shift), a per-row DoRA
    magnitude with them.

    Args:
        layer: the layer.
        name: the kohya module, named in errors.
    """
    half = layer.out_features // 2
    magnitude = layer.magnitude
    if magnitude is not None and magnitude.shape[0] == layer.out_features:
        magnitude = torch.cat([magnitude[half:], magnitude[:half]])
    if isinstance(layer, LoraLayer):
        first, second = layer.up.chunk(2)
        return LoraLayer(layer.down, torch.cat([second, first]), layer.alpha, magnitude)
    if isinstance(layer, LohaLayer) and not layer.tucker:
        keys, split = ("hada_w1_a", "hada_w2_a"), half
    elif isinstance(layer, LokrLayer) and half % layer.w2_shape[0] == 0:
        keys, split = (layer.first,), half // layer.w2_shape[0]
    else:
        raise UserError(f"{name}: the halves of its {KIND_NAMES[layer.kind]}'s rows cannot be exchanged exactly")
    rows = {key: torch.cat([layer.tensors[key][split:], layer.tensors[key][:split]]) for key in keys}
    return type(layer)({**layer.tensors, **rows}, layer.alpha, magnitude)


def from_kohya(state: Mapping[str, Tensor], names: KohyaNames, path: Path) -> LoraWeights:
    """A kohya or LyCORIS state dict -> adapter weights (fused modules split as the module docstring says).

    Args:
        state: the file's tensors.
        names: the kohya modules of the model the file should adapt.
        path: the file, named in errors.
    """
    odd = sorted(key for key in state if not key.endswith((DOWN, UP, ALPHA, DORA_SCALE, *LYCORIS_SUFFIXES)))
    if odd:
        raise UserError(
            f"{path} holds tensors of an adapter sdft does not read (first: {odd[0]}; it reads LoRA, DoRA, LoKr and "
            "LoHa): use a file of one of those"
        )
    modules = list(dict.fromkeys(key.split(".")[0] for key in state if key.endswith(FIRST_SUFFIXES)))
    unknown = sorted(name for name in modules if name not in names.readable)
    if unknown:
        raise UserError(
            f"{path} adapts {len(unknown)} modules the model lacks (first: {unknown[0]}): it is a LoRA of another "
            "model family or layout; pass a LoRA trained on this base model"
        )
    weights: LoraWeights = {}
    for name in modules:
        layers = split_layer(names.readable[name], module_of(state, name), path)
        twice = sorted(set(layers) & set(weights))
        if twice:
            raise UserError(
                f"{path} adapts {twice[0]} twice ({name} and another module of the same weight): pass a file that "
                "names each module once"
            )
        weights.update(layers)
    return weights


def module_of(state: Mapping[str, Tensor], name: str) -> AdapterLayer:
    """The layer of one module of a file: LoRA, LoKr or LoHa, with its DoRA scale; without an alpha, alpha = rank
    (scale 1), as the consumers read it."""
    magnitude = state.get(name + DORA_SCALE)
    alpha = state.get(name + ALPHA)
    if name + DOWN in state:
        down, up = state[name + DOWN], state[name + UP]
        return LoraLayer(down, up, float(down.shape[0] if alpha is None else alpha), magnitude)
    names = LOKR_NAMES if name + ".lokr_w1" in state or name + ".lokr_w1_a" in state else LOHA_NAMES
    tensors = {key: state[f"{name}.{key}"] for key in names if f"{name}.{key}" in state}
    layer = (LokrLayer if names is LOKR_NAMES else LohaLayer)(tensors, 1.0, magnitude)
    return type(layer)(tensors, float(layer.rank or 1) if alpha is None else float(alpha), magnitude)


def split_layer(module: KohyaModule, layer: AdapterLayer, path: Path) -> LoraWeights:
    """One kohya module's layer -> the layers of its parts (halves swapped back where the original swaps them)."""
    if len(module.parts) == 1:
        return {module.parts[0]: swap_halves(layer, module.name) if module.swapped else layer}
    if layer.out_features != sum(module.sizes):
        raise UserError(
            f"{path}: {module.name} has {layer.out_features} outputs where the model has {sum(module.sizes)}: it is "
            "a LoRA of another model; pass a LoRA trained on this base model"
        )
    if layer.magnitude is not None:
        raise UserError(
            f"{path}: {module.name} is a DoRA of the fused {', '.join(module.parts)}, which sdft does not split: "
            "pass a file without DoRA on those modules"
        )
    if isinstance(layer, LoraLayer):
        return split_lora(module, layer)
    starts = [sum(module.sizes[:index]) for index in range(len(module.sizes) + 1)]
    parts = {part: layer.rows(starts[i], starts[i + 1]) for i, part in enumerate(module.parts)}
    if None in parts.values():
        raise UserError(
            f"{path}: the {KIND_NAMES[layer.kind]} of {module.name} does not split into the model's "
            f"{', '.join(module.parts)}: pass a file that adapts them apart"
        )
    flat = {
        part: torch.Size([found.out_features, found.weight_elements // found.out_features])
        for part, found in parts.items()
    }
    return {part: found for part, found in parts.items() if found.update(flat[part]).any()}


def split_lora(module: KohyaModule, layer: LoraLayer) -> LoraWeights:
    """A fused module's LoRA -> its parts' LoRAs (see the module docstring)."""
    rows = layer.up.split(list(module.sizes))
    columns = block_columns(rows)
    if columns is None:
        return {
            part: LoraLayer(layer.down, up, layer.alpha)
            for part, up in zip(module.parts, rows, strict=True)
            if up.any()
        }
    return {
        part: LoraLayer(layer.down[span], up[:, span], layer.scale * (span.stop - span.start))
        for part, up, span in zip(module.parts, rows, columns, strict=True)
        if span is not None
    }


def block_columns(rows: tuple[Tensor, ...]) -> list[slice | None] | None:
    """Each part's run of rank columns where the fused up is block-diagonal: every column non-zero in the rows of at
    most one part, each part's columns consecutive (all-zero columns join the run before them); None for a part
    with no columns. None when the up is not block-diagonal or is all zero.

    Args:
        rows: the fused up's rows of each part, (out_i, rank) each.
    """
    used = torch.stack([part.ne(0).any(dim=0) for part in rows])  # (parts, rank)
    if used.sum(dim=0).gt(1).any() or not used.any():
        return None
    owners = used.float().argmax(dim=0).tolist()
    unused = (~used.any(dim=0)).tolist()
    first = next(owner for owner, empty in zip(owners, unused, strict=True) if not empty)
    previous = first
    for column, empty in enumerate(unused):
        owners[column] = previous if empty else owners[column]
        previous = owners[column]
    spans: list[slice | None] = [None] * len(rows)
    start = 0
    for column in range(1, len(owners) + 1):
        if column == len(owners) or owners[column] != owners[start]:
            if spans[owners[start]] is not None:
                return None
            spans[owners[start]] = slice(start, column)
            start = column
    return spans


@dataclass(frozen=True)
class TrainingNotes:
    """What a kohya file's header records about the training, where known.

    Attributes:
        base_model: the base model's path or hub id.
        rank: the LoRA rank the run configured (fused modules hold the sum of their parts' ranks).
        alpha: the LoRA alpha the run configured.
        steps: the optimizer steps the weights were trained for.
        resolution: the side of the square training images, in pixels.
        trigger: the prompt (or word) that calls up what was learned, e.g. the instance prompt.
        title: a human-readable name, e.g. the run's name.
        network_args: a LyCORIS adapter's ``ss_network_args`` (``algo`` and its options, as text); None for LoRA.
        strength: the strength the evaluation recommends for the weights, when it measured one.
    """

    base_model: str
    rank: int
    alpha: float
    steps: int | None = None
    resolution: int | None = None
    trigger: str | None = None
    title: str | None = None
    network_args: Mapping[str, str] | None = None
    strength: float | None = None


@dataclass(frozen=True)
class Architecture:
    """How the consumers name a base model: the model spec's ``modelspec.architecture`` (without ``/lora``), kohya's
    ``ss_base_model_version`` and the model spec's ``modelspec.implementation``."""

    spec: str
    version: str
    implementation: str


SGM = "https://github.com/Stability-AI/generative-models"


def architecture_of(family: ModelFamily) -> Architecture:
    """The base model's names in kohya / model-spec metadata, from its denoiser's config (the family loaded):
    SD 2.x is told from 1.x by its linear transformer projections; SD 3.5 Large by its 38 blocks, SD 3.5 Medium by
    its dual-attention blocks; FLUX.1-schnell by its lack of a guidance embedding."""
    config = family.denoiser.config
    pipeline = family.pipeline_class
    if issubclass(pipeline, StableDiffusionXLPipeline):
        return Architecture("stable-diffusion-xl-v1-base", "sdxl_base_v1-0", SGM)
    if issubclass(pipeline, StableDiffusion3Pipeline):
        variant = "v3-medium"
        if config.num_layers == 38:
            variant = "v3.5-large"
        elif config.dual_attention_layers:
            variant = "v3.5-medium"
        return Architecture(f"stable-diffusion-{variant}", "sd3", "diffusers")
    if issubclass(pipeline, FluxPipeline):
        name = "flux-1-dev" if config.guidance_embeds else "flux-1-schnell"
        return Architecture(name, "flux1", "https://github.com/black-forest-labs/flux")
    if issubclass(pipeline, Flux2KleinPipeline | Flux2Pipeline):
        name = "flux-2-klein" if issubclass(pipeline, Flux2KleinPipeline) else "flux-2-dev"
        return Architecture(name, "flux2", "https://github.com/black-forest-labs/flux2")
    if issubclass(pipeline, QwenImagePipeline):
        return Architecture("qwen-image", "qwen_image", "https://github.com/QwenLM/Qwen-Image")
    if issubclass(pipeline, ZImagePipeline):
        return Architecture("z-image", "z_image", "https://github.com/Tongyi-MAI/Z-Image")
    if isinstance(family, StableDiffusion) and issubclass(pipeline, StableDiffusionPipeline):
        if not config.use_linear_projection:
            return Architecture("stable-diffusion-v1", "sd_v1", "diffusers")
        if family.prediction_type == "v_prediction":
            return Architecture("stable-diffusion-v2-768-v", "sd_v2_v", "diffusers")
        return Architecture("stable-diffusion-v2-512", "sd_v2", "diffusers")
    raise UserError(f"kohya LoRA files of {type(family).__name__} models are not supported")


def kohya_metadata(family: ModelFamily, notes: TrainingNotes) -> dict[str, str]:
    """The header of a kohya file: kohya's ``ss_*`` keys (network module, dim, alpha, base model, steps, resolution,
    the trigger as a tag; a LyCORIS adapter's module ``lycoris.kohya`` and its ``ss_network_args``) and the model
    spec's ``modelspec.*`` keys (architecture ``<base>/lora``, implementation, title, resolution ``WxH``, trigger
    phrase).

    Args:
        family: the base model (loaded).
        notes: what is known about the training.
    """
    architecture = architecture_of(family)
    title = notes.title or "LoRA"
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(notes.rank),
        "ss_network_alpha": str(float(notes.alpha)),
        "ss_base_model_version": architecture.version,
        "ss_sd_model_name": notes.base_model,
        "ss_output_name": title,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture.spec}/lora",
        "modelspec.implementation": architecture.implementation,
        "modelspec.title": title,
    }
    if notes.network_args is not None:
        metadata["ss_network_module"] = "lycoris.kohya"
        metadata["ss_network_args"] = json.dumps(dict(notes.network_args))
    if isinstance(family, StableDiffusion):
        metadata["ss_v2"] = str(architecture.version.startswith("sd_v2"))
    if notes.steps is not None:
        metadata["ss_steps"] = str(notes.steps)
    if notes.resolution is not None:
        metadata["ss_resolution"] = f"({notes.resolution}, {notes.resolution})"
        metadata["modelspec.resolution"] = f"{notes.resolution}x{notes.resolution}"
    if notes.trigger:
        metadata["modelspec.trigger_phrase"] = notes.trigger
        metadata["ss_tag_frequency"] = json.dumps({"subject": {notes.trigger: 1}})
    if notes.strength is not None:
        metadata["modelspec.usage_hint"] = f"strength {notes.strength:g} (measured by sdft's evaluation)"
    return metadata


def write_kohya(weights: LoraWeights, names: KohyaNames, metadata: dict[str, str], path: Path) -> Path:
    """Write adapter weights as a kohya / LyCORIS ``.safetensors`` file with the given header; return its path."""
    save_file(to_kohya(weights, names), path, metadata=metadata)
    return path


def is_kohya(keys: list[str]) -> bool:
    """Whether a state dict's keys are kohya's or LyCORIS's: ``.lora_down.weight``, ``.lokr_w1`` (or ``_a``) or
    ``.hada_w1_a`` tensors, of ``lora_*`` and ``lycoris_*`` modules only."""
    firsts = [key for key in keys if key.endswith(FIRST_SUFFIXES)]
    return bool(firsts) and all(key.startswith(("lora_", "lycoris_")) for key in firsts)
