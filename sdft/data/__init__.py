"""Data: subject photos, captioned image sets, prompts, and the step-indexed sampling that makes runs resumable.

The data modules load on first use, so that tools reading photos (``sdft prepare``) start without Lightning.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdft.data.captions import CaptionDataModule
    from sdft.data.subject import SubjectDataModule

__all__ = ["CaptionDataModule", "SubjectDataModule"]
_HOMES = {"CaptionDataModule": "sdft.data.captions", "SubjectDataModule": "sdft.data.subject"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
