"""Methods: what trains (adapters, whole modules, token embeddings) and how the result is exported."""

from sdft.methods.base import DiffusionFineTuner
from sdft.methods.full import FullFineTuner
from sdft.methods.lora import LoRAFineTuner
from sdft.methods.pivotal_tuning import PivotalTuning
from sdft.methods.textual_inversion import TextualInversion

__all__ = ["DiffusionFineTuner", "FullFineTuner", "LoRAFineTuner", "PivotalTuning", "TextualInversion"]
