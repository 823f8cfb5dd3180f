"""LoRA (Hu et al. 2021, arXiv 2106.09685) on the denoiser and optionally the text encoders, through peft."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from torch import nn

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
            train_text_encoder: also adapt the text encoder(s), with the same rank and alpha.
            text_encoder_target_modules: module names to adapt in the text encoders; None uses the family's default.
        """
        super().__init__(*args, **kwargs)
        if rank < 1:
            raise ValueError(f"model.init_args.rank must be a positive integer, got {rank}")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.dropout = dropout
        self.target_modules = target_modules
        self.train_text_encoder = train_text_encoder
        self.text_encoder_target_modules = text_encoder_target_modules

    def adapted_components(self) -> dict[str, nn.Module]:
        """The pipeline components that carry an adapter, by pipeline component name."""
        return self.family.components(self.train_text_encoder)

    def lora_config(self, component: str) -> LoraConfig:
        """The peft config for one component: the user's targets or the family's defaults."""
        is_denoiser = component == self.family.denoiser_name
        targets = self.target_modules if is_denoiser else self.text_encoder_target_modules
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            init_lora_weights="gaussian",
            target_modules=targets or self.family.default_lora_targets(component),
        )

    def configure_trainable(self) -> None:
        for name, module in self.adapted_components().items():
            try:
                module.add_adapter(self.lora_config(name))
            except ValueError as error:
                key = "target_modules" if name == self.family.denoiser_name else "text_encoder_target_modules"
                raise ValueError(f"model.init_args.{key} matches no module of the {name}: {error}") from error

    def write_export(self, directory: Path) -> Path:
        components = self.adapted_components()
        layers = {f"{name}_lora_layers": get_peft_model_state_dict(m) for name, m in components.items()}
        metadata = {
            f"{name}_lora_adapter_metadata": m.peft_config["default"].to_dict() for name, m in components.items()
        }
        self.family.pipeline_class.save_lora_weights(directory, **layers, **metadata, weight_name=LORA_WEIGHTS)
        return directory / LORA_WEIGHTS
