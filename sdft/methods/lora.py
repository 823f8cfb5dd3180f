"""LoRA (Hu et al. 2021, arXiv 2106.09685) on the denoiser and optionally the text encoders, through peft."""

from __future__ import annotations

import re
from pathlib import Path

from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

from sdft.errors import UserError
from sdft.methods.base import DiffusionFineTuner

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


class LoRAFineTuner(DiffusionFineTuner):
    """Train low-rank adapters; export ``pytorch_lora_weights.safetensors`` that diffusers' ``load_lora_weights``
    loads at the trained strength (the peft config, alpha included, travels in the file's metadata)."""

    def __init__(
        self,
        *args,
        rank: int = 16,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        target_blocks: list[int] | None = None,
        train_text_encoder: bool = False,
        text_encoder_target_modules: list[str] | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            rank: LoRA rank r of every adapted projection.
            alpha: LoRA alpha; the update is scaled by alpha / rank. None means alpha = rank (scale 1).
            dropout: dropout on the LoRA branch input during training.
            target_modules: module names to adapt in the denoiser; None uses the family's attention projections.
            target_blocks: adapt only these of the denoiser's blocks, numbered in module order over the block types
                the family declares (SD3: ``transformer_blocks.{i}``; Flux.1: the double-stream blocks, then the
                single-stream ones); None adapts every block.
            train_text_encoder: also adapt the text encoder(s), with the same rank and alpha.
            text_encoder_target_modules: module names to adapt in the text encoders; None uses the family's default.
        """
        super().__init__(*args, **kwargs)
        if rank < 1:
            raise UserError(f"model.init_args.rank must be a positive integer, got {rank}")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.dropout = dropout
        if target_blocks is not None and (not target_blocks or min(target_blocks) < 0):
            raise UserError(
                f"model.init_args.target_blocks must list block indices (0 or more), got {target_blocks}; "
                "use null to adapt every block"
            )
        self.target_modules = target_modules
        self.target_blocks = target_blocks
        self.train_text_encoder = train_text_encoder
        self.text_encoder_target_modules = text_encoder_target_modules

    def adapted_components(self) -> dict[str, nn.Module]:
        """The pipeline components that carry an adapter, by pipeline component name."""
        return self.family.components(self.train_text_encoder)

    def lora_config(self, component: str) -> LoraConfig:
        """The peft config for one component: the user's targets or the family's defaults, within the chosen
        blocks of the denoiser (a regex over module names) when ``target_blocks`` is set."""
        is_denoiser = component == self.family.denoiser_name
        targets = self.target_modules if is_denoiser else self.text_encoder_target_modules
        targets = targets or self.family.default_lora_targets(component)
        if is_denoiser and self.target_blocks is not None:
            targets = within_blocks(self.chosen_blocks(), targets)
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=targets,
        )

    def chosen_blocks(self) -> list[str]:
        """The module names of the denoiser blocks that ``target_blocks`` names, checked against the model."""
        types = self.family.capabilities.block_types
        blocks = block_names(self.family.denoiser, types)
        outside = sorted({index for index in self.target_blocks if index >= len(blocks)})
        if outside:
            span = f"numbered 0-{len(blocks) - 1}, {blocks[0]} to {blocks[-1]}" if blocks else "none"
            raise UserError(
                f"model.init_args.target_blocks: {outside} out of range; the {self.family.denoiser_name} of "
                f"{type(self.family).__name__} has {len(blocks)} blocks of type {', '.join(types)} ({span})"
            )
        return [blocks[index] for index in sorted(set(self.target_blocks))]

    def configure_trainable(self) -> None:
        for name, module in self.adapted_components().items():
            config = self.lora_config(name)
            try:
                module.add_adapter(config)
            except ValueError as error:
                key = "target_modules" if name == self.family.denoiser_name else "text_encoder_target_modules"
                if name == self.family.denoiser_name and self.target_blocks is not None:
                    key += " within model.init_args.target_blocks"
                raise UserError(f"model.init_args.{key} matches no module of the {name}: {error}") from error

    def write_export(self, directory: Path) -> Path:
        components = self.adapted_components()
        layers = {f"{name}_lora_layers": get_peft_model_state_dict(m) for name, m in components.items()}
        metadata = {
            f"{name}_lora_adapter_metadata": m.peft_config["default"].to_dict() for name, m in components.items()
        }
        self.family.pipeline_class.save_lora_weights(directory, **layers, **metadata, weight_name=LORA_WEIGHTS)
        return directory / LORA_WEIGHTS


def block_names(denoiser: nn.Module, block_types: tuple[str, ...]) -> list[str]:
    """The module names of a denoiser's blocks, in module order: every outermost module whose class is one of
    ``block_types`` (e.g. ``transformer_blocks.0``, ..., ``single_transformer_blocks.37`` for Flux.1).

    Args:
        denoiser: the UNet or transformer.
        block_types: class names of its repeated blocks (the family's ``capabilities.block_types``).
    """
    names: list[str] = []
    for name, module in denoiser.named_modules():
        if type(module).__name__ in block_types and not any(name.startswith(f"{block}.") for block in names):
            names.append(name)
    return names


def within_blocks(blocks: list[str], targets: list[str]) -> str:
    """A peft ``target_modules`` regex (matched against whole module names) for the modules named by ``targets``
    (as peft matches a list: the name itself or its dotted suffix) inside the given blocks.

    Args:
        blocks: block module names, e.g. ``transformer_blocks.12``.
        targets: module names or dotted suffixes, e.g. ``attn.to_q``.
    """
    prefixes = "|".join(re.escape(block) for block in blocks)
    suffixes = "|".join(re.escape(target) for target in targets)
    return rf"(?:{prefixes})\.(?:.*\.)?(?:{suffixes})"
