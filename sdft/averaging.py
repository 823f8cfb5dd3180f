"""The exponential moving average of weights, as pure functions of tensors.

After every update the average is ``decay * average + (1 - decay) * weights``: a mean of the weights along the
training trajectory whose weights fall off exponentially with age, as diffusion models are commonly sampled from
(e.g. DDPM, Ho et al. 2020, arXiv 2006.11239, with decay 0.9999).
diffusers' ``EMAModel`` lowers the decay over the first updates, ``min(decay, (1 + n) / (10 + n))`` after ``n``
updates, so the average soon forgets the starting weights.
"""

from __future__ import annotations

import torch


def ema_decay(decay: float, num_updates: int, warmup: bool) -> float:
    """The decay of the next update.

    Args:
        decay: the decay once warmed up, in (0, 1).
        num_updates: how many updates the average has had.
        warmup: use diffusers' warm-up ``min(decay, (1 + n) / (10 + n))``; False keeps ``decay`` throughout.
    """
    return min(decay, (1 + num_updates) / (10 + num_updates)) if warmup else decay


def update_average(average: list[torch.Tensor], weights: list[torch.Tensor], decay: float) -> None:
    """Move each float32 ``average`` tensor in place to ``decay * average + (1 - decay) * weight``.

    Args:
        average: the running averages, float32, each on its weight's device.
        weights: the current weights, in the same order and shapes (any floating dtype).
        decay: the weight of the old average, in [0, 1).
    """
    torch._foreach_lerp_(average, [weight.to(torch.float32) for weight in weights], 1.0 - decay)
