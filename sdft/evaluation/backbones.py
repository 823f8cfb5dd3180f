"""Feature extractors named by one string, so configs and commands can choose them.

- CLIP: ``open_clip:<model>/<pretrained>`` (default ``open_clip:ViT-B-32/openai``, the DreamBench reproductions'),
  ``transformers:<name or path>`` (any ``CLIPModel`` folder or hub id), or ``builtin:tiny-clip`` (random, offline).
- DINO: any ``transformers`` ViT name or path (default ``facebook/dino-vits16``), or ``builtin:tiny-dino``.
"""

from __future__ import annotations

from sdft.evaluation.features import ClipFeatures, DinoFeatures, tiny_clip_features, tiny_dino_features

DEFAULT_CLIP = "open_clip:ViT-B-32/openai"
DEFAULT_DINO = "facebook/dino-vits16"


def load_clip(spec: str = DEFAULT_CLIP) -> ClipFeatures:
    """A frozen CLIP image/text embedder from its spec string (see the module docstring).

    Args:
        spec: ``open_clip:<model>/<pretrained>``, ``transformers:<name or path>`` or ``builtin:tiny-clip``.
    """
    if spec == "builtin:tiny-clip":
        return tiny_clip_features()
    backend, _, name = spec.partition(":")
    if backend == "open_clip":
        model, _, pretrained = name.partition("/")
        return ClipFeatures.from_open_clip(model, pretrained or None)
    if backend == "transformers":
        return ClipFeatures.from_transformers(name)
    raise ValueError(
        f"unknown CLIP spec {spec!r}; use open_clip:<model>/<pretrained>, transformers:<name or path> "
        "or builtin:tiny-clip"
    )


def load_dino(spec: str = DEFAULT_DINO) -> DinoFeatures:
    """A frozen DINO CLS-token embedder from a ViT name or path, or ``builtin:tiny-dino``.

    Args:
        spec: a transformers ViT name or path, or ``builtin:tiny-dino``.
    """
    return tiny_dino_features() if spec == "builtin:tiny-dino" else DinoFeatures.from_pretrained(spec)
