"""Generate a fixed probe set with a model's live weights and score it against the subject photos.

Besides each metric's mean, an evaluation keeps every probe image's score (gathered from every rank in probe order),
so a step's metrics carry standard errors and two steps can be compared probe by probe; and DIV (``val/div``), the
diversity of the images of one prompt, shows a collapse of the model onto the subject photos as a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from sdft.data.images import center_square
from sdft.evaluation.features import ClipFeatures, DinoFeatures
from sdft.evaluation.metrics import ProbeScores, PromptSimilarity, SubjectSimilarity
from sdft.evaluation.probes import Probe
from sdft.evaluation.similarity import cosine_matrix, strip_identifier
from sdft.evaluation.uncertainty import standard_error, within_prompt_diversity

#: the per-probe scores of subject probes, in the columns of ``SubjectMetrics.probe_scores``
SUBJECT_COLUMNS = ("val/clip_i", "val/clip_t", "val/dino")
DIV = "val/div"


@dataclass(frozen=True)
class Scored:
    """What :meth:`SubjectMetrics.compute` returns: the means, every probe's scores and the subject images' DINO
    embeddings, each probe list in ascending probe index (PRES over the class probes, the others over the subject
    probes).

    Args:
        values: metric key -> mean over every rank's images (exact: a sum and a count).
        scores: metric key -> each probe's score.
        subject_indices: the probe indices of the subject images.
        dino_embeddings: (P, D) their DINO embeddings, in the same order.
    """

    values: dict[str, float]
    scores: dict[str, list[float]]
    subject_indices: list[int]
    dino_embeddings: Tensor


@dataclass(frozen=True)
class ProbeResult:
    """One evaluation: the metrics' means and standard errors, every probe's scores, and this rank's images.

    Args:
        values: metric key -> mean (``val/div`` when a prompt has two images or more).
        errors: metric key -> standard error of the mean (over probe images; over prompts for DIV).
        scores: metric key -> each probe's score in probe order (per prompt for DIV).
        images: the images this rank generated, in the order of its share of the probes.
    """

    values: dict[str, float]
    errors: dict[str, float]
    scores: dict[str, list[float]]
    images: list[Image.Image]


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
        self.probe_scores = ProbeScores(len(SUBJECT_COLUMNS))
        self.class_scores = ProbeScores(1)
        self.dino_embeddings = ProbeScores()
        self.seen = 0

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

    def update(
        self, images: torch.Tensor, prompts: list[str], is_class: list[bool], indices: list[int] | None = None
    ) -> None:
        """Add generated images (N, 3, H, W), their prompts, which come from the bare class prompt, and their probe
        indices (None numbers them in order of arrival on this rank).

        Every metric is updated, with no images where the batch holds none of its kind (under DDP a rank's share
        of the probes may hold no class prompt), so each metric's update count says that its rank took part.
        """
        if indices is None:
            indices = list(range(self.seen, self.seen + len(prompts)))
        self.seen += len(prompts)
        subject = torch.tensor([not flag for flag in is_class], device=images.device)
        ids = torch.tensor(indices, dtype=torch.long)
        clip, dino = self.embed("clip_i", images[subject]), self.embed("dino", images[subject])
        stripped = [strip_identifier(p, self.identifier) for p, flag in zip(prompts, is_class, strict=True) if not flag]
        self.metrics["clip_i"].update(embeddings=clip)
        self.metrics["clip_t"].update(None, stripped, image_embeddings=clip)
        self.metrics["dino"].update(embeddings=dino)
        self.record_subject_scores(ids[subject.cpu()], clip, dino, stripped)
        if "pres" in self.metrics:
            bare = self.embed("dino", images[~subject])
            self.metrics["pres"].update(embeddings=bare)
            pres = cosine_matrix(bare, self.metrics["dino"].reference_embeddings()).mean(1, keepdim=True)
            self.class_scores.update(ids[~subject.cpu()], pres)

    def record_subject_scores(self, ids: Tensor, clip: Tensor, dino: Tensor, stripped: list[str]) -> None:
        """Keep each subject image's CLIP-I, CLIP-T and DINO (mean cosines over the photos) and DINO embedding."""
        clip_i = cosine_matrix(clip, self.metrics["clip_i"].reference_embeddings()).mean(1)
        texts = self.metrics["clip_t"].clip_features.encode_texts(stripped) if stripped else clip[:0]
        clip_t = (clip * texts.to(clip.device)).sum(-1)
        fidelity = cosine_matrix(dino, self.metrics["dino"].reference_embeddings()).mean(1)
        self.probe_scores.update(ids, torch.stack([clip_i, clip_t, fidelity], dim=1))
        self.dino_embeddings.update(ids, dino)

    def embed(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """The (N, D) embeddings of ``images`` by metric ``name``'s backbone; (0, D) without running it when N = 0.

        Args:
            name: ``clip_i`` or ``dino``.
            images: (N, 3, H, W) generated images.
        """
        metric = self.metrics[name]
        return metric.features(images) if len(images) else metric.reference_embeddings()[:0]

    def compute(self) -> Scored:
        """Reduce every metric across ranks, gather every probe's scores, then reset for the next set of images."""
        values = {f"val/{name}": float(metric.compute()) for name, metric in self.metrics.items()}
        indices, columns = self.probe_scores.rows()
        scores = {key: columns[:, column].tolist() for column, key in enumerate(SUBJECT_COLUMNS)}
        if "pres" in self.metrics:
            scores["val/pres"] = self.class_scores.rows()[1][:, 0].tolist()
        embeddings = self.dino_embeddings.rows()[1]
        for metric in [*self.metrics.values(), self.probe_scores, self.class_scores, self.dino_embeddings]:
            metric.reset()
        self.seen = 0
        return Scored(values, scores, indices.tolist(), embeddings)


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

    def score(self, model, rank: int = 0, world_size: int = 1) -> ProbeResult:
        """Generate this rank's share of the probes with ``model``; return the reduced metrics, their standard
        errors, every probe's scores and this rank's images (every rank must call it under DDP)."""
        indices = list(range(rank, len(self.probes), world_size))
        images: list[Image.Image] = []
        for start in range(0, len(indices), self.batch_size):
            batch = indices[start : start + self.batch_size]
            probes = [self.probes[index] for index in batch]
            generated = model.generate(
                [p.prompt for p in probes],
                [p.seed for p in probes],
                self.resolution,
                self.num_inference_steps,
                self.guidance_scale,
            )
            pixels = as_uint8(generated).to(self.metrics.metrics["dino"].device)
            self.metrics.update(pixels, [p.prompt for p in probes], [p.is_class for p in probes], batch)
            images += generated
        return self.result(self.metrics.compute(), images)

    def result(self, scored: Scored, images: list[Image.Image]) -> ProbeResult:
        """The means with DIV added (when a prompt has two images or more) and every metric's standard error."""
        values, scores = dict(scored.values), dict(scored.scores)
        prompts = [self.probes[index].prompt for index in scored.subject_indices]
        diversity = within_prompt_diversity(scored.dino_embeddings, prompts)
        if diversity:
            values[DIV], scores[DIV] = sum(diversity) / len(diversity), diversity
        errors = {key: standard_error(scores[key]) for key in values}
        return ProbeResult(values, errors, scores, images)


def as_uint8(images: list[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("RGB")) for image in images])).permute(0, 3, 1, 2)
