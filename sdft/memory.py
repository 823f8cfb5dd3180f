"""A memory plan: what a fit will hold on each accelerator, from the model's configs alone, before any weight loads.

The fine-tuner is copied and its family built on the meta device (shapes and dtypes, no storage), where the method
adds its adapters or new tokens as in a real fit. What the copy measures, the plan reads:

- the frozen and trained parameters of each component, by dtype: exact;
- the optimizer state, from one step of the configured optimizer on the meta device: exact;
- the encoding cache (a VAE posterior per image, an embedding per prompt): exact per entry;
- the activations, as the bytes autograd saves for the backward pass of one training batch at the configured
  resolution, counted on the meta device. With gradient checkpointing each checkpointed block keeps its inputs and
  only one block's activations live at once (while it is recomputed). A 16-bit mixed precision is emulated
  (:class:`MetaAutocast`: autocast does not reach the meta device), its 16-bit copies of 32-bit weights included.
  Prompts count at the longest the family reads (its ``max_sequence_length``),
  which bounds the families whose sequence is as long as the prompt (Z-Image, Qwen-Image). An estimate: the kernels'
  scratch memory and the allocator's fragmentation are not in it.

The switches (:class:`Switches`) then change the sum by arithmetic, so every combination is planned from one build:
what ``sdft plan`` prints, what ``sdft fit --memory_budget`` checks before loading, and what
``scripts/memory_report.py`` tabulates for the published architectures.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sdft.errors import UserError
from sdft.speed import NF4_BLOCK, NF4_SCALER_BLOCK, cast_frozen, denoiser_blocks, nf4_quantizes

GIB = 2**30
#: trainer precisions whose autocast computes in 16 bits
SIXTEEN_BIT = ("bf16-mixed", "16-mixed", "bf16-true", "16-true", "bf16", "16")
#: prompt used for the planned batch (its length does not matter: encoders pad to their maximum length)
PLAN_PROMPT = "a photo of sks dog"


@dataclass(frozen=True)
class Switches:
    """The memory switches a plan varies (``model.init_args.speed`` and ``gradient_checkpointing``)."""

    frozen_dtype: str | None = None
    quantize: str | None = None
    gradient_checkpointing: bool = False
    offload_text_encoders: bool = False
    offload_blocks: int | str | None = None

    def changes(self, other: Switches) -> list[str]:
        """The config settings that turn ``self`` into ``other``."""
        keys = {"gradient_checkpointing": "model.init_args.gradient_checkpointing"}
        return [
            f"{keys.get(item.name, 'model.init_args.speed.' + item.name)}: {str(after).lower()}"
            for item in dataclasses.fields(self)
            if (after := getattr(other, item.name)) != getattr(self, item.name)
        ]


@dataclass(frozen=True)
class FrozenTensor:
    """A frozen parameter's size: ``rows`` is set for a linear layer's weight (the per-row scales of a quantized
    weight) of a component that quantizes."""

    elements: int
    dtype: str
    rows: int | None = None


@dataclass
class Footprint:
    """What one meta-device build measured: everything a plan needs, whatever the switches.

    Attributes:
        frozen: each component's frozen parameters.
        trained: trained elements (float32 each) per component.
        optimizer_bytes: the optimizer's state for the trained parameters.
        optimizer_name: its class.
        cache_bytes: the encoding cache's entries (float32), for every image and prompt of the data.
        saved: the bytes one batch saves for backward, by gradient checkpointing (off, on) and run mode
            (:data:`RUN_MODES`).
        blocks: the frozen parameters of each of the denoiser's blocks (``speed.offload_blocks``), in order.
        text_encoders: the names of the text encoders.
        vae: the name of the VAE component and the dtype the family pins it to, if any.
    """

    frozen: dict[str, list[FrozenTensor]]
    trained: dict[str, int]
    optimizer_bytes: int
    optimizer_name: str
    cache_bytes: int
    saved: dict[tuple[bool, str], int]
    blocks: list[list[FrozenTensor]]
    text_encoders: tuple[str, ...]
    denoiser: str
    vae_dtype: str | None = None


@dataclass(frozen=True)
class Plan:
    """Planned bytes per device, by part, for one set of switches.

    ``peak`` is the larger of training (what a step holds) and encoding: the text encoders on the accelerator
    beside everything else but gradients and activations. Every fit has that moment, offloaded encoders included:
    Lightning moves the whole model onto the device, then the training prompts are encoded before the encoders
    leave, and they come back whenever previews and evaluation sample.
    """

    switches: Switches
    frozen: dict[str, dict[str, int]]
    trained: int
    gradients: int
    optimizer: int
    cache: int
    activations: int
    offloaded: int
    offloaded_blocks: int
    devices: int
    strategy: str
    optimizer_name: str
    notes: list[str] = field(default_factory=list)

    @property
    def frozen_total(self) -> int:
        return sum(sum(by_dtype.values()) for by_dtype in self.frozen.values())

    @property
    def training(self) -> int:
        return self.frozen_total + self.trained + self.gradients + self.optimizer + self.cache + self.activations

    @property
    def encoding(self) -> int:
        return self.frozen_total + self.offloaded + self.trained + self.optimizer + self.cache

    @property
    def peak(self) -> int:
        return max(self.training, self.encoding)

    def table(self) -> str:
        """The plan as a plain-text table, in GiB (MiB when it all fits in one GiB)."""
        unit, scale = ("GiB", GIB) if self.peak >= GIB else ("MiB", 2**20)
        lines = [f"memory plan per device ({self.strategy}, {self.devices} device(s)), in {unit}:"]
        for component, by_dtype in self.frozen.items():
            parts = ", ".join(f"{size / scale:.2f} {dtype}" for dtype, size in sorted(by_dtype.items()) if size)
            lines.append(f"  {component:<22}{sum(by_dtype.values()) / scale:8.2f}  frozen weights ({parts or 'none'})")
        if self.offloaded:
            lines.append(f"  {'(in CPU memory)':<22}{self.offloaded / scale:8.2f}  offloaded text encoders")
        if self.offloaded_blocks:
            lines.append(f"  {'(in CPU memory)':<22}{self.offloaded_blocks / scale:8.2f}  offloaded denoiser blocks")
        rows = [
            ("trained parameters", self.trained, "float32"),
            ("gradients", self.gradients, "float32"),
            ("optimizer state", self.optimizer, self.optimizer_name),
            ("encoding cache", self.cache, "latents and prompt embeddings"),
            ("activations", self.activations, "estimate: saved for backward"),
        ]
        lines += [f"  {name:<22}{size / scale:8.2f}  {what}" for name, size, what in rows]
        lines.append(f"  {'training step':<22}{self.training / scale:8.2f}")
        lines.append(f"  {'encoding':<22}{self.encoding / scale:8.2f}  text encoders on the device (start, sampling)")
        lines.append(f"  {'peak':<22}{self.peak / scale:8.2f}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def size_text(size: int) -> str:
    """Bytes as GiB, or MiB below one GiB."""
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"


def parse_size(text: str | int | float, key: str) -> int:
    """``24GB``, ``24GiB``, ``24`` (GiB) or ``12.5 gb`` -> bytes (GB read as GiB, as GPUs are sold)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(gib|gb|g|mib|mb|m)?\s*", str(text).lower())
    if match is None:
        raise UserError(f"{key}: expected a size such as 24GB or 12.5GiB, got {text!r}")
    unit = match.group(2) or "gb"
    return int(float(match.group(1)) * (2**20 if unit.startswith("m") else GIB))


# --- measuring a meta-device build ----------------------------------------------------------------------------


def meta_copy(model: Any) -> Any:
    """A copy of an unloaded fine-tuner whose family loads on the meta device, its new weights made as a fit makes
    them (adapters, tokens; an ``init_lora`` file is not read: its shapes are the adapters')."""
    if model.family.is_loaded:
        raise ValueError("plan a fine-tuner before its family loads")
    meta = copy.deepcopy(model)
    meta.family.load_weights = False
    if hasattr(meta, "checkpoint_loaded"):
        meta.checkpoint_loaded = True
    with meta_language_models():
        meta.family.load()
        meta.family.noise_schedule.to("meta")  # its tables meet the meta latents
        for encoder in meta.family.text_encoders().values():
            if hasattr(encoder, "set_attn_implementation"):  # SDPA's mask check reads values the meta device lacks
                encoder.set_attn_implementation("eager")
        meta.configure_trainable()
    return meta


@contextlib.contextmanager
def meta_language_models() -> Iterator[None]:
    """Let a language model run on the meta device: a mask's non-zero positions are all of them (the longest
    prompt), which is what the plan wants."""
    from torch.fx.experimental import _config

    previous = _config.meta_nonzero_assume_all_nonzero
    _config.meta_nonzero_assume_all_nonzero = True
    try:
        yield
    finally:
        _config.meta_nonzero_assume_all_nonzero = previous


def frozen_tensors(component: nn.Module, quantizes: bool) -> list[FrozenTensor]:
    """The frozen parameters of a component; the weights of its linear layers carry their rows when it quantizes
    (``speed.quantize`` reaches the denoiser and the text encoders)."""
    linear = {}
    if quantizes:
        for module in component.modules():
            if type(module) is nn.Linear and not module.weight.requires_grad:
                linear[id(module.weight)] = module.weight.shape[0]
    seen: set[int] = set()
    tensors = []
    for parameter in component.parameters():
        if parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        dtype = str(parameter.dtype).removeprefix("torch.")
        tensors.append(FrozenTensor(parameter.numel(), dtype, linear.get(id(parameter))))
    return tensors


def trained_elements(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def optimizer_state_bytes(meta: Any) -> tuple[int, str]:
    """The state one step of the fine-tuner's optimizer creates for its trained parameters (meta device: no
    storage, exact sizes), and the optimizer's class; an optimizer that cannot step there counts two float32
    moments per element, as Adam."""
    groups = meta.parameter_groups()
    for group in groups:
        for parameter in group["params"]:
            parameter.grad = torch.empty_like(parameter)
    optimizer = meta.optimizer(groups)
    trained = [p for group in groups for p in group["params"]]
    name = type(optimizer).__name__
    try:
        optimizer.step()
    except (RuntimeError, NotImplementedError, TypeError):
        return sum(2 * 4 * p.numel() for p in trained), name
    finally:
        for parameter in trained:
            parameter.grad = None
    state = [value for values in optimizer.state.values() for value in values.values()]
    size = sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor) and t.device.type == "meta")
    return size, name


class SavedBytes:
    """Counts the bytes autograd saves for backward (``saved_tensors_hooks``), each storage once and the model's
    parameters not (they are weights, not activations).

    Args:
        parameters: the storages of the model's parameters.
        counted: storages already counted elsewhere.
    """

    def __init__(self, parameters: set[int], counted: set[int] = frozenset()) -> None:
        self.parameters, self.counted = parameters, counted
        self.seen: set[int] = set()
        self.kept: list[torch.Tensor] = []  # alive while counting, so storage ids stay unique
        self.total = 0

    def add(self, tensor: Any) -> Any:
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key not in self.seen and key not in self.counted and key not in self.parameters:
                self.seen.add(key)
                self.kept.append(tensor)
                self.total += storage.nbytes()
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.add, lambda tensor: tensor)


F = torch.nn.functional
#: what autocast runs in its 16-bit dtype: the matrix products and convolutions
LOWER_PRECISION = {
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose2d, torch.matmul, torch.mm, torch.bmm, torch.addmm,
    torch.baddbmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.einsum,
}  # fmt: skip
#: what autocast runs in float32: normalisations, softmax and losses
FULL_PRECISION = {
    F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm, F.softmax, torch.softmax, torch.Tensor.softmax,
    F.log_softmax, F.mse_loss, F.rms_norm,
}  # fmt: skip


class MetaAutocast(torch.overrides.TorchFunctionMode):
    """Autocast's casts on the meta device, which autocast does not reach: matrix products and convolutions in
    ``dtype``, normalisations and softmax in float32, the rest in what its inputs promote to. A 32-bit weight cast
    for a product is a new tensor, saved for backward as autocast saves it."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        target = self.dtype if func in LOWER_PRECISION else torch.float32 if func in FULL_PRECISION else None
        if target is not None:
            args, kwargs = cast_floats((args, kwargs), target)
        return func(*args, **kwargs)


def cast_floats(tree: Any, dtype: torch.dtype) -> Any:
    """Every floating-point meta tensor in nested tuples, lists and dicts in ``dtype``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(dtype) if tree.is_meta and tree.is_floating_point() and tree.dtype != dtype else tree
    if isinstance(tree, (tuple, list)):
        return type(tree)(cast_floats(item, dtype) for item in tree)
    if isinstance(tree, dict):
        return {key: cast_floats(value, dtype) for key, value in tree.items()}
    return tree


class FusedAttention(torch.autograd.Function):
    """Scaled dot-product attention on the meta device as the fused kernels (flash, memory-efficient) run it: it
    saves its inputs, output and log-sum-exp, never the attention matrix that the meta device's decomposition into
    plain operations would save."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        *batch, heads, length, _ = query.shape
        # laid out (batch, length, heads, dim) as the kernels write it, so that merging the heads is a view
        output = query.new_empty(*batch, length, heads, value.shape[-1]).transpose(-3, -2)
        ctx.save_for_backward(query, key, value, output, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> None:
        raise NotImplementedError("a memory plan runs no backward")


@contextlib.contextmanager
def fused_attention(dtype: torch.dtype | None) -> Iterator[None]:
    """``scaled_dot_product_attention`` on meta tensors counted as a fused kernel (:class:`FusedAttention`), in
    ``dtype`` when an autocast is emulated."""
    original = F.scaled_dot_product_attention

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if query.is_meta and torch.is_grad_enabled():
            if dtype is not None:
                query, key, value = cast_floats((query, key, value), dtype)
            return FusedAttention.apply(query, key, value)
        return original(query, key, value, *args, **kwargs)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


#: how a plan's batch runs: float32; under a 16-bit autocast with float32 frozen weights; with 16-bit frozen weights
RUN_MODES = ("32", "mixed", "mixed-16-bit-weights")


def saved_activations(meta: Any, batch_size: int, resolution: int, checkpointing: bool, mode: str = "32") -> int:
    """The bytes saved for backward by one training batch of the meta fine-tuner (its denoiser, and its text
    encoders where they train; frozen encoders and the VAE run without gradients, as with the cache).

    Args:
        meta: a fine-tuner built on the meta device (:func:`meta_copy`).
        batch_size: examples in the batch.
        resolution: their side, in pixels.
        checkpointing: with gradient checkpointing of the denoiser's blocks.
        mode: one of :data:`RUN_MODES`; the 16-bit ones emulate a bfloat16 autocast (:class:`MetaAutocast`), the
            last with the frozen weights in bfloat16.
    """
    family = meta.family
    dtype = None if mode == "32" else torch.bfloat16
    if mode == "mixed-16-bit-weights":
        meta = copy.deepcopy(meta)  # meta tensors: nothing to copy but their descriptions
        family = meta.family
        cast_frozen(family, torch.bfloat16)
    parameters = {p.untyped_storage()._cdata for p in meta.parameters()}
    counter = SavedBytes(parameters)
    recomputed = 0

    def checkpointed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """What non-reentrant checkpointing keeps: the block's inputs; its own activations live only while it
        is recomputed, one block at a time."""
        nonlocal recomputed
        for value in [*args, *kwargs.values()]:
            counter.add(value)
        inner = SavedBytes(parameters, counter.seen)
        with inner.hooks():
            output = function(*args, **kwargs)
        recomputed = max(recomputed, inner.total)
        return output

    denoiser = family.denoiser
    if checkpointing:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=checkpointed)
    pixels = torch.empty(batch_size, 3, resolution, resolution, device="meta", dtype=family.vae.dtype)
    batch = {
        "pixel_values": pixels,
        "prompts": [PLAN_PROMPT] * batch_size,
        "original_size": torch.full((batch_size, 2), resolution),
        "crop_top_left": torch.zeros(batch_size, 2, dtype=torch.long),
    }
    autocast = contextlib.nullcontext() if dtype is None else MetaAutocast(dtype)
    try:
        with meta_language_models(), fused_attention(dtype), counter.hooks(), autocast:
            with torch.no_grad():
                latents = family.encode_posterior(pixels).mean
            with contextlib.nullcontext() if meta.text_encoders_train() else torch.no_grad():
                embeddings = family.encode_prompts(meta.rewrite_prompts(batch["prompts"]))
            conditioning = family.condition(embeddings, batch)
            noised = family.noise_latents(latents, torch.empty_like(latents), torch.empty(batch_size, device="meta"))
            prediction = family.predict(noised, conditioning)
            F.mse_loss(prediction.float(), noised.target.float())
    finally:
        if checkpointing:
            denoiser.disable_gradient_checkpointing()
    return counter.total + recomputed


def cache_bytes(meta: Any, images: int, prompts: int, resolution: int) -> int:
    """The encoding cache's entries: a VAE posterior per image and an embedding per prompt (none when the cache
    is off; no prompt entries while the text encoders train)."""
    if getattr(meta, "cache", "off") == "off":
        return 0
    family = meta.family
    with torch.no_grad(), meta_language_models():
        pixels = torch.empty(1, 3, resolution, resolution, device="meta", dtype=family.vae.dtype)
        posterior = family.encode_posterior(pixels)
        embedding = family.encode_prompts([PLAN_PROMPT])
    per_image = sum(t.numel() * t.element_size() for t in vars(posterior).values() if isinstance(t, torch.Tensor))
    per_prompt = sum(t.numel() * t.element_size() for t in embedding.values())
    if meta.text_encoders_train():
        prompts = 0
    return images * per_image + prompts * per_prompt


def measure(model: Any, batch_size: int, resolution: int, images: int, prompts: int) -> Footprint:
    """Build ``model`` (an unloaded fine-tuner) on the meta device and measure its :class:`Footprint`.

    Args:
        model: the fine-tuner of the config, not loaded (it is copied, not changed).
        batch_size: examples per step on each device (twice ``data.batch_size`` with prior preservation).
        resolution: the training images' side, in pixels.
        images: distinct training images (each gets a cached posterior).
        prompts: distinct training prompts (each gets a cached embedding).
    """
    meta = meta_copy(model)
    family = meta.family
    quantizing = {family.denoiser_name, *family.text_encoder_names}
    components = {name: module for name, module in family.named_children() if any(True for _ in module.parameters())}
    frozen = {name: frozen_tensors(module, name in quantizing) for name, module in components.items()}
    trained = {name: trained_elements(module) for name, module in components.items()}
    own = sum(p.numel() for n, p in meta.named_parameters() if p.requires_grad and not n.startswith("family."))
    if own:
        trained["method"] = own
    saved = {
        (checkpointing, mode): saved_activations(meta, batch_size, resolution, checkpointing, mode)
        for checkpointing in (False, True)
        for mode in RUN_MODES
    }
    vae_dtype = family.capabilities.vae_dtype
    optimizer_bytes, optimizer_name = optimizer_state_bytes(meta)
    return Footprint(
        frozen=frozen,
        trained={name: size for name, size in trained.items() if size},
        optimizer_bytes=optimizer_bytes,
        optimizer_name=optimizer_name,
        cache_bytes=cache_bytes(meta, images, prompts, resolution),
        saved=saved,
        blocks=[frozen_tensors(block, True) for block in denoiser_blocks(family)],
        text_encoders=tuple(family.text_encoder_names),
        denoiser=family.denoiser_name,
        vae_dtype=None if vae_dtype is None else str(vae_dtype).removeprefix("torch."),
    )


# --- planning from a footprint ----------------------------------------------------------------------------------


def dtype_bytes(name: str) -> int:
    """Bytes per element of a torch dtype named without its prefix (``bfloat16``)."""
    return getattr(torch, name).itemsize


def frozen_bytes(tensor: FrozenTensor, dtype: str | None, quantize: str | None) -> tuple[str, int]:
    """A frozen parameter's dtype and bytes under the switches. Quantized linear weights (torchao's weight-only
    layouts, whose scales keep the loaded dtype, so that a later cast leaves them): int8 and float8 hold a byte
    per element and a scale per row (int8 also a zero point); nf4 half a byte per element, an int8 scale per block
    of 64, a float32 factor per 256 scales, their mean and the 16 code values."""
    if quantize == "nf4" and tensor.rows is not None and nf4_quantizes(tensor.elements):
        blocks = tensor.elements // NF4_BLOCK
        return quantize, tensor.elements // 2 + blocks + 4 * (blocks // NF4_SCALER_BLOCK) + 4 + 4 * 16
    if quantize in ("int8", "float8") and tensor.rows is not None:
        per_row = dtype_bytes(tensor.dtype) + (1 if quantize == "int8" else 0)
        return quantize, tensor.elements + tensor.rows * per_row
    target = dtype or tensor.dtype
    return target, tensor.elements * dtype_bytes(target)


def plan(
    footprint: Footprint,
    switches: Switches,
    precision: str = "32",
    devices: int = 1,
    strategy: str = "single device",
) -> Plan:
    """The bytes per device of a fit under ``switches``.

    Args:
        footprint: what the meta build measured.
        switches: the memory switches.
        precision: the trainer's precision (16-bit mixed: two-byte activations).
        devices: the number of processes (ranks).
        strategy: ``single device``, ``ddp`` (a bucket copy of the gradients) or ``sharded`` (weights,
            gradients and optimizer state divided among the ranks).
    """
    frozen: dict[str, dict[str, int]] = {}
    offloaded = 0
    for component, tensors in footprint.frozen.items():
        by_dtype: Counter[str] = Counter()
        is_vae = component == "vae"
        dtype = (footprint.vae_dtype or switches.frozen_dtype) if is_vae else switches.frozen_dtype
        quantize = None if is_vae else switches.quantize
        for tensor in tensors:
            name, size = frozen_bytes(tensor, dtype, quantize)
            by_dtype[name] += size
        if switches.offload_text_encoders and component in footprint.text_encoders:
            offloaded += sum(by_dtype.values())
            by_dtype = Counter()
        frozen[component] = dict(by_dtype)
    blocks_offloaded = offloaded_blocks(footprint, switches)
    if blocks_offloaded:
        denoiser = frozen[footprint.denoiser]
        denoiser[max(denoiser, key=denoiser.get)] -= blocks_offloaded
    trained = 4 * sum(footprint.trained.values())
    gradients = trained * (2 if strategy == "ddp" and devices > 1 else 1)
    optimizer = footprint.optimizer_bytes
    notes = []
    sharded = strategy == "sharded" and devices > 1
    if sharded:
        frozen = {c: {d: size // devices for d, size in sizes.items()} for c, sizes in frozen.items()}
        trained, gradients, optimizer = trained // devices, gradients // devices, optimizer // devices
        offloaded //= devices
        notes.append("sharded: weights, gradients and optimizer state divided among the ranks")
    full_weights = switches.frozen_dtype in (None, "float32") and switches.quantize is None
    mode = "32" if precision not in SIXTEEN_BIT else "mixed" if full_weights else "mixed-16-bit-weights"
    activations = footprint.saved[switches.gradient_checkpointing, mode]
    return Plan(
        switches=switches,
        frozen=frozen,
        trained=trained,
        gradients=gradients,
        optimizer=optimizer,
        cache=footprint.cache_bytes,
        activations=activations,
        offloaded=offloaded,
        offloaded_blocks=blocks_offloaded,
        devices=devices,
        strategy=strategy,
        optimizer_name=footprint.optimizer_name,
        notes=notes,
    )


def offloaded_blocks(footprint: Footprint, switches: Switches) -> int:
    """The bytes of frozen block weights ``speed.offload_blocks`` keeps in CPU memory: the chosen blocks' but for
    the two (the one computing, the next one arriving) on the accelerator at a time."""
    if switches.offload_blocks is None or not footprint.blocks:
        return 0
    count = len(footprint.blocks) if switches.offload_blocks == "all" else int(switches.offload_blocks)
    sizes = [sum(frozen_bytes(t, switches.frozen_dtype, None)[1] for t in block) for block in footprint.blocks[:count]]
    return max(0, sum(sizes) - min(2, len(sizes)) * max(sizes))


def next_switches(switches: Switches, precision: str, quantize_available: bool) -> Iterator[tuple[Switches, str]]:
    """Switch settings to try in turn, each adding to the last, cheapest in speed first: gradient checkpointing, a
    bf16 frozen base, offloaded text encoders, then a float8 base, an nf4 base, or (instead, as they do not combine)
    offloaded denoiser blocks; each with what it needs beside it."""
    needs_bf16 = "" if precision == "bf16-mixed" else " (with trainer.precision: bf16-mixed)"
    if switches.frozen_dtype in ("bfloat16", "float16"):
        needs_bf16 = ""
    checkpointed = dataclasses.replace(switches, gradient_checkpointing=True)
    cast = (
        checkpointed
        if needs_bf16 == "" and switches.frozen_dtype
        else dataclasses.replace(checkpointed, frozen_dtype="bfloat16")
    )
    encoders = dataclasses.replace(cast, offload_text_encoders=True)
    yield checkpointed, ""
    yield cast, needs_bf16 if cast.frozen_dtype != switches.frozen_dtype else ""
    yield encoders, ""
    if quantize_available and switches.offload_blocks is None:
        yield dataclasses.replace(encoders, quantize="float8"), ""
        yield dataclasses.replace(encoders, quantize="nf4"), ""
    if switches.quantize is None:
        yield dataclasses.replace(encoders, offload_blocks="all"), ""


def advice(footprint: Footprint, switches: Switches, budget: int, **options: Any) -> tuple[Plan, str | None]:
    """The plan of ``switches`` and, when its peak exceeds ``budget``, one line naming the switches to add (the
    fewest, cheapest first, that bring it under), or saying that none do."""
    current = plan(footprint, switches, **options)
    if current.peak <= budget:
        return current, None
    import importlib.util

    best, best_changes = current, []
    for candidate_switches, needs in next_switches(
        switches, options.get("precision", "32"), importlib.util.find_spec("torchao") is not None
    ):
        candidate = plan(footprint, candidate_switches, **options)
        if candidate.peak <= budget:
            candidate_switches = fewest_changes(footprint, switches, candidate_switches, budget, options)
            candidate = plan(footprint, candidate_switches, **options)
            changes = switches.changes(candidate_switches)
            added = [f"{change}{needs if 'frozen_dtype' in change else ''}" for change in changes]
            return current, (
                f"this fit plans {size_text(current.peak)} per device, over the budget of {size_text(budget)}: "
                f"set {'; '.join(added)} (planned {size_text(candidate.peak)})"
            )
        if candidate.peak < best.peak:
            changes = switches.changes(candidate_switches)
            best, best_changes = candidate, [f"{c}{needs if 'frozen_dtype' in c else ''}" for c in changes]
    candidate, added = best, best_changes
    return current, (
        f"this fit plans {size_text(current.peak)} per device, over the budget of {size_text(budget)}, and "
        f"{size_text(candidate.peak)} at best with sdft's switches ({'; '.join(added) or 'all already on'}): lower "
        "data.resolution or data.batch_size, or train on a larger device"
    )


def fewest_changes(
    footprint: Footprint, switches: Switches, fitting: Switches, budget: int, options: dict[str, Any]
) -> Switches:
    """``fitting`` without the changes from ``switches`` that the budget does not need: each is undone in turn,
    cheapest first, and stays undone while the plan still fits (offloaded text encoders, for one, lower the training
    step but not a peak set by the moment they meet the denoiser)."""
    for item in dataclasses.fields(Switches):
        before = getattr(switches, item.name)
        if getattr(fitting, item.name) == before:
            continue
        trial = dataclasses.replace(fitting, **{item.name: before})
        if plan(footprint, trial, **options).peak <= budget:
            fitting = trial
    return fitting


# --- a configured fit -------------------------------------------------------------------------------------------


def switches_of(model: Any) -> Switches:
    """The switches a fine-tuner is configured with."""
    speed = model.speed
    return Switches(
        frozen_dtype=speed.frozen_dtype,
        quantize=speed.quantize,
        gradient_checkpointing=bool(model.gradient_checkpointing),
        offload_text_encoders=speed.offload_text_encoders,
        offload_blocks=speed.offload_blocks,
    )


def fit_options(trainer: Any) -> dict[str, Any]:
    """The precision, rank count and strategy of a trainer, as :func:`plan` takes them."""
    from lightning.pytorch.strategies import DDPStrategy

    from sdft.sharding import ShardedStrategy

    devices = trainer.world_size
    if isinstance(trainer.strategy, ShardedStrategy):
        strategy = "sharded"
    elif isinstance(trainer.strategy, DDPStrategy) and devices > 1:
        strategy = "ddp"
    else:
        strategy = "single device"
    return {"precision": str(trainer.precision), "devices": devices, "strategy": strategy}


def data_sizes(datamodule: Any) -> dict[str, int]:
    """Examples per step on each device, the training side, and the distinct images and prompts the cache holds,
    from a data module whose files were checked (``check()``)."""
    prior = bool(getattr(datamodule, "prior_preservation", False))
    images = len(getattr(datamodule, "images", ()) or ()) + (datamodule.num_class_images if prior else 0)
    try:
        prompts = len(datamodule.training_prompts())
    except (AttributeError, TypeError, ValueError):
        prompts = images
    return {
        "batch_size": datamodule.batch_size * (2 if prior else 1),
        "resolution": datamodule.resolution,
        "images": images,
        "prompts": prompts,
    }


def plan_fit(trainer: Any, model: Any, datamodule: Any, budget: int | None = None) -> tuple[Plan, str | None]:
    """The plan of a configured fit (its data checked, its model not loaded) and, with a ``budget`` in bytes,
    the line naming what to add when the plan exceeds it."""
    footprint = measure(model, **data_sizes(datamodule))
    options = fit_options(trainer)
    if budget is None:
        return plan(footprint, switches_of(model), **options), None
    return advice(footprint, switches_of(model), budget, **options)
