"""Methods: what trains (adapters, whole modules, token embeddings) and how the result is exported."""

from sdft.methods.base import DiffusionFineTuner
from sdft.methods.lora import LoRAFineTuner

__all__ = ["DiffusionFineTuner", "LoRAFineTuner"]
