"""Import the modules of ``scripts/`` in tests, as the scripts themselves import each other (from their folder)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@contextmanager
def script_modules(*names: str) -> Iterator[argparse.Namespace]:
    """The named modules of ``scripts/`` as attributes, with ``scripts/`` on ``sys.path`` while the block runs."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(SCRIPTS))
        yield argparse.Namespace(**{name: importlib.import_module(name) for name in names})
