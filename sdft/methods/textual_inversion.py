"""Textual inversion (Gal et al. 2022, arXiv 2208.01618): learn the embedding of a new word, the model frozen."""

from __future__ import annotations

from pathlib import Path

from sdft.interop.model_card import MethodFacts
from sdft.methods.base import DiffusionFineTuner
from sdft.methods.tokens import LearnsPlaceholder


class TextualInversion(LearnsPlaceholder, DiffusionFineTuner):
    """Train only the embedding vector(s) of a new word (``<sks>``) in every text encoder; export diffusers'
    ``learned_embeds.safetensors`` (``pipe.load_textual_inversion``) and an A1111 embedding ``sks.safetensors``.

    The data's prompts must name the word, e.g. ``instance_prompt: "<sks> dog"`` with ``prompt_templates: object``.
    """

    def configure_trainable(self) -> None:
        self.tokens.add_to(self.family)

    def write_export(self, directory: Path) -> Path:
        return self.tokens.write(self.family, directory)

    def card_facts(self) -> MethodFacts:
        return self.tokens.card_facts(self.family)
