"""Single-file checkpoints in the original layout, which AUTOMATIC1111, ComfyUI and diffusers' ``from_single_file``
load: CompVis for SD 1.x/2.x (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``) and
Stability's SGM for SDXL (``conditioner.embedders.0.transformer.*`` for CLIP-L, ``conditioner.embedders.1.model.*``
in OpenCLIP's own layout for the second encoder).

The names are mapped from the diffusers modules (``UNet2DConditionModel``, ``AutoencoderKL``, transformers' CLIP
text models), the reverse of what diffusers' ``loaders/single_file_utils.py`` reads. SD3 and Flux are not written
as single files: their diffusers folders are what the tools load.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from sdft.errors import UserError
from sdft.files import write_named_atomic

#: the pipelines written as single files, and what they are called in messages
SUPPORTED = {"StableDiffusionPipeline": "SD 1.x/2.x", "StableDiffusionXLPipeline": "SDXL"}
#: the components a single file holds, per pipeline (not SD 1.x's safety checker)
COMPONENTS = {
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder"),
    "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder", "text_encoder_2"),
}
UNET, VAE = "model.diffusion_model.", "first_stage_model."
#: a key ComfyUI reads as "this model predicts v" (SDXL); others ignore it
V_PREDICTION_MARKER = "v_pred"

UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def renamed(rest: str, table: Mapping[str, str]) -> str:
    """``rest`` with its leading module name replaced by its entry in ``table`` (unchanged when it has none)."""
    for old, new in table.items():
        if rest.startswith(f"{old}."):
            return new + rest[len(old) :]
    return rest


def unet_key(key: str, layers_per_block: int, up_blocks_with_attention: set[int]) -> str:
    """The original (``input_blocks`` / ``middle_block`` / ``output_blocks``) name of a diffusers UNet tensor.

    Down level ``b`` holds ``layers_per_block`` resnet(+attention) layers and a downsampler, numbered on from 1;
    up level ``b`` holds ``layers_per_block + 1`` layers, the last one's upsampler after its attention if it has one.

    Args:
        key: a diffusers ``UNet2DConditionModel`` state-dict key.
        layers_per_block: the UNet's ``layers_per_block``.
        up_blocks_with_attention: the up levels with cross-attention.
    """
    down, up = layers_per_block + 1, layers_per_block + 1
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        slot = f"0.{renamed(rest, UNET_RESNET)}" if kind == "resnets" else f"1.{rest}"
        return f"input_blocks.{1 + block * down + layer}.{slot}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(match[1]) * down + layers_per_block}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, index, rest = match[1], int(match[2]), match[3]
        if kind == "attentions":
            return f"middle_block.1.{rest}"
        return f"middle_block.{2 * index}.{renamed(rest, UNET_RESNET)}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(match[1]), match[2], int(match[3]), match[4]
        slot = f"0.{renamed(rest, UNET_RESNET)}" if kind == "resnets" else f"1.{rest}"
        return f"output_blocks.{block * up + layer}.{slot}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(match[1])
        slot = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * up + layers_per_block}.{slot}.conv.{match[2]}"
    mapped = renamed(key, UNET_TOP)
    if mapped == key:
        raise ValueError(f"no original name for the UNet tensor {key}")
    return mapped


def unet_state_dict(unet: nn.Module) -> dict[str, Tensor]:
    """A diffusers UNet's tensors under their original names, prefixed ``model.diffusion_model.``."""
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise UserError(f"single files are written for UNets with one layers_per_block, not {layers}")
    state = unet.state_dict()
    with_attention = {int(key.split(".")[1]) for key in state if re.match(r"up_blocks\.\d+\.attentions\.", key)}
    return {UNET + unet_key(key, layers, with_attention): tensor for key, tensor in state.items()}


def vae_key(key: str, num_up_blocks: int) -> str:
    """The original (``encoder.down`` / ``decoder.up`` / ``mid``) name of a diffusers ``AutoencoderKL`` tensor; the
    decoder's levels count the other way.

    Args:
        key: a diffusers ``AutoencoderKL`` state-dict key.
        num_up_blocks: the decoder's levels.
    """
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}.{renamed(match[3], {'conv_shortcut': 'nin_shortcut'})}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.conv.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        level = num_up_blocks - 1 - int(match[1])
        return f"decoder.up.{level}.block.{match[2]}.{renamed(match[3], {'conv_shortcut': 'nin_shortcut'})}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_up_blocks - 1 - int(match[1])}.upsample.conv.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{renamed(match[3], {'conv_shortcut': 'nin_shortcut'})}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{match[1]}.mid.attn_1.{renamed(match[2], VAE_ATTENTION)}"
    return renamed(key, {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"})


def vae_state_dict(vae: nn.Module) -> dict[str, Tensor]:
    """A diffusers VAE's tensors under their original names, prefixed ``first_stage_model.``; the mid-block
    attention's projections as the 1x1 convolutions the original has."""
    num_up_blocks = len(vae.config.up_block_types)
    converted = {}
    for key, tensor in vae.state_dict().items():
        name = vae_key(key, num_up_blocks)
        is_projection = ".mid.attn_1." in name and name.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        )
        converted[VAE + name] = tensor[:, :, None, None] if is_projection and tensor.dim() == 2 else tensor
    return converted


def clip_state_dict(text_encoder: nn.Module, prefix: str) -> dict[str, Tensor]:
    """A transformers CLIP text encoder's tensors in Hugging Face's layout under ``prefix``, with the
    ``text_model.`` that transformers 5 dropped from ``CLIPTextModel``'s names (the original files carry it)."""
    converted = {}
    for key, tensor in text_encoder.state_dict().items():
        name = key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}"
        converted[prefix + name] = tensor
    return converted


def openclip_state_dict(text_encoder: nn.Module, prefix: str) -> dict[str, Tensor]:
    """A transformers CLIP text encoder's tensors in OpenCLIP's layout under ``prefix``: q, k and v joined into
    ``attn.in_proj_*``, ``text_projection`` as the (width, dim) matrix OpenCLIP multiplies by."""
    state = {key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}": tensor
             for key, tensor in text_encoder.state_dict().items()}  # fmt: skip
    converted = {}
    for key, tensor in state.items():
        if key in OPENCLIP_TOP:
            converted[prefix + OPENCLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            converted[prefix + "text_projection"] = tensor.T.contiguous()
        elif match := re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", key):
            converted.update(openclip_layer_tensors(f"{prefix}transformer.resblocks.{match[1]}.", match[2], state, key))
        elif not key.endswith("position_ids"):
            raise ValueError(f"no OpenCLIP name for the text-encoder tensor {key}")
    return converted


def openclip_layer_tensors(prefix: str, rest: str, state: Mapping[str, Tensor], key: str) -> dict[str, Tensor]:
    """One encoder layer tensor in OpenCLIP's names; q, k and v are joined when q is met (k and v give nothing)."""
    if match := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
        if match[1] != "q":
            return {}
        parts = [state[key.replace(".q_proj.", f".{name}_proj.")] for name in "qkv"]
        return {f"{prefix}attn.in_proj_{match[2]}": torch.cat(parts)}
    return {prefix + renamed(rest.replace("self_attn.out_proj", "attn.out_proj"), OPENCLIP_LAYER): state[key]}


def uses_openclip_layout(text_encoder: nn.Module) -> bool:
    """Whether an SD 1.x/2.x text encoder is OpenCLIP's (SD 2.x: GELU) rather than OpenAI CLIP's (quick GELU)."""
    return text_encoder.config.hidden_act == "gelu"


def sd_state_dict(components: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """SD 1.x (CLIP under ``cond_stage_model.transformer.``) or SD 2.x (OpenCLIP under ``cond_stage_model.model.``)."""
    encoder = components["text_encoder"]
    if uses_openclip_layout(encoder):
        text = openclip_state_dict(encoder, "cond_stage_model.model.")
    else:
        text = clip_state_dict(encoder, "cond_stage_model.transformer.")
    return {**unet_state_dict(components["unet"]), **vae_state_dict(components["vae"]), **text}


def sdxl_state_dict(components: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """SDXL base in SGM's layout: CLIP-L as embedder 0, OpenCLIP bigG as embedder 1."""
    return {
        **unet_state_dict(components["unet"]),
        **vae_state_dict(components["vae"]),
        **clip_state_dict(components["text_encoder"], "conditioner.embedders.0.transformer."),
        **openclip_state_dict(components["text_encoder_2"], "conditioner.embedders.1.model."),
    }


LAYOUTS: dict[str, Callable[[Mapping[str, nn.Module]], dict[str, Tensor]]] = {
    "StableDiffusionPipeline": sd_state_dict,
    "StableDiffusionXLPipeline": sdxl_state_dict,
}


def check_single_file_support(pipeline_class_name: str, argument: str) -> None:
    """Refuse, in one line, a single-file output for a pipeline whose original layout is not written."""
    if pipeline_class_name not in LAYOUTS:
        supported = ", ".join(f"{name} ({family})" for name, family in SUPPORTED.items())
        raise UserError(
            f"{argument}: single-file checkpoints are written for {supported}, not {pipeline_class_name}; "
            "give a folder to write a diffusers folder instead"
        )


def original_state_dict(
    pipeline_class_name: str, components: Mapping[str, nn.Module], v_prediction: bool = False
) -> dict[str, Tensor]:
    """Every tensor of an SD 1.x/2.x or SDXL pipeline under its original name.

    Args:
        pipeline_class_name: ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.
        components: component name -> module (``unet``, ``vae``, the text encoders).
        v_prediction: add ComfyUI's ``v_pred`` marker (the model predicts v).
    """
    check_single_file_support(pipeline_class_name, "model")
    state = LAYOUTS[pipeline_class_name](components)
    if v_prediction:
        state[V_PREDICTION_MARKER] = torch.tensor([])
    return state


def write_single_file(
    path: Path,
    pipeline_class_name: str,
    components: Mapping[str, nn.Module],
    dtype: torch.dtype | None = None,
    v_prediction: bool = False,
) -> Path:
    """Write an SD 1.x/2.x or SDXL pipeline as one original-layout ``.safetensors`` file, atomically; return it.

    Args:
        path: the file to write.
        pipeline_class_name: ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``.
        components: component name -> module (``unet``, ``vae``, the text encoders).
        dtype: the dtype of the floating-point tensors; None keeps each module's.
        v_prediction: mark the model as predicting v (see :func:`original_state_dict`).
    """
    state = original_state_dict(pipeline_class_name, components, v_prediction)
    state = {
        key: (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor).contiguous()
        for key, tensor in state.items()
    }
    metadata = {"format": "pt"}
    return write_named_atomic(path, lambda staging: save_file(state, staging, metadata=metadata))  # streamed
