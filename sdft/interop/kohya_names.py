"""The module names of kohya / A1111 / ComfyUI LoRA files, per model family, and the diffusers modules they stand for.

A kohya module name is a prefix (``lora_unet`` for the denoiser, ``lora_te`` for the one text encoder of SD 1.x/2.x,
``lora_te1`` / ``lora_te2`` for CLIP-L / CLIP-G of SDXL and SD3 and for Flux.1's CLIP-L), ``_``, and the module's path
in the model the consumers run, with ``.`` written ``_``:

- SD 1.x / 2.x UNet: diffusers' own names, which kohya trains on and ComfyUI and A1111 map
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``);
- SDXL UNet: the original SGM names ComfyUI and A1111 expect for SDXL. With ``n = layers_per_block + 1``: down block
  ``i``'s resnet / attention ``j`` is ``input_blocks.{1 + i n + j}.0`` / ``.1`` and its downsampler
  ``input_blocks.{(i + 1) n}.0.op``; the mid block's resnet, attention, resnet are ``middle_block.0`` / ``.1`` / ``.2``;
  up block ``i``'s resnet / attention ``j`` is ``output_blocks.{i n + j}.0`` / ``.1`` and its upsampler
  ``output_blocks.{i n + n - 1}.2.conv`` (``.1.conv`` in a block without attentions). In a resnet ``conv1``,
  ``time_emb_proj``, ``conv2``, ``conv_shortcut`` are ``in_layers.2``, ``emb_layers.1``, ``out_layers.3``,
  ``skip_connection``; ``conv_in``, ``time_embedding.linear_1/2``, ``add_embedding.linear_1/2``, ``conv_out`` are
  ``input_blocks.0.0``, ``time_embed.0/2``, ``label_emb.0.0/2``, ``out.2``
  (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``);
- SD3: the MMDiT names (``lora_unet_joint_blocks_0_x_block_attn_qkv``, ``..._context_block_mlp_fc1``);
- Flux.1: the BFL names (``lora_unet_double_blocks_0_img_attn_qkv``, ``..._txt_mlp_0``,
  ``lora_unet_single_blocks_0_linear1``);
- FLUX.2: the BFL names of FLUX.2 (``lora_unet_double_blocks_0_img_attn_qkv``, ``..._img_mlp_0``,
  ``lora_unet_single_blocks_0_linear1``, ``lora_unet_double_stream_modulation_img_lin``), as diffusers'
  ``convert_flux2_transformer_checkpoint_to_diffusers`` maps them;
- Qwen-Image: diffusers' own names, which Qwen's checkpoint and ComfyUI's model share
  (``lora_unet_transformer_blocks_0_attn_to_q``);
- Z-Image: the names of Tongyi-MAI's checkpoint, which ComfyUI loads (``lora_unet_layers_0_attention_qkv``,
  ``..._attention_out``, ``..._feed_forward_w1``, ``lora_unet_noise_refiner_0_...``, ``lora_unet_x_embedder``): the
  inverse of ComfyUI's ``comfy.utils.z_image_to_diffusers``;
- CLIP text encoders: ``text_model.encoder.layers.N.self_attn.{q,k,v,out}_proj`` and ``...mlp.fc1/fc2``, with
  ``text_model.`` whatever the installed transformers names the module (``lora_te_text_model_encoder_layers_0_...``).

Where the original model computes several diffusers projections in one layer (SD3, Flux.1, FLUX.2 and Z-Image q, k,
v; a Flux.1 single block's ``linear1`` = q, k, v and the MLP input), one kohya module stands for all of them, their
output rows stacked in that order. The final adaptive norms of SD3 and Flux.1 (and SD3's last context norm) order the
halves of their output shift, scale where diffusers has scale, shift.

ComfyUI also reads every denoiser module as ``lycoris_`` and its diffusers path within the denoiser, ``.`` written
``_`` and in diffusers' row order (``lycoris_transformer_blocks_0_attn_to_q``,
``lycoris_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``): the names SimpleTuner gives LyCORIS files,
which ``model_lora_keys_unet`` in ``comfy/lora.py`` maps for the SD 1.x/2.x and SDXL UNets, SD3, Flux.1 and FLUX.2
(a ``Flux`` to ComfyUI), Z-Image (a ``Lumina2``) and Qwen-Image, onto the rows of the fused layer where the original
fuses the module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

import torch
from diffusers import (
    DiffusionPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    FluxPipeline,
    QwenImagePipeline,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    ZImagePipeline,
)
from torch import nn

from sdft.errors import UserError


@dataclass(frozen=True)
class KohyaModule:
    """One module of a kohya file and the diffusers modules it adapts.

    Attributes:
        name: the kohya module name, e.g. ``lora_unet_double_blocks_0_img_attn_qkv``.
        parts: the module paths (``<component>.<module name>``) whose outputs the original module stacks, in row
            order; one path where nothing is fused.
        sizes: the output features (rows) of each part.
        swapped: the original module orders the two halves of its output the other way round.
    """

    name: str
    parts: tuple[str, ...]
    sizes: tuple[int, ...]
    swapped: bool = False


class KohyaNames:
    """The kohya modules of one model: found by kohya name, or by the path of a diffusers module they adapt; and the
    ``lycoris_`` module of each diffusers module ComfyUI reads under such a name."""

    def __init__(
        self,
        modules: Iterable[KohyaModule],
        aliases: Mapping[str, KohyaModule] | None = None,
        lycoris: Iterable[KohyaModule] = (),
        model: str = "this model",
    ) -> None:
        """
        Args:
            modules: every module a kohya file of the model may hold.
            aliases: other names the consumers also read for some modules (read, never written).
            lycoris: the one-part ``lycoris_`` modules (read, and written only for the parts of a fused module whose
                adapters cannot be fused).
            model: the model's pipeline class, named in errors.
        """
        self.model = model
        self.by_name = {module.name: module for module in modules}
        self.by_path = {path: module for module in self.by_name.values() for path in module.parts}
        self.lycoris = {module.parts[0]: module for module in lycoris}
        self.readable = {**(aliases or {}), **{module.name: module for module in self.lycoris.values()}, **self.by_name}


@dataclass(frozen=True)
class Original:
    """A module of the original implementation: the diffusers modules (within one component) it stacks."""

    parts: tuple[str, ...]
    swapped: bool = False


#: module names within a component -> the original modules they make up, by original module name
Naming = Callable[[Collection[str]], dict[str, Original]]


@dataclass(frozen=True)
class ComponentNaming:
    """How a kohya file names the modules of one pipeline component.

    Attributes:
        prefix: the kohya prefix, e.g. ``lora_unet``.
        naming: the component's module names -> original modules.
        diffusers_aliases: also read ``<prefix>_<diffusers module name>`` for unfused modules, as ComfyUI and A1111
            do for SDXL's UNet and as diffusers' ``convert_state_dict_to_kohya`` names CLIP layers (without
            ``text_model.`` under transformers 5).
        lycoris: ComfyUI also reads ``lycoris_<diffusers module name>`` for every module (see the module docstring).
    """

    prefix: str
    naming: Naming
    diffusers_aliases: bool = False
    lycoris: bool = False


def diffusers_names(modules: Collection[str]) -> dict[str, Original]:
    """Original names = diffusers names (the SD 1.x/2.x UNet)."""
    return {name: Original((name,)) for name in modules}


CLIP_LAYER = re.compile(r"(?:text_model\.)?(encoder\.layers\.\d+\.(?:self_attn\.(?:q|k|v|out)_proj|mlp\.fc[12]))")


def clip_names(modules: Collection[str]) -> dict[str, Original]:
    """The layers of a CLIP text encoder under ``text_model.``, whether or not the installed transformers has it."""
    found = {}
    for name in modules:
        if match := CLIP_LAYER.fullmatch(name):
            found[f"text_model.{match[1]}"] = Original((name,))
    return found


SGM_OUTSIDE_BLOCKS = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_out": "out.2",
}
SGM_RESNET = {
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_MEMBER = re.compile(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
MID_MEMBER = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
SAMPLER = re.compile(r"(down|up)_blocks\.(\d+)\.(?:down|up)samplers\.0\.conv")


def sgm_names(modules: Collection[str]) -> dict[str, Original]:
    """The SGM names of an SDXL-layout UNet's modules (see the module docstring)."""
    per_level = 1 + len({name.split(".")[3] for name in modules if name.startswith("down_blocks.0.resnets.")})
    attended = {name.split(".")[1] for name in modules if re.match(r"up_blocks\.\d+\.attentions\.", name)}
    found = {}
    for name in modules:
        original = sgm_name(name, per_level, attended)
        if original is not None:
            found[original] = Original((name,))
    return found


def sgm_name(name: str, per_level: int, attended: set[str]) -> str | None:
    """The SGM name of one UNet module; None for a module without one.

    Args:
        name: the diffusers module name.
        per_level: SGM blocks per resolution level (layers per block + 1).
        attended: the indices (as text) of the up blocks that have attentions.
    """
    if name in SGM_OUTSIDE_BLOCKS:
        return SGM_OUTSIDE_BLOCKS[name]
    if match := SAMPLER.fullmatch(name):
        level = int(match[2])
        if match[1] == "down":
            return f"input_blocks.{(level + 1) * per_level}.0.op"
        return f"output_blocks.{level * per_level + per_level - 1}.{2 if match[2] in attended else 1}.conv"
    if match := UNET_MEMBER.fullmatch(name):
        direction, level, kind, index, inner = match.groups()
        member = sgm_member(kind, inner)
        position = int(level) * per_level + int(index) + (direction == "down")
        blocks = "input_blocks" if direction == "down" else "output_blocks"
        return member and f"{blocks}.{position}.{int(kind == 'attentions')}.{member}"
    if match := MID_MEMBER.fullmatch(name):
        kind, index, inner = match.groups()
        member = sgm_member(kind, inner)
        return member and f"middle_block.{1 if kind == 'attentions' else 2 * int(index)}.{member}"
    return None


def sgm_member(kind: str, inner: str) -> str | None:
    """A module inside a resnet (renamed) or an attention (SGM keeps diffusers' names there)."""
    return inner if kind == "attentions" else SGM_RESNET.get(inner)


#: the final adaptive norm of SD3 and Flux.1, whose output halves are shift, scale where diffusers has scale, shift
FINAL_NORM = "final_layer.adaLN_modulation.1"
#: an original model's layout: each original module's name and the diffusers modules it stacks, in row order
Layout = tuple[tuple[str, tuple[str, ...]], ...]

MMDIT_OUTSIDE_BLOCKS: Layout = (
    ("x_embedder.proj", ("pos_embed.proj",)),
    ("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",)),
    ("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",)),
    ("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",)),
    ("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",)),
    ("context_embedder", ("context_embedder",)),
    ("final_layer.linear", ("proj_out",)),
    (FINAL_NORM, ("norm_out.linear",)),
)
MMDIT_BLOCK: Layout = (
    ("x_block.attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("x_block.attn.proj", ("attn.to_out.0",)),
    ("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v")),
    ("x_block.attn2.proj", ("attn2.to_out.0",)),
    ("x_block.mlp.fc1", ("ff.net.0.proj",)),
    ("x_block.mlp.fc2", ("ff.net.2",)),
    ("x_block.adaLN_modulation.1", ("norm1.linear",)),
    ("context_block.attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("context_block.attn.proj", ("attn.to_add_out",)),
    ("context_block.mlp.fc1", ("ff_context.net.0.proj",)),
    ("context_block.mlp.fc2", ("ff_context.net.2",)),
    ("context_block.adaLN_modulation.1", ("norm1_context.linear",)),
)
FLUX_OUTSIDE_BLOCKS: Layout = (
    ("img_in", ("x_embedder",)),
    ("txt_in", ("context_embedder",)),
    ("time_in.in_layer", ("time_text_embed.timestep_embedder.linear_1",)),
    ("time_in.out_layer", ("time_text_embed.timestep_embedder.linear_2",)),
    ("vector_in.in_layer", ("time_text_embed.text_embedder.linear_1",)),
    ("vector_in.out_layer", ("time_text_embed.text_embedder.linear_2",)),
    ("guidance_in.in_layer", ("time_text_embed.guidance_embedder.linear_1",)),
    ("guidance_in.out_layer", ("time_text_embed.guidance_embedder.linear_2",)),
    ("final_layer.linear", ("proj_out",)),
    (FINAL_NORM, ("norm_out.linear",)),
)
FLUX_DOUBLE_BLOCK: Layout = (
    ("img_mod.lin", ("norm1.linear",)),
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("img_mlp.0", ("ff.net.0.proj",)),
    ("img_mlp.2", ("ff.net.2",)),
    ("txt_mod.lin", ("norm1_context.linear",)),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("txt_mlp.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", ("ff_context.net.2",)),
)
FLUX_SINGLE_BLOCK: Layout = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation.lin", ("norm.linear",)),
)

FLUX2_OUTSIDE_BLOCKS: Layout = (
    ("img_in", ("x_embedder",)),
    ("txt_in", ("context_embedder",)),
    ("time_in.in_layer", ("time_guidance_embed.timestep_embedder.linear_1",)),
    ("time_in.out_layer", ("time_guidance_embed.timestep_embedder.linear_2",)),
    ("guidance_in.in_layer", ("time_guidance_embed.guidance_embedder.linear_1",)),
    ("guidance_in.out_layer", ("time_guidance_embed.guidance_embedder.linear_2",)),
    ("double_stream_modulation_img.lin", ("double_stream_modulation_img.linear",)),
    ("double_stream_modulation_txt.lin", ("double_stream_modulation_txt.linear",)),
    ("single_stream_modulation.lin", ("single_stream_modulation.linear",)),
    ("final_layer.linear", ("proj_out",)),
    (FINAL_NORM, ("norm_out.linear",)),
)
FLUX2_DOUBLE_BLOCK: Layout = (
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("img_mlp.0", ("ff.linear_in",)),
    ("img_mlp.2", ("ff.linear_out",)),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("txt_mlp.0", ("ff_context.linear_in",)),
    ("txt_mlp.2", ("ff_context.linear_out",)),
)
FLUX2_SINGLE_BLOCK: Layout = (
    ("linear1", ("attn.to_qkv_mlp_proj",)),
    ("linear2", ("attn.to_out",)),
)
#: Z-Image outside its blocks: the embedders and final layer diffusers keys by patch size (``2-1``: 2x2 patches of
#: one frame) and Tongyi-MAI's checkpoint does not
ZIMAGE_OUTSIDE_BLOCKS: Layout = (
    ("x_embedder", ("all_x_embedder.2-1",)),
    ("final_layer.linear", ("all_final_layer.2-1.linear",)),
    ("final_layer.adaLN_modulation.1", ("all_final_layer.2-1.adaLN_modulation.1",)),
    ("cap_embedder.1", ("cap_embedder.1",)),
    ("t_embedder.mlp.0", ("t_embedder.mlp.0",)),
    ("t_embedder.mlp.2", ("t_embedder.mlp.2",)),
)
#: a Z-Image block (main layer or refiner): q, k, v fused, the output projection renamed, the rest as diffusers has it
ZIMAGE_BLOCK: Layout = (
    ("attention.qkv", ("attention.to_q", "attention.to_k", "attention.to_v")),
    ("attention.out", ("attention.to_out.0",)),
    ("feed_forward.w1", ("feed_forward.w1",)),
    ("feed_forward.w2", ("feed_forward.w2",)),
    ("feed_forward.w3", ("feed_forward.w3",)),
    ("adaLN_modulation.0", ("adaLN_modulation.0",)),
)


def laid_out(
    modules: Collection[str], layout: Layout, ours: str = "", theirs: str = "", swapped: Collection[str] = (FINAL_NORM,)
) -> dict[str, Original]:
    """The original modules of ``layout`` whose parts all exist, under the module prefixes ``ours`` / ``theirs``;
    those named in ``swapped`` (SD3's and Flux.1's final norm) order the halves of their output the other way."""
    found = {}
    for original, parts in layout:
        named = tuple(ours + part for part in parts)
        if all(part in modules for part in named):
            found[theirs + original] = Original(named, swapped=original in swapped)
    return found


def block_indices(modules: Collection[str], blocks: str) -> list[int]:
    """The indices of the blocks named ``<blocks>.<index>.`` among the module names, in order."""
    pattern = re.compile(rf"{re.escape(blocks)}\.(\d+)\.")
    return sorted({int(match[1]) for name in modules if (match := pattern.match(name))})


def mmdit_names(modules: Collection[str]) -> dict[str, Original]:
    """The MMDiT names of an SD3 transformer's modules; the context norm of a block that keeps no context output
    (the last) has its halves swapped."""
    found = laid_out(modules, MMDIT_OUTSIDE_BLOCKS)
    for index in block_indices(modules, "transformer_blocks"):
        block = laid_out(modules, MMDIT_BLOCK, f"transformer_blocks.{index}.", f"joint_blocks.{index}.")
        context_norm = f"joint_blocks.{index}.context_block.adaLN_modulation.1"
        if context_norm in block and f"transformer_blocks.{index}.attn.to_add_out" not in modules:
            block[context_norm] = Original(block[context_norm].parts, swapped=True)
        found.update(block)
    return found


def flux_names(modules: Collection[str]) -> dict[str, Original]:
    """The BFL names of a Flux.1 transformer's modules."""
    found = laid_out(modules, FLUX_OUTSIDE_BLOCKS)
    for ours, theirs, layout in (
        ("transformer_blocks", "double_blocks", FLUX_DOUBLE_BLOCK),
        ("single_transformer_blocks", "single_blocks", FLUX_SINGLE_BLOCK),
    ):
        for index in block_indices(modules, ours):
            found.update(laid_out(modules, layout, f"{ours}.{index}.", f"{theirs}.{index}."))
    return found


def flux2_names(modules: Collection[str]) -> dict[str, Original]:
    """The BFL names of a FLUX.2 transformer's modules (the final norm's halves swapped, as in Flux.1)."""
    found = laid_out(modules, FLUX2_OUTSIDE_BLOCKS)
    for ours, theirs, layout in (
        ("transformer_blocks", "double_blocks", FLUX2_DOUBLE_BLOCK),
        ("single_transformer_blocks", "single_blocks", FLUX2_SINGLE_BLOCK),
    ):
        for index in block_indices(modules, ours):
            found.update(laid_out(modules, layout, f"{ours}.{index}.", f"{theirs}.{index}."))
    return found


def zimage_names(modules: Collection[str]) -> dict[str, Original]:
    """The names of Tongyi-MAI's checkpoint for a Z-Image transformer's modules (none of them swapped)."""
    found = laid_out(modules, ZIMAGE_OUTSIDE_BLOCKS, swapped=())
    for blocks in ("layers", "noise_refiner", "context_refiner"):
        for index in block_indices(modules, blocks):
            found.update(laid_out(modules, ZIMAGE_BLOCK, f"{blocks}.{index}.", f"{blocks}.{index}.", swapped=()))
    return found


#: each pipeline's components that kohya files name, with their naming
NAMINGS: dict[type[DiffusionPipeline], dict[str, ComponentNaming]] = {
    StableDiffusionPipeline: {
        "unet": ComponentNaming("lora_unet", diffusers_names, lycoris=True),
        "text_encoder": ComponentNaming("lora_te", clip_names, diffusers_aliases=True),
    },
    StableDiffusionXLPipeline: {
        "unet": ComponentNaming("lora_unet", sgm_names, diffusers_aliases=True, lycoris=True),
        "text_encoder": ComponentNaming("lora_te1", clip_names, diffusers_aliases=True),
        "text_encoder_2": ComponentNaming("lora_te2", clip_names, diffusers_aliases=True),
    },
    StableDiffusion3Pipeline: {
        "transformer": ComponentNaming("lora_unet", mmdit_names, lycoris=True),
        "text_encoder": ComponentNaming("lora_te1", clip_names, diffusers_aliases=True),
        "text_encoder_2": ComponentNaming("lora_te2", clip_names, diffusers_aliases=True),
    },
    FluxPipeline: {
        "transformer": ComponentNaming("lora_unet", flux_names, lycoris=True),
        "text_encoder": ComponentNaming("lora_te1", clip_names, diffusers_aliases=True),
    },
    ZImagePipeline: {"transformer": ComponentNaming("lora_unet", zimage_names, lycoris=True)},
    Flux2KleinPipeline: {"transformer": ComponentNaming("lora_unet", flux2_names, lycoris=True)},
    Flux2Pipeline: {"transformer": ComponentNaming("lora_unet", flux2_names, lycoris=True)},
    QwenImagePipeline: {"transformer": ComponentNaming("lora_unet", diffusers_names, lycoris=True)},
}


def namings_of(pipeline_class: type[DiffusionPipeline]) -> dict[str, ComponentNaming]:
    """The kohya naming of each component of a pipeline class (or of a subclass of one kohya files know)."""
    for known, namings in NAMINGS.items():
        if issubclass(pipeline_class, known):
            return namings
    names = ", ".join(known.__name__ for known in NAMINGS)
    raise UserError(f"kohya LoRA files of {pipeline_class.__name__} models are not supported (only of {names})")


def adaptable_modules(model: nn.Module) -> dict[str, torch.Size]:
    """The linear and convolution layers of a model by module name, with their weight shapes; a layer that carries
    peft adapters counts under its own name, and the adapters' layers do not count."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv2d) and ".lora_" not in f".{name}":
            found[name.removesuffix(".base_layer")] = module.weight.shape
    return found


def kohya_names(pipeline_class: type[DiffusionPipeline], components: Mapping[str, nn.Module]) -> KohyaNames:
    """The kohya modules of a model (its modules may live on the ``meta`` device: only names and shapes are read).

    Args:
        pipeline_class: the model's diffusers pipeline class, which decides the naming.
        components: the components LoRA may adapt, by pipeline component name (others are ignored).
    """
    namings = namings_of(pipeline_class)
    modules, aliases, lycoris = [], {}, []
    for component, model in components.items():
        if component not in namings:
            continue
        naming, shapes = namings[component], adaptable_modules(model)
        for original, spec in naming.naming(shapes).items():
            module = KohyaModule(
                name=f"{naming.prefix}_{original.replace('.', '_')}",
                parts=tuple(f"{component}.{part}" for part in spec.parts),
                sizes=tuple(shapes[part][0] for part in spec.parts),
                swapped=spec.swapped,
            )
            modules.append(module)
            if naming.diffusers_aliases and len(spec.parts) == 1:
                aliases[f"{naming.prefix}_{spec.parts[0].replace('.', '_')}"] = module
        if naming.lycoris:
            lycoris += [
                KohyaModule(f"lycoris_{name.replace('.', '_')}", (f"{component}.{name}",), (shape[0],))
                for name, shape in shapes.items()
            ]
    return KohyaNames(modules, aliases, lycoris, pipeline_class.__name__)
