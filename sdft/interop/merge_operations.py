"""What ``sdft merge`` and ``sdft extract`` do, with the files: LoRA files read in any format sdft reads and written
in diffusers' or kohya's (LoKr and LoHa files become LoRAs by truncated SVD; a DoRA is only fused), models read from
diffusers folders one component at a time and written as diffusers folders or original-layout single files. The
arithmetic is :mod:`sdft.interop.merging`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save
from torch import Tensor, nn

from sdft.errors import UserError
from sdft.families import (
    Flux,
    Flux2,
    Flux2Klein,
    ModelFamily,
    QwenImage,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
    ZImage,
)
from sdft.files import write_atomic, write_named_atomic
from sdft.interop.formats import lora_components, read_lora
from sdft.interop.kohya import TrainingNotes, kohya_metadata, write_kohya
from sdft.interop.kohya_names import adaptable_modules, kohya_names
from sdft.interop.lora_weights import KIND_NAMES, LoraLayer, LoraWeights, diffusers_state_dict
from sdft.interop.merging import (
    Approximation,
    check_same_architecture,
    extract_lora,
    fuse_lora,
    merge_loras,
    merge_tensor,
)
from sdft.interop.model_folders import ModelFolder, converted, write_model_folder
from sdft.interop.single_file import COMPONENTS, check_single_file_support, write_single_file

SINGLE_FILE = ".safetensors"
FAMILIES = (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux, ZImage, Flux2Klein, Flux2, QwenImage)


@dataclass(frozen=True)
class ExtractionOptions:
    """Which modules an extraction covers, and at which ranks (see ``sdft extract``).

    Attributes:
        rank: the rank of Linear modules.
        conv_rank: the rank of the denoiser's Conv2d modules; None leaves them out.
        modules: ``attention``: the modules the family's LoRA adapts by default; ``linear``: every Linear.
        text_encoders: also the text encoders a LoRA may adapt.
        min_difference: modules whose relative change is at most this are left out.
        device: where the SVDs run; None: cuda when available, else cpu.
    """

    rank: int
    conv_rank: int | None = None
    modules: Literal["attention", "linear"] = "attention"
    text_encoders: bool = False
    min_difference: float = 1e-4
    device: str | None = None


def family_of(folder: ModelFolder, argument: str) -> ModelFamily:
    """The sdft family of a model folder, not loaded (it knows the denoiser, the components a LoRA may adapt and
    their default targets, and reads LoRA files for the model).

    Args:
        folder: the model.
        argument: the command-line argument that named it, for the error message.
    """
    families = {family.pipeline_class.__name__: family for family in FAMILIES}
    if folder.pipeline_class_name not in families:
        raise UserError(
            f"{argument}: {folder.pipeline_class_name} is no family sdft knows; use a model of {', '.join(families)}"
        )
    family = families[folder.pipeline_class_name]
    if family is StableDiffusion:
        return family(str(folder.path), prediction_type="v_prediction" if folder.predicts_v else None)
    return family(str(folder.path))


def read_lora_file(path: Path, family: ModelFamily, argument: str) -> LoraWeights:
    """A LoRA file of any format sdft reads (diffusers, kohya / A1111 / ComfyUI, ...) for ``family``'s model; a
    mistake names the argument.

    Args:
        path: the ``.safetensors`` file.
        family: the base model's family (its configs are read, not its weights).
        argument: the command-line argument that named the file.
    """
    try:
        return read_lora(path, family)
    except UserError as error:
        raise UserError(f"{argument}: {error}") from None


def check_mergeable(lora: LoraWeights, path: Path, argument: str, rank: int | None) -> None:
    """Refuse a file that ``sdft merge loras`` or ``sdft extract --resize`` cannot take: a DoRA (its update depends
    on the base weights' norms), or a LoKr / LoHa without a rank (it becomes a LoRA by truncated SVD only)."""
    kinds = {layer.kind for layer in lora.values()}
    if "dora" in kinds:
        raise UserError(
            f"{argument}: {path} is a DoRA, whose update depends on the base model's weights; merging and resizing "
            "take LoRA, LoKr and LoHa: fuse it into its model (sdft merge fuse), then extract a LoRA (sdft extract)"
        )
    lycoris = sorted(kinds - {"lora"})
    if lycoris and rank is None:
        raise UserError(
            f"rank: {path} ({argument}) is a {KIND_NAMES[lycoris[0]]}, which becomes a LoRA only by the truncated "
            "SVD of its update: give the rank"
        )


def weight_shapes(family: ModelFamily) -> dict[str, torch.Size]:
    """The shape of every weight an adapter may change, by module path (from the configs alone)."""
    return {
        f"{component}.{name}": shape
        for component, module in lora_components(family).items()
        for name, shape in adaptable_modules(module).items()
    }


def write_lora_file(
    lora: LoraWeights, path: Path, family: ModelFamily, form: Literal["diffusers", "kohya"], dtype: torch.dtype
) -> Path:
    """Write a LoRA file atomically, in diffusers' format (each layer's scale folded into ``lora_B``, so that it
    loads at alpha = rank, as diffusers reads a file without alphas) or kohya's; return it.

    Args:
        lora: module path -> layer.
        path: the ``.safetensors`` file.
        family: the base model's family (names the kohya modules and fills the kohya header).
        form: ``diffusers`` or ``kohya``.
        dtype: the dtype of the stored tensors.
    """
    if form == "kohya":
        return write_kohya_file(lora, path, family, dtype)
    tensors = diffusers_state_dict(lora, dtype)
    write_atomic(path, lambda file: file.write(save(tensors, metadata={"format": "pt"})))
    return path


def write_kohya_file(lora: LoraWeights, path: Path, family: ModelFamily, dtype: torch.dtype) -> Path:
    """Write a kohya / A1111 / ComfyUI LoRA file atomically, its header naming the base model and the largest rank;
    return it. The family's denoiser is built from its config on the meta device (the header describes it)."""
    rank = max((layer.rank for layer in lora.values()), default=1)
    notes = TrainingNotes(
        base_model=family.pretrained_model_name_or_path, rank=rank, alpha=float(rank), title=path.stem
    )
    components = lora_components(family)
    family.load_denoiser_weights = False  # the header only needs the denoiser's config
    family.load_components(
        family.pretrained_model_name_or_path, {family.denoiser_name: type(components[family.denoiser_name])}
    )
    cast = {module: layer.cast(dtype) for module, layer in lora.items()}
    try:
        names = kohya_names(family.pipeline_class, components)
        metadata = kohya_metadata(family, notes)
        return write_named_atomic(path, lambda staging: write_kohya(cast, names, metadata, staging))
    except UserError as error:
        raise UserError(f"format: {error}") from None


def write_model(output: Path, model: ModelFolder, changed: dict[str, nn.Module], dtype: torch.dtype | None) -> Path:
    """Write ``model`` with its ``changed`` components as a diffusers folder, or as an original-layout single file
    when ``output`` ends in ``.safetensors`` (the other components it holds then load from ``model``).

    Args:
        output: a folder, or a ``.safetensors`` file.
        model: the model the result is made from.
        changed: component name -> its new module.
        dtype: the dtype of the written weights; None keeps the dtype ``model`` stores each component in.
    """
    if output.suffix != SINGLE_FILE:
        return write_model_folder(output, model, changed, dtype)
    names = COMPONENTS[model.pipeline_class_name]
    components = {name: changed[name] if name in changed else model.load(name) for name in names}
    for name, module in components.items():
        converted(module, dtype or model.stored_dtype(name))
    return write_single_file(output, model.pipeline_class_name, components, v_prediction=model.predicts_v)


def check_model_output(output: Path, model: ModelFolder) -> None:
    """Refuse a single-file output for a model whose original layout sdft does not write."""
    if output.suffix == SINGLE_FILE:
        check_single_file_support(model.pipeline_class_name, "output")


def merge_lora_files(
    model: str, files: list[Path], weights: list[float], rank: int | None, output: Path, form: str, dtype: torch.dtype
) -> tuple[Path, Approximation]:
    """Merge LoRA, LoKr and LoHa files of one base model (see :func:`sdft.interop.merging.merge_loras`) into
    ``output``."""
    family = family_of(ModelFolder.open(model, "model"), "model")
    loras = [read_lora_file(file, family, "loras") for file in files]
    for lora, file in zip(loras, files, strict=True):
        check_mergeable(lora, file, "loras", rank)
    merged, errors = merge_loras(loras, weights, rank, weight_shapes(family))
    return write_lora_file(merged, output, family, form, dtype), errors


def fuse_lora_file(model: str, file: Path, output: Path, scale: float, dtype: torch.dtype | None) -> Path:
    """Fuse a LoRA file into its base model's weights and write the model to ``output``."""
    base = ModelFolder.open(model, "model")
    check_model_output(output, base)
    lora = read_lora_file(file, family_of(base, "model"), "lora")
    components = {name: base.load(name) for name in sorted({path.partition(".")[0] for path in lora})}
    fuse_lora(components, lora, scale, str(file))
    return write_model(output, base, components, dtype)


def merge_model_folders(
    models: dict[str, str], output: Path, multiplier: float, multipliers: dict[str, float], dtype: torch.dtype | None
) -> Path:
    """Merge ``model_b`` (and ``model_c``) into ``model_a``, component by component, and write the result.

    Args:
        models: ``model_a``, ``model_b`` and optionally ``model_c``, by argument name.
        output: a folder, or a ``.safetensors`` file.
        multiplier: m of every component not in ``multipliers``.
        multipliers: m per component; 0 keeps model_a's component without loading any.
        dtype: the dtype of the written weights; None keeps model_a's.
    """
    folders = {argument: ModelFolder.open(path, argument) for argument, path in models.items()}
    a = folders.pop("model_a")
    check_same_components(a, folders)
    check_model_output(output, a)
    unknown = sorted(set(multipliers) - set(a.weight_components))
    if unknown:
        raise UserError(f"multipliers: {unknown} are no components of model_a; use {a.weight_components}")
    merged = {}
    for name in a.weight_components:
        m = multipliers.get(name, multiplier)
        if m != 0:
            merged[name] = merged_component(name, a, folders, m)
    return write_model(output, a, merged, dtype)


def check_same_components(a: ModelFolder, others: dict[str, ModelFolder]) -> None:
    """Refuse models of another pipeline or with other weight components than the first, in one line."""
    for argument, other in others.items():
        if (other.pipeline_class_name, other.weight_components) != (a.pipeline_class_name, a.weight_components):
            raise UserError(
                f"{argument}: {other.pipeline_class_name} with {other.weight_components} does not match "
                f"{a.pipeline_class_name} with {a.weight_components}; use models of one architecture"
            )


def merged_component(name: str, a: ModelFolder, others: dict[str, ModelFolder], multiplier: float) -> nn.Module:
    """Component ``name`` of ``a`` with model_b's (and model_c's) merged into it, tensor by tensor."""
    module = a.load(name)
    state = module.state_dict()
    loaded = {}
    for argument, other in others.items():
        loaded[argument] = other.load(name).state_dict()
        check_same_architecture(state, loaded[argument], f"{name} of {argument}")
    b, c = loaded["model_b"], loaded.get("model_c")
    module.load_state_dict(
        {key: merge_tensor(t, b[key], None if c is None else c[key], multiplier) for key, t in state.items()}
    )
    return module


def resize_lora_file(
    model: str, file: Path, rank: int, output: Path, form: str, dtype: torch.dtype
) -> tuple[Path, int, Approximation]:
    """Bring a LoRA file to ``rank`` (see :func:`sdft.interop.merging.resize_lora`), or turn a LoKr or LoHa file into
    the LoRA of that rank nearest to it; return the file written, its module count and the approximation errors."""
    family = family_of(ModelFolder.open(model, "base"), "base")
    lora = read_lora_file(file, family, "resize")
    check_mergeable(lora, file, "resize", rank)
    lora, errors = merge_loras([lora], [1.0], rank, weight_shapes(family))
    return write_lora_file(lora, output, family, form, dtype), len(lora), errors


def extract_lora_file(
    tuned: str, base: str, output: Path, options: ExtractionOptions, form: str, dtype: torch.dtype
) -> tuple[Path, int, Approximation]:
    """Extract the LoRA of ``tuned - base`` into ``output``; return the file, its module count and the errors."""
    base_folder = ModelFolder.open(base, "base")
    family = family_of(base_folder, "base")
    lora, errors = extract_from_models(ModelFolder.open(tuned, "tuned"), base_folder, family, options)
    if not lora:
        scope = "every Linear layer" if options.modules == "linear" else "the attention projections"
        raise UserError(
            f"no module of {tuned} differs from {base} by more than min_difference={options.min_difference:g} of its "
            f"weight in {scope}: nothing to extract, and {output} was not written; lower --min_difference, or give "
            "--modules linear, or check that tuned was fine-tuned from base"
        )
    return write_lora_file(lora, output, family, form, dtype), len(lora), errors


def extract_from_models(
    tuned: ModelFolder, base: ModelFolder, family: ModelFamily, options: ExtractionOptions
) -> tuple[LoraWeights, Approximation]:
    """The LoRA of ``tuned - base`` over the chosen components, one component pair in memory at a time."""
    check_same_components(base, {"tuned": tuned})
    names = family.capabilities.lora_components if options.text_encoders else (family.denoiser_name,)
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lora, errors = {}, Approximation()
    for name in names:
        targets = family.default_lora_targets(name) if options.modules == "attention" else None
        conv = options.conv_rank is not None and name == family.denoiser_name
        base_module, tuned_module = base.load(name), tuned.load(name)
        check_same_architecture(base_module.state_dict(), tuned_module.state_dict(), f"{name} of tuned")
        pairs = weight_pairs(name, base_module, tuned_module, targets, conv, device)
        part, part_errors = extract_lora(pairs, options.rank, options.conv_rank, options.min_difference)
        lora.update({path: LoraLayer(layer.down.cpu(), layer.up.cpu(), layer.alpha) for path, layer in part.items()})
        errors.update(part_errors)
    return lora, errors


def weight_pairs(
    component: str, base: nn.Module, tuned: nn.Module, targets: list[str] | None, conv: bool, device: torch.device
) -> Iterator[tuple[str, Tensor, Tensor]]:
    """(module path, base weight, tuned weight) of the Linear modules named by ``targets`` (module names or dotted
    suffixes, as peft matches them; None: every Linear) and, if ``conv``, of every Conv2d."""
    base_modules = dict(base.named_modules())
    for name, module in tuned.named_modules():
        is_linear = isinstance(module, nn.Linear) and (
            targets is None or any(name == target or name.endswith(f".{target}") for target in targets)
        )
        if is_linear or (conv and isinstance(module, nn.Conv2d)):
            yield f"{component}.{name}", base_modules[name].weight.to(device), module.weight.to(device)
