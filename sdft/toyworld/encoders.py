"""The toy world's metric backbones: a small CLIP (image and text encoders in one embedding space) and a DINO
stand-in (an image encoder whose embeddings stay put when only the background and the framing change), with the
folders they are saved in.

Both follow the real backbones' conventions (:mod:`sdft.evaluation.features`): images of any size, uint8 or float in
[0, 1], are resized (short side, bicubic), center-cropped and normalised, then embedded and L2-normalised. The CLIP
reads prompts with CLIP's own BPE (open_clip's ``SimpleTokenizer``) and keeps embeddings only for the tokens the
toy world's captions use (:class:`WorldTokenizer`), so its file stays small. They are trained by
``scripts/train_toyworld_backbones.py`` (:mod:`sdft.toyworld.encoder_training`) and loaded by
:func:`sdft.evaluation.backbones.load_clip` / :func:`~sdft.evaluation.backbones.load_dino` as
``toyworld-clip:<folder>`` / ``toyworld-dino:<folder>``.

A saved folder holds ``clip/`` and ``dino/``, each a ``config.json`` (the constructor arguments) and a
``model.safetensors``, and ``training.json`` (how they were trained).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from sdft.errors import UserError
from sdft.evaluation.features import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipFeatures,
    FrozenModule,
    preprocess_images,
)
from sdft.files import write_atomic, write_json
from sdft.toyworld.scenes import (
    BACKGROUND_PHRASES,
    COLORS,
    PATTERNS,
    POSITION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    SUBJECT_SHAPES,
    TEMPLATES,
)

CONFIG, WEIGHTS = "config.json", "model.safetensors"
#: the compact ids of the tokens every prompt may hold, before the world's own
PAD, UNKNOWN, START, END = range(4)


def world_token_ids() -> list[int]:
    """The CLIP BPE ids of every word and comma of the toy world's captions, and of its subjects' class, sorted."""
    from open_clip.tokenizer import SimpleTokenizer

    words = [*SHAPES, *SUBJECT_SHAPES, *COLORS, *PATTERNS, *SIZES, *RELATIONS, *POSITION_PHRASES.values(), "an"]
    words += [phrase for pair in BACKGROUND_PHRASES.values() for phrase in pair]
    words += [re.sub(r"\{\w+\}", " ", template) for template in TEMPLATES]
    return sorted(set(SimpleTokenizer().encode(" ".join(words))))


class WorldTokenizer:
    """CLIP's BPE (open_clip's ``SimpleTokenizer``), its ids mapped onto a compact vocabulary: padding, unknown,
    start, end, then ``token_ids`` in order; any other token reads as unknown.

    Args:
        token_ids: the BPE ids that keep their own embedding (:func:`world_token_ids`).
        context_length: prompts are padded or cut to this many tokens (cut prompts still end with the end token).
    """

    def __init__(self, token_ids: Sequence[int], context_length: int = 32) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        self.bpe = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        table = torch.full((self.bpe.vocab_size,), UNKNOWN, dtype=torch.long)
        table[list(token_ids)] = torch.arange(len(token_ids)) + END + 1
        table[self.bpe.sot_token_id], table[self.bpe.eot_token_id] = START, END
        self.table = table
        self.vocab_size = len(token_ids) + END + 1

    def __call__(self, prompts: Sequence[str]) -> Tensor:
        """N prompts -> (N, context_length) compact token ids, padded with ``PAD``."""
        tokens = self.bpe(list(prompts), context_length=self.context_length)
        return torch.where(tokens == 0, PAD, self.table[tokens])  # SimpleTokenizer pads with 0


class ImageEncoder(nn.Module):
    """A small CNN: stride-2 3x3 convolutions (GroupNorm, ReLU), average- and max-pooled onto a ``grid`` x ``grid``
    map, batch-normalised and projected.

    ``grid=1`` pools the whole image (where an object stands is forgotten: the DINO stand-in); ``grid=3`` keeps
    left, centre and right apart (the CLIP, whose captions name the position). Max pooling beside the average keeps
    a small object's colour from drowning in its background (the CLIP tells colours apart in about half the steps).
    The batch norm before the projection centres the features, so embeddings of a fresh network are not all alike
    and contrastive training starts at once (SimCLR's projection head does the same, arXiv 2002.05709).

    Args:
        widths: the channels of each stage; each halves the side.
        dim: the embedding size.
        grid: the side of the pooled map.
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), dim: int = 64, grid: int = 1) -> None:
        super().__init__()
        layers, channels = [], 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, 2, 1), nn.GroupNorm(min(4, width), width), nn.ReLU()]
            channels = width
        self.body = nn.Sequential(*layers)
        self.grid = grid
        self.norm = nn.BatchNorm1d(2 * channels * grid * grid)
        self.project = nn.Linear(2 * channels * grid * grid, dim)

    def forward(self, pixels: Tensor) -> Tensor:
        """(N, 3, S, S) normalised pixels -> (N, dim) unnormalised embeddings."""
        features = self.body(pixels)
        pooled = [F.adaptive_avg_pool2d(features, self.grid), F.adaptive_max_pool2d(features, self.grid)]
        return self.project(self.norm(torch.cat(pooled, dim=1).flatten(1)))


class TextEncoder(nn.Module):
    """CLIP's text tower in small (arXiv 2103.00020): token and position embeddings, a causal pre-norm transformer,
    the final layer norm, and the projection of the end token's state.

    Args:
        vocab_size: the compact vocabulary's size (:attr:`WorldTokenizer.vocab_size`).
        context_length: the prompt length in tokens.
        width: the transformer's width.
        layers: the number of transformer layers.
        heads: the attention heads per layer.
        dim: the embedding size.
    """

    def __init__(
        self, vocab_size: int, context_length: int = 32, width: int = 64, layers: int = 2, heads: int = 4, dim: int = 64
    ) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(width)
        self.project = nn.Linear(width, dim)
        causal = torch.triu(torch.full((context_length, context_length), float("-inf")), diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        """(N, L) compact token ids -> (N, dim) unnormalised embeddings, read at each prompt's end token."""
        states = self.token_embedding(tokens) + self.position_embedding
        states = self.final_norm(self.transformer(states, mask=self.causal_mask, is_causal=True))
        ends = (tokens == END).int().argmax(dim=1)
        return self.project(states[torch.arange(len(tokens)), ends])


class ToyClipBackbone(nn.Module):
    """The toy CLIP: image and text encoders, the tokenizer and the learned temperature, behind the two calls
    :class:`~sdft.evaluation.features.ClipFeatures` makes.

    Args:
        image: the image encoder.
        text: the text encoder.
        tokenizer: maps prompts to the text encoder's token ids.
        temperature: the initial softmax temperature of the contrastive loss (CLIP's 0.07); learned.
    """

    def __init__(self, image: ImageEncoder, text: TextEncoder, tokenizer: WorldTokenizer, temperature: float = 0.07):
        super().__init__()
        self.image, self.text, self.tokenizer = image, text, tokenizer
        self.log_scale = nn.Parameter(torch.tensor(1 / temperature).log())

    def embed_pixels(self, pixels: Tensor) -> Tensor:
        """(N, 3, S, S) normalised pixels -> (N, D) unnormalised image embeddings."""
        return self.image(pixels)

    def embed_prompts(self, prompts: list[str], device: torch.device) -> Tensor:
        """N prompts -> (N, D) unnormalised text embeddings, computed on ``device``."""
        return self.text(self.tokenizer(prompts).to(device))


class ToyDinoFeatures(FrozenModule):
    """The DINO stand-in's embeddings, with DINO's preprocessing conventions (ImageNet mean and std); images are
    resized to the encoder's side with no further crop, as toy objects reach close to the border.

    Args:
        encoder: the image encoder.
        image_size: the encoder's input side.
        mean: per-channel normalisation mean.
        std: per-channel normalisation standard deviation.
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        image_size: int,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 or [0, 1] float images -> (N, D) L2-normalised embeddings."""
        pixels = preprocess_images(images.to(self.mean.device), self.image_size, self.image_size, self.mean, self.std)
        return F.normalize(self.encoder(pixels).float(), dim=-1)


# -- building, saving and loading -------------------------------------------------------------------------------------


def clip_config(
    image_size: int = 64,
    widths: Sequence[int] = (32, 64, 128, 128),
    dim: int = 64,
    grid: int = 3,
    width: int = 64,
    layers: int = 2,
    heads: int = 4,
    context_length: int = 32,
) -> dict[str, Any]:
    """The toy CLIP's ``config.json``: everything :func:`build_clip` needs.

    Args:
        image_size: the image encoder's input side.
        widths: the image encoder's stage widths.
        dim: the shared embedding size.
        grid: the side of the image encoder's pooled map.
        width: the text transformer's width.
        layers: the text transformer's layers.
        heads: the text transformer's attention heads.
        context_length: the prompt length in tokens.
    """
    return {
        "image_size": image_size,
        "image": {"widths": list(widths), "dim": dim, "grid": grid},
        "text": {"context_length": context_length, "width": width, "layers": layers, "heads": heads, "dim": dim},
        "token_ids": world_token_ids(),
    }


def dino_config(image_size: int = 64, widths: Sequence[int] = (32, 64, 128, 128), dim: int = 64) -> dict[str, Any]:
    """The DINO stand-in's ``config.json``: everything :func:`build_dino` needs.

    Args:
        image_size: the encoder's input side.
        widths: the encoder's stage widths.
        dim: the embedding size.
    """
    return {"image_size": image_size, "image": {"widths": list(widths), "dim": dim, "grid": 1}}


def build_clip(config: dict[str, Any], seed: int = 0) -> ClipFeatures:
    """A toy CLIP with fresh weights, wrapped as :class:`ClipFeatures` (frozen until trained).

    Args:
        config: as :func:`clip_config` writes it.
        seed: seeds a forked RNG for the weights; the global RNG state is left untouched.
    """
    tokenizer = WorldTokenizer(config["token_ids"], config["text"]["context_length"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text = TextEncoder(tokenizer.vocab_size, **config["text"])
        backbone = ToyClipBackbone(ImageEncoder(**config["image"]), text, tokenizer)
    return ClipFeatures(backbone, config["image_size"], CLIP_MEAN, CLIP_STD)


def build_dino(config: dict[str, Any], seed: int = 0) -> ToyDinoFeatures:
    """A DINO stand-in with fresh weights (frozen until trained).

    Args:
        config: as :func:`dino_config` writes it.
        seed: seeds a forked RNG for the weights; the global RNG state is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyDinoFeatures(ImageEncoder(**config["image"]), config["image_size"])


def save_encoder(folder: Path, features: ClipFeatures | ToyDinoFeatures, config: dict[str, Any]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``, each atomically; return ``folder``.

    Args:
        folder: the folder to write into; created if missing.
        features: the trained model.
        config: the configuration it was built from.
    """
    folder = Path(folder)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in features.state_dict().items()}
    write_atomic(folder / WEIGHTS, lambda file: file.write(save(state, metadata={"format": "pt"})))
    write_json(folder / CONFIG, config)
    return folder


def load_clip_folder(folder: str | Path) -> ClipFeatures:
    """The toy CLIP saved in ``folder`` (a training output folder, or its ``clip/``), frozen.

    Args:
        folder: the folder :func:`save_encoder` wrote, or the folder holding it as ``clip/``.
    """
    return _load(folder, "clip", build_clip)


def load_dino_folder(folder: str | Path) -> ToyDinoFeatures:
    """The DINO stand-in saved in ``folder`` (a training output folder, or its ``dino/``), frozen.

    Args:
        folder: the folder :func:`save_encoder` wrote, or the folder holding it as ``dino/``.
    """
    return _load(folder, "dino", build_dino)


def _load(folder: str | Path, kind: str, build: Callable[[dict[str, Any]], FrozenModule]) -> Any:
    folder = Path(folder)
    if not (folder / CONFIG).is_file() and (folder / kind / CONFIG).is_file():
        folder = folder / kind
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise UserError(
            f"{folder} holds no toy-world {kind} ({CONFIG} and {WEIGHTS}); train one with "
            f"`uv run python scripts/train_toyworld_backbones.py --output {folder}`"
        )
    features = build(json.loads((folder / CONFIG).read_text()))
    features.load_state_dict(load_file(str(folder / WEIGHTS)))
    return features.freeze()
