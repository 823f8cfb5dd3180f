"""Diffusers model folders read and written one component at a time, so that merging, fusing and extraction hold
only the components they work on, and write a complete folder that ``DiffusionPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.files import write_folder_atomic

INDEX = "model_index.json"
#: safetensors dtype names -> torch dtypes
#: a component's weight file: plain, sharded, of a variant (``diffusion_pytorch_model.fp16-00001-of-00002``)
WEIGHT_FILE = re.compile(
    r"(?:model|diffusion_pytorch_model|pytorch_model)(?:\.(?P<variant>\w+?))?(?:-\d+-of-\d+)?\.(?:safetensors|bin)"
)
STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass(frozen=True)
class ModelFolder:
    """A diffusers pipeline folder (``model_index.json`` and one sub-folder per component).

    Attributes:
        path: the folder.
        index: its ``model_index.json``.
    """

    path: Path
    index: dict[str, Any]

    @classmethod
    def open(cls, name_or_path: str | Path, argument: str) -> ModelFolder:
        """The folder at ``name_or_path`` (a local folder or ``builtin:<name>``), refused in one line if it is none.

        Args:
            name_or_path: where the model is.
            argument: the command-line argument that named it, for the error message.
        """
        path = Path(resolve(str(name_or_path)))
        if not (path / INDEX).is_file():
            raise UserError(
                f"{argument}: {path} is not a diffusers model folder (no {INDEX}); pass a local folder such as "
                "a full fine-tune's export, or a builtin:tiny-* model"
            )
        return cls(path, json.loads((path / INDEX).read_text()))

    @property
    def pipeline_class_name(self) -> str:
        """The pipeline class that loads the folder, e.g. ``StableDiffusionXLPipeline``."""
        return self.index["_class_name"]

    @cached_property
    def weight_components(self) -> list[str]:
        """The components with weights (UNet, VAE, text encoders, transformer), in index order."""
        return [name for name in self.index if (self.path / name).is_dir() and self.component_class(name) is not None]

    def component_class(self, name: str) -> type[nn.Module] | None:
        """The class of component ``name`` if it is a torch module (not a tokenizer or scheduler)."""
        entry = self.index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or None in entry:
            return None
        library, class_name = entry
        found = getattr(library_module(library), class_name, None)
        return found if isinstance(found, type) and issubclass(found, nn.Module) else None

    def variant(self, name: str) -> str | None:
        """The weight variant component ``name`` is stored in (``fp16`` for ``model.fp16.safetensors``) when it has
        no plain weights, as a hub download of a variant has not; None when it has."""
        variants = set()
        for file in (self.path / name).iterdir():
            match = WEIGHT_FILE.fullmatch(file.name)
            if match and match["variant"] is None:
                return None
            if match:
                variants.add(match["variant"])
        return min(variants, default=None)

    def weight_files(self, name: str) -> list[Path]:
        """Component ``name``'s safetensors files of the variant :meth:`load` reads."""
        variant = self.variant(name)
        return sorted(
            file
            for file in (self.path / name).glob("*.safetensors")
            if (match := WEIGHT_FILE.fullmatch(file.name)) and match["variant"] == variant
        )

    def load(self, name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
        """Component ``name`` in ``dtype``, in eval mode.

        Args:
            name: the component, e.g. ``unet``.
            dtype: the dtype to compute in.
        """
        from diffusers import ModelMixin

        component_class, variant = self.component_class(name), self.variant(name)
        if issubclass(component_class, ModelMixin):
            module = component_class.from_pretrained(self.path, subfolder=name, dtype=dtype, variant=variant)
        else:
            module = component_class.from_pretrained(self.path / name, dtype=dtype, variant=variant)
        return module.eval().requires_grad_(False)

    def stored_dtype(self, name: str) -> torch.dtype:
        """The dtype of component ``name``'s weights on disk (of its first floating-point tensor; float32 for
        weights that are not safetensors)."""
        for file in self.weight_files(name):
            with safe_open(file, framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (a safetensors handle is no dict)
                    stored = STORED_DTYPES.get(weights.get_slice(key).get_dtype())
                    if stored is not None:
                        return stored
        return torch.float32

    def load_all(self, dtype: torch.dtype = torch.float32) -> dict[str, nn.Module]:
        """Every component with weights, by name (see :meth:`load`)."""
        return {name: self.load(name, dtype) for name in self.weight_components}

    @property
    def predicts_v(self) -> bool:
        """Whether the scheduler's config says the denoiser predicts v (SD 2.x 768 px models)."""
        config = self.path / "scheduler" / "scheduler_config.json"
        return config.is_file() and json.loads(config.read_text()).get("prediction_type") == "v_prediction"


def library_module(library: str) -> ModuleType | None:
    """The module a ``model_index.json`` entry names: ``diffusers``, ``transformers``, or a diffusers pipeline
    package such as ``stable_diffusion`` (SD 1.x's safety checker); None when there is none."""
    for candidate in (library, f"diffusers.pipelines.{library}"):
        try:
            return importlib.import_module(candidate)
        except ImportError:
            continue
    return None


def write_model_folder(
    output: Path, source: ModelFolder, replaced: Mapping[str, nn.Module], dtype: torch.dtype | None = None
) -> Path:
    """Write ``source`` with some components replaced as a new diffusers folder, atomically; return it.

    Each replaced component is converted (in place) to ``dtype`` and saved; every other file (tokenizers,
    scheduler, untouched components) is copied as it is.

    Args:
        output: the folder to write (replaced if it exists).
        source: the model the result is made from.
        replaced: component name -> its new module.
        dtype: the dtype of the replaced components; None: the dtype ``source`` stores each in.
    """

    def build(staging: Path) -> None:
        for entry in sorted(source.path.iterdir()):
            if entry.name.startswith(".") or entry.name in replaced:
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name)
            else:
                shutil.copy2(entry, staging / entry.name)
        for name, module in replaced.items():
            converted(module, dtype or source.stored_dtype(name)).save_pretrained(staging / name)

    write_folder_atomic(output, build)
    return output


def converted(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` with its floating-point weights in ``dtype`` (converted in place; untouched when they are)."""
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module
