"""The three stages that train the toy world's base model (see scripts/train_toyworld.py), as plain PyTorch loops.

Each stage holds its module, its data and its batch size, and draws every batch from the ``torch.Generator`` it is
given, so a stage is a function of its seed; :func:`fit` runs any of them for a step or time budget with AdamW, a
linear warm-up and gradient clipping, and records the loss.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

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


# -- the loop ---------------------------------------------------------------------------------------------------------


class Stage(Protocol):
    """One stage of training: its trainable parameters, the loss of a batch it draws, and hooks around the steps."""

    name: str

    def parameters(self) -> list[nn.Parameter]: ...

    def loss(self, generator: torch.Generator) -> torch.Tensor: ...

    def after_step(self) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Budget:
    """How long a stage trains: ``steps`` optimizer steps, or fewer if ``minutes`` run out first.

    Args:
        steps: the most optimizer steps.
        minutes: the most wall-clock minutes; None for no limit (a run stopped by time is not reproducible).
    """

    steps: int
    minutes: float | None = None

    def allows(self, step: int, seconds: float) -> bool:
        return step < self.steps and (self.minutes is None or seconds < 60 * self.minutes)


def rate_factor(step: int, warmup: int, steps: int, final: float = 0.1) -> float:
    """The learning rate of optimizer step ``step`` (from 0) as a share of the peak: a linear warm-up over
    ``warmup`` steps, then a half cosine down to ``final`` at step ``steps`` (Loshchilov & Hutter 2017)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def fit(
    stage: Stage, budget: Budget, learning_rate: float, generator: torch.Generator, warmup: int = 100, every: int = 50
) -> dict:
    """Train ``stage`` with AdamW (no weight decay), the learning rate of :func:`rate_factor` and gradients clipped
    at norm 1; return its record: steps, seconds, learning rate and, every ``every`` steps, ``[step, mean loss of those
    steps, seconds since the start]`` (the fastest stretches tell a busy machine's step time from a quiet one's)."""
    parameters = stage.parameters()
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: rate_factor(step, warmup, budget.steps))
    losses, window, step, start = [], [], 0, time.perf_counter()
    while budget.allows(step, time.perf_counter() - start):
        loss = stage.loss(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        stage.after_step()
        window.append(loss.item())
        step += 1
        if step % every == 0 or not budget.allows(step, time.perf_counter() - start):
            losses.append(progress(stage.name, step, window, time.perf_counter() - start, losses))
            window = []
    stage.finish()
    seconds = time.perf_counter() - start
    return {"stage": stage.name, "steps": step, "seconds": round(seconds, 1), "learning_rate": learning_rate,
            "losses": losses}  # fmt: skip


def progress(name: str, step: int, window: list[float], seconds: float, earlier: list[list[float]]) -> list[float]:
    """The loss record ``[step, mean loss, seconds]`` of the steps in ``window``, also printed with their pace."""
    last_step, last_seconds = earlier[-1][0::2] if earlier else (0, 0.0)
    pace = (seconds - last_seconds) / (step - last_step)
    print(f"{name}: step {step}, loss {np.mean(window):.4f}, {pace:.3f} s/step", file=sys.stderr, flush=True)
    return [step, round(float(np.mean(window)), 5), round(seconds, 1)]


# -- stage 1: the autoencoder -----------------------------------------------------------------------------------------


class AutoencoderStage:
    """Reconstruct whole images through samples of the posterior, the objects' pixels weighing ``object_weight``
    times the background's: objects cover a tenth of an image, and unweighted the autoencoder spends itself on the
    textures of the backgrounds and draws the objects blurred, in the wrong colour.

    Args:
        vae: the autoencoder to train.
        examples: the training scenes.
        batch_size: images per step.
        object_weight: the weight of an object's pixel, the background's being 1.
        kl_weight: see :func:`vae_loss`.
    """

    name = "autoencoder"

    def __init__(
        self,
        vae: AutoencoderKL,
        examples: Examples,
        batch_size: int,
        object_weight: float = 4.0,
        kl_weight: float = 1e-6,
    ) -> None:
        self.vae, self.examples, self.batch_size = vae, examples, batch_size
        self.object_weight, self.kl_weight = object_weight, kl_weight
        self.device = next(vae.parameters()).device

    def parameters(self) -> list[nn.Parameter]:
        return list(self.vae.parameters())

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(self.examples.images), (self.batch_size,), generator=generator)
        pixels = to_pixels(self.examples.images[index]).to(self.device)
        weights = 1.0 + self.object_weight * self.examples.objects[index].float().to(self.device)
        posterior = self.vae.encode(pixels).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator).to(pixels)
        reconstruction = self.vae.decode(latents).sample
        return vae_loss(reconstruction, pixels, weights, posterior.mean, posterior.logvar, self.kl_weight)

    def after_step(self) -> None:
        pass

    def finish(self) -> None:
        self.vae.eval()


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
        self.text_encoder, self.token_ids, self.labels = text_encoder, token_ids, labels
        self.end_id, self.batch_size = end_id, batch_size
        self.device = next(text_encoder.parameters()).device
        width, classes = text_encoder.config.hidden_size, sum(map(len, ATTRIBUTE_VALUES.values()))
        self.head = seeded(seed, lambda: nn.Linear(width, classes)).to(self.device)

    def parameters(self) -> list[nn.Parameter]:
        return [*self.text_encoder.parameters(), *self.head.parameters()]

    def logits(self, token_ids: torch.Tensor) -> list[torch.Tensor]:
        """Each attribute's logits (B, L, its number of values) at every position."""
        states = self.text_encoder(token_ids.to(self.device))[0]
        return self.head(states).split([len(values) for values in ATTRIBUTE_VALUES.values()], dim=-1)

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(len(self.token_ids), (self.batch_size,), generator=generator)
        token_ids, labels = self.token_ids[index], self.labels[index].to(self.device)
        read = from_end_token(token_ids, self.end_id).to(self.device)
        losses = [
            F.cross_entropy(logits[read], labels[:, column, None].expand_as(read)[read])
            for column, logits in enumerate(self.logits(token_ids))
        ]
        return torch.stack(losses).mean()

    @torch.no_grad()
    def accuracy(self, token_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """The share of captions whose every attribute the head reads right at the end token."""
        end = from_end_token(token_ids, self.end_id).long().argmax(dim=1)
        rows = torch.arange(len(token_ids))
        return {
            key: float((logits[rows, end].argmax(-1).cpu() == labels[:, column]).float().mean())
            for column, (key, logits) in enumerate(zip(ATTRIBUTE_VALUES, self.logits(token_ids), strict=True))
        }

    def after_step(self) -> None:
        pass

    def finish(self) -> None:
        self.text_encoder.eval()


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
        self.latents, self.token_ids, self.empty_ids = latents, token_ids, empty_ids
        self.batch_size, self.caption_dropout, self.ema = batch_size, caption_dropout, ema
        self.device = next(unet.parameters()).device
        self.average = [parameter.detach().clone().float() for parameter in unet.parameters()]
        self.updates = 0

    def parameters(self) -> list[nn.Parameter]:
        return list(self.unet.parameters())

    def conditions(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The text states (B, L, width) of the examples' captions, some dropped to the empty prompt."""
        dropped = torch.rand(len(index), generator=generator) < self.caption_dropout
        token_ids = torch.where(dropped[:, None], self.empty_ids, self.token_ids[index])
        with torch.no_grad():
            return self.text_encoder(token_ids.to(self.device))[0]

    def loss(self, generator: torch.Generator) -> torch.Tensor:
        means, stds = self.latents
        index = torch.randint(len(means), (self.batch_size,), generator=generator)
        latents = means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        levels = torch.rand(len(index), generator=generator)
        noised = self.schedule.noise_latents(latents.to(self.device), noise, levels.to(self.device))
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
