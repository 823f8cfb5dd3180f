"""Generate a fixed probe set with a model's live weights and score it against the subject photos."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdft.evaluation.features import ClipFeatures, DinoFeatures
from sdft.evaluation.metrics import PromptSimilarity, SubjectSimilarity
from sdft.evaluation.probes import Probe
from sdft.evaluation.similarity import strip_identifier


class ProbeScorer(nn.Module):
    """CLIP-I, CLIP-T, DINO (and PRES when the probes hold class prompts) of one model state.

    The model is anything with ``generate(prompts, seeds, resolution, num_inference_steps, guidance_scale)``
    returning PIL images, e.g. a :class:`~sdft.methods.base.DiffusionFineTuner`. Under DDP each rank generates its
    share of the probes and :meth:`score` reduces the metrics across ranks (every rank must call it).
    """

    def __init__(
        self,
        probes: list[Probe],
        identifier: str,
        clip: ClipFeatures,
        dino: DinoFeatures,
        resolution: int,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        self.probes, self.identifier, self.resolution, self.batch_size = probes, identifier, resolution, batch_size
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.with_pres = any(probe.is_class for probe in probes)
        self.metrics = nn.ModuleDict(
            {
                "clip_i": SubjectSimilarity(clip),
                "clip_t": PromptSimilarity(clip),
                "dino": SubjectSimilarity(dino),
                "pres": SubjectSimilarity(dino),
            }
        )

    def set_reference(self, photos: list[Image.Image]) -> dict[str, float]:
        """Embed the subject photos once; return the real-real ceilings of CLIP-I and DINO."""
        reference = as_uint8([center_square(photo) for photo in photos])
        for name in ("clip_i", "dino", "pres"):
            self.metrics[name].set_reference(reference)
        return {f"val/{name}": float(self.metrics[name].reference_ceiling()) for name in ("clip_i", "dino")}

    def score(self, model, rank: int = 0, world_size: int = 1) -> tuple[dict[str, float], list[Image.Image]]:
        """Generate this rank's share of the probes with ``model``; return the reduced metrics and its images."""
        share = self.probes[rank::world_size]
        images: list[Image.Image] = []
        for start in range(0, len(share), self.batch_size):
            batch = share[start : start + self.batch_size]
            generated = model.generate(
                [p.prompt for p in batch],
                [p.seed for p in batch],
                self.resolution,
                self.num_inference_steps,
                self.guidance_scale,
            )
            self.update(batch, as_uint8(generated).to(self.metrics["dino"].device))
            images += generated
        return self.compute(), images

    def update(self, probes: list[Probe], images: torch.Tensor) -> None:
        subject = torch.tensor([not p.is_class for p in probes], device=images.device)
        if subject.any():
            prompts = [strip_identifier(p.prompt, self.identifier) for p in probes if not p.is_class]
            self.metrics["clip_i"].update(images[subject])
            self.metrics["dino"].update(images[subject])
            self.metrics["clip_t"].update(images[subject], prompts)
        if not subject.all():
            self.metrics["pres"].update(images[~subject])

    def compute(self) -> dict[str, float]:
        """Reduce every metric across ranks, then reset them for the next model state."""
        values = {}
        for name, metric in self.metrics.items():
            if name != "pres" or self.with_pres:
                values[f"val/{name}"] = float(metric.compute())
            metric.reset()
        return values


def center_square(image: Image.Image) -> Image.Image:
    """The largest centred square of an image."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def as_uint8(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2)
