"""Atomic writes of the small text files a run folder holds: a file that exists is always complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write a file through ``write(binary_file)`` into a hidden temporary sibling, then rename it over ``path``.

    Args:
        path: the final file; its folder is created if missing.
        write: writes the contents to an open binary file (e.g. ``figure.savefig`` or ``image.save``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` atomically (see :func:`write_atomic`)."""
    write_atomic(path, lambda file: file.write(text.encode("utf-8")))


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write one JSON document atomically."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
