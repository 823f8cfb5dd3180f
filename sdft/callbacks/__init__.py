"""Callbacks: what happens around training (samples, exports, evaluation), declared in the config."""

from sdft.callbacks.evaluation import SubjectEvaluator
from sdft.callbacks.export import FinalExport
from sdft.callbacks.samples import SamplePreview

__all__ = ["FinalExport", "SamplePreview", "SubjectEvaluator"]
