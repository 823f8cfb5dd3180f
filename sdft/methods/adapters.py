"""The adapter kinds a :class:`~sdft.methods.LoRAFineTuner` trains, as peft configs, and the checks of their options
and of the files a fit starts from.

- ``lora``: LoRA (Hu et al. 2021, arXiv 2106.09685), peft's ``LoraConfig``;
- ``dora``: DoRA (Liu et al. 2024, arXiv 2402.09353), a LoRA whose adapted weight is rescaled to a trained magnitude
  per output row, ``LoraConfig(use_dora=True)``;
- ``lokr``: LyCORIS's LoKr, a Kronecker product of two factors (after KronA, arXiv 2212.10650), ``LoKrConfig``;
- ``loha``: LyCORIS's LoHa, a Hadamard product of two low-rank products (FedPara, arXiv 2108.06098), ``LoHaConfig``.

Their weight formulas are :mod:`sdft.interop.lycoris`'s.
"""

from __future__ import annotations

from typing import Literal

from peft import LoHaConfig, LoKrConfig, LoraConfig, PeftConfig

from sdft.errors import UserError
from sdft.interop.lora_weights import KIND_NAMES, LoraWeights, rows_magnitude

#: the adapter kinds, as ``model.init_args.adapter`` names them
Adapter = Literal["lora", "dora", "lokr", "loha"]


def check_adapter_options(adapter: str, dropout: float, lokr_factor: int, decompose_both: bool) -> None:
    """Refuse options the adapter kind does not take, naming the key."""
    if dropout and adapter in ("lokr", "loha"):
        raise UserError(
            f"model.init_args.dropout: peft's {KIND_NAMES[adapter]} has no input dropout; set dropout: 0.0 with "
            f"adapter: {adapter}"
        )
    if adapter != "lokr" and (lokr_factor != -1 or decompose_both):
        raise UserError(
            f"model.init_args.lokr_factor and decompose_both are LoKr's options: set adapter: lokr, or leave them at "
            f"-1 and false with adapter: {adapter}"
        )
    if lokr_factor == 0 or lokr_factor < -1:
        raise UserError(f"model.init_args.lokr_factor must be a positive integer or -1, got {lokr_factor}")


def peft_config(
    adapter: str,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str] | str,
    lokr_factor: int = -1,
    decompose_both: bool = False,
) -> PeftConfig:
    """The peft config of an adapter kind: ``LoraConfig`` for lora and dora (``use_dora``), ``LoKrConfig`` and
    ``LoHaConfig`` for LyCORIS's kinds; each adapter's update starts at zero.

    Args:
        adapter: lora, dora, lokr or loha.
        rank: r.
        alpha: alpha of alpha / r.
        dropout: LoRA's input dropout (lora, dora).
        targets: peft's ``target_modules``: module names or suffixes, or one regex.
        lokr_factor: LoKr's ``decompose_factor``.
        decompose_both: LoKr's ``decompose_both``.
    """
    if adapter == "lokr":
        return LoKrConfig(
            r=rank, alpha=alpha, target_modules=targets, decompose_factor=lokr_factor, decompose_both=decompose_both
        )
    if adapter == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
        use_dora=adapter == "dora",
    )


def check_like_trained(path: str, weights: LoraWeights, trained: LoraWeights, adapter: str, rank: int) -> None:
    """Refuse an ``init_lora`` file whose layers are of another kind than this run's adapter, or of other ranks or
    factor shapes than its modules (the caller has checked that it adapts only trained modules)."""
    kinds = sorted({layer.kind for layer in weights.values()} - {adapter})
    if kinds:
        raise UserError(
            f"model.init_args.init_lora: {path} is a {KIND_NAMES[kinds[0]]} where model.init_args.adapter is "
            f"{adapter}: set adapter: {kinds[0]}, or pass a {KIND_NAMES[adapter]} file"
        )
    for module, layer in weights.items():
        expected = trained[module]
        if adapter in ("lora", "dora"):
            if layer.rank != expected.rank:
                raise UserError(
                    f"model.init_args.init_lora: {path} has rank {layer.rank} where model.init_args.rank is {rank}: "
                    f"set rank: {layer.rank}"
                )
            if not rows_magnitude(layer):
                raise UserError(
                    f"model.init_args.init_lora: {path} holds DoRA magnitudes per input column ({module}); peft "
                    "trains them per output row: pass a DoRA trained per output row"
                )
            continue
        shapes = {name: tuple(tensor.shape) for name, tensor in layer.tensors.items()}
        if shapes != {name: tuple(tensor.shape) for name, tensor in expected.tensors.items()}:
            raise UserError(
                f"model.init_args.init_lora: the {KIND_NAMES[adapter]} factors of {module} in {path} are "
                f"{shapes}, this run's { ({n: tuple(t.shape) for n, t in expected.tensors.items()}) }: set rank, "
                "lokr_factor and decompose_both as the file was trained"
            )
