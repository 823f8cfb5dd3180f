"""LyCORIS adapters (LoKr, LoHa) and DoRA's weight decomposition as weight formulas: what each adds to the weight of
the module it adapts, as peft trains it and as ComfyUI and LyCORIS apply a file to a base model.

- LoKr (LyCORIS; the Kronecker product of KronA, arXiv 2212.10650): ``delta = scale * kron(w1, w2)`` reshaped to the
  weight's shape. Each factor is whole (``lokr_w1``, ``lokr_w2``) or the product of two rank-r matrices
  (``lokr_w1_a @ lokr_w1_b``), ``w2`` of a convolution also a Tucker product (``lokr_t2``). ``scale = alpha / r``
  where a factor is split (r the rank of ``lokr_w2_b``, else of ``lokr_w1_b``) and 1 where both are whole, whatever
  the alpha: ComfyUI's rule (``comfy/weight_adapter/lokr.py``) and LyCORIS's. peft scales every LoKr by alpha / r,
  so a peft LoKr with two whole factors carries its scale inside ``w1`` here.
- LoHa (LyCORIS; the Hadamard product of FedPara, arXiv 2108.06098):
  ``delta = alpha / r * (w1_a @ w1_b) * (w2_a @ w2_b)``, r the rank of ``hada_w1_b``; a convolution's factors may be
  Tucker products (``hada_t1``, ``hada_t2``).
- DoRA (Liu et al. 2024, arXiv 2402.09353): the adapted weight ``W + delta`` rescaled to the norms of the magnitude
  ``m``: ``m * (W + delta) / ||W + delta||``, the norm per output row where ``m`` has one value per row (peft's
  ``lora_magnitude_vector``; LyCORIS's default ``dora_scale``, shaped ``(out, 1)``), else per input column (a
  ``dora_scale`` of shape ``(1, in)``, which A1111 and ComfyUI read). LyCORIS and ComfyUI add the float epsilon to
  the norm; so does :func:`decomposed_weight`.

Every tensor keeps its LyCORIS name (``lokr_w1``, ``hada_w2_b``, ...), which is also the name of peft's parameter and
of the kohya file's key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

LOKR_NAMES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA_NAMES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")


def tucker(core: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """A convolution factor from its Tucker form: ``einsum("i j k l, i p, j r -> p r k l")``, (out, in, kh, kw).

    Args:
        core: (r, r, kh, kw).
        a: (r, out).
        b: (r, in).
    """
    return torch.einsum("i j k l, i p, j r -> p r k l", core, a, b)


def kronecker_update(w1: Tensor, w2: Tensor, shape: torch.Size) -> Tensor:
    """``kron(w1, w2)`` in the weight's ``shape`` (a 4-d ``w2`` takes ``w1`` as (a, c, 1, 1))."""
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    return torch.kron(w1.contiguous(), w2.contiguous()).reshape(shape)


def decomposed_weight(weight: Tensor, update: Tensor, magnitude: Tensor) -> Tensor:
    """DoRA's adapted weight ``m * (W + delta) / ||W + delta||`` (see the module docstring for the axis).

    Args:
        weight: the base weight W, (out, in) or (out, in, kh, kw).
        update: delta, in W's shape.
        magnitude: m: (out,) or (out, 1, ...) for norms per output row, (1, in, ...) for norms per input column.
    """
    adapted = weight.float() + update.float()
    ones = [1] * (adapted.dim() - 1)
    if magnitude.shape[0] == adapted.shape[0] and magnitude.numel() == adapted.shape[0]:
        norm = adapted.flatten(1).norm(dim=1).reshape(-1, *ones)
    else:
        norm = adapted.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, -1, *ones[1:])
    norm = norm + torch.finfo(torch.float32).eps
    return adapted * (magnitude.float().reshape(norm.shape) / norm)


@dataclass(frozen=True)
class LyCORISLayer:
    """One module's LoKr or LoHa tensors by LyCORIS name, its alpha, and an optional DoRA magnitude.

    Attributes:
        tensors: the factors, e.g. ``{"lokr_w1": ..., "lokr_w2_a": ..., "lokr_w2_b": ...}``.
        alpha: the alpha of ``alpha / r`` (see the module docstring for r and where it applies).
        magnitude: DoRA's ``dora_scale``, or None.
    """

    tensors: Mapping[str, Tensor]
    alpha: float
    magnitude: Tensor | None = None

    kind = ""

    def cast(self, dtype: torch.dtype) -> LyCORISLayer:
        """The same layer with its tensors in ``dtype``."""
        magnitude = None if self.magnitude is None else self.magnitude.to(dtype)
        tensors = {name: tensor.to(dtype) for name, tensor in self.tensors.items()}
        return type(self)(tensors, self.alpha, magnitude)

    def fits(self, shape: torch.Size) -> bool:
        """Whether the layer adapts a weight of ``shape`` (its rows and its number of elements)."""
        return self.out_features == shape[0] and self.weight_elements == math.prod(shape)


class LokrLayer(LyCORISLayer):
    """A LoKr module: ``scale * kron(w1, w2)`` (see the module docstring)."""

    kind = "lokr"

    def __post_init__(self) -> None:
        names = set(self.tensors)
        whole_or_split = ("lokr_w1" in names or {"lokr_w1_a", "lokr_w1_b"} <= names) and (
            "lokr_w2" in names or {"lokr_w2_a", "lokr_w2_b"} <= names
        )
        if names - set(LOKR_NAMES) or not whole_or_split:
            raise ValueError(f"LoKr tensors {sorted(names)} lack a factor or hold others")

    @property
    def rank(self) -> int | None:
        """r of ``alpha / r``: the rank of the split ``w2``, else of the split ``w1``; None when both are whole."""
        for name in ("lokr_w2_b", "lokr_w1_b"):
            if name in self.tensors:
                return self.tensors[name].shape[0]
        return None

    @property
    def scale(self) -> float:
        return 1.0 if self.rank is None else self.alpha / self.rank

    def w1(self, dtype: torch.dtype = torch.float32) -> Tensor:
        t = {name: tensor.to(dtype) for name, tensor in self.tensors.items()}
        return t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]

    def w2(self, dtype: torch.dtype = torch.float32) -> Tensor:
        t = {name: tensor.to(dtype) for name, tensor in self.tensors.items()}
        if "lokr_w2" in t:
            return t["lokr_w2"]
        if "lokr_t2" in t:
            return tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        return t["lokr_w2_a"] @ t["lokr_w2_b"]

    @property
    def w1_shape(self) -> tuple[int, ...]:
        t = self.tensors
        return tuple(t["lokr_w1"].shape) if "lokr_w1" in t else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])

    @property
    def w2_shape(self) -> tuple[int, ...]:
        t = self.tensors
        if "lokr_w2" in t:
            return tuple(t["lokr_w2"].shape)
        if "lokr_t2" in t:
            return (t["lokr_w2_a"].shape[1], t["lokr_w2_b"].shape[1], *t["lokr_t2"].shape[2:])
        return (t["lokr_w2_a"].shape[0], t["lokr_w2_b"].shape[1])

    @property
    def out_features(self) -> int:
        return self.w1_shape[0] * self.w2_shape[0]

    @property
    def weight_elements(self) -> int:
        return math.prod(self.w1_shape) * math.prod(self.w2_shape)

    def update(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
        """The update ``scale * kron(w1, w2)`` in the weight's ``shape``."""
        return kronecker_update(self.w1(dtype), self.w2(dtype), shape) * self.scale

    @property
    def first(self) -> str:
        """The tensor that holds ``w1``'s rows: ``lokr_w1``, or ``lokr_w1_a`` of a split ``w1``."""
        return "lokr_w1" if "lokr_w1" in self.tensors else "lokr_w1_a"

    def rows(self, start: int, stop: int) -> LokrLayer | None:
        """The layer of output rows ``start:stop`` of the update: ``w1``'s rows ``start / b : stop / b`` for ``w2``
        of b rows; None where the rows do not fall on ``w1``'s rows."""
        block = self.w2_shape[0]
        if start % block or stop % block:
            return None
        tensors = {**self.tensors, self.first: self.tensors[self.first][start // block : stop // block]}
        magnitude = None if self.magnitude is None else self.magnitude[start:stop]
        return LokrLayer(tensors, self.alpha, magnitude)

    def with_factor(self, factor: float) -> LokrLayer:
        """The layer with its update multiplied by ``factor`` (carried by ``w1``)."""
        return LokrLayer({**self.tensors, self.first: self.tensors[self.first] * factor}, self.alpha, self.magnitude)


class LohaLayer(LyCORISLayer):
    """A LoHa module: ``alpha / r * (w1_a @ w1_b) * (w2_a @ w2_b)`` (see the module docstring)."""

    kind = "loha"

    def __post_init__(self) -> None:
        names = set(self.tensors)
        needed = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"}
        if names - set(LOHA_NAMES) or not needed <= names or ("hada_t1" in names) != ("hada_t2" in names):
            raise ValueError(f"LoHa tensors {sorted(names)} lack a factor or hold others")

    @property
    def tucker(self) -> bool:
        return "hada_t1" in self.tensors

    @property
    def rank(self) -> int:
        return self.tensors["hada_w1_b"].shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def factor(self, index: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """``w1_a @ w1_b`` (index 1) or ``w2_a @ w2_b`` (index 2), or their Tucker products."""
        a, b = self.tensors[f"hada_w{index}_a"].to(dtype), self.tensors[f"hada_w{index}_b"].to(dtype)
        return tucker(self.tensors[f"hada_t{index}"].to(dtype), a, b) if self.tucker else a @ b

    @property
    def out_features(self) -> int:
        return self.tensors["hada_w1_a"].shape[1 if self.tucker else 0]

    @property
    def weight_elements(self) -> int:
        kernel = math.prod(self.tensors["hada_t1"].shape[2:]) if self.tucker else 1
        return self.out_features * self.tensors["hada_w1_b"].shape[1] * kernel

    def update(self, shape: torch.Size, dtype: torch.dtype = torch.float32) -> Tensor:
        """The update ``scale * (w1_a @ w1_b) * (w2_a @ w2_b)`` in the weight's ``shape``."""
        return (self.factor(1, dtype) * self.factor(2, dtype)).reshape(shape) * self.scale

    def rows(self, start: int, stop: int) -> LohaLayer | None:
        """The layer of output rows ``start:stop`` of the update (rows of both ``w*_a``), with the rank columns
        that are zero in both left out; None for a Tucker layer."""
        if self.tucker:
            return None
        a1, a2 = self.tensors["hada_w1_a"][start:stop], self.tensors["hada_w2_a"][start:stop]
        used = a1.ne(0).any(dim=0) | a2.ne(0).any(dim=0)
        if not used.any():
            used[0] = True  # rows without an update: one zero rank keeps the layer whole
        tensors = {
            "hada_w1_a": a1[:, used],
            "hada_w1_b": self.tensors["hada_w1_b"][used],
            "hada_w2_a": a2[:, used],
            "hada_w2_b": self.tensors["hada_w2_b"][used],
        }
        magnitude = None if self.magnitude is None else self.magnitude[start:stop]
        return LohaLayer(tensors, self.scale * int(used.sum()), magnitude)

    def with_factor(self, factor: float) -> LohaLayer:
        """The layer with its update multiplied by ``factor`` (carried by ``w1_a``)."""
        tensors = {**self.tensors, "hada_w1_a": self.tensors["hada_w1_a"] * factor}
        return LohaLayer(tensors, self.alpha, self.magnitude)


def stacked_loha(parts: list[tuple[int, LohaLayer | None]]) -> LohaLayer:
    """One LoHa whose update stacks the parts' updates in row order, exactly: the ``w*_a`` block-diagonal (a part
    without a layer gets zero rows), the ``w*_b`` stacked, so its rank is the sum of the parts' and its alpha keeps
    the first part's scale (the others' scales folded into their ``w1_a``).

    Args:
        parts: each part's rows and its layer (None where the part has none); plain (not Tucker) layers.
    """
    present = [layer for _, layer in parts if layer is not None]
    scale = present[0].scale
    rank = sum(layer.rank for layer in present)
    template = present[0].tensors["hada_w1_a"]
    tensors = {name: [] for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    column = 0
    for size, layer in parts:
        for index in (1, 2):
            a = template.new_zeros(size, rank)
            if layer is not None:
                factor = layer.scale / scale if index == 1 else 1.0
                a[:, column : column + layer.rank] = layer.tensors[f"hada_w{index}_a"] * factor
                tensors[f"hada_w{index}_b"].append(layer.tensors[f"hada_w{index}_b"])
            tensors[f"hada_w{index}_a"].append(a)
        column += 0 if layer is None else layer.rank
    return LohaLayer({name: torch.cat(values) for name, values in tensors.items()}, scale * rank)
