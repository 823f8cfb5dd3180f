"""Data: subject photos, captioned image sets, prompts, and the step-indexed sampling that makes runs resumable."""

from sdft.data.captions import CaptionDataModule
from sdft.data.subject import SubjectDataModule

__all__ = ["CaptionDataModule", "SubjectDataModule"]
