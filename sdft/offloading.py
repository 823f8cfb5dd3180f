"""Block offloading: the frozen weights of some of the denoiser's blocks wait in CPU memory and come onto the
accelerator one block at a time, for the block's forward and again for its backward (``speed.offload_blocks``).

Why not a ready-made mechanism. diffusers' group offloading (``ModelMixin.enable_group_offload``) and accelerate's
hooks are made for inference: they move every tensor of a block, the adapters being trained too, and put the weights
back in CPU memory right after the block's forward. Autograd keeps the very parameter a convolution or a norm saved
for the backward pass (also in a gradient checkpoint's recomputation, which saves a tensor that needs no gradient as
it is), so the backward would then read CPU memory. FSDP2's CPU offload needs a process group, turns the parameters
into DTensors and steps the optimizer on CPU. Hence this small mechanism:

- each block's forward pre-hook brings its frozen weights onto the device (``parameter.data`` points at a copy there)
  and sends the previous block's back (``parameter.data`` points at its CPU tensor again): one block is resident at a
  time, so by the time the backward pass reaches a block, the one after it has run its backward;
- with a CUDA device the next block (the one that followed this one last time, so forward and backward orders are
  both learned) is copied on a side stream while this one computes;
- during the denoiser's forward with gradients, saved-tensor hooks keep a weight that a block outside a gradient
  checkpoint saves as where to find it rather than as device memory, and bring its block back when the backward pass
  asks for it (a checkpointed block is simply recomputed, which runs its pre-hook again);
- the trained parameters (adapters) and the buffers follow the model wherever it moves, as ever.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True, eq=False)
class SavedWeight:
    """A resident weight (or a view of it) that autograd saved for the backward pass, kept as where to find it."""

    parameter: nn.Parameter
    block: nn.Module
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


@dataclass(eq=False)
class Prefetch:
    """A block's frozen weights copied onto the device ahead of its forward, and when the copy is done (CUDA)."""

    block: nn.Module
    copies: dict[nn.Parameter, torch.Tensor]
    done: torch.cuda.Event | None


class BlockOffload:
    """Keeps the frozen weights of ``blocks`` in CPU memory and brings one block at a time onto the device.

    The device is the one the model was last moved to: the owner runs every move and cast of the model inside
    :meth:`conversion`, so the weights stay in CPU memory (in the new dtype) and only the device is noted. While
    offloaded, a parameter holds its CPU tensor (pinned when the device is a GPU), so whatever reads the model outside
    a forward (its state dict, its parameter count) reads the real weights.
    """

    def __init__(self, denoiser: nn.Module, blocks: list[nn.Module]) -> None:
        """
        Args:
            denoiser: the model the blocks belong to; its forward turns the saved-tensor hooks on.
            blocks: the blocks to offload; parameters that require gradients stay where the model is.
        """
        self.weights = {block: [p for p in block.parameters() if not p.requires_grad] for block in blocks}
        #: each offloaded weight's CPU tensor
        self.stored = {p: p.data for weights in self.weights.values() for p in weights}
        self.device = torch.device("cpu")
        self.stream: torch.cuda.Stream | None = None
        self.resident: nn.Module | None = None
        #: storage address of each resident copy -> its parameter
        self.addresses: dict[int, nn.Parameter] = {}
        self.prefetch: Prefetch | None = None
        #: the block that ran after each pair of consecutive blocks, last time
        self.successors: dict[tuple[nn.Module | None, nn.Module], nn.Module] = {}
        self.recent: tuple[nn.Module | None, nn.Module | None] = (None, None)
        self.saving: torch.autograd.graph.saved_tensors_hooks | None = None
        #: how many times a block has come onto the device
        self.transfers = 0
        self.hooks = [block.register_forward_pre_hook(self.before_block) for block in blocks]
        self.hooks.append(denoiser.register_forward_pre_hook(self.before_denoiser))
        self.hooks.append(denoiser.register_forward_hook(self.after_denoiser, always_call=True))

    # -- hooks ---------------------------------------------------------------------------------------------------

    def before_block(self, block: nn.Module, args: Any) -> None:
        """Make ``block`` resident, then start copying the block expected next."""
        previous = self.recent
        if previous[1] is not None:
            self.successors[previous] = block
        self.recent = (previous[1], block)
        self.activate(block)
        following = self.successors.get(self.recent)
        if following is not None and following is not block:
            self.start_prefetch(following)

    def before_denoiser(self, module: nn.Module, args: Any) -> None:
        if torch.is_grad_enabled():
            self.saving = torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)
            self.saving.__enter__()

    def after_denoiser(self, module: nn.Module, args: Any, output: Any) -> None:
        """Leave the saved-tensor hooks; without gradients no backward pass follows, so every block goes back."""
        if self.saving is not None:
            self.saving.__exit__(None, None, None)
            self.saving = None
        if not torch.is_grad_enabled():
            self.release()

    def pack(self, tensor: torch.Tensor) -> torch.Tensor | SavedWeight:
        """A saved tensor that is a resident weight (or a view of it) -> where to find it; any other as it is."""
        if tensor.layout is not torch.strided or tensor.device != self.device:
            return tensor
        parameter = self.addresses.get(tensor.untyped_storage().data_ptr())
        if parameter is None or tensor.dtype != parameter.dtype:
            return tensor
        return SavedWeight(parameter, self.resident, tensor.size(), tensor.stride(), tensor.storage_offset())

    def unpack(self, saved: torch.Tensor | SavedWeight) -> torch.Tensor:
        if not isinstance(saved, SavedWeight):
            return saved
        self.activate(saved.block)
        return saved.parameter.data.as_strided(saved.size, saved.stride, saved.offset)

    # -- moving weights ------------------------------------------------------------------------------------------

    def activate(self, block: nn.Module) -> None:
        """Make ``block`` the resident block: its weights onto the device (from the prefetch when it holds them),
        the previous resident block's back to their CPU tensors."""
        if block is self.resident:
            return
        self.evict()
        copies = self.take_prefetch(block)
        if copies is None:
            copies = self.copies(block)
        for parameter, copy in copies.items():
            parameter.data = copy
            self.addresses[copy.untyped_storage().data_ptr()] = parameter
        self.resident = block
        self.transfers += 1

    def evict(self) -> None:
        """The resident block's weights back to their CPU tensors; the device copies go when nothing uses them."""
        if self.resident is None:
            return
        for parameter in self.weights[self.resident]:
            parameter.data = self.stored[parameter]
        self.addresses.clear()
        self.resident = None

    def copies(self, block: nn.Module) -> dict[nn.Parameter, torch.Tensor]:
        """New device copies of ``block``'s frozen weights, queued on the current stream (their CPU tensors never
        change while training, so the copies need not block)."""
        return {p: self.stored[p].to(self.device, non_blocking=True, copy=True) for p in self.weights[block]}

    def start_prefetch(self, block: nn.Module) -> None:
        """Copy ``block``'s weights onto the device ahead of its forward: on the side stream (CUDA), else at once."""
        self.prefetch = None
        context = contextlib.nullcontext() if self.stream is None else torch.cuda.stream(self.stream)
        with context:
            copies = self.copies(block)
            done = None if self.stream is None else self.stream.record_event()
        self.prefetch = Prefetch(block, copies, done)

    def take_prefetch(self, block: nn.Module) -> dict[nn.Parameter, torch.Tensor] | None:
        """The prefetched copies when they are ``block``'s, ready for the current stream; None otherwise (a
        prefetch of another block is dropped)."""
        prefetch, self.prefetch = self.prefetch, None
        if prefetch is None or prefetch.block is not block:
            return None
        if prefetch.done is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(prefetch.done)
            for copy in prefetch.copies.values():
                copy.record_stream(current)  # made on the side stream, freed after the current stream's use
        return prefetch.copies

    def release(self) -> None:
        """Every offloaded weight in CPU memory: nothing resident, nothing prefetched."""
        self.evict()
        self.prefetch = None

    @contextlib.contextmanager
    def conversion(self) -> Iterator[None]:
        """Let a move or cast of the whole model (``.to(device)``, ``.to(dtype)``, ``.cpu()``) pass the offloaded
        weights by: inside, they hold empty stand-ins that take the move; after it, each weight is its CPU tensor in
        the stand-in's dtype, and the stand-ins' device is the device blocks come onto."""
        self.release()
        for parameter in self.stored:
            parameter.data = torch.empty(0, dtype=parameter.dtype, device=parameter.device)
        try:
            yield
        finally:
            for parameter, stored in self.stored.items():
                self.device = parameter.device
                stored = stored.to(parameter.dtype)
                if self.device.type == "cuda" and not stored.is_pinned():
                    stored = stored.pin_memory()  # so that copies to the GPU run beside its compute
                self.stored[parameter] = stored
                parameter.data = stored
            self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
