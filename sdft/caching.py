"""Encodings computed once: the VAE posteriors of the training images and the text encoders' prompt embeddings.

While the VAE and the text encoders are frozen, what they make of an image or a prompt never changes, so a run
computes it once per distinct input and reuses it; the loss is the one without a cache (a latent is still sampled
from the cached posterior at every step, see :class:`sdft.families.base.LatentPosterior`).

An :class:`EncodingCache` maps string keys (the content of an augmented image, a prompt) to named per-example
tensors. It lives in memory and, given a folder, also on disk, where the next run with the same encoder finds it.
A disk cache's folder is named by everything that changes its encodings (:func:`encoder_identity`), so changing
the model, its weights, a dtype or an encoding option starts a new folder instead of reusing a stale one. Entries
are single safetensors files written atomically, so ranks sharing the folder only ever race to write equal bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from sdft.files import write_atomic, write_json

Encodings = dict[str, torch.Tensor]

#: how many elements of each parameter a fingerprint reads (evenly strided): enough to tell trained weights apart
FINGERPRINT_SAMPLES = 4096


def digest(text: str) -> str:
    """A short hex digest of a string, for keys and folder names."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def content_key(pixels: torch.Tensor) -> str:
    """The key of an image's exact pixels (any dtype or device): equal pixels, equal key."""
    array = pixels.detach().cpu().contiguous()
    return hashlib.blake2b(array.numpy().tobytes(), digest_size=16).hexdigest() + str(tuple(array.shape))


@torch.no_grad()
def fingerprint(module: nn.Module) -> str:
    """A digest of a module's weights: every parameter's and buffer's name, shape and dtype, and a strided sample of
    its values, so a retrained or replaced model at the same path gets another digest without reading every byte."""
    parts = []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if type(tensor.data) not in (torch.Tensor, nn.Parameter) and hasattr(tensor, "dequantize"):
            tensor = tensor.dequantize()  # a quantized weight (speed.quantize), read as the values it stands for
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // FINGERPRINT_SAMPLES)].double()
        parts.append(
            f"{name}{tuple(tensor.shape)}{tensor.dtype}:{sample.sum().item():.9e}:{sample.abs().sum().item():.9e}"
        )
    return digest("\n".join(parts))


def encoder_identity(kind: str, family: Any, modules: Sequence[nn.Module], options: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes a kind of encoding: the family, its base weights and their fingerprints and dtypes,
    and the encoding options (e.g. the T5 prompt length).

    Args:
        kind: ``latents`` or ``prompts``.
        family: the :class:`sdft.families.base.ModelFamily` that encodes.
        modules: the encoders (the VAE; the text encoders).
        options: further settings that change the result.
    """
    return {
        "kind": kind,
        "family": type(family).__name__,
        "source": family.source(),
        "weights": [fingerprint(module) for module in modules],
        "dtypes": [str(next(module.parameters()).dtype) for module in modules],
        "options": {key: str(value) for key, value in options.items()},
    }


def first_row(encodings: Encodings) -> Encodings:
    """The first example's tensors of a batch of encodings, detached from any graph."""
    return {name: tensor[0].detach().clone() for name, tensor in encodings.items()}


class EncodingCache:
    """Per-example encodings by key, computed for the keys not seen before, in memory and optionally on disk.

    A key of None marks an example that is not cached (e.g. a random crop, which rarely repeats); it is encoded
    every time.
    """

    def __init__(self, folder: Path | None = None) -> None:
        """
        Args:
            folder: where entries persist between runs (one safetensors file per key); None keeps them in memory.
        """
        self.folder = folder
        self.entries: dict[str, Encodings] = {}

    @classmethod
    def on_disk(cls, root: Path, identity: dict[str, Any]) -> EncodingCache:
        """A cache in the sub-folder of ``root`` named by ``identity`` (written there as ``identity.json``)."""
        folder = root / identity["kind"] / digest(json.dumps(identity, sort_keys=True))
        if not (folder / "identity.json").exists():
            write_json(folder / "identity.json", identity)
        return cls(folder)

    def encode(
        self, keys: Sequence[str | None], encode: Callable[[list[int]], Encodings], device: torch.device
    ) -> Encodings:
        """The encodings of a batch: cached rows reused, each new key encoded once, on its own.

        A new key is encoded as a batch of one, so its entry does not depend on the examples it first came with
        (batched kernels round differently): a run resumed mid-way caches exactly what the uninterrupted run did.
        Rows without a key are encoded together.

        Args:
            keys: each example's key (None: not cached).
            encode: computes the encodings of the examples at the given rows, batch first.
            device: where the returned tensors go.
        Returns:
            named tensors with one row per key, in order.
        """
        entries: dict[str, Encodings] = {}
        for row, key in enumerate(keys):
            if key is not None and key not in entries:
                entries[key] = self.lookup(key, device) or self.store(key, first_row(encode([row])))
        uncached = [row for row, key in enumerate(keys) if key is None]
        computed = encode(uncached) if uncached else {}
        rows = [entries[key] if key is not None else None for key in keys]
        for index, row in enumerate(uncached):
            rows[row] = {name: tensor[index] for name, tensor in computed.items()}
        return {name: torch.stack([entry[name] for entry in rows]) for name in rows[0]}

    def lookup(self, key: str, device: torch.device) -> Encodings | None:
        """The entry of ``key`` from memory, else from disk (kept in memory from then on), else None."""
        entry = self.entries.get(key)
        if entry is None and self.folder is not None:
            path = self.path(key)
            if path.exists():
                try:
                    entry = self.entries[key] = load_file(path, device=str(device))
                except (SafetensorError, OSError):
                    return None  # unreadable: encoded again and rewritten
        return entry

    def store(self, key: str, entry: Encodings) -> Encodings:
        """Keep an entry in memory and, with a folder, write it there atomically; return it."""
        self.entries[key] = entry
        if self.folder is not None:
            data = save({name: tensor.contiguous() for name, tensor in entry.items()})
            write_atomic(self.path(key), lambda file: file.write(data))
        return entry

    def path(self, key: str) -> Path:
        return self.folder / f"{digest(key)}.safetensors"
