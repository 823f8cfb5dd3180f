"""How sure an evaluation is: standard errors of a step's metrics and paired differences between steps.

Every evaluation scores the same probes (prompts and seeds), so two steps are compared probe by probe: the
difference of their means is the mean of the per-probe differences, and its standard error is that of a paired
sample, usually far smaller than either step's own error because the prompt and the seed explain most of a probe's
score. Pure functions on lists of floats; no models.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn.functional as F
from torch import Tensor


def standard_error(values: Sequence[float]) -> float:
    """The standard error of the mean of ``values``: sample standard deviation / sqrt(n); 0.0 below two values
    (no spread to estimate).

    Args:
        values: one score per probe image.
    """
    count = len(values)
    if count < 2:
        return 0.0
    mean = sum(values) / count
    variance = sum((value - mean) ** 2 for value in values) / (count - 1)
    return math.sqrt(variance / count)


@dataclass(frozen=True)
class Difference:
    """``a - b`` for one metric: the mean difference, its standard error, and how many paired probes gave it
    (0 when only the two means were known, and the error is then 0)."""

    mean: float
    se: float = 0.0
    count: int = 0

    def upper(self, z: float) -> float:
        """The upper confidence bound ``mean + z se``."""
        return self.mean + z * self.se

    def lower(self, z: float) -> float:
        """The lower confidence bound ``mean - z se``."""
        return self.mean - z * self.se

    def describe(self) -> str:
        """E.g. ``-0.0620 ± 0.0150 (paired, 12 probes)``, or ``-0.0620`` without probe scores."""
        if self.count < 2:
            return f"{self.mean:+.4f}"
        return f"{self.mean:+.4f} ± {self.se:.4f} (paired, {self.count} probes)"


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Difference:
    """The mean of ``a[i] - b[i]`` and its standard error: two steps scored on the same probes, in the same order.

    Args:
        a: per-probe scores of one step.
        b: per-probe scores of the other, same length.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired scores need equal, non-zero lengths, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    return Difference(sum(differences) / len(differences), standard_error(differences), len(differences))


def one_sided_z(confidence: float) -> float:
    """The standard normal quantile of ``confidence``: 1.645 for 0.95 (one-sided), 0.0 for 0.5.

    Args:
        confidence: in [0.5, 1).
    """
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


def within_prompt_diversity(embeddings: Tensor, groups: Sequence[Hashable]) -> list[float]:
    """DIV per prompt: the mean cosine distance (1 - cosine) over unordered pairs of distinct images of one prompt,
    for each prompt with at least two images, in order of first appearance (DreamBooth's DIV, arXiv 2208.12242
    Sec. 4.3, with the LPIPS distance replaced by one on the given embeddings).

    Args:
        embeddings: (N, D) image embeddings (e.g. DINO's).
        groups: N prompts (or prompt indices), one per image.
    """
    if len(groups) != embeddings.shape[0]:
        raise ValueError(f"got {embeddings.shape[0]} embeddings for {len(groups)} prompt indices")
    normalized = F.normalize(embeddings.float(), dim=-1)
    values = []
    for group in dict.fromkeys(groups):
        members = normalized[[index for index, name in enumerate(groups) if name == group]]
        first, second = torch.triu_indices(len(members), len(members), offset=1)
        if len(first):
            values.append(float((1 - (members[first] * members[second]).sum(-1)).mean()))
    return values
