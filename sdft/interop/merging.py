"""LoRA and model arithmetic: merging LoRAs, truncated-SVD ranks, LoRAs extracted from weight differences, LoRAs fused
into weights, and weighted sums and add-differences of whole models.

Pure functions on tensors, :data:`~sdft.interop.lora_weights.LoraWeights` and modules; reading and writing files is
:mod:`sdft.interop.model_folders`' and the commands' business. A rank-limited update is the truncated SVD of the
update it replaces, the best approximation of its rank in the Frobenius norm (Eckart and Young 1936); its error is
reported relative to that norm, ``||delta - delta_r||_F / ||delta||_F``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sdft.errors import UserError
from sdft.interop.lora_weights import LoraLayer, LoraWeights, adapted_weight


@dataclass
class Approximation:
    """How well rank-limited layers reproduce the updates they replace, module by module.

    Attributes:
        residuals: module path -> squared Frobenius norm of ``delta - delta_r``.
        norms: module path -> squared Frobenius norm of ``delta``.
    """

    residuals: dict[str, float] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)

    def add(self, path: str, singular_values: Tensor, rank: int) -> None:
        """Record a module whose update has ``singular_values`` (descending) and is kept to its first ``rank``."""
        squares = singular_values.double().square()
        self.residuals[path] = float(squares[rank:].sum())
        self.norms[path] = float(squares.sum())

    def update(self, other: Approximation) -> None:
        """Take in the modules of ``other``."""
        self.residuals.update(other.residuals)
        self.norms.update(other.norms)

    def relative(self, path: str) -> float:
        """``||delta - delta_r||_F / ||delta||_F`` of one module (0 for a zero update)."""
        return math.sqrt(self.residuals[path] / self.norms[path]) if self.norms[path] > 0 else 0.0

    @property
    def overall(self) -> float:
        """The relative error of all modules' updates taken as one vector."""
        total = sum(self.norms.values())
        return math.sqrt(sum(self.residuals.values()) / total) if total > 0 else 0.0

    def worst(self) -> tuple[str, float]:
        """The module with the largest relative error, and that error (``("", 0.0)`` when there is none)."""
        return max(((path, self.relative(path)) for path in self.norms), key=lambda pair: pair[1], default=("", 0.0))

    def summary(self) -> str:
        """One line: the overall and the worst relative error."""
        path, error = self.worst()
        return f"relative Frobenius error {self.overall:.3g} overall, worst {error:.3g} ({path or 'no module'})"


def factored_svd(up: Tensor, down: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD ``U diag(S) Vh`` of ``up @ down`` without forming the product: QR of both factors, then the SVD of
    the small ``R_up @ R_down^T`` (exact; cost set by the factors' rank, not by the weight's size).

    Args:
        up: (out, r).
        down: (r, in).
    """
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T, full_matrices=False)
    return q_up @ u, s, vh @ q_down.T


def truncated_layer(u: Tensor, s: Tensor, vh: Tensor, rank: int, weight_shape: torch.Size) -> LoraLayer:
    """The rank-``rank`` LoRA layer (alpha = rank, scale 1) of an update ``U diag(S) Vh``, the singular values split
    evenly between its factors; a convolution's kernel comes back in ``down`` as ``(rank, in, kh, kw)``.

    Args:
        u: (out, k) left singular vectors.
        s: (k,) singular values, descending.
        vh: (k, in * kh * kw) right singular vectors.
        rank: how many to keep (at most k).
        weight_shape: the adapted weight's shape, (out, in) or (out, in, kh, kw).
    """
    root = s[:rank].sqrt()
    up, down = u[:, :rank] * root, root[:, None] * vh[:rank]
    if len(weight_shape) == 4:
        up, down = up[:, :, None, None], down.reshape(rank, *weight_shape[1:])
    return LoraLayer(down=down.contiguous(), up=up.contiguous(), alpha=float(rank))


def weight_shape(layer: LoraLayer) -> torch.Size:
    """The shape of the weight a LoRA layer adapts: (out, in) or (out, in, kh, kw)."""
    return torch.Size((layer.up.shape[0], *layer.down.shape[1:]))


def concatenate_loras(loras: Sequence[LoraWeights], weights: Sequence[float]) -> LoraWeights:
    """One LoRA whose update is exactly ``sum_i weights[i] * delta_i`` in every module: the ranks side by side (downs
    stacked, ups joined with each one's weight and scale folded in), alpha = the summed rank (scale 1).

    Modules that only some LoRAs adapt take the terms of those.

    Args:
        loras: the LoRAs, as module path -> layer.
        weights: one multiplier per LoRA.
    """
    merged: LoraWeights = {}
    for path in module_union(loras):
        parts = [(weight, lora[path]) for lora, weight in zip(loras, weights, strict=True) if path in lora]
        check_same_shape(path, [layer for _, layer in parts])
        down = torch.cat([layer.down.float() for _, layer in parts])
        up = torch.cat([layer.up.float() * (weight * layer.scale) for weight, layer in parts], dim=1)
        merged[path] = LoraLayer(down=down, up=up, alpha=float(down.shape[0]))
    return merged


def module_union(loras: Sequence[LoraWeights]) -> list[str]:
    """Every module path adapted by any of ``loras``, in first-seen order."""
    return list(dict.fromkeys(path for lora in loras for path in lora))


def check_same_shape(path: str, layers: Sequence[LoraLayer]) -> None:
    """Refuse layers of one module path that adapt weights of different shapes (LoRAs of different models)."""
    shapes = {tuple(weight_shape(layer)) for layer in layers}
    if len(shapes) > 1:
        raise UserError(
            f"the LoRAs adapt {path} with weights of different shapes {sorted(shapes)}; merge LoRAs of one base model"
        )


def resize_lora(lora: LoraWeights, rank: int) -> tuple[LoraWeights, Approximation]:
    """Every layer cut to at most ``rank`` by the truncated SVD of its update; layers already within ``rank`` keep
    their update exactly (re-factored, alpha = rank). Returns the layers and their approximation errors.

    Args:
        lora: module path -> layer.
        rank: the largest rank kept.
    """
    resized: LoraWeights = {}
    errors = Approximation()
    for path, layer in lora.items():
        up = layer.up.float().flatten(1) * layer.scale
        u, s, vh = factored_svd(up, layer.down.float().flatten(1))
        kept = min(rank, s.numel())
        errors.add(path, s, kept)
        resized[path] = truncated_layer(u, s, vh, kept, weight_shape(layer))
    return resized, errors


def merge_loras(
    loras: Sequence[LoraWeights],
    weights: Sequence[float],
    rank: int | None = None,
    shapes: Mapping[str, torch.Size] | None = None,
) -> tuple[LoraWeights, Approximation]:
    """Merge LoRAs into one whose update is ``sum_i weights[i] * delta_i``: exact with the ranks concatenated when
    ``rank`` is None, else each module's summed update cut to ``rank`` by its truncated SVD (kohya's svd_merge_lora).
    LoKr and LoHa layers, whose updates are not low-rank, make a LoRA only by the truncated SVD of each module's
    summed update formed whole (``rank`` and ``shapes`` needed).

    Args:
        loras: the LoRAs, as module path -> layer (LoRA, LoKr or LoHa; no DoRA).
        weights: one multiplier per LoRA.
        rank: the rank of every merged module; None keeps the exact concatenation (LoRA layers only).
        shapes: module path -> the adapted weight's shape, for LoKr and LoHa layers.
    """
    if all(isinstance(layer, LoraLayer) for lora in loras for layer in lora.values()):
        merged = concatenate_loras(loras, weights)
        return (merged, Approximation()) if rank is None else resize_lora(merged, rank)
    if rank is None or shapes is None:
        raise ValueError("LoKr and LoHa layers merge into a LoRA only at a given rank, with the weights' shapes")
    merged: LoraWeights = {}
    errors = Approximation()
    for path in module_union(loras):
        terms = zip(loras, weights, strict=True)
        delta = sum(weight * lora[path].update(shapes[path]) for lora, weight in terms if path in lora)
        merged[path], singular_values = difference_layer(torch.zeros_like(delta), delta, rank)
        errors.add(path, singular_values, merged[path].rank)
    return merged, errors


def difference_layer(base: Tensor, tuned: Tensor, rank: int) -> tuple[LoraLayer, Tensor]:
    """The rank-``rank`` LoRA layer nearest to ``tuned - base`` (truncated SVD), and all singular values of the
    difference (to measure what the rank leaves out).

    Args:
        base: a Linear (out, in) or Conv2d (out, in, kh, kw) weight.
        tuned: the same weight after fine-tuning.
        rank: the rank to keep (capped at the smaller side of the flattened weight).
    """
    delta = (tuned.float() - base.float()).flatten(1)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return truncated_layer(u, s, vh, min(rank, s.numel()), base.shape), s


def changed_enough(base: Tensor, tuned: Tensor, min_difference: float) -> bool:
    """Whether ``||tuned - base||_F`` exceeds ``min_difference * ||base||_F`` (a weight left alone by fine-tuning, or
    changed only by rounding, is no part of the extracted LoRA)."""
    difference = torch.linalg.vector_norm(tuned.float() - base.float())
    return bool(difference > min_difference * torch.linalg.vector_norm(base.float())) and bool(difference > 0)


def extract_lora(
    pairs: Iterator[tuple[str, Tensor, Tensor]], rank: int, conv_rank: int | None, min_difference: float
) -> tuple[LoraWeights, Approximation]:
    """A LoRA of the differences between tuned and base weights, each cut to its rank by truncated SVD (as kohya's
    extract_lora_from_models). Returns the layers and their approximation errors.

    Args:
        pairs: (module path, base weight, tuned weight) of every candidate module.
        rank: the rank of Linear modules.
        conv_rank: the rank of Conv2d modules; None leaves convolutions out.
        min_difference: modules whose relative change is at most this are left out.
    """
    lora: LoraWeights = {}
    errors = Approximation()
    for path, base, tuned in pairs:
        module_rank = rank if base.dim() == 2 else conv_rank
        if module_rank is None or not changed_enough(base, tuned, min_difference):
            continue
        lora[path], singular_values = difference_layer(base, tuned, module_rank)
        errors.add(path, singular_values, lora[path].rank)
    return lora, errors


def find_module(modules: Mapping[str, nn.Module], name: str) -> nn.Module | None:
    """The module called ``name`` in a component's ``named_modules()``, also when one of the two names has the
    ``text_model.`` prefix that transformers 5 dropped from ``CLIPTextModel``'s module names (and older files still
    carry); None if absent."""
    for candidate in (name, name.removeprefix("text_model."), f"text_model.{name}"):
        if candidate in modules:
            return modules[candidate]
    return None


def fuse_lora(components: Mapping[str, nn.Module], lora: LoraWeights, scale: float, source: str) -> int:
    """Move each weight a layer adapts ``scale`` of the way to the weight the layer makes of it
    (:func:`~sdft.interop.lora_weights.adapted_weight`: ``W + scale * update``; for a DoRA, as ComfyUI applies its
    strength), in place; return how many weights changed.

    Args:
        components: pipeline component name -> module (e.g. ``{"unet": unet, "text_encoder": text_encoder}``).
        lora: module path -> layer of any kind.
        scale: the adapter's strength (1 = as trained).
        source: what ``lora`` came from, for error messages (a file name).
    """
    tables = {name: dict(component.named_modules()) for name, component in components.items()}
    for path, layer in lora.items():
        name, _, module_name = path.partition(".")
        if name not in tables:
            raise UserError(f"{source}: adapts {path} but the model has no component {name}; use the LoRA's base model")
        module = find_module(tables[name], module_name)
        if module is None or getattr(module, "weight", None) is None or not layer.fits(module.weight.shape):
            raise UserError(f"{source}: {path} does not match the model (missing or another shape); use its base model")
        with torch.no_grad():
            weight = module.weight.float()
            module.weight.copy_(weight + scale * (adapted_weight(layer, weight) - weight))
    return len(lora)


def merge_tensor(a: Tensor, b: Tensor, c: Tensor | None, multiplier: float) -> Tensor:
    """Weighted sum ``(1 - m) a + m b`` or, with ``c``, add-difference ``a + m (b - c)``, computed in float32 and
    returned in ``a``'s dtype; tensors that are not floating point (index buffers) are ``a``'s.

    Args:
        a: the first model's tensor.
        b: the second model's tensor.
        c: the third model's tensor (add-difference), or None (weighted sum).
        multiplier: m.
    """
    if not a.is_floating_point():
        return a
    a32, b32 = a.float(), b.float()
    merged = a32 + multiplier * (b32 - (a32 if c is None else c.float()))
    return merged.to(a.dtype)


def check_same_architecture(reference: Mapping[str, Tensor], other: Mapping[str, Tensor], where: str) -> None:
    """Refuse state dicts that differ in tensor names or shapes, naming the first difference.

    Args:
        reference: the first model's component state dict.
        other: another model's state dict of the same component.
        where: names the component and the models, e.g. ``unet of model_b``.
    """
    for name, tensor in reference.items():
        if name not in other:
            raise UserError(f"{where} has no tensor {name}; merge models of one architecture")
        if other[name].shape != tensor.shape:
            raise UserError(
                f"{where}: tensor {name} has shape {tuple(other[name].shape)}, not {tuple(tensor.shape)}; "
                "merge models of one architecture"
            )
    extra = next((name for name in other if name not in reference), None)
    if extra is not None:
        raise UserError(f"{where} has a tensor {extra} the first model lacks; merge models of one architecture")
