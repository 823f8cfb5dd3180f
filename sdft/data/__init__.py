"""Data: subject photos, prompts, and the step-indexed sampling that makes runs resumable exactly."""

from sdft.data.subject import SubjectDataModule

__all__ = ["SubjectDataModule"]
