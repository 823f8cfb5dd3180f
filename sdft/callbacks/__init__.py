"""Callbacks: what happens around training (samples, exports, weight averaging, evaluation, interruption), declared
in the config."""

from sdft.callbacks.ema import ExponentialMovingAverage
from sdft.callbacks.evaluation import SubjectEvaluator
from sdft.callbacks.export import FinalExport
from sdft.callbacks.interruption import InterruptionCheckpoint
from sdft.callbacks.progress import StepProgressBar
from sdft.callbacks.samples import SamplePreview

__all__ = [
    "ExponentialMovingAverage",
    "FinalExport",
    "InterruptionCheckpoint",
    "SamplePreview",
    "StepProgressBar",
    "SubjectEvaluator",
]
