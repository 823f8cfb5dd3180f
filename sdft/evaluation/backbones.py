"""Feature extractors named by one string, so configs and commands can choose them.

- CLIP: ``open_clip:<model>/<pretrained>`` (default ``open_clip:ViT-B-32/openai``, the DreamBench reproductions'),
  ``transformers:<name or path>`` (any ``CLIPModel`` folder or hub id), or ``builtin:tiny-clip`` (random, offline).
- DINO: any ``transformers`` ViT name or path (default ``facebook/dino-vits16``), or ``builtin:tiny-dino``.
- The toy world's trained backbones (:mod:`sdft.toyworld.encoders`): ``toyworld-clip:<folder>`` and
  ``toyworld-dino:<folder>`` (a folder written by ``scripts/train_toyworld_backbones.py``), or
  ``builtin:toyworld-clip`` and ``builtin:toyworld-dino`` for the weights shipped in ``sdft/toyworld/weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sdft.downloads import fetches_weights
from sdft.evaluation.features import ClipFeatures, DinoFeatures, tiny_clip_features, tiny_dino_features

if TYPE_CHECKING:
    from sdft.toyworld.encoders import ToyDinoFeatures

DEFAULT_CLIP = "open_clip:ViT-B-32/openai"
DEFAULT_DINO = "facebook/dino-vits16"


@fetches_weights("clip_model", "transformers:<a CLIPModel folder>, or builtin:tiny-clip to try without it")
def load_clip(spec: str = DEFAULT_CLIP) -> ClipFeatures:
    """A frozen CLIP image/text embedder from its spec string (see the module docstring).

    Args:
        spec: ``open_clip:<model>/<pretrained>``, ``transformers:<name or path>``, ``builtin:tiny-clip``,
            ``toyworld-clip:<folder>`` or ``builtin:toyworld-clip``.
    """
    if spec == "builtin:tiny-clip":
        return tiny_clip_features()
    if (folder := toyworld_folder(spec, "clip")) is not None:
        from sdft.toyworld.encoders import load_clip_folder

        return load_clip_folder(folder)
    backend, _, name = spec.partition(":")
    if backend == "open_clip":
        model, _, pretrained = name.partition("/")
        return ClipFeatures.from_open_clip(model, pretrained or None)
    if backend == "transformers":
        return ClipFeatures.from_transformers(name)
    raise ValueError(
        f"unknown CLIP spec {spec!r}; use open_clip:<model>/<pretrained>, transformers:<name or path>, "
        "builtin:tiny-clip, toyworld-clip:<folder> or builtin:toyworld-clip"
    )


@fetches_weights("dino_model", "the path of a local ViT folder, or builtin:tiny-dino to try without it")
def load_dino(spec: str = DEFAULT_DINO) -> DinoFeatures | ToyDinoFeatures:
    """A frozen DINO CLS-token embedder from a ViT name or path, or ``builtin:tiny-dino``; or the toy world's DINO
    stand-in.

    Args:
        spec: a transformers ViT name or path, ``builtin:tiny-dino``, ``toyworld-dino:<folder>`` or
            ``builtin:toyworld-dino``.
    """
    if spec == "builtin:tiny-dino":
        return tiny_dino_features()
    if (folder := toyworld_folder(spec, "dino")) is not None:
        from sdft.toyworld.encoders import load_dino_folder

        return load_dino_folder(folder)
    return DinoFeatures.from_pretrained(spec)


# -- the toy world's backbones ----------------------------------------------------------------------------------------

#: where the toy world's shipped backbones live
TOYWORLD_WEIGHTS = Path(__file__).resolve().parents[1] / "toyworld" / "weights"


def toyworld_folder(spec: str, kind: str) -> Path | None:
    """The folder a ``toyworld-<kind>:<folder>`` or ``builtin:toyworld-<kind>`` spec names; None for other specs.

    Args:
        spec: the backbone spec.
        kind: ``clip`` or ``dino``.
    """
    if spec == f"builtin:toyworld-{kind}":
        return TOYWORLD_WEIGHTS
    prefix = f"toyworld-{kind}:"
    return Path(spec.removeprefix(prefix)).expanduser() if spec.startswith(prefix) else None
