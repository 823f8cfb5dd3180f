"""What an export says about its run: the data's resolution and trigger, the run's name and folder, and which
checkpoint's weights it holds."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class SizedData(Protocol):
    """A data module that trains on square images of one side (``resolution`` pixels)."""

    resolution: int


@runtime_checkable
class SubjectData(Protocol):
    """A data module whose training images name one subject in one prompt (DreamBooth's ``instance_prompt``)."""

    instance_prompt: str


@dataclass(frozen=True)
class RunNotes:
    """What an export's metadata and model card say about its run. During a fit the trainer and data module tell;
    an export made outside one (``sdft export``) reads the run's ``config.yaml``.

    Attributes:
        resolution: the training resolution, in pixels.
        trigger: the instance prompt.
        title: the run's name.
        run_dir: the run folder (``config.yaml``, ``evaluation/``, ``samples/``).
    """

    resolution: int | None = None
    trigger: str | None = None
    title: str | None = None
    run_dir: Path | None = None


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of named tensors (names, dtypes, shapes and bytes, on any device): equal tensors give equal digests,
    so weights can be recognised later without keeping a copy of them (a full fine-tune's would be gigabytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(tensors):
        tensor = tensors[key].detach()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).cpu().numpy())
    return digest.hexdigest()
