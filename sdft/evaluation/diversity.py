"""DIV of DreamBench (DreamBooth, arXiv 2208.12242, Sec. 4.3): mean pairwise LPIPS within a prompt.

LPIPS needs the ImageNet weights of its torchvision backbone (AlexNet by default), which torchvision downloads on
first use; ``torchmetrics`` ships only LPIPS's linear heads. Offline, :class:`LpipsDistance` raises a
``RuntimeError`` that says so, and DIV is left out. :class:`PromptDiversity` itself accepts any pairwise distance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

from sdft.evaluation.features import FrozenModule, to_unit_range

Distance = Callable[[Tensor, Tensor], Tensor]


class LpipsDistance(FrozenModule):
    """Per-pair LPIPS distance between images in [0, 1] (or uint8)."""

    def __init__(self, net_type: str = "alex") -> None:
        """Build LPIPS; raises ``RuntimeError`` when the backbone weights cannot be downloaded.

        Args:
            net_type: LPIPS backbone, ``alex`` (as in DreamBooth), ``vgg`` or ``squeeze``.
        """
        super().__init__()
        try:
            lpips = LearnedPerceptualImagePatchSimilarity(net_type=net_type)
        except OSError as error:
            raise RuntimeError(
                f"DIV is skipped: LPIPS needs torchvision's ImageNet {net_type} weights, which could not be "
                f"downloaded ({error}). Put them in {torch.hub.get_dir()}/checkpoints, or leave DIV out."
            ) from error
        self.net = lpips.net
        self.freeze()

    @torch.no_grad()
    def forward(self, first: Tensor, second: Tensor) -> Tensor:
        """(N, 3, H, W) and (N, 3, H, W) images -> (N,) LPIPS distances."""
        return self.net(to_unit_range(first), to_unit_range(second), normalize=True).flatten()


class PromptDiversity(Metric):
    """DIV: mean distance over unordered pairs of distinct images generated from the same prompt.

    Images of one prompt must arrive in the same :meth:`update` call (pairs are formed within a batch).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, distance: Distance) -> None:
        """Hold the pairwise distance.

        Args:
            distance: maps two (N, 3, H, W) image batches to (N,) distances, e.g. :class:`LpipsDistance`.
        """
        super().__init__()
        self.distance = distance
        self.add_state("distance_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pair_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images: Tensor, prompts: list[str]) -> None:
        """Add the distances of every pair of images that share a prompt.

        Args:
            images: (N, 3, H, W) generated images.
            prompts: the N prompts they were generated from.
        """
        if images.shape[0] != len(prompts):
            raise ValueError(f"got {images.shape[0]} images for {len(prompts)} prompts; pass one prompt per image")
        images = images.to(self.device)
        for prompt in dict.fromkeys(prompts):
            group = images[[index for index, name in enumerate(prompts) if name == prompt]]
            first, second = torch.triu_indices(len(group), len(group), offset=1)
            if len(first):
                self.distance_sum += self.distance(group[first], group[second]).sum().double()
                self.pair_count += len(first)

    def compute(self) -> Tensor:
        """The mean within-prompt pairwise distance."""
        return (self.distance_sum / self.pair_count).float()
