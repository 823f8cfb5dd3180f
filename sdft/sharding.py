"""Sharded data parallelism (FSDP2): each rank holds a slice of the denoiser and of every component that trains.

:class:`ShardedStrategy` is Lightning's ``ModelParallelStrategy`` set up for pure data parallelism: every process is
a data-parallel rank, checkpoints are single files holding only the trained tensors (gathered on rank 0, the frozen
base left out), so ``--ckpt_path``, ``sdft export`` and the evaluator read them as they read any other.
:meth:`sdft.methods.DiffusionFineTuner.configure_model` calls :func:`shard_family` under it: the denoiser's repeated
blocks (the family's ``capabilities.block_types``) become FSDP units, then the denoiser and each text encoder that
trains. Only rank 0 reads the denoiser's weights; the other ranks build it on the meta device and receive their
shards from rank 0. The VAE and frozen text encoders stay whole on every rank.

Sampling, evaluation and exports run the model outside the training step, often on rank 0 alone; a sharded model
cannot run without every rank. :func:`whole_model`, entered by every rank, gathers the weights once, so that inside
it any rank may run or read the whole model without collectives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from sdft.families.base import ModelFamily


class ShardedStrategy(ModelParallelStrategy):
    """FSDP2 across every process (``trainer.strategy: {class_path: sdft.sharding.ShardedStrategy}``): Lightning's
    ``ModelParallelStrategy`` with every process a data-parallel rank, no tensor parallelism, and single-file
    checkpoints of the trained tensors only."""

    def __init__(self, **kwargs: Any) -> None:
        """
        Args:
            kwargs: ``ModelParallelStrategy``'s ``process_group_backend`` and ``timeout``.
        """
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: str | Path, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a single-file checkpoint into the shards, after checking it holds every tensor the model trains."""
        keys = torch.load(checkpoint_path, mmap=True, map_location="cpu", weights_only=weights_only)["state_dict"]
        self.lightning_module.check_trained_tensors(keys)
        return super().load_checkpoint(checkpoint_path, weights_only)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The trained tensors, whole on rank 0 (empty elsewhere): the frozen base is never gathered."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return get_model_state_dict(self.model, options=options)


def shard_family(family: ModelFamily, mesh: DeviceMesh) -> None:
    """Shard the denoiser block by block, then the denoiser and every text encoder with a trained weight; the
    denoiser's weights come from rank 0.

    Only rank 0 needs to have read the denoiser's weights: the other ranks may have built it on the meta device
    (``family.load_denoiser_weights = False``), so that no rank but the first ever holds a whole copy. Call it after
    the method has made its weights trainable (what trains decides which encoders are sharded; new weights such as
    LoRA's are rank 0's too) and before the optimizer is made.

    Args:
        family: a loaded family.
        mesh: the data-parallel device mesh.
    """
    denoiser = family.denoiser
    whole = denoiser.state_dict() if mesh.get_rank() == 0 else {}
    block_types = set(family.capabilities.block_types)
    for module in denoiser.modules():
        if type(module).__name__ in block_types:
            fully_shard(module, mesh=mesh)
    fully_shard(denoiser, mesh=mesh)
    if any(tensor.is_meta for tensor in [*denoiser.parameters(), *denoiser.buffers()]):
        denoiser.to_empty(device=mesh.device_type)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(denoiser, whole, options=options)
    del whole
    for buffer in non_persistent_buffers(denoiser):  # outside the state dict: sent on their own
        torch.distributed.broadcast(buffer, src=0, group=mesh.get_group())
    for owner, name, tensor in plain_tensors(denoiser):  # neither parameter nor buffer (Qwen-Image's rotary tables)
        received = torch.empty_like(tensor, device=mesh.device_type) if tensor.is_meta else tensor.to(mesh.device_type)
        real = torch.view_as_real(received) if received.is_complex() else received  # gloo sends no complex numbers
        torch.distributed.broadcast(real, src=0, group=mesh.get_group())
        if tensor.is_meta:
            setattr(owner, name, received)
    for encoder in family.text_encoders().values():
        if any(parameter.requires_grad for parameter in encoder.parameters()):
            fully_shard(encoder, mesh=mesh)


def plain_tensors(module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """The tensors that ``module``'s parts hold as plain attributes (neither parameters nor buffers, so outside the
    state dict and untouched by ``to_empty``), as (part, attribute, tensor), in module order."""
    return [
        (part, name, value)
        for part in module.modules()
        for name, value in sorted(vars(part).items())
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter)
    ]


def non_persistent_buffers(module: nn.Module) -> list[torch.Tensor]:
    """The buffers of ``module`` that its state dict leaves out, in module order."""
    return [
        buffer
        for part in module.modules()
        for name, buffer in part.named_buffers(recurse=False)
        if name in part._non_persistent_buffers_set
    ]


def is_sharded(module: nn.Module) -> bool:
    """Whether any part of ``module`` is an FSDP unit."""
    return any(isinstance(part, FSDPModule) for part in module.modules())


@contextmanager
def whole_model(module: nn.Module) -> Iterator[None]:
    """Every rank must enter it together: inside, the weights of every FSDP unit of ``module`` are whole on every
    rank (as plain copies) and stay whole through forward passes, so one rank can sample or export alone. Nothing
    happens for an unsharded module. Changes to the weights inside are not kept: leaving puts the shards back."""
    units = [part for part in module.modules() if isinstance(part, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    parts = {id(part): part for unit in units for part in unit.modules()}.values()
    # plain copies of the gathered weights (FSDP's own buffers are refused by writers such as safetensors), and
    # FSDP's state-dict hooks set aside: they would put the shards back on the first state_dict() of an export
    hooks = {id(part): (part._state_dict_pre_hooks, part._load_state_dict_pre_hooks) for part in parts}
    for part in parts:
        part._state_dict_pre_hooks, part._load_state_dict_pre_hooks = OrderedDict(), OrderedDict()
        for name, parameter in part.named_parameters(recurse=False):
            part.register_parameter(name, nn.Parameter(parameter.detach().clone(), parameter.requires_grad))
    try:
        yield
    finally:
        for part in parts:
            part._state_dict_pre_hooks, part._load_state_dict_pre_hooks = hooks[id(part)]
        for unit in units:
            unit.set_reshard_after_forward(True, recurse=False)
            unit.reshard()
