"""The three stages that train the toy world's base model (see scripts/train_toyworld.py), as plain PyTorch loops.

Each stage holds its module, its data (on the module's device) and its batch size, and draws every batch from the
``torch.Generator`` it is given (on the CPU, so equal seeds draw equal batches on any device), so a stage is a
function of its seed; ``toyworld_loop.fit`` runs any of them for a step or time budget and saves and restores its
state (:meth:`state_dict`, :meth:`load_state_dict`: what training changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel

from sdft.averaging import ema_decay, update_average
from sdft.families.ddpm import DDPMSchedule
from sdft.objectives import per_example_mse
from sdft.tiny_models import seeded
from sdft.toyworld import Scene, WorldDataset
from sdft.toyworld.datasets import ClutterDataset
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, PATTERNS, POSITIONS, RELATIONS, SHAPES, SIZES

#: every attribute of a scene and its values (None: the scene has no second object), the text encoder's targets
ATTRIBUTE_VALUES: dict[str, tuple[str | None, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "pattern": PATTERNS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
    "relation": (None, *RELATIONS),
    "second_shape": (None, *SHAPES),
    "second_color": (None, *COLORS),
}


# -- data -------------------------------------------------------------------------------------------------------------


class Examples(NamedTuple):
    """Drawn scenes: images (N, 3, H, W) uint8, the pixels of their objects (N, 1, H, W) bool, captions, scenes."""

    images: torch.Tensor
    objects: torch.Tensor
    captions: list[str]
    scenes: list[Scene]


def draw_examples(dataset: WorldDataset) -> Examples:
    """Every example of ``dataset`` drawn, with the true masks of its objects (either object)."""
    images, objects, captions, scenes = [], [], [], []
    for index in range(len(dataset)):
        drawing = dataset.render(index)
        scene, text = dataset.describe(index)
        mask = drawing.mask if drawing.second_mask is None else drawing.mask | drawing.second_mask
        images.append(torch.from_numpy(np.array(drawing.image.convert("RGB"))).permute(2, 0, 1))
        objects.append(torch.from_numpy(mask)[None])
        captions.append(text)
        scenes.append(scene)
    return Examples(torch.stack(images), torch.stack(objects), captions, scenes)


class Pictures(NamedTuple):
    """What the autoencoder learns from: images (N, 3, H, W) uint8 and the pixels of what is drawn on their
    backgrounds (N, 1, H, W) bool (:class:`Examples` are pictures too)."""

    images: torch.Tensor
    objects: torch.Tensor


def draw_clutter(dataset: ClutterDataset) -> Pictures:
    """Every clutter drawing of ``dataset`` with the mask of what is drawn on its background."""
    drawings = [dataset[index] for index in range(len(dataset))]
    images = [torch.from_numpy(np.array(drawing.image.convert("RGB"))).permute(2, 0, 1) for drawing in drawings]
    return Pictures(torch.stack(images), torch.stack([torch.from_numpy(drawing.mask)[None] for drawing in drawings]))


def mixed(*parts: Pictures) -> Pictures:
    """The pictures of every part, in order."""
    return Pictures(torch.cat([part.images for part in parts]), torch.cat([part.objects for part in parts]))


def standard_normal(shape: torch.Size, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU from ``generator`` (equal on every device), then moved to ``device``."""
    return torch.randn(shape, generator=generator).to(device)


def to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, 3, H, W) -> float32 in [-1, 1], as SD's autoencoder reads them."""
    return images.float() / 127.5 - 1.0


def attribute_labels(scenes: Sequence[Scene]) -> torch.Tensor:
    """(B, len(ATTRIBUTE_VALUES)) the index of each scene's value of each attribute in ``ATTRIBUTE_VALUES``."""
    return torch.tensor(
        [[values.index(getattr(scene, key)) for key, values in ATTRIBUTE_VALUES.items()] for scene in scenes]
    )


def from_end_token(token_ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """(B, L) bool: the positions at and after each sequence's first end token (SD 1.x pads with the end token, and
    the UNet attends to every position)."""
    is_end = token_ids == end_id
    return is_end.long().cumsum(dim=1) > 0


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """The KL divergence of N(mean, exp(logvar)) from N(0, 1), per element: ``(mean^2 + var - 1 - logvar) / 2``
    (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


def vae_loss(
    reconstruction: torch.Tensor,
    pixels: torch.Tensor,
    weights: torch.Tensor,
    mean: torch.Tensor,
    logvar: torch.Tensor,
    kl_weight: float,
) -> torch.Tensor:
    """The autoencoder's loss: the weighted mean squared error of the reconstruction plus ``kl_weight`` times the
    posterior's mean KL divergence per latent element (a small weight, as Rombach et al. 2022 give it, keeps the
    latents near the origin without blurring them). Squared, not absolute, error: the absolute error is least at
    the median colour and lets a small object take the background's.

    Args:
        reconstruction: (B, 3, H, W) the decoded images.
        pixels: (B, 3, H, W) the images.
        weights: (B, 1, H, W) each pixel's weight in the mean.
        mean: (B, C, h, w) the posterior's means.
        logvar: (B, C, h, w) the posterior's log-variances.
        kl_weight: the weight of the KL term.
    """
    squared = (reconstruction - pixels).pow(2) * weights
    return squared.sum() / (weights.sum() * pixels.shape[1]) + kl_weight * gaussian_kl(mean, logvar).mean()


# -- stage 1: the autoencoder -----------------------------------------------------------------------------------------


class AutoencoderStage:
    """Reconstruct whole images through samples of the posterior, the objects' pixels weighing ``object_weight``
    times the background's: objects cover a tenth of an image, and unweighted the autoencoder spends itself on the
    textures of the backgrounds and draws the objects blurred, in the wrong colour.

    Args:
        vae: the autoencoder to train.
        pictures: the training images and their objects' pixels (world scenes, clutter, or both).
        batch_size: images per step.
        object_weight: the weight of an object's pixel, the background's being 1.
        kl_weight: see :func:`vae_loss`.
    """

    name = "autoencoder"

    def __init__(
        self,
        vae: AutoencoderKL,
        pictures: Pictures | Examples,
        batch_size: int,
        object_weight: float = 4.0,
        kl_weight: float = 1e-6,
    ) -> None:
        self.vae, self.batch_size = vae, batch_size
        self.object_weight, self.kl_weight = object_weight, kl_weight
        self.device = next(vae.parameters()).device
        self.images, self.objects = pictures.images.to(self.device), pictures.objects.to(self.device)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.vae.parameters())

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(self.images), (self.batch_size,), generator=generator).to(self.device)
        pixels = to_pixels(self.images[index])
        weights = 1.0 + self.object_weight * self.objects[index].float()
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * standard_normal(posterior.mean.shape, generator, self.device)
        reconstruction = self.vae.decode(latents).sample
        return vae_loss(reconstruction, pixels, weights, posterior.mean, posterior.logvar, self.kl_weight)

    def after_step(self) -> None:
        pass

    def finish(self) -> None:
        self.vae.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"vae": self.vae.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["vae"])


@torch.no_grad()
def encode_images(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior's means and standard deviations (N, C, h, w) of uint8 images, on the CPU, unscaled."""
    device, means, stds = next(vae.parameters()).device, [], []
    for chunk in images.split(batch_size):
        posterior = vae.encode(to_pixels(chunk).to(device)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    return torch.cat(means), torch.cat(stds)


def latent_scale(means: torch.Tensor, stds: torch.Tensor, generator: torch.Generator) -> float:
    """The inverse standard deviation of latents sampled from the posteriors: the ``scaling_factor`` that gives the
    UNet latents of unit variance (how SD's 0.18215 was chosen, Rombach et al. 2022, section G)."""
    latents = means + stds * torch.randn(means.shape, generator=generator)
    return float(1.0 / latents.std())


# -- stage 2: the text encoder ----------------------------------------------------------------------------------------


class TextStage:
    """Read every attribute of the scene back from the text encoder's states at and after the caption's end token
    (the states that carry the whole caption under CLIP's causal attention), through one linear head that is
    dropped afterwards: a cheap stand-in for a pretrained CLIP, whose text states also tell these attributes apart.

    Args:
        text_encoder: the CLIP text encoder to train.
        token_ids: (N, L) the captions' token ids.
        labels: (N, len(ATTRIBUTE_VALUES)) the scenes' :func:`attribute_labels`.
        end_id: the tokenizer's end-of-text id.
        batch_size: captions per step.
        seed: the head's initial weights are a function of this seed.
    """

    name = "text_encoder"

    def __init__(
        self,
        text_encoder: CLIPTextModel,
        token_ids: torch.Tensor,
        labels: torch.Tensor,
        end_id: int,
        batch_size: int,
        seed: int = 0,
    ) -> None:
        self.device = next(text_encoder.parameters()).device
        self.text_encoder, self.end_id, self.batch_size = text_encoder, end_id, batch_size
        self.token_ids, self.labels = token_ids.to(self.device), labels.to(self.device)
        width, classes = text_encoder.config.hidden_size, sum(map(len, ATTRIBUTE_VALUES.values()))
        self.head = seeded(seed, lambda: nn.Linear(width, classes)).to(self.device)

    def parameters(self) -> list[nn.Parameter]:
        return [*self.text_encoder.parameters(), *self.head.parameters()]

    def logits(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Each attribute's logits (B, L, its number of values) at every position."""
        states = self.text_encoder(token_ids.to(self.device))[0]
        return self.head(states).split([len(values) for values in ATTRIBUTE_VALUES.values()], dim=-1)

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(self.token_ids), (self.batch_size,), generator=generator).to(self.device)
        token_ids, labels = self.token_ids[index], self.labels[index]
        read = from_end_token(token_ids, self.end_id)
        losses = [
            F.cross_entropy(logits[read], labels[:, column, None].expand_as(read)[read])
            for column, logits in enumerate(self.logits(token_ids))
        ]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, token_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """The share of captions whose every attribute the head reads right at the end token."""
        token_ids, labels = token_ids.to(self.device), labels.to(self.device)
        end = from_end_token(token_ids, self.end_id).long().argmax(dim=1)
        rows = torch.arange(len(token_ids), device=self.device)
        return {
            key: float((logits[rows, end].argmax(-1) == labels[:, column]).float().mean())
            for column, (key, logits) in enumerate(zip(ATTRIBUTE_VALUES, self.logits(token_ids), strict=True))
        }

    def after_step(self) -> None:
        pass

    def finish(self) -> None:
        self.text_encoder.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoder.state_dict(), "head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.text_encoder.load_state_dict(state["text_encoder"])
        self.head.load_state_dict(state["head"])


# -- stage 3: the UNet ------------------------------------------------------------------------------------------------


class DenoiserStage:
    """The DDPM epsilon objective (Ho et al. 2020), each example weighted as the schedule weighs it (min-SNR-gamma
    when it has a gamma), on latents sampled from the cached posteriors, conditioned on the
    frozen text encoder's states of the captions, each caption replaced by the empty prompt with probability
    ``caption_dropout`` so that the model also learns the unconditional prediction classifier-free guidance needs
    (Ho & Salimans 2022). An exponential moving average of the weights (decay ``ema``, diffusers' warm-up) replaces
    the weights at the end.

    Args:
        unet: the UNet to train.
        text_encoder: the frozen text encoder.
        schedule: the model's noise schedule.
        latents: the posteriors' (means, standard deviations) (N, C, h, w), already scaled.
        token_ids: (N, L) the captions' token ids.
        empty_ids: (L,) the empty prompt's token ids.
        batch_size: examples per step.
        caption_dropout: the probability that an example's caption is dropped.
        ema: the moving average's decay once warmed up.
    """

    name = "unet"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        schedule: DDPMSchedule,
        latents: tuple[torch.Tensor, torch.Tensor],
        token_ids: torch.Tensor,
        empty_ids: torch.Tensor,
        batch_size: int,
        caption_dropout: float = 0.1,
        ema: float = 0.999,
    ) -> None:
        self.unet, self.text_encoder, self.schedule = unet, text_encoder, schedule
        self.batch_size, self.caption_dropout, self.ema = batch_size, caption_dropout, ema
        self.device = next(unet.parameters()).device
        self.latents = tuple(part.to(self.device) for part in latents)
        self.token_ids, self.empty_ids = token_ids.to(self.device), empty_ids.to(self.device)
        self.average = [parameter.detach().clone().float() for parameter in unet.parameters()]
        self.updates = 0

    def parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def conditions(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The text states (B, L, width) of the examples' captions, some dropped to the empty prompt."""
        dropped = (torch.rand(len(index), generator=generator) < self.caption_dropout).to(self.device)
        token_ids = torch.where(dropped[:, None], self.empty_ids, self.token_ids[index])
        with torch.no_grad():
            return self.text_encoder(token_ids)[0]

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        means, stds = self.latents
        index = torch.randint(len(means), (self.batch_size,), generator=generator).to(self.device)
        latents = means[index] + stds[index] * standard_normal(means[index].shape, generator, self.device)
        noise = standard_normal(latents.shape, generator, self.device)
        levels = torch.rand(len(index), generator=generator).to(self.device)
        noised = self.schedule.noise_latents(latents, noise, levels)
        prediction = self.unet(noised.noisy, noised.timesteps, self.conditions(index, generator)).sample
        return (noised.weight * per_example_mse(prediction, noised.target)).mean()

    @torch.no_grad()
    def after_step(self) -> None:
        weights = [parameter.detach() for parameter in self.unet.parameters()]
        update_average(self.average, weights, ema_decay(self.ema, self.updates, warmup=True))
        self.updates += 1

    @torch.no_grad()
    def finish(self) -> None:
        for parameter, average in zip(self.unet.parameters(), self.average, strict=True):
            parameter.copy_(average)
        self.unet.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.state_dict(), "average": self.average, "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.unet.load_state_dict(state["unet"])
        for average, saved in zip(self.average, state["average"], strict=True):
            average.copy_(saved)
        self.updates = state["updates"]
