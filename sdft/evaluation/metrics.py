"""Subject-fidelity metrics of DreamBench (DreamBooth, arXiv 2208.12242, Sec. 4.1) as ``torchmetrics`` metrics.

States are a sum and a count reduced with ``sum``, so the value is exact under DDP whatever the split of images
across ranks. Values are plain cosines on a 0-1 scale (not x100 as in ``torchmetrics`` ``CLIPScore``).

Metric keys used by the evaluation callback (REFERENCE.md Sec. 1):

- ``val/dino``: :class:`SubjectSimilarity` on :class:`~sdft.evaluation.features.DinoFeatures`.
- ``val/clip_i``: :class:`SubjectSimilarity` on :class:`~sdft.evaluation.features.ClipFeatures` (image view).
- ``val/clip_t``: :class:`PromptSimilarity` on ``ClipFeatures``, prompts stripped of the identifier.
- ``val/pres``: :class:`SubjectSimilarity` on ``DinoFeatures``, fed images of the bare class prompt (``a dog``);
  lower is better, compare with the base model's value.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from sdft.evaluation.features import ClipFeatures
from sdft.evaluation.similarity import cosine_matrix, mean_distinct_pair_similarity


class SubjectSimilarity(Metric):
    """Mean cosine over all (generated, real) pairs of image embeddings: DINO, CLIP-I or PRES.

    DINO: mean over all (generated, real) pairs of cosine(DINO ViT-S/16 CLS embeddings).
    CLIP-I: the same with CLIP ViT-B/32 image embeddings.
    PRES: DINO similarity between images generated from the bare class prompt and the real subject photos;
    a rise over the base model means language drift / prior collapse.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, features: nn.Module) -> None:
        """Hold the frozen feature extractor; the real photos come later through :meth:`set_reference`.

        Args:
            features: maps (N, 3, H, W) images to (N, D) embeddings, e.g. ``DinoFeatures`` or ``ClipFeatures``.
        """
        super().__init__()
        self.features = features
        self.register_buffer("reference", torch.empty(0), persistent=False)
        self.add_state("similarity_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pair_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def set_reference(self, real_images: Tensor) -> None:
        """Embed the real subject photos once; every rank must pass the same photos. Survives :meth:`reset`.

        Args:
            real_images: (M, 3, H, W) uint8 or [0, 1] float photos of the subject.
        """
        if real_images.shape[0] == 0:
            raise ValueError("set_reference needs at least one real image of the subject")
        self.reference = self.features(real_images.to(self.device))

    def update(self, generated_images: Tensor | None = None, embeddings: Tensor | None = None) -> None:
        """Add the cosines of every (generated, real) pair, from the images or from their embeddings (pass one).

        An update with no images adds nothing but counts as one, so a rank whose share of the probes held none of
        these images computes without torchmetrics' "compute before update" warning.

        Args:
            generated_images: (N, 3, H, W) uint8 or [0, 1] float generated images.
            embeddings: (N, D) embeddings of generated images by this metric's feature extractor.
        """
        if (generated_images is None) == (embeddings is None):
            raise TypeError("SubjectSimilarity.update takes generated_images or embeddings, exactly one")
        if embeddings is None:
            embeddings = self.features(generated_images.to(self.device))
        similarity = cosine_matrix(embeddings.to(self.device), self.reference_embeddings())
        self.similarity_sum += similarity.sum().double()
        self.pair_count += similarity.numel()

    def compute(self) -> Tensor:
        """The mean cosine over all accumulated pairs."""
        return mean_of(self.similarity_sum, self.pair_count, type(self).__name__)

    def reference_ceiling(self) -> Tensor:
        """The real-real ceiling: mean cosine over pairs of distinct real photos (diagonal excluded)."""
        return mean_distinct_pair_similarity(self.reference_embeddings())

    def reference_embeddings(self) -> Tensor:
        """The (M, D) embeddings of the real photos; raises if :meth:`set_reference` was not called."""
        if self.reference.numel() == 0:
            raise RuntimeError("call set_reference(real_images) before using SubjectSimilarity")
        return self.reference


class PromptSimilarity(Metric):
    """CLIP-T: mean cosine between each image's CLIP embedding and its prompt's CLIP embedding.

    The prompts must already be stripped of the rare identifier (``a sks dog in the snow`` ->
    ``a dog in the snow``, see :func:`~sdft.evaluation.similarity.strip_identifier`).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, clip_features: ClipFeatures) -> None:
        """Hold the frozen CLIP.

        Args:
            clip_features: image and text embeddings from the same CLIP.
        """
        super().__init__()
        self.clip_features = clip_features
        self.add_state("similarity_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pair_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor | None, prompts: list[str], image_embeddings: Tensor | None = None) -> None:
        """Add the image-prompt cosines of a batch, from the images or from their CLIP embeddings (pass one).

        Args:
            images: (N, 3, H, W) uint8 or [0, 1] float generated images, or None with ``image_embeddings``.
            prompts: the N prompts they were generated from, identifier removed.
            image_embeddings: (N, D) embeddings of the images by this metric's CLIP (``encode_images``).
        """
        if (images is None) == (image_embeddings is None):
            raise TypeError("PromptSimilarity.update takes images or image_embeddings, exactly one")
        count = len(images if images is not None else image_embeddings)
        if count != len(prompts):
            raise ValueError(f"got {count} images for {len(prompts)} prompts; pass one prompt per image")
        if count == 0:
            return
        if image_embeddings is None:
            image_embeddings = self.clip_features.encode_images(images.to(self.device))
        text_embeddings = self.clip_features.encode_texts(prompts)
        self.similarity_sum += (image_embeddings.to(self.device) * text_embeddings).sum().double()
        self.pair_count += count

    def compute(self) -> Tensor:
        """The mean image-prompt cosine."""
        return mean_of(self.similarity_sum, self.pair_count, type(self).__name__)


def mean_of(total: Tensor, count: Tensor, name: str) -> Tensor:
    """``total / count`` as float32; raises when ``count`` is 0 (no image was scored on any rank).

    A rank may hold no image of some kind (its share of the probes has no class prompt), so a metric's update can
    add nothing; but a metric that scored no image anywhere has no value, and that is a bug, not a NaN.

    Args:
        total: the reduced sum of cosines.
        count: the reduced number of pairs.
        name: the metric, for the error.
    """
    if int(count) == 0:
        raise RuntimeError(f"{name} scored no image: update it with at least one image before compute")
    return (total / count).float()


class ProbeScores(Metric):
    """Per-probe rows gathered from every rank: each update adds (N,) probe indices and (N, K) values, and
    :meth:`compute` returns all of them ordered by probe index, whatever the split of probes across ranks.

    The per-image scores behind a step's mean (its standard error, and paired comparisons between steps) and the
    embeddings behind DIV travel this way. Every rank must update at least once (with empty tensors if its share
    holds nothing of this kind), so that each rank's state has a tensor to gather.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, width: int | None = None) -> None:
        """
        Args:
            width: K, the values per probe (e.g. 3 scores); None takes the width of the first update (an
                embedding's size).
        """
        super().__init__()
        self.width = width
        self.add_state("indices", [], dist_reduce_fx="cat")
        self.add_state("values", [], dist_reduce_fx="cat")

    def update(self, indices: Tensor, values: Tensor) -> None:
        """Add the rows of ``N`` probes.

        Args:
            indices: (N,) the probes' global indices.
            values: (N, K) their values.
        """
        if values.ndim != 2 or len(values) != len(indices) or values.shape[1] != (self.width or values.shape[1]):
            raise ValueError(f"expected ({len(indices)}, {self.width or 'K'}) values, got {tuple(values.shape)}")
        self.width = values.shape[1]
        self.indices.append(indices.to(self.device, torch.long))
        self.values.append(values.to(self.device, torch.float32))

    def compute(self) -> tuple[Tensor, Tensor]:
        """The (P,) probe indices, ascending, and their (P, K) values (read them through :meth:`rows`)."""
        indices, values = dim_zero_cat(self.indices), dim_zero_cat(self.values)
        order = indices.argsort()
        return indices[order], values[order]

    def rows(self) -> tuple[Tensor, Tensor]:
        """:meth:`compute` with its shapes kept: torchmetrics squeezes a one-element result to a scalar."""
        indices, values = self.compute()
        return indices.reshape(-1), values.reshape(indices.numel(), self.width)
