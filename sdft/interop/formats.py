"""LoRA files of any format read into :data:`~sdft.interop.lora_weights.LoraWeights`, and the formats an export writes.

- ``diffusers``: peft keys ``<component>.<module>.lora_A.weight`` / ``.lora_B.weight`` (and a DoRA's
  ``.lora_magnitude_vector``), as diffusers' ``save_lora_weights`` writes them (sdft's
  ``pytorch_lora_weights.safetensors``); diffusers loads LoRA and DoRA, not LoKr or LoHa. A module's alpha comes from a
  ``<component>.<module>.alpha`` tensor, else from the peft config in the header (``lora_adapter_metadata``: the
  component's ``lora_alpha``, ``alpha_pattern`` and ``use_rslora``), else it is the rank, as diffusers loads the file.
- ``kohya``: kohya / A1111 / ComfyUI files, and LyCORIS's LoKr and LoHa in the same names or in SimpleTuner's
  ``lycoris_`` names, see :mod:`sdft.interop.kohya`; they cannot carry peft's DoRA.

Other layouts that diffusers converts itself (e.g. ai-toolkit or XLabs Flux.1 files) are read through the family's
pipeline class (``lora_state_dict``). Module names follow the installed transformers: a file that has
``text_model.`` in its CLIP names where the model has none (or the other way round) reads all the same.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import ModelMixin
from diffusers.utils import convert_state_dict_to_peft, convert_unet_state_dict_to_peft
from diffusers.utils.state_dict_utils import StateDictType
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.families import ModelFamily
from sdft.interop.kohya import from_kohya, is_kohya
from sdft.interop.kohya_names import adaptable_modules, kohya_names
from sdft.interop.lora_weights import KIND_NAMES, MAGNITUDE, LoraLayer, LoraWeights

#: the LoRA file formats an export can write
EXPORT_FORMATS = ("diffusers", "kohya")
#: the formats whose consumers load each adapter kind as it trained
FORMATS_OF_KIND = {"lora": EXPORT_FORMATS, "dora": ("diffusers",), "lokr": ("kohya",), "loha": ("kohya",)}
#: why a format cannot carry a kind: its consumers would misread the file
UNREADABLE = {
    ("diffusers", "lokr"): "diffusers' load_lora_weights loads LoRA and DoRA only",
    ("diffusers", "loha"): "diffusers' load_lora_weights loads LoRA and DoRA only",
    ("kohya", "dora"): "A1111 reads DoRA magnitudes per input column and ComfyUI normalises peft's per-row ones by "
    "the base weight, so both would misread it",
}
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
#: a DoRA magnitude's key suffixes in diffusers files: peft's, and the one transformers' loader reads
MAGNITUDES = (".lora_magnitude_vector", MAGNITUDE)
#: the header key of the peft config diffusers writes, each field prefixed by the component: ``unet.lora_alpha``
ADAPTER_METADATA = "lora_adapter_metadata"


def check_formats(formats: list[str] | tuple[str, ...], key: str, kind: str = "lora") -> None:
    """Raise a :class:`UserError` naming the config ``key`` unless ``formats`` lists known formats, at least one,
    each of which its consumers read for the adapter ``kind`` (``lora``, ``dora``, ``lokr``, ``loha``)."""
    unknown = [name for name in formats if name not in EXPORT_FORMATS]
    if unknown or not formats:
        raise UserError(f"{key} must list one or more of {', '.join(EXPORT_FORMATS)}, got {list(formats)}")
    for name in formats:
        if (name, kind) in UNREADABLE:
            raise UserError(
                f"{key}: {name} cannot carry a {KIND_NAMES[kind]} ({UNREADABLE[name, kind]}): use "
                f"{key.rsplit('.', 1)[-1]}: [{', '.join(FORMATS_OF_KIND[kind])}]"
            )


def read_lora(path: str | Path, family: ModelFamily) -> LoraWeights:
    """The adapter weights of a file in any format, by module path of ``family``'s model: LoRA and DoRA layers, and
    LyCORIS LoKr and LoHa layers.

    Args:
        path: a ``.safetensors`` file: a diffusers / peft LoRA or DoRA, a kohya / A1111 / ComfyUI LoRA, a LyCORIS
            LoKr, LoHa or DoRA in kohya or ``lycoris_`` names, or a LoRA of a layout diffusers reads.
        family: the model family and base model the LoRA is for; loaded or not (then only its configs are read).
    """
    path = Path(path)
    state, metadata = read_tensors(path)
    components = lora_components(family)
    if is_kohya(list(state)):
        weights = from_kohya(state, kohya_names(family.pipeline_class, components), path)
    else:
        if not any(key.endswith(LORA_A) for key in state):
            state = converted_by_diffusers(path, family)
        if not any(key.endswith(LORA_A) for key in state):
            raise UserError(
                f"{path} is not a LoRA file (it has no lora_A, lora_down, lokr_w1 or hada_w1_a tensors): pass a "
                "diffusers, kohya or LyCORIS file"
            )
        weights = from_diffusers(state, json.loads(metadata.get(ADAPTER_METADATA, "{}")), components, path)
    if not weights:
        raise UserError(f"{path} holds no LoRA update (its up weights are all zero): pass a trained LoRA file")
    check_shapes(weights, components, path)
    return weights


def check_lora_fits(path: str | Path | None, family: ModelFamily, key: str) -> None:
    """Refuse, before any weights load, an adapter file that does not fit ``family``'s model (a LoRA of another
    family, or of another model with the same names: SDXL's on SD 1.x), read as :func:`read_lora` reads it against
    weightless modules built from the model's configs. Nothing is checked without a file (a missing one is named
    where it is read) or where the model's configs cannot be read here (a hub id offline: loading names that).

    Args:
        path: the adapter file, or None.
        family: the model family and base model, not loaded.
        key: the option or config key that named the file, quoted in the error.
    """
    if path is None or not Path(path).is_file():
        return
    try:
        read_lora(path, family)
    except UserError as error:
        raise UserError(f"{key}: {error}") from None
    except (OSError, ValueError):
        return


def read_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """A safetensors file's tensors and header metadata; a :class:`UserError` for a missing or unreadable file."""
    if not path.is_file():
        raise UserError(f"{path} not found: pass the path of a .safetensors LoRA file")
    try:
        with safe_open(str(path), "pt") as file:
            keys = file.keys()
            return {key: file.get_tensor(key) for key in keys}, file.metadata() or {}
    except SafetensorError as error:
        raise UserError(f"{path} is not a safetensors file ({error}): pass a .safetensors LoRA file") from error


def converted_by_diffusers(path: Path, family: ModelFamily) -> dict[str, Tensor]:
    """A file of a layout diffusers converts, in diffusers' peft keys (its older text-encoder and UNet keys, which
    diffusers converts only while loading, converted too)."""
    try:
        converted = family.pipeline_class.lora_state_dict(str(path))
    except (ValueError, KeyError, AssertionError) as error:
        raise UserError(
            f"{path} is not a LoRA file of a layout sdft or diffusers reads ({error}): pass a diffusers or kohya "
            f"LoRA file of a {type(family).__name__} model"
        ) from error
    state = converted[0] if isinstance(converted, tuple) else converted
    encoders = {key: value for key, value in state.items() if key.startswith("text_encoder")}
    denoiser = convert_unet_state_dict_to_peft({key: value for key, value in state.items() if key not in encoders})
    if any(not key.endswith((LORA_A, LORA_B)) for key in encoders):
        newer = any("lora_linear_layer" in key for key in encoders)
        encoders = convert_state_dict_to_peft(
            encoders, StateDictType.DIFFUSERS if newer else StateDictType.DIFFUSERS_OLD
        )
    return {**denoiser, **encoders}


def from_diffusers(
    state: Mapping[str, Tensor], config: Mapping[str, object], components: Mapping[str, nn.Module], path: Path
) -> LoraWeights:
    """LoRA weights from diffusers' peft keys (see the module docstring for alphas).

    Args:
        state: the tensors, ``<component>.<module>.lora_A.weight`` and ``.lora_B.weight`` (and ``.alpha``).
        config: the header's peft config, each field prefixed by its component.
        components: the model's LoRA components by pipeline component name.
        path: the file, named in errors.
    """
    odd = sorted(key for key in state if not key.endswith((LORA_A, LORA_B, ".alpha", *MAGNITUDES)))
    if odd:
        raise UserError(
            f"{path} holds tensors that are neither LoRA nor DoRA (first: {odd[0]}): pass a diffusers LoRA or DoRA "
            "file, or a kohya / LyCORIS file"
        )
    names = {component: set(adaptable_modules(module)) for component, module in components.items()}
    weights: LoraWeights = {}
    unknown = []
    for key in state:
        if not key.endswith(LORA_A):
            continue
        stem = key.removesuffix(LORA_A)
        component, _, module = stem.partition(".")
        name = model_name(module, names.get(component, set()))
        if name is None:
            unknown.append(stem)
            continue
        down, up = state[key], state[stem + LORA_B]
        alpha = module_alpha(state, config, stem, down.shape[0])
        magnitude = next((state[stem + suffix] for suffix in MAGNITUDES if stem + suffix in state), None)
        weights[f"{component}.{name}"] = LoraLayer(down, up, alpha, magnitude)
    if unknown:
        raise UserError(
            f"{path} adapts {len(unknown)} modules the model lacks or sdft does not train (first: {unknown[0]}): it "
            "is a LoRA of another model family or layout; pass a LoRA trained on this base model"
        )
    return weights


def model_name(module: str, names: set[str]) -> str | None:
    """The model's name for a file's module name, with or without CLIP's ``text_model.``; None if it has none."""
    for candidate in (module, module.removeprefix("text_model."), f"text_model.{module}"):
        if candidate in names:
            return candidate
    return None


def module_alpha(state: Mapping[str, Tensor], config: Mapping[str, object], stem: str, rank: int) -> float:
    """One module's alpha (see the module docstring), as the ``alpha`` of ``alpha / rank``."""
    if f"{stem}.alpha" in state:
        return float(state[f"{stem}.alpha"])
    component, _, module = stem.partition(".")
    if f"{component}.lora_alpha" not in config:
        return float(rank)
    alpha = float(config[f"{component}.lora_alpha"])
    for pattern, value in (config.get(f"{component}.alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):  # peft's rule for pattern keys
            alpha = float(value)
            break
    return alpha * math.sqrt(rank) if config.get(f"{component}.use_rslora") else alpha


def check_shapes(weights: LoraWeights, components: Mapping[str, nn.Module], path: Path) -> None:
    """Refuse layers whose shapes do not fit the model's modules (a LoRA of another model with the same names)."""
    shapes = {
        f"{component}.{name}": shape
        for component, module in components.items()
        for name, shape in adaptable_modules(module).items()
    }
    for module, layer in weights.items():
        shape = shapes[module]
        if not layer.fits(shape):
            raise UserError(
                f"{path}: the {KIND_NAMES[layer.kind]} of {module} does not fit the model's weight {tuple(shape)}: it "
                "is a LoRA of another model; pass one of this base model"
            )


def lora_components(family: ModelFamily) -> dict[str, nn.Module]:
    """The components LoRA may adapt, by pipeline component name: the live ones once the family is loaded, else
    weightless copies on the ``meta`` device built from the model folder's configs."""
    if family.is_loaded:
        return family.components(text_encoders=True)
    source = resolve(family.pretrained_model_name_or_path)
    classes = inspect.signature(family.pipeline_class.__init__).parameters
    with torch.device("meta"):
        return {
            name: empty_component(classes[name].annotation, source, name, family.revision)
            for name in family.capabilities.lora_components
        }


def empty_component(component_class: type, source: str, subfolder: str, revision: str | None) -> nn.Module:
    """A diffusers or transformers model built from its config alone (weights uninitialised on the current device)."""
    if issubclass(component_class, ModelMixin):
        return component_class.from_config(component_class.load_config(source, subfolder=subfolder, revision=revision))
    config = component_class.config_class.from_pretrained(source, subfolder=subfolder, revision=revision)
    return component_class(config)
