"""Frozen feature extractors for the subject-fidelity metrics, each owning its preprocessing.

Every extractor takes images as a uint8 tensor (N, 3, H, W) in [0, 255] or a float tensor in [0, 1], of any size,
and returns L2-normalised float32 embeddings (N, D). Preprocessing is done with torch ops, so it runs on the
images' device. Backbones follow the DreamBench reproductions (REFERENCE.md Sec. 1): OpenAI CLIP ViT-B/32 for
CLIP-I / CLIP-T, DINO ViT-S/16's CLS token for DINO and PRES.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    ViTConfig,
    ViTModel,
)

from sdft.tokenizers import write_clip_tokenizer

if TYPE_CHECKING:  # open_clip (and timm with it) loads only when a CLIP is built: `sdft fit` starts sooner
    import open_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_IMAGE_SIZE = 32


def to_unit_range(images: Tensor) -> Tensor:
    """Images (N, 3, H, W), uint8 in [0, 255] or float in [0, 1] -> float32 (N, 3, H, W) in [0, 1].

    Args:
        images: the batch to convert; float values are taken as already in [0, 1].
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255
    if not images.is_floating_point():
        raise ValueError(f"expected uint8 or float images, got {images.dtype}")
    return images.float()


def preprocess_images(images: Tensor, resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Resize the short side (bicubic, antialiased), center-crop a square and normalise.

    Args:
        images: (N, 3, H, W) uint8 or float in [0, 1].
        resize: the short side after resizing, in pixels.
        crop: the side of the square center crop, in pixels.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided out.

    Returns:
        (N, 3, crop, crop) float32 tensor.
    """
    images = to_unit_range(images)
    images = TF.resize(images, [resize], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    images = TF.center_crop(images.clamp(0, 1), [crop, crop])
    return TF.normalize(images, list(mean), list(std))


class FrozenModule(nn.Module):
    """A module with no trainable parameters that stays in eval mode whatever its parent asks."""

    def freeze(self) -> FrozenModule:
        """Turn off gradients and dropout; call at the end of ``__init__``."""
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> FrozenModule:
        """Ignore ``mode``: a feature extractor is always in eval mode.

        Args:
            mode: requested by the parent module; ignored.
        """
        return super().train(False)


class OpenClipBackbone(nn.Module):
    """An ``open_clip`` CLIP and its tokenizer, behind the two calls :class:`ClipFeatures` makes."""

    def __init__(self, model: open_clip.model.CLIP, tokenizer: Callable[[list[str]], Tensor]) -> None:
        """Wrap the model.

        Args:
            model: an open_clip CLIP model.
            tokenizer: maps prompts to (N, context_length) token ids, e.g. ``open_clip.get_tokenizer(name)``.
        """
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def embed_pixels(self, pixels: Tensor) -> Tensor:
        """(N, 3, S, S) normalised pixels -> (N, D) unnormalised image embeddings."""
        return self.model.encode_image(pixels)

    def embed_prompts(self, prompts: list[str], device: torch.device) -> Tensor:
        """N prompts -> (N, D) unnormalised text embeddings, computed on ``device``."""
        return self.model.encode_text(self.tokenizer(prompts).to(device))


class TransformersClipBackbone(nn.Module):
    """A ``transformers.CLIPModel`` and its tokenizer, behind the two calls :class:`ClipFeatures` makes."""

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer) -> None:
        """Wrap the model.

        Args:
            model: a transformers CLIP model.
            tokenizer: its tokenizer.
        """
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    def embed_pixels(self, pixels: Tensor) -> Tensor:
        """(N, 3, S, S) normalised pixels -> (N, D) unnormalised image embeddings (pooled output, projected)."""
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

    def embed_prompts(self, prompts: list[str], device: torch.device) -> Tensor:
        """N prompts -> (N, D) unnormalised text embeddings, computed on ``device``."""
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        output = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return self.model.text_projection(output.pooler_output)


class ClipFeatures(FrozenModule):
    """CLIP image and text embeddings for CLIP-I and CLIP-T; calling the module embeds images."""

    def __init__(
        self,
        backbone: OpenClipBackbone | TransformersClipBackbone,
        image_size: int,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        """Freeze the backbone and set up its preprocessing.

        Args:
            backbone: the CLIP model and tokenizer.
            image_size: the model's input side; images are resized (short side) and center-cropped to it.
            mean: per-channel normalisation mean.
            std: per-channel normalisation standard deviation.
        """
        super().__init__()
        self.backbone = backbone
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.freeze()

    @classmethod
    def from_open_clip(cls, model_name: str = "ViT-B-32", pretrained: str | None = "openai") -> ClipFeatures:
        """Load an open_clip model; ``pretrained=None`` gives random weights and downloads nothing.

        Args:
            model_name: open_clip architecture name.
            pretrained: open_clip weight tag (``openai`` for the DreamBench CLIP), or None.
        """
        import open_clip

        model = open_clip.create_model(model_name, pretrained=pretrained)
        config = open_clip.get_model_preprocess_cfg(model)
        backbone = OpenClipBackbone(model, open_clip.get_tokenizer(model_name))
        return cls(backbone, square_side(config["size"]), config["mean"], config["std"])

    @classmethod
    def from_transformers(cls, name_or_path: str | Path = "openai/clip-vit-base-patch32") -> ClipFeatures:
        """Load a ``transformers`` CLIP model and tokenizer from the hub or a local folder.

        Args:
            name_or_path: hub id or folder holding the model and tokenizer files.
        """
        model = CLIPModel.from_pretrained(name_or_path)
        backbone = TransformersClipBackbone(model, CLIPTokenizer.from_pretrained(name_or_path))
        return cls(backbone, square_side(model.config.vision_config.image_size))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 or [0, 1] float images -> (N, D) L2-normalised float32 image embeddings."""
        pixels = preprocess_images(images.to(self.mean.device), self.image_size, self.image_size, self.mean, self.std)
        return F.normalize(self.backbone.embed_pixels(pixels.to(self.mean.dtype)).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, prompts: list[str]) -> Tensor:
        """N prompts -> (N, D) L2-normalised float32 text embeddings."""
        return F.normalize(self.backbone.embed_prompts(list(prompts), self.mean.device).float(), dim=-1)

    def forward(self, images: Tensor) -> Tensor:
        """The image-embedding view used by :class:`~sdft.evaluation.metrics.SubjectSimilarity` (CLIP-I)."""
        return self.encode_images(images)


class DinoFeatures(FrozenModule):
    """DINO ViT CLS-token embeddings for DINO and PRES."""

    def __init__(
        self,
        model: ViTModel,
        resize: int = 256,
        crop: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        """Freeze the ViT and set up its preprocessing.

        Args:
            model: a transformers ViT (e.g. ``facebook/dino-vits16``).
            resize: short side after the bicubic resize.
            crop: side of the center crop; must equal the ViT's image size.
            mean: per-channel normalisation mean.
            std: per-channel normalisation standard deviation.
        """
        super().__init__()
        if crop != model.config.image_size:
            raise ValueError(f"crop={crop} must equal the ViT's image_size={model.config.image_size}")
        self.model = model
        self.resize = resize
        self.crop = crop
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)
        self.freeze()

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = "facebook/dino-vits16", resize: int = 256, crop: int = 224
    ) -> DinoFeatures:
        """Load a ViT from the hub or a local folder, without the (untrained) pooler.

        Args:
            name_or_path: hub id or folder of a ``transformers`` ViT checkpoint.
            resize: short side after the bicubic resize.
            crop: side of the center crop.
        """
        return cls(ViTModel.from_pretrained(name_or_path, add_pooling_layer=False), resize, crop)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) uint8 or [0, 1] float images -> (N, D) L2-normalised CLS embeddings.

        The CLS token of the last hidden state, not ``pooler_output`` (which adds an untrained dense + tanh).
        """
        pixels = preprocess_images(images.to(self.mean.device), self.resize, self.crop, self.mean, self.std)
        hidden = self.model(pixel_values=pixels.to(self.mean.dtype)).last_hidden_state
        return F.normalize(hidden[:, 0].float(), dim=-1)


def square_side(size: int | Sequence[int]) -> int:
    """The side of a square image size given as an int or an (H, W) pair.

    Args:
        size: the model's input size.
    """
    if isinstance(size, int):
        return size
    if len(size) != 2 or size[0] != size[1]:
        raise ValueError(f"only square model inputs are supported, got {size}")
    return int(size[0])


def build_tiny_open_clip(seed: int = 0) -> open_clip.model.CLIP:
    """A 2-layer, width-32 open_clip CLIP on 32 px images, with random weights from ``seed``.

    Args:
        seed: seeds a forked RNG; the global RNG state is left untouched.
    """
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=TINY_IMAGE_SIZE)
    text = CLIPTextCfg(width=32, heads=2, layers=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.model.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text)


def tiny_clip_features(seed: int = 0) -> ClipFeatures:
    """:class:`ClipFeatures` on a tiny random open_clip CLIP with the real CLIP tokenizer: offline, for tests.

    Args:
        seed: seeds the random weights.
    """
    from open_clip.tokenizer import SimpleTokenizer

    backbone = OpenClipBackbone(build_tiny_open_clip(seed), SimpleTokenizer())
    return ClipFeatures(backbone, TINY_IMAGE_SIZE)


def tiny_dino_features(seed: int = 0) -> DinoFeatures:
    """:class:`DinoFeatures` on a tiny random ViT (32 px, patch 8, width 32, 2 layers): offline, for tests.

    Args:
        seed: seeds a forked RNG; the global RNG state is left untouched.
    """
    config = ViTConfig(
        image_size=TINY_IMAGE_SIZE,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTModel(config, add_pooling_layer=False)
    return DinoFeatures(model, resize=36, crop=TINY_IMAGE_SIZE)


def tiny_clip_config() -> CLIPConfig:
    """A 2-layer, width-32 ``transformers`` CLIP config on 32 px images, with CLIP's 49,408-token vocabulary."""
    shared = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    return CLIPConfig(
        text_config={**shared, "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407},
        vision_config={**shared, "image_size": TINY_IMAGE_SIZE, "patch_size": 8},
        projection_dim=16,
    )


def save_tiny_transformers_clip(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``transformers`` CLIP folder: model, CLIP BPE tokenizer and image processor.

    The folder loads with :meth:`ClipFeatures.from_transformers` and with ``CLIPProcessor.from_pretrained``; the
    image processor resizes the short side to 32 px (bicubic), center-crops 32 px and uses CLIP's mean/std.

    Args:
        directory: the folder to write; created if missing.
        seed: seeds a forked RNG; the global RNG state is left untouched.
    """
    directory = write_clip_tokenizer(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config())
    model.save_pretrained(directory)
    crop = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=crop)
    processor.save_pretrained(directory)
    return directory
