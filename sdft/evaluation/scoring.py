"""Generate a fixed probe set with a model's live weights and score it against the subject photos."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from sdft.data.images import center_square
from sdft.evaluation.features import ClipFeatures, DinoFeatures
from sdft.evaluation.metrics import PromptSimilarity, SubjectSimilarity
from sdft.evaluation.probes import Probe
from sdft.evaluation.similarity import strip_identifier


class SubjectMetrics(nn.Module):
    """CLIP-I, CLIP-T, DINO and (``with_pres``) PRES of generated images against one subject's photos.

    Each image is embedded once per backbone: its CLIP embedding serves CLIP-I and CLIP-T, and the photos' DINO
    embeddings serve DINO and PRES. The metrics reduce across ranks in :meth:`compute`.
    """

    def __init__(self, identifier: str, clip: ClipFeatures, dino: DinoFeatures, with_pres: bool) -> None:
        """
        Args:
            identifier: the rare token removed from the prompts for CLIP-T (e.g. ``sks``).
            clip: the CLIP image/text embedder.
            dino: the DINO embedder.
            with_pres: also score images of the bare class prompt (PRES).
        """
        super().__init__()
        self.identifier = identifier
        metrics = {"clip_i": SubjectSimilarity(clip), "clip_t": PromptSimilarity(clip), "dino": SubjectSimilarity(dino)}
        if with_pres:
            metrics["pres"] = SubjectSimilarity(dino)
        self.metrics = nn.ModuleDict(metrics)

    def set_reference(self, photos: torch.Tensor) -> None:
        """Embed the subject photos (M, 3, H, W) once per backbone."""
        self.metrics["clip_i"].set_reference(photos)
        self.metrics["dino"].set_reference(photos)
        if "pres" in self.metrics:
            self.metrics["pres"].reference = self.metrics["dino"].reference

    def ceilings(self) -> dict[str, float | None]:
        """The real-real ceilings of CLIP-I and DINO: the mean over distinct pairs of photos, None with one photo."""
        if len(self.metrics["dino"].reference_embeddings()) < 2:
            return {"val/clip_i": None, "val/dino": None}
        return {f"val/{name}": float(self.metrics[name].reference_ceiling()) for name in ("clip_i", "dino")}

    def update(self, images: torch.Tensor, prompts: list[str], is_class: list[bool]) -> None:
        """Add generated images (N, 3, H, W), their prompts, and which come from the bare class prompt.

        Every metric is updated, with no images where the batch holds none of its kind (under DDP a rank's share
        of the probes may hold no class prompt), so each metric's update count says that its rank took part.
        """
        subject = torch.tensor([not flag for flag in is_class], device=images.device)
        clip = self.embed("clip_i", images[subject])
        stripped = [strip_identifier(p, self.identifier) for p, flag in zip(prompts, is_class, strict=True) if not flag]
        self.metrics["clip_i"].update(embeddings=clip)
        self.metrics["clip_t"].update(None, stripped, image_embeddings=clip)
        self.metrics["dino"].update(embeddings=self.embed("dino", images[subject]))
        if "pres" in self.metrics:
            self.metrics["pres"].update(embeddings=self.embed("dino", images[~subject]))

    def embed(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """The (N, D) embeddings of ``images`` by metric ``name``'s backbone; (0, D) without running it when N = 0.

        Args:
            name: ``clip_i`` or ``dino``.
            images: (N, 3, H, W) generated images.
        """
        metric = self.metrics[name]
        return metric.features(images) if len(images) else metric.reference_embeddings()[:0]

    def compute(self) -> dict[str, float]:
        """Reduce every metric across ranks, then reset them for the next set of images."""
        values = {f"val/{name}": float(metric.compute()) for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        return values


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
        self.metrics = SubjectMetrics(identifier, clip, dino, with_pres=any(probe.is_class for probe in probes))

    def set_reference(self, photos: list[Image.Image]) -> dict[str, float]:
        """Embed the subject photos once; return the real-real ceilings of CLIP-I and DINO."""
        self.metrics.set_reference(as_uint8([center_square(photo) for photo in photos]))
        return self.metrics.ceilings()

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
            pixels = as_uint8(generated).to(self.metrics.metrics["dino"].device)
            self.metrics.update(pixels, [p.prompt for p in batch], [p.is_class for p in batch])
            images += generated
        return self.metrics.compute(), images


def as_uint8(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2)
