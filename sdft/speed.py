"""Memory and speed switches for a loaded model family: frozen weights in a lower precision, channels-last
convolutions, diffusers' attention backends, ``torch.compile``, a quantized base and offloaded blocks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName

from sdft.errors import UserError
from sdft.families.base import ModelFamily
from sdft.offloading import BlockOffload

#: where the options sit in a config
CONFIG_KEY = "model.init_args.speed"
FROZEN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the trainer precision whose autocast runs frozen weights of each lower dtype beside float32 trained ones
MIXED_PRECISION = {"bfloat16": "bf16-mixed", "float16": "16-mixed"}
#: what to do instead, when the precision does not match the frozen dtype
PRECISION_FIX = {
    "bfloat16": "set trainer.precision: bf16-mixed",
    "float16": "set trainer.precision: 16-mixed on a GPU (on a CPU Lightning runs 16-mixed as bf16-mixed: use "
    "frozen_dtype: bfloat16 there)",
}


def attention_backends() -> list[str]:
    """The attention backend names the installed diffusers knows (``native`` is torch's SDPA)."""
    return [backend.value for backend in AttentionBackendName]


@dataclass(frozen=True)
class SpeedOptions:
    """Memory and speed switches of a fine-tuner (``model.init_args.speed``); each is off by default.

    Attributes:
        frozen_dtype: dtype of the frozen (not trained) weights of the denoiser, the text encoders and the VAE
            (which stays in the family's own VAE dtype when it pins one, e.g. SDXL's float32); trained weights
            (adapters, new embeddings, a fully trained denoiser) keep float32. ``bfloat16`` needs
            ``trainer.precision: bf16-mixed`` and ``float16`` needs ``16-mixed``, whose autocast runs both kinds
            together. None keeps the weights as loaded. Halves the memory of the frozen base, as diffusers'
            training scripts do with ``weight_dtype``.
        channels_last: store a convolutional denoiser (a UNet) channels-last, which tensor cores run faster;
            transformer denoisers (SD3, Flux) have no convolutions to speed up and refuse it.
        compile: ``torch.compile`` the denoiser in place (parameter names, checkpoints and exports unchanged). The
            first steps, the first validation and the first sampling each take longer while it compiles.
        attention_backend: diffusers' attention backend for the denoiser, e.g. ``native`` (torch's SDPA),
            ``_native_math``, ``flash`` (needs flash-attn), ``sage`` (needs sageattention); diffusers also makes it
            the process's default. Only denoisers whose attention goes through diffusers' dispatcher take one
            (Flux); None keeps the default, torch's SDPA.
        quantize: store the frozen base's linear layers (denoiser and text encoders) in ``int8``, ``float8`` or
            ``nf4`` (QLoRA's 4-bit NormalFloat) weight-only form through torchao, after loading and before adapters
            wrap them; adapters and new embeddings stay in full precision and exports are unchanged (they load on an
            unquantized base). int8 and float8 hold about a quarter of the float32 weights' memory (a half of
            bf16's), nf4 about an eighth (a quarter of bf16's); nf4 leaves a weight whose size is not a multiple of
            16,384 elements as it is. Full fine-tuning (which trains the quantized weights) and
            sharding refuse it.
        offload_text_encoders: keep the frozen text encoders in CPU memory during a fit. Before the first step
            every prompt the data can produce is encoded into the prompt cache with the encoders on the
            accelerator, which they then leave; they come back only to encode a prompt the cache lacks and while
            sampling (previews, evaluation). For the language-model encoders of Z-Image, Qwen-Image and FLUX.2
            (4-24B parameters). Needs the prompt cache and frozen encoders, in a single-process fit.
        offload_blocks: keep the frozen weights of the denoiser's first N blocks (``all``: every block; numbered as
            LoRA's ``target_blocks`` numbers them) in CPU memory, pinned, and bring them onto the accelerator one
            block at a time for its forward and again for its backward, the next block copied on a side stream
            while one computes (:mod:`sdft.offloading`). Frees the accelerator memory of those weights but for
            the one or two blocks there at a time: most of a FLUX.1 or Qwen-Image transformer, so that a LoRA fits
            a 12-24 GB GPU (with ``gradient_checkpointing`` to keep the activations small too). Each training step
            copies the offloaded weights over PCIe twice (forward, backward), each sampling step once: slower
            where the copies outlast the blocks' compute, e.g. at small batches. Adapters stay on the accelerator.
            For methods that leave the blocks' base weights frozen (LoRA, textual inversion), in a single-process
            fit; ``compile`` and ``quantize`` refuse it. Needs CPU memory for the offloaded weights, pinned.
    """

    frozen_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    channels_last: bool = False
    compile: bool = False
    attention_backend: str | None = None
    offload_text_encoders: bool = False
    quantize: Literal["int8", "float8", "nf4"] | None = None
    offload_blocks: int | Literal["all"] | None = None

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise UserError(
                f"{CONFIG_KEY}.quantize must be null or one of {', '.join(QUANTIZATIONS)}, got {self.quantize!r}"
            )
        if self.quantize is not None and importlib.util.find_spec("torchao") is None:
            raise UserError(
                f"{CONFIG_KEY}.quantize {self.quantize} needs torchao: install sdft's quantize extra "
                "(uv sync --extra quantize, or pip install torchao), or set quantize: null"
            )
        if self.frozen_dtype is not None and self.frozen_dtype not in FROZEN_DTYPES:
            raise UserError(
                f"{CONFIG_KEY}.frozen_dtype must be null or one of {', '.join(FROZEN_DTYPES)}, "
                f"got {self.frozen_dtype!r}"
            )
        if self.attention_backend is not None and self.attention_backend not in attention_backends():
            raise UserError(
                f"{CONFIG_KEY}.attention_backend must be null or one of {', '.join(attention_backends())}, "
                f"got {self.attention_backend!r}"
            )
        self.check_offload_blocks()

    def check_offload_blocks(self) -> None:
        """Refuse an ``offload_blocks`` that is neither a positive block count nor ``all``, or that comes with a
        switch it does not combine with."""
        count = self.offload_blocks
        if count is None:
            return
        if count != "all" and (type(count) is not int or count < 1):
            raise UserError(f"{CONFIG_KEY}.offload_blocks must be a positive number of blocks or all, got {count!r}")
        for key, value in (("compile", self.compile), ("quantize", self.quantize)):
            if value:
                raise UserError(
                    f"{CONFIG_KEY}.offload_blocks does not combine with {key} yet: drop {key}, or set "
                    "offload_blocks: null"
                )

    def check_precision(self, precision: str) -> None:
        """Refuse a frozen dtype below float32 unless the trainer's precision (e.g. ``bf16-mixed``) is the mixed
        precision that runs it."""
        required = MIXED_PRECISION.get(self.frozen_dtype)
        if required is not None and precision != required:
            raise UserError(
                f"{CONFIG_KEY}.frozen_dtype {self.frozen_dtype} needs trainer.precision {required}, got {precision}: "
                f"{PRECISION_FIX[self.frozen_dtype]}, or drop frozen_dtype"
            )


#: every switch off: the fine-tuners' default
NO_SWITCHES = SpeedOptions()


def apply_speed_options(family: ModelFamily, options: SpeedOptions, precision: str) -> None:
    """Apply ``options`` to a loaded family whose trained parameters already require gradients.

    A fine-tuner calls it in ``configure_model`` after ``configure_trainable`` and after enabling gradient
    checkpointing: ``requires_grad`` tells the frozen weights (which are cast) from the trained ones, and the
    compiled denoiser must already hold its adapters. Every check runs before anything changes. With a frozen dtype
    below float32, whatever runs the model outside Lightning's steps (sampling previews, evaluation) needs the
    trainer's autocast too (``trainer.precision_plugin.forward_context()``).

    Args:
        family: a loaded model family.
        options: the switches.
        precision: the trainer's precision (``trainer.precision``, e.g. ``bf16-mixed``).
    """
    options.check_precision(precision)
    check_denoiser(family, options)
    denoiser = family.denoiser
    if options.attention_backend is not None:
        try:
            denoiser.set_attention_backend(options.attention_backend)
        except RuntimeError as error:  # diffusers' word on a backend whose package is missing or too old
            raise UserError(f"{CONFIG_KEY}.attention_backend {options.attention_backend}: {error}") from error
    if options.frozen_dtype is not None:
        cast_frozen(family, FROZEN_DTYPES[options.frozen_dtype])
    if options.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    if options.compile:
        denoiser.compile()


def check_denoiser(family: ModelFamily, options: SpeedOptions) -> None:
    """Refuse switches the family's denoiser cannot take: channels-last for a transformer, an attention backend for
    a denoiser that calls torch's SDPA directly instead of diffusers' dispatcher (the UNets, SD3's transformer)."""
    denoiser = family.denoiser
    what = f"the {family.denoiser_name} of {type(family).__name__} ({type(denoiser).__name__})"
    if options.channels_last and family.denoiser_name != "unet":
        raise UserError(
            f"{CONFIG_KEY}.channels_last is for convolutional denoisers (UNets); {what} works on token sequences: "
            "set it to false"
        )
    dispatches = any(isinstance(module, AttentionModuleMixin) for module in denoiser.modules())
    if options.attention_backend is not None and not dispatches:
        raise UserError(
            f"{CONFIG_KEY}.attention_backend: {what} calls torch's scaled_dot_product_attention directly, not "
            "diffusers' attention dispatcher, so it takes no backend: set it to null"
        )


#: the weight-only quantizations of ``speed.quantize``, by name -> torchao's config class (None: NF4, below)
QUANTIZATIONS = {"int8": "Int8WeightOnlyConfig", "float8": "Float8WeightOnlyConfig", "nf4": None}
#: NF4's blocks (QLoRA's): a scale per 64 weights, the scales themselves quantized in blocks of 256
NF4_BLOCK, NF4_SCALER_BLOCK = 64, 256


def nf4_quantizes(elements: int) -> bool:
    """Whether a linear weight of this many elements takes NF4: it must split into whole blocks of scales."""
    return elements % (NF4_BLOCK * NF4_SCALER_BLOCK) == 0


def quantize_frozen(family: ModelFamily, kind: str) -> None:
    """Quantize the linear layers of the denoiser and of every text encoder in place (weight-only, torchao), before
    any adapter wraps them: peft then adds its adapters beside the quantized weights.

    ``int8`` and ``float8`` go through torchao's ``quantize_``. ``nf4`` stores each weight as torchao's
    ``NF4Tensor`` (QLoRA's 4-bit NormalFloat with double-quantized block scales), which computes a linear layer by
    dequantizing the weight into the input's dtype; a weight too small to split into its blocks stays as it is.

    Args:
        family: a loaded family, nothing trainable yet.
        kind: a key of :data:`QUANTIZATIONS`.
    """
    from torchao import quantization

    components = [family.denoiser, *family.text_encoders().values()]
    if kind == "nf4":
        for component in components:
            for module in component.modules():
                if type(module) is torch.nn.Linear and nf4_quantizes(module.weight.numel()):
                    weight = quantization.to_nf4(module.weight.detach(), NF4_BLOCK, NF4_SCALER_BLOCK)
                    module.weight = torch.nn.Parameter(weight, requires_grad=False)
        return
    config = getattr(quantization, QUANTIZATIONS[kind])()
    for module in components:
        quantization.quantize_(module, config)


def cast_frozen(family: ModelFamily, dtype: torch.dtype) -> None:
    """Cast the frozen floating-point parameters of the denoiser and text encoders to ``dtype``, and the VAE's to
    the family's ``capabilities.vae_dtype`` (``dtype`` when it pins none); parameters that train keep theirs."""
    vae_dtype = family.capabilities.vae_dtype or dtype
    components = [(family.denoiser, dtype), *((encoder, dtype) for encoder in family.text_encoders().values())]
    for component, target in [*components, (family.vae, vae_dtype)]:
        for parameter in component.parameters():
            # a quantized weight (a tensor subclass, speed.quantize) keeps its own form
            if not parameter.requires_grad and parameter.is_floating_point() and type(parameter.data) is torch.Tensor:
                parameter.data = parameter.data.to(target)


def offload_blocks(family: ModelFamily, count: int | Literal["all"]) -> BlockOffload:
    """Offload the frozen weights of the denoiser's first ``count`` blocks (``all``: every block), the family's
    ``capabilities.block_types``, outermost first in module order; call it once the trained parameters require
    gradients, in a single-process fit, before the model moves to its device.

    Args:
        family: a loaded family.
        count: ``speed.offload_blocks``.
    """
    blocks = denoiser_blocks(family)
    what = f"the {family.denoiser_name} of {type(family).__name__}"
    if not blocks:
        raise UserError(f"{CONFIG_KEY}.offload_blocks: {what} names no block types to offload; set it to null")
    if count != "all" and count > len(blocks):
        raise UserError(
            f"{CONFIG_KEY}.offload_blocks {count}: {what} has {len(blocks)} blocks; set it to {len(blocks)} or all"
        )
    chosen = blocks if count == "all" else blocks[:count]
    if any(all(p.requires_grad for p in block.parameters()) for block in chosen):
        raise UserError(
            f"{CONFIG_KEY}.offload_blocks keeps frozen weights in CPU memory, but every weight of the blocks of "
            f"{what} trains (full fine-tuning): set offload_blocks: null, or train a LoRA"
        )
    return BlockOffload(family.denoiser, chosen)


def denoiser_blocks(family: ModelFamily) -> list[torch.nn.Module]:
    """The outermost modules of the denoiser whose class is one of the family's ``capabilities.block_types``, in
    module order."""
    types, blocks = set(family.capabilities.block_types), []
    for module in family.denoiser.modules():
        if type(module).__name__ in types and not any(module in block.modules() for block in blocks[-1:]):
            blocks.append(module)
    return blocks
