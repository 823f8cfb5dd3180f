"""A memory plan: what a fit will hold on each accelerator, from the model's configs alone, before any weight loads.

The fine-tuner is copied and its family built on the meta device (shapes and dtypes, no storage), where the method
adds its adapters or new tokens as in a real fit. What the copy measures, the plan reads:

- the frozen and trained parameters of each component, by dtype: exact;
- the optimizer state, from one step of the configured optimizer on the meta device: exact;
- the encoding cache (a VAE posterior per image, an embedding per prompt): exact per entry;
- the activations, as the bytes autograd saves for the backward pass of one training batch at the configured
  resolution, counted on the meta device. With gradient checkpointing each checkpointed block keeps its inputs and
  only one block's activations live at once (while it is recomputed). Under a 16-bit mixed precision the floating-point
  activations count two bytes each. Prompts count at the longest the family reads (its ``max_sequence_length``),
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

GIB = 2**30
#: trainer precisions whose autocast computes in 16 bits
SIXTEEN_BIT = ("bf16-mixed", "16-mixed", "bf16-true", "16-true", "bf16", "16")
#: dtype name -> bytes per element
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1, "int8": 1}
#: prompt used for the planned batch (its length does not matter: encoders pad to their maximum length)
PLAN_PROMPT = "a photo of sks dog"


@dataclass(frozen=True)
class Switches:
    """The memory switches a plan varies (``model.init_args.speed`` and ``gradient_checkpointing``)."""

    frozen_dtype: str | None = None
    quantize: str | None = None
    gradient_checkpointing: bool = False
    offload_text_encoders: bool = False

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
        activations: bytes saved for backward (float32 counting) by checkpointing off / on.
        activations_16: the same counting floating-point activations at two bytes.
        text_encoders: the names of the text encoders.
        vae: the name of the VAE component and the dtype the family pins it to, if any.
    """

    frozen: dict[str, list[FrozenTensor]]
    trained: dict[str, int]
    optimizer_bytes: int
    optimizer_name: str
    cache_bytes: int
    activations: dict[bool, int]
    activations_16: dict[bool, int]
    text_encoders: tuple[str, ...]
    vae_dtype: str | None = None


@dataclass(frozen=True)
class Plan:
    """Planned bytes per device, by part, for one set of switches.

    ``peak`` is the larger of training (what a step holds) and sampling (previews and evaluation between steps:
    the text encoders back on the accelerator, no gradients or activations).
    """

    switches: Switches
    frozen: dict[str, dict[str, int]]
    trained: int
    gradients: int
    optimizer: int
    cache: int
    activations: int
    offloaded: int
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
    def sampling(self) -> int:
        return self.frozen_total + self.offloaded + self.trained + self.optimizer + self.cache

    @property
    def peak(self) -> int:
        return max(self.training, self.sampling)

    def table(self) -> str:
        """The plan as a plain-text table, in GiB (MiB when it all fits in one GiB)."""
        unit, scale = ("GiB", GIB) if self.peak >= GIB else ("MiB", 2**20)
        lines = [f"memory plan per device ({self.strategy}, {self.devices} device(s)), in {unit}:"]
        for component, by_dtype in self.frozen.items():
            parts = ", ".join(f"{size / scale:.2f} {dtype}" for dtype, size in sorted(by_dtype.items()) if size)
            lines.append(f"  {component:<22}{sum(by_dtype.values()) / scale:8.2f}  frozen weights ({parts or 'none'})")
        if self.offloaded:
            lines.append(f"  {'(in CPU memory)':<22}{self.offloaded / scale:8.2f}  offloaded text encoders")
        rows = [
            ("trained parameters", self.trained, "float32"),
            ("gradients", self.gradients, "float32"),
            ("optimizer state", self.optimizer, self.optimizer_name),
            ("encoding cache", self.cache, "latents and prompt embeddings"),
            ("activations", self.activations, "estimate: saved for backward"),
        ]
        lines += [f"  {name:<22}{size / scale:8.2f}  {what}" for name, size, what in rows]
        lines.append(f"  {'training step':<22}{self.training / scale:8.2f}")
        lines.append(f"  {'sampling':<22}{self.sampling / scale:8.2f}  previews and evaluation")
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


def optimizer_state_bytes(meta: Any) -> int:
    """The state one step of the fine-tuner's optimizer creates for its trained parameters (meta device: no
    storage, exact sizes); an optimizer that cannot step there counts two float32 moments per element, as Adam."""
    groups = meta.parameter_groups()
    for group in groups:
        for parameter in group["params"]:
            parameter.grad = torch.empty_like(parameter)
    optimizer = meta.optimizer(groups)
    trained = [p for group in groups for p in group["params"]]
    try:
        optimizer.step()
    except (RuntimeError, NotImplementedError, TypeError):
        return sum(2 * 4 * p.numel() for p in trained)
    finally:
        for parameter in trained:
            parameter.grad = None
    state = [value for values in optimizer.state.values() for value in values.values()]
    return sum(t.numel() * t.element_size() for t in state if isinstance(t, torch.Tensor) and t.device.type == "meta")


class SavedBytes:
    """Counts the bytes autograd saves for backward (``saved_tensors_hooks``), each storage once and parameters
    not: ``total`` at the tensors' own sizes, ``total_16`` with floating-point tensors at two bytes (a 16-bit
    autocast's activations)."""

    def __init__(self, excluded: set[int]) -> None:
        self.excluded = excluded
        self.seen: set[int] = set()
        self.kept: list[torch.Tensor] = []  # alive while counting, so storage ids stay unique
        self.total = self.total_16 = 0

    def add(self, tensor: Any) -> Any:
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            if storage._cdata not in self.seen and storage._cdata not in self.excluded:
                self.seen.add(storage._cdata)
                self.kept.append(tensor)
                self.total += storage.nbytes()
                elements = storage.nbytes() // tensor.element_size()
                self.total_16 += elements * (2 if tensor.is_floating_point() else tensor.element_size())
        return tensor

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.add, lambda tensor: tensor)


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
def fused_attention() -> Iterator[None]:
    """``scaled_dot_product_attention`` on meta tensors counted as a fused kernel (:class:`FusedAttention`)."""
    original = torch.nn.functional.scaled_dot_product_attention

    def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if query.is_meta and torch.is_grad_enabled():
            return FusedAttention.apply(query, key, value)
        return original(query, key, value, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def saved_activations(meta: Any, batch_size: int, resolution: int, checkpointing: bool) -> tuple[int, int]:
    """The bytes saved for backward by one training batch of the meta fine-tuner (its denoiser, and its text
    encoders where they train; frozen encoders and the VAE run without gradients, as with the cache), at the
    tensors' own sizes and with two-byte floating-point activations."""
    family = meta.family
    parameters = {p.untyped_storage()._cdata for p in meta.parameters()}
    counter = SavedBytes(parameters)
    recomputed = [0, 0]

    def checkpointed(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """What non-reentrant checkpointing keeps: the block's inputs; its own activations live only while it
        is recomputed, one block at a time."""
        for value in [*args, *kwargs.values()]:
            counter.add(value)
        inner = SavedBytes(parameters | counter.seen)
        with inner.hooks():
            output = function(*args, **kwargs)
        recomputed[:] = max(recomputed[0], inner.total), max(recomputed[1], inner.total_16)
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
    try:
        with meta_language_models(), fused_attention(), counter.hooks():
            with torch.no_grad():
                latents = family.encode_posterior(pixels).mean
            with contextlib.nullcontext() if meta.text_encoders_train() else torch.no_grad():
                embeddings = family.encode_prompts(meta.rewrite_prompts(batch["prompts"]))
            conditioning = family.condition(embeddings, batch)
            noised = family.noise_latents(latents, torch.empty_like(latents), torch.empty(batch_size, device="meta"))
            prediction = family.predict(noised, conditioning)
            ((prediction.float() - noised.target.float()) ** 2).mean()
    finally:
        if checkpointing:
            denoiser.disable_gradient_checkpointing()
    return counter.total + recomputed[0], counter.total_16 + recomputed[1]


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
    components = {
        name: module
        for name, module in family.named_children()
        if isinstance(module, nn.Module) and any(True for _ in module.parameters())
    }
    frozen = {name: frozen_tensors(module, name in quantizing) for name, module in components.items()}
    trained = {name: trained_elements(module) for name, module in components.items()}
    own = sum(p.numel() for n, p in meta.named_parameters() if p.requires_grad and not n.startswith("family."))
    if own:
        trained["method"] = own
    activations, activations_16 = {}, {}
    for checkpointing in (False, True):
        activations[checkpointing], activations_16[checkpointing] = saved_activations(
            meta, batch_size, resolution, checkpointing
        )
    vae_dtype = family.capabilities.vae_dtype
    return Footprint(
        frozen=frozen,
        trained={name: size for name, size in trained.items() if size},
        optimizer_bytes=optimizer_state_bytes(meta),
        optimizer_name=type(meta.optimizer(meta.parameter_groups())).__name__,
        cache_bytes=cache_bytes(meta, images, prompts, resolution),
        activations=activations,
        activations_16=activations_16,
        text_encoders=tuple(family.text_encoder_names),
        vae_dtype=None if vae_dtype is None else str(vae_dtype).removeprefix("torch."),
    )


# --- planning from a footprint ----------------------------------------------------------------------------------


def frozen_bytes(tensor: FrozenTensor, dtype: str | None, quantize: str | None) -> tuple[str, int]:
    """A frozen parameter's dtype and bytes under the switches: quantized linear weights hold one byte per element
    plus a scale per row in their loaded dtype, and int8 a zero point per row (torchao's weight-only layouts); a
    cast after quantizing keeps them."""
    if quantize is not None and tensor.rows is not None:
        per_row = DTYPE_BYTES.get(tensor.dtype, 4) + (1 if quantize == "int8" else 0)
        return quantize, tensor.elements + tensor.rows * per_row
    target = dtype or tensor.dtype
    return target, tensor.elements * DTYPE_BYTES.get(target, 4)


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
    trained = 4 * sum(footprint.trained.values())
    gradients = trained * (2 if strategy == "ddp" and devices > 1 else 1)
    optimizer = footprint.optimizer_bytes
    notes = []
    if strategy == "sharded" and devices > 1:
        frozen = {c: {d: size // devices for d, size in sizes.items()} for c, sizes in frozen.items()}
        trained, gradients, optimizer = trained // devices, gradients // devices, optimizer // devices
        notes.append("sharded: weights, gradients and optimizer state divided among the ranks")
    sixteen = precision in SIXTEEN_BIT
    activations = (footprint.activations_16 if sixteen else footprint.activations)[switches.gradient_checkpointing]
    return Plan(
        switches=switches,
        frozen=frozen,
        trained=trained,
        gradients=gradients,
        optimizer=optimizer,
        cache=footprint.cache_bytes,
        activations=activations,
        offloaded=offloaded // (devices if strategy == "sharded" and devices > 1 else 1),
        devices=devices,
        strategy=strategy,
        optimizer_name=footprint.optimizer_name,
        notes=notes,
    )


def next_switches(switches: Switches, precision: str, quantize_available: bool) -> Iterator[tuple[Switches, str]]:
    """The switches to add one after another, cheapest in speed first, each with what it needs beside it."""
    steps: list[tuple[dict[str, Any], str]] = [
        ({"gradient_checkpointing": True}, ""),
        ({"frozen_dtype": "bfloat16"}, "" if precision == "bf16-mixed" else " (with trainer.precision: bf16-mixed)"),
        ({"offload_text_encoders": True}, ""),
    ]
    if quantize_available:
        steps.append(({"quantize": "float8"}, ""))
    for change, needs in steps:
        if any(getattr(switches, key) != value for key, value in change.items()) and not (
            "frozen_dtype" in change and switches.frozen_dtype in ("bfloat16", "float16")
        ):
            switches = dataclasses.replace(switches, **change)
            yield switches, needs


def advice(footprint: Footprint, switches: Switches, budget: int, **options: Any) -> tuple[Plan, str | None]:
    """The plan of ``switches`` and, when its peak exceeds ``budget``, one line naming the switches to add (the
    fewest, cheapest first, that bring it under), or saying that none do."""
    current = plan(footprint, switches, **options)
    if current.peak <= budget:
        return current, None
    import importlib.util

    added: list[str] = []
    candidate = current
    for candidate_switches, needs in next_switches(
        switches, options.get("precision", "32"), importlib.util.find_spec("torchao") is not None
    ):
        added = [f"{change}{needs}" for change in switches.changes(candidate_switches)]
        candidate = plan(footprint, candidate_switches, **options)
        if candidate.peak <= budget:
            return current, (
                f"this fit plans {size_text(current.peak)} per device, over the budget of {size_text(budget)}: "
                f"set {'; '.join(added)} (planned {size_text(candidate.peak)})"
            )
    return current, (
        f"this fit plans {size_text(current.peak)} per device, over the budget of {size_text(budget)}, and "
        f"{size_text(candidate.peak)} with every switch sdft has ({'; '.join(added) or 'all already on'}): lower "
        "data.resolution or data.batch_size, or train on a larger device"
    )


# --- a configured fit -------------------------------------------------------------------------------------------


def switches_of(model: Any) -> Switches:
    """The switches a fine-tuner is configured with."""
    speed = model.speed
    return Switches(
        frozen_dtype=speed.frozen_dtype,
        quantize=speed.quantize,
        gradient_checkpointing=bool(model.gradient_checkpointing),
        offload_text_encoders=speed.offload_text_encoders,
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
