"""The model families the contract test runs every method against: one tiny offline model each.

A family joins the contract by adding a :class:`FamilyCase` to :data:`FAMILY_CASES`; the methods, the data and the
checks stay the same for every family.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import DiffusionPipeline
from safetensors.torch import load_file
from training import stock_pipeline

from sdft.assets import resolve
from sdft.families import (
    Flux,
    Flux2,
    Flux2Klein,
    ModelFamily,
    QwenImage,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
    ZImage,
)


@dataclass(frozen=True)
class FamilyCase:
    """A family on its tiny built-in model.

    Attributes:
        name: the test id.
        family_class: the :class:`ModelFamily` subclass.
        builtin: the tiny model, ``builtin:<name>``.
        resolution: the training and sampling resolution (a multiple of the family's latent factor).
    """

    name: str
    family_class: type[ModelFamily]
    builtin: str
    resolution: int = 32

    def family(self) -> ModelFamily:
        return self.family_class(self.builtin)

    @property
    def takes_tokens(self) -> bool:
        return bool(self.family_class.capabilities.token_encoders)

    def stock_pipeline(self, folder: str | Path | None = None) -> DiffusionPipeline:
        """The family's diffusers pipeline from a model folder (default: the tiny base model), as a user loads it."""
        return stock_pipeline(folder or resolve(self.builtin), self.family_class)

    def load_embeddings(self, pipeline: DiffusionPipeline, file: Path, tokens: list[str]) -> None:
        """Load an exported embedding file with diffusers' own loader, one text encoder at a time when keyed."""
        capabilities = self.family_class.capabilities
        if not capabilities.embedding_keys:
            pipeline.load_textual_inversion(str(file))
            return
        state = load_file(file)
        tokenizer_of = dict(zip(self.family_class.text_encoder_names, self.family_class.tokenizer_names, strict=True))
        for encoder, key in zip(capabilities.token_encoders, capabilities.embedding_keys, strict=True):
            pipeline.load_textual_inversion(
                state[key],
                token=tokens,
                text_encoder=getattr(pipeline, encoder),
                tokenizer=getattr(pipeline, tokenizer_of[encoder]),
            )


FAMILY_CASES = [
    FamilyCase("sd1", StableDiffusion, "builtin:tiny-sd1"),
    FamilyCase("sd2-v", StableDiffusion, "builtin:tiny-sd2-v"),
    FamilyCase("sdxl", StableDiffusionXL, "builtin:tiny-sdxl"),
    FamilyCase("sd3", StableDiffusion3, "builtin:tiny-sd3"),
    FamilyCase("flux", Flux, "builtin:tiny-flux"),
    FamilyCase("zimage", ZImage, "builtin:tiny-zimage"),
    FamilyCase("flux2-klein", Flux2Klein, "builtin:tiny-flux2-klein"),
    FamilyCase("qwen-image", QwenImage, "builtin:tiny-qwen-image"),
    FamilyCase("flux2-dev", Flux2, "builtin:tiny-flux2-dev"),
]
