"""Similarity arithmetic behind the subject-fidelity metrics (DreamBooth, arXiv 2208.12242, Sec. 4.1).

Pure functions on embeddings and prompts: no models, no Lightning. Every similarity is a plain cosine on a 0-1 scale
(not x100 as in CLIPScore, not x2.5 as in some CLIP-score papers).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``.

    Args:
        a: embeddings, shape (N, D); need not be normalised.
        b: embeddings, shape (M, D).

    Returns:
        (N, M) tensor whose entry (i, j) is cos(a[i], b[j]).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected (N, D) and (M, D) embeddings, got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def mean_cross_similarity(generated: Tensor, reference: Tensor) -> Tensor:
    """Mean cosine over all (generated, reference) pairs: DINO, CLIP-I and PRES.

    Args:
        generated: embeddings of generated images, shape (N, D).
        reference: embeddings of the real subject photos, shape (M, D).

    Returns:
        0-dim tensor, the mean of the (N, M) cosine matrix.
    """
    return cosine_matrix(generated, reference).mean()


def mean_distinct_pair_similarity(embeddings: Tensor) -> Tensor:
    """Mean cosine over ordered pairs of distinct rows (diagonal excluded): the real-real ceiling.

    Args:
        embeddings: embeddings of the real subject photos, shape (N, D) with N >= 2.

    Returns:
        0-dim tensor, (sum of the cosine matrix - its trace) / (N (N - 1)).
    """
    count = embeddings.shape[0]
    if count < 2:
        raise ValueError(f"the real-real ceiling needs at least 2 reference images, got {count}")
    similarity = cosine_matrix(embeddings, embeddings)
    return (similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1))


def strip_identifier(prompt: str, identifier: str) -> str:
    """Remove the rare identifier from a prompt, whole words only, for CLIP-T.

    ``strip_identifier("a sks dog in the snow", "sks") == "a dog in the snow"``; ``"sksdog"`` is kept.

    Args:
        prompt: the prompt used for generation.
        identifier: the rare token standing for the subject (e.g. ``sks``).
    """
    if not identifier.strip() or len(identifier.split()) != 1:
        raise ValueError(f"identifier must be one non-empty word, got {identifier!r}")
    return " ".join(word for word in prompt.split() if word != identifier)
