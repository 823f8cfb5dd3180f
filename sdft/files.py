"""Atomic writes of the small text files a run folder holds: a file that exists is always complete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, then rename it over ``path`` (atomic on POSIX).

    Args:
        path: the destination; its folder is created if missing.
        text: the whole content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write one JSON document atomically."""
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
