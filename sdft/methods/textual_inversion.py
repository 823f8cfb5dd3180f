"""Textual inversion (Gal et al. 2022, arXiv 2208.01618): learn the embedding of a new word, the model frozen."""

from __future__ import annotations

from pathlib import Path

from sdft.methods.base import DiffusionFineTuner
from sdft.methods.tokens import LearnsPlaceholder, PlaceholderTokens


class TextualInversion(LearnsPlaceholder, DiffusionFineTuner):
    """Train only the embedding vector(s) of a new word (``<sks>``) in every text encoder; export diffusers'
    ``learned_embeds.safetensors`` (``pipe.load_textual_inversion``) and an A1111 embedding ``sks.safetensors``.

    The data's prompts must name the word, e.g. ``instance_prompt: "<sks> dog"`` with ``prompt_templates: object``.
    """

    def __init__(
        self,
        *args,
        placeholder_token: str,
        initializer_token: str,
        num_vectors: int = 1,
        **kwargs,
    ) -> None:
        """
        Args:
            placeholder_token: the new word that names the subject in prompts, e.g. ``<sks>``.
            initializer_token: a word of one token (e.g. the class noun ``dog``) whose embedding starts every vector.
            num_vectors: embedding vectors of the word, as tokens ``<sks>``, ``<sks>_1``, ... in the text encoder.
        """
        super().__init__(*args, **kwargs)
        self.tokens = PlaceholderTokens(placeholder_token, initializer_token, num_vectors)

    def configure_trainable(self) -> None:
        self.tokens.add_to(self.family)

    def write_export(self, directory: Path) -> Path:
        return self.tokens.write(self.family, directory)
