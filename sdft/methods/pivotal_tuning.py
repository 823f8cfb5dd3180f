"""Pivotal tuning: a new word's embedding and a LoRA trained together (the recipe of diffusers' advanced DreamBooth
LoRA scripts, after Roich et al. 2021, arXiv 2106.05744, and textual inversion, Gal et al. 2022, arXiv 2208.01618)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sdft.errors import UserError
from sdft.interop.model_card import MethodFacts, joined_facts
from sdft.methods.base import ParameterGroups
from sdft.methods.lora import LoRAFineTuner
from sdft.methods.tokens import LearnsPlaceholder


class PivotalTuning(LearnsPlaceholder, LoRAFineTuner):
    """Train the embedding vector(s) of a new word (``<sks>``) and a LoRA; export the LoRA files (see
    :class:`LoRAFineTuner`'s ``export_formats``) and the embedding files into one folder, loaded in diffusers by
    ``pipe.load_lora_weights(folder)`` and ``pipe.load_textual_inversion(folder / "learned_embeds.safetensors")``, and
    in A1111 / ComfyUI as ``<run>-<step>.safetensors`` plus the embedding ``<word>.safetensors`` (the prompt names the
    word as the embedding's file name).

    The data's prompts must name the word, e.g. ``instance_prompt: "a photo of <sks> dog"``.
    """

    def __init__(
        self,
        *args,
        embedding_lr: float | None = None,
        embedding_only_fraction: float = 0.0,
        **kwargs,
    ) -> None:
        """
        Args:
            embedding_lr: the embeddings' learning rate; None uses the optimizer's (the LoRA's).
            embedding_only_fraction: train only the embeddings for this fraction of trainer.max_steps, then both.
        """
        super().__init__(*args, **kwargs)
        if embedding_lr is not None and embedding_lr <= 0:
            raise UserError(f"model.init_args.embedding_lr must be positive, got {embedding_lr}")
        if not 0.0 <= embedding_only_fraction < 1.0:
            raise UserError(f"model.init_args.embedding_only_fraction must be in [0, 1), got {embedding_only_fraction}")
        self.embedding_lr = embedding_lr
        self.embedding_only_fraction = embedding_only_fraction

    def configure_trainable(self) -> None:
        super().configure_trainable()
        self.tokens.add_to(self.family)

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters other than the embedding rows."""
        embeddings = {id(param) for param in self.tokens.parameters(self.family)}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in embeddings]

    def parameter_groups(self) -> ParameterGroups:
        embeddings = {"params": self.tokens.parameters(self.family), "name": "embeddings"}
        if self.embedding_lr is not None:
            embeddings["lr"] = self.embedding_lr
        return [{"params": self.lora_parameters(), "name": "lora"}, embeddings]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        # A parameter without a gradient is skipped by the optimizer: no update, no weight decay, no moments.
        if self.global_step < int(self.embedding_only_fraction * self.trainer.max_steps):
            for param in self.lora_parameters():
                param.grad = None

    def write_export(self, directory: Path) -> Path:
        """Write the LoRA files and the embedding files; return the folder (both are needed)."""
        super().write_export(directory)
        self.tokens.write(self.family, directory)
        return directory

    def card_facts(self) -> MethodFacts:
        return joined_facts(
            "Pivotal tuning (a LoRA and a new word)", super().card_facts(), self.tokens.card_facts(self.family)
        )
