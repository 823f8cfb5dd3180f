"""Built-in assets, named ``builtin:<name>``: tiny models and sample data that sdft generates instead of downloading.

Wherever a model path or a data folder is expected, ``builtin:tiny-sd1``, ``builtin:toy-subject``,
``builtin:toy-class`` or ``builtin:toy-captions`` (captioned toys, ``metadata.jsonl``) may stand instead.
:func:`resolve` builds the asset once into the cache folder (``$SDFT_CACHE``, default ``~/.cache/sdft``) and returns
the ordinary folder, so the code that reads it is the code that reads real models and real photos.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sdft.data.toy import write_toy_captions, write_toy_class, write_toy_subject
from sdft.tiny_models import build_tiny_sd1

PREFIX = "builtin:"
BUILDERS: dict[str, Callable[[Path], object]] = {
    "tiny-sd1": build_tiny_sd1,
    "toy-subject": write_toy_subject,
    "toy-class": lambda folder: write_toy_class(folder, num_images=8),
    "toy-captions": write_toy_captions,
}


def cache_dir() -> Path:
    """Where built-in assets are written: ``$SDFT_CACHE`` or ``~/.cache/sdft``."""
    return Path(os.environ.get("SDFT_CACHE", Path.home() / ".cache" / "sdft"))


def resolve(name_or_path: str) -> str:
    """Return ``name_or_path`` unchanged, or the folder of the built-in asset it names, building it if needed.

    Args:
        name_or_path: a hub id, a local path, or ``builtin:<name>``.
    """
    if not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path.removeprefix(PREFIX)
    if name not in BUILDERS:
        raise ValueError(f"unknown built-in asset {name_or_path!r}; available: {sorted(PREFIX + n for n in BUILDERS)}")
    folder = cache_dir() / name
    if not folder.is_dir():
        build_atomically(BUILDERS[name], folder)
    return str(folder)


def build_atomically(builder: Callable[[Path], object], folder: Path) -> None:
    """Build into a temporary sibling and rename it into place, so a folder that exists is always complete.

    Concurrent builders (several ranks on one node) race harmlessly: the first rename wins, the rest are dropped.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        builder(staging)
        os.replace(staging, folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
