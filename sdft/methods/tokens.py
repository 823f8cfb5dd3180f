"""New words for the text encoders (textual inversion, Gal et al. 2022, arXiv 2208.01618): tokens added to every
tokenizer, their embedding rows trained while the original vocabulary stays frozen, and the embedding files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from sdft.errors import UserError
from sdft.families.base import ModelFamily
from sdft.interop.model_card import MethodFacts

#: the file diffusers' ``load_textual_inversion`` reads
EMBEDDINGS_FILE = "learned_embeds.safetensors"
#: the key of an A1111 (stable-diffusion-webui) embedding for one text encoder
A1111_KEY = "emb_params"


class ExtendedEmbedding(nn.Module):
    """A token embedding with new rows appended after the vocabulary.

    Ids below the original vocabulary size look up the original ``nn.Embedding``, kept frozen and untouched; the
    ids after it index :attr:`rows`, the only trainable tensor. Every original row therefore stays bit-identical,
    checkpoints and weight decay see the new rows alone, and code that reads ``weight`` sees the whole table.
    """

    def __init__(self, base: nn.Embedding, rows: torch.Tensor) -> None:
        """
        Args:
            base: the text encoder's own token embedding, kept as it is.
            rows: the initial new rows (num_new, dim).
        """
        super().__init__()
        self.base = base
        self.rows = nn.Parameter(rows.detach().clone())

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + self.rows.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        """The effective table (num_embeddings, dim): the original rows, then the new ones (a copy)."""
        return torch.cat([self.base.weight, self.rows.to(self.base.weight.dtype)])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (...) -> embeddings (..., dim)."""
        vocabulary = self.base.num_embeddings
        is_new = input_ids >= vocabulary
        old = self.base(input_ids.masked_fill(is_new, 0))
        new = F.embedding((input_ids - vocabulary).clamp(min=0), self.rows)
        return torch.where(is_new.unsqueeze(-1), new.to(old.dtype), old)


@dataclass(frozen=True)
class PlaceholderTokens:
    """The word a method learns and its vectors, one new token each: ``<sks>``, ``<sks>_1``, ... ``<sks>_{n-1}``.

    These are the names diffusers' ``load_textual_inversion`` gives a multi-vector embedding, and its pipelines spell
    ``<sks>`` in a prompt as all of them; training spells prompts the same way (:meth:`expand`).

    Attributes:
        placeholder: the new word, e.g. ``<sks>`` (``model.init_args.placeholder_token``).
        initializer: a one-token word whose embedding starts every vector (``model.init_args.initializer_token``).
        num_vectors: embedding vectors of the word (``model.init_args.num_vectors``).
    """

    placeholder: str
    initializer: str
    num_vectors: int = 1

    def __post_init__(self) -> None:
        if not self.placeholder.strip("<>") or any(c.isspace() or c in "/\\" for c in self.placeholder):
            raise UserError(
                f"model.init_args.placeholder_token must be one word without slashes, e.g. '<sks>', "
                f"got {self.placeholder!r}"
            )
        if self.num_vectors < 1:
            raise UserError(f"model.init_args.num_vectors must be a positive integer, got {self.num_vectors}")

    @property
    def tokens(self) -> list[str]:
        """The names of the new tokens, one per vector."""
        return [self.placeholder] + [f"{self.placeholder}_{i}" for i in range(1, self.num_vectors)]

    def add_to(self, family: ModelFamily) -> None:
        """Add the tokens to every tokenizer of ``family`` and their rows, each a copy of the initializer's
        embedding, to the matching text encoder. Everything is checked before anything changes."""
        check_takes_tokens(family)
        encoders, tokenizers = family.token_encoders(), family.tokenizers()
        initial = {name: self.initial_rows(tokenizers[name], encoder) for name, encoder in encoders.items()}
        for name, encoder in encoders.items():
            tokenizers[name].add_tokens(self.tokens)
            encoder.set_input_embeddings(ExtendedEmbedding(encoder.get_input_embeddings(), initial[name]))

    def initial_rows(self, tokenizer: Any, encoder: nn.Module) -> torch.Tensor:
        """The initializer's embedding, once per vector (num_vectors, dim); raises if the tokens cannot be added."""
        taken = [token for token in self.tokens if token in tokenizer.get_vocab()]
        if taken:
            raise UserError(
                f"model.init_args.placeholder_token {self.placeholder!r} is taken: the tokenizer already has {taken}; "
                "choose a word it does not know, e.g. '<my-dog>'"
            )
        ids = tokenizer.encode(self.initializer, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(
                f"model.init_args.initializer_token {self.initializer!r} encodes to {len(ids)} tokens; "
                "it must be a single token, e.g. the class noun 'dog'"
            )
        table = encoder.get_input_embeddings()
        if len(tokenizer) != table.num_embeddings:
            raise UserError(
                f"the tokenizer has {len(tokenizer)} tokens but its text encoder {table.num_embeddings} embeddings; "
                "new tokens need the two to match"
            )
        return table.weight[ids[0]].detach().repeat(self.num_vectors, 1)

    def expand(self, prompts: list[str]) -> list[str]:
        """Spell the placeholder as all its tokens (``<sks> <sks>_1 ...``), as diffusers' pipelines do."""
        if self.num_vectors == 1:
            return prompts
        spelled = " ".join(self.tokens)
        return [prompt.replace(self.placeholder, spelled) for prompt in prompts]

    def check_prompts(self, prompts: list[str]) -> None:
        """Raise unless some of a batch's prompts name the placeholder (nothing would train otherwise)."""
        if not any(self.placeholder in prompt for prompt in prompts):
            raise UserError(
                f"model.init_args.placeholder_token {self.placeholder!r} does not appear in data.instance_prompt "
                f"(a training prompt: {prompts[0]!r}); name the subject with it, e.g. '{self.placeholder} dog' "
                "with data.prompt_templates: object"
            )

    def embeddings(self, family: ModelFamily) -> dict[str, ExtendedEmbedding]:
        """The extended token embedding of each text encoder, by component name (after :meth:`add_to`)."""
        return {name: encoder.get_input_embeddings() for name, encoder in family.token_encoders().items()}

    def parameters(self, family: ModelFamily) -> list[nn.Parameter]:
        """The trained rows of every text encoder."""
        return [embedding.rows for embedding in self.embeddings(family).values()]

    def write(self, family: ModelFamily, directory: Path) -> Path:
        """Write diffusers' ``learned_embeds.safetensors`` and the A1111 ``<name>.safetensors``; return the first.

        Args:
            family: the family the tokens were added to.
            directory: an existing folder.
        """
        rows = [row.detach().cpu().contiguous() for row in self.parameters(family)]
        keyed = dict(zip(family.capabilities.embedding_keys or (self.placeholder,), rows, strict=True))
        save_file(keyed, directory / EMBEDDINGS_FILE)
        save_file({A1111_KEY: rows[0]} if len(rows) == 1 else keyed, directory / self.a1111_name)
        return directory / EMBEDDINGS_FILE

    @property
    def a1111_name(self) -> str:
        """The A1111 embedding's file name: the placeholder without ``<>`` (A1111 prompts name it so)."""
        return f"{self.placeholder.strip('<>')}.safetensors"

    def card_facts(self, family: ModelFamily) -> MethodFacts:
        """What a model card says about the new word: its options, the two files, and diffusers' loading lines."""
        word = self.placeholder.strip("<>")
        files = {
            EMBEDDINGS_FILE: f"diffusers embedding of `{self.placeholder}`: `pipe.load_textual_inversion`",
            self.a1111_name: f"A1111 / ComfyUI embedding: copy it into `embeddings/` and write `{word}` in the prompt",
        }
        settings = {"placeholder_token": self.placeholder, "initializer_token": self.initializer}
        settings["num_vectors"] = self.num_vectors
        return MethodFacts("Textual inversion", ("textual_inversion",), settings, files, self.loading_lines(family))

    def loading_lines(self, family: ModelFamily) -> tuple[str, ...]:
        """Python lines that load ``learned_embeds.safetensors`` from ``folder`` into ``pipe``: in one call, or one
        call per text encoder for a file keyed by encoder (SDXL's ``clip_l`` and ``clip_g``)."""
        keys = family.capabilities.embedding_keys
        if not keys:
            return (f'pipe.load_textual_inversion(folder, weight_name="{EMBEDDINGS_FILE}")',)
        tokenizer_of = dict(zip(family.text_encoder_names, family.tokenizer_names, strict=True))
        lines = ["from safetensors.torch import load_file", f'embeddings = load_file(f"{{folder}}/{EMBEDDINGS_FILE}")']
        for encoder, key in zip(family.capabilities.token_encoders, keys, strict=True):
            lines.append(
                f'pipe.load_textual_inversion(embeddings["{key}"], token={self.tokens}, '
                f"text_encoder=pipe.{encoder}, tokenizer=pipe.{tokenizer_of[encoder]})"
            )
        return tuple(lines)


class LearnsPlaceholder:
    """What every method that learns a placeholder word has in common: its options (held as ``self.tokens``), and
    what it does to prompts: it spells the word as all its tokens before encoding, and checks on the first batch
    that the data names the word at all. Mix it in before a :class:`~sdft.methods.DiffusionFineTuner`."""

    family: ModelFamily

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

    def check(self) -> None:
        """Also refuse a family without token-taking text encoders (SD3, Flux), before it loads."""
        super().check()
        check_takes_tokens(self.family)

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        return self.tokens.expand(prompts)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if batch_idx == 0:
            self.tokens.check_prompts(batch["prompts"])


def check_takes_tokens(family: ModelFamily) -> None:
    """Refuse a family whose capabilities declare no text encoder that takes new tokens, naming those that do.

    Args:
        family: the model family (loaded or not: its capabilities are declared).
    """
    if not family.capabilities.token_encoders:
        raise UserError(
            f"model.init_args.family: {type(family).__name__} takes no new tokens, so textual inversion and "
            f"pivotal tuning do not apply to it; use LoRA or full fine-tuning, or a family that does: "
            f"{', '.join(families_taking_tokens())}"
        )


def families_taking_tokens() -> list[str]:
    """The names of the model families whose text encoders take new tokens."""
    found, pending = [], list(ModelFamily.__subclasses__())
    while pending:
        family = pending.pop()
        pending += family.__subclasses__()
        if getattr(family, "capabilities", None) is not None and family.capabilities.token_encoders:
            found.append(family.__name__)
    return sorted(found)
