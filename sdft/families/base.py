"""What every model family provides to the methods: components, encoders, an objective and a pipeline."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from torch import nn


@dataclass
class NoisedLatents:
    """A training example after the forward process: the denoiser input and what it should predict."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor

    @classmethod
    def cat(cls, parts: list[NoisedLatents]) -> NoisedLatents:
        """Join examples noised separately (e.g. instance and class examples) into one denoiser batch."""
        return cls(**{field.name: torch.cat([getattr(p, field.name) for p in parts]) for field in fields(cls)})


class ModelFamily(nn.Module, ABC):
    """A family of text-to-image models (SD 1.x/2.x, SDXL, SD3, ...): how it loads, encodes, noises and samples.

    The family owns its components as child modules (named as in the family's diffusers pipeline) once
    :meth:`load` has run, so a fine-tuner sees one module tree and a pipeline can be assembled from the live weights
    without a copy. Methods (LoRA, full fine-tuning, textual inversion) reach the denoiser and the text encoders
    through :attr:`denoiser` and :meth:`text_encoders` and never depend on the family's internals.
    """

    #: name of the denoiser component in the pipeline (``unet`` or ``transformer``)
    denoiser_name: ClassVar[str]
    #: names of the text-encoder components, in pipeline order
    text_encoder_names: ClassVar[tuple[str, ...]]
    #: names of the tokenizer components, one per text encoder and in the same order
    tokenizer_names: ClassVar[tuple[str, ...]]
    #: the diffusers pipeline class that samples from, and saves LoRA files for, this family
    pipeline_class: ClassVar[type[DiffusionPipeline]]

    def __init__(self, pretrained_model_name_or_path: str) -> None:
        super().__init__()
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.is_loaded = False

    @property
    def denoiser(self) -> nn.Module:
        """The network that predicts noise, velocity or flow: the main target of every method."""
        return getattr(self, self.denoiser_name)

    def text_encoders(self) -> dict[str, nn.Module]:
        """The text encoders by pipeline component name."""
        return {name: getattr(self, name) for name in self.text_encoder_names}

    def components(self, text_encoders: bool) -> dict[str, nn.Module]:
        """The denoiser and, if ``text_encoders``, the text encoders: what a method trains, by component name."""
        return {self.denoiser_name: self.denoiser, **(self.text_encoders() if text_encoders else {})}

    def tokenizers(self) -> dict[str, Any]:
        """Each text encoder's tokenizer, keyed by the text encoder's component name."""
        return {
            encoder: getattr(self, name)
            for encoder, name in zip(self.text_encoder_names, self.tokenizer_names, strict=True)
        }

    @abstractmethod
    def source(self) -> dict[str, str | None]:
        """What identifies the base weights (path or hub id, revision, variant): equal sources, equal models."""

    @abstractmethod
    def load(self) -> None:
        """Load every component from ``pretrained_model_name_or_path`` (all frozen); set ``is_loaded``."""

    @abstractmethod
    def default_lora_targets(self, component: str) -> list[str]:
        """Module names that LoRA adapts in ``component`` when the user names none."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts -> the denoiser's conditioning keyword arguments (gradients flow if an encoder trains)."""

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents, sampled from the posterior with ``generator``."""

    @abstractmethod
    def add_training_noise(
        self, latents: torch.Tensor, generator: torch.Generator, levels: torch.Tensor | None = None
    ) -> NoisedLatents:
        """Noise latents for training; ``levels`` in [0, 1) pins the noise level (None: the training density)."""

    @abstractmethod
    def predict(self, noised: NoisedLatents, conditioning: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the denoiser; the output is directly comparable with ``noised.target``."""

    @abstractmethod
    def pipeline(self) -> DiffusionPipeline:
        """A diffusers pipeline over the live components (adapters included), for sampling."""

    @abstractmethod
    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> DiffusionPipeline:
        """A fresh pipeline of the base weights read from the source, apart from the live components.

        Used where the untouched base model must sample whatever the method has done to the live one, e.g. to
        generate class images for prior preservation.
        """
