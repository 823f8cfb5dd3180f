"""The ``sdft merge`` and ``sdft extract`` commands: merge LoRAs, fuse a LoRA into its base model, merge whole
models, extract a LoRA from a fine-tuned model and its base, and resize a LoRA.

Models are diffusers folders (or ``builtin:tiny-*``); a model output is a diffusers folder, or an original-layout
single ``.safetensors`` file for SD 1.x/2.x and SDXL when the output's name ends in ``.safetensors``. LoRA files are
read and written in diffusers' format (``pytorch_lora_weights.safetensors``: peft's ``lora_A`` / ``lora_B`` names).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor, nn

from sdft.errors import UserError
from sdft.files import write_atomic
from sdft.interop.lora_weights import LoraLayer, LoraWeights
from sdft.interop.merging import (
    Approximation,
    check_same_architecture,
    extract_lora,
    fuse_lora,
    merge_loras,
    merge_tensor,
    resize_lora,
)
from sdft.interop.model_folders import ModelFolder, converted, write_model_folder
from sdft.interop.single_file import COMPONENTS, check_single_file_support, write_single_file

if TYPE_CHECKING:
    from sdft.families import ModelFamily

Precision = Literal["float32", "float16", "bfloat16"]
SINGLE_FILE = ".safetensors"


def read_lora_file(path: Path, argument: str) -> LoraWeights:
    """A diffusers-format LoRA file (``<module path>.lora_A.weight`` / ``.lora_B.weight``) as module path -> layer,
    alpha from the peft config in its header (``lora_adapter_metadata``) or, without one, alpha = rank.

    Args:
        path: the ``.safetensors`` file.
        argument: the command-line argument that named it, for error messages.
    """
    check_file(path, argument)
    with safe_open(path, framework="pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (no dict)
        configs = peft_configs(file.metadata() or {})
    downs = {
        key.removesuffix(".lora_A.weight"): tensor for key, tensor in tensors.items() if key.endswith(".lora_A.weight")
    }
    if not downs:
        raise UserError(f"{argument}: {path} holds no diffusers-format LoRA (no *.lora_A.weight tensors)")
    lora = {}
    for module, down in downs.items():
        up = tensors.get(f"{module}.lora_B.weight")
        if up is None:
            raise UserError(f"{argument}: {path} has {module}.lora_A.weight but no {module}.lora_B.weight")
        lora[module] = LoraLayer(down=down, up=up, alpha=stored_alpha(module, down.shape[0], configs))
    return lora


def peft_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """Component -> the peft ``LoraConfig`` fields that diffusers keeps in a LoRA file's header (empty without)."""
    packed = json.loads(metadata.get("lora_adapter_metadata", "{}"))
    configs: dict[str, dict] = {}
    for key, value in packed.items():
        component, _, field = key.partition(".")
        configs.setdefault(component, {})[field] = value
    return configs


def stored_alpha(module: str, rank: int, configs: dict[str, dict]) -> float:
    """A module's alpha from its component's peft config (its ``alpha_pattern`` entry, else ``lora_alpha``);
    the rank (scale 1) when the file has no config."""
    component, _, name = module.partition(".")
    config = configs.get(component)
    if config is None:
        return float(rank)
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        if name == pattern or name.endswith(f".{pattern}"):
            return float(alpha)
    return float(config.get("lora_alpha", rank))


def write_lora_file(lora: LoraWeights, path: Path, dtype: torch.dtype) -> Path:
    """Write a diffusers-format LoRA file atomically, each layer's scale folded into ``lora_B`` so that it loads at
    alpha = rank (what diffusers assumes of a file without alphas); return it.

    Args:
        lora: module path -> layer.
        path: the ``.safetensors`` file.
        dtype: the dtype of the stored tensors.
    """
    tensors = {}
    for module, layer in lora.items():
        tensors[f"{module}.lora_A.weight"] = layer.down.to(dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = (layer.up.float() * layer.scale).to(dtype).contiguous()
    write_atomic(path, lambda file: file.write(save(tensors, metadata={"format": "pt"})))
    return path


def check_file(path: Path, argument: str) -> None:
    """Refuse a path that is no file, in one line."""
    if not Path(path).is_file():
        raise UserError(f"{argument}: no file {path}")


def check_lora_output(output: Path) -> None:
    """Refuse a LoRA output whose name does not end in ``.safetensors``."""
    if Path(output).suffix != SINGLE_FILE:
        raise UserError(f"output: {output} must be a .safetensors file name for the LoRA")


def check_model_output(output: Path, model: ModelFolder) -> None:
    """Refuse a single-file output for a model whose original layout sdft does not write."""
    if Path(output).suffix == SINGLE_FILE:
        check_single_file_support(model.pipeline_class_name, "output")


def check_rank(rank: int | None, argument: str) -> None:
    if rank is not None and rank < 1:
        raise UserError(f"{argument} must be a positive integer, got {rank}")


def write_model(output: Path, model: ModelFolder, changed: dict[str, nn.Module], dtype: Precision | None) -> Path:
    """Write ``model`` with its ``changed`` components as a diffusers folder, or as an original-layout single file
    when ``output`` ends in ``.safetensors`` (the other components then load from ``model``).

    Args:
        output: a folder, or a ``.safetensors`` file.
        model: the model the result is made from.
        changed: component name -> its new module.
        dtype: the dtype of the written weights; None keeps the dtype ``model`` stores each component in.
    """
    target = None if dtype is None else getattr(torch, dtype)
    if Path(output).suffix != SINGLE_FILE:
        return write_model_folder(Path(output), model, changed, target)
    names = COMPONENTS[model.pipeline_class_name]
    components = {name: changed[name] if name in changed else model.load(name) for name in names}
    for name, module in components.items():
        converted(module, target or model.stored_dtype(name))
    return write_single_file(Path(output), model.pipeline_class_name, components, v_prediction=model.predicts_v)


class Merge:
    """Merge LoRAs, fuse a LoRA into its base model, or merge two or three whole models."""

    def loras(
        self,
        loras: list[str],
        output: Path,
        weights: list[float] | None = None,
        rank: int | None = None,
        dtype: Precision = "float32",
    ) -> None:
        """Merge LoRAs into one: exactly, with their ranks side by side, or cut to one rank by truncated SVD.

        Args:
            loras: the LoRA files (diffusers format), as a list: '[a.safetensors,b.safetensors]'.
            output: the merged LoRA file (.safetensors).
            weights: one multiplier per LoRA; 1 for each when omitted.
            rank: the merged rank (SVD of each module's summed update; prints the error); omitted: exact, the
                ranks concatenated.
            dtype: the dtype of the written tensors.
        """
        weights = [1.0] * len(loras) if weights is None else weights
        if not loras or len(weights) != len(loras):
            raise UserError(f"weights: give one weight per LoRA ({len(loras)}), got {len(weights)}")
        check_rank(rank, "rank")
        check_lora_output(output)
        read = [read_lora_file(Path(path), "loras") for path in loras]
        merged, errors = merge_loras(read, weights, rank)
        print(write_lora_file(merged, Path(output), getattr(torch, dtype)))
        if rank is not None:
            print(errors.summary())

    def fuse(self, model: str, lora: Path, output: Path, scale: float = 1.0, dtype: Precision | None = None) -> None:
        """Fuse a LoRA into its base model's weights; write a diffusers folder or a single-file checkpoint.

        Args:
            model: the LoRA's base model (a diffusers folder or builtin:tiny-*).
            lora: the LoRA file (diffusers format).
            output: a folder for a diffusers model, or a .safetensors name for an original-layout single file
                (SD 1.x/2.x, SDXL) that AUTOMATIC1111 and ComfyUI load.
            scale: the LoRA's strength (1 = as trained).
            dtype: the dtype of the written weights; omitted: the base model's.
        """
        base = ModelFolder.open(model, "model")
        check_model_output(output, base)
        weights = read_lora_file(Path(lora), "lora")
        names = sorted({path.partition(".")[0] for path in weights})
        absent = [name for name in names if name not in base.weight_components]
        if absent:
            raise UserError(f"lora: {lora} adapts {', '.join(absent)}, which {model} lacks; use the LoRA's base model")
        components = {name: base.load(name) for name in names}
        fuse_lora(components, weights, scale, str(lora))
        print(write_model(output, base, components, dtype))

    def models(
        self,
        model_a: str,
        model_b: str,
        output: Path,
        model_c: str | None = None,
        multiplier: float = 0.5,
        multipliers: dict[str, float] | None = None,
        dtype: Precision | None = None,
    ) -> None:
        """Merge whole models: weighted sum (1 - m) A + m B, or add-difference A + m (B - C) when model_c is given.

        Args:
            model_a: the first model (a diffusers folder); its tokenizers and scheduler are kept.
            model_b: the second model, of the same architecture.
            output: a folder for a diffusers model, or a .safetensors name for an original-layout single file.
            model_c: the model subtracted from model_b (add-difference), e.g. model_b's own base.
            multiplier: m for every component.
            multipliers: m per component, e.g. '{unet: 0.7, text_encoder: 0}'; 0 keeps model_a's component.
            dtype: the dtype of the written weights; omitted: model_a's.
        """
        a = ModelFolder.open(model_a, "model_a")
        others = {"model_b": ModelFolder.open(model_b, "model_b")}
        if model_c is not None:
            others["model_c"] = ModelFolder.open(model_c, "model_c")
        check_same_components(a, others)
        check_model_output(output, a)
        multipliers = multipliers or {}
        unknown = sorted(set(multipliers) - set(a.weight_components))
        if unknown:
            raise UserError(f"multipliers: {unknown} are no components of model_a; use {a.weight_components}")
        merged = {}
        for name in a.weight_components:
            m = multipliers.get(name, multiplier)
            if m != 0:
                merged[name] = merged_component(name, a, others, m)
        print(write_model(output, a, merged, dtype))


def check_same_components(a: ModelFolder, others: dict[str, ModelFolder]) -> None:
    """Refuse models of another pipeline or with other weight components than ``model_a``, in one line."""
    for argument, other in others.items():
        if (other.pipeline_class_name, other.weight_components) != (a.pipeline_class_name, a.weight_components):
            raise UserError(
                f"{argument}: {other.pipeline_class_name} with {other.weight_components} does not match model_a's "
                f"{a.pipeline_class_name} with {a.weight_components}; merge models of one architecture"
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


def extract(
    output: Path,
    tuned: str | None = None,
    base: str | None = None,
    resize: Path | None = None,
    rank: int = 16,
    conv_rank: int | None = None,
    modules: Literal["attention", "linear"] = "attention",
    text_encoders: bool = False,
    min_difference: float = 1e-4,
    device: str | None = None,
    dtype: Precision = "float32",
) -> None:
    """Extract a LoRA from a fine-tuned model and its base (truncated SVD of each weight's change), or resize a LoRA.

    Prints the relative Frobenius error of the result (overall and worst module).

    Args:
        output: the LoRA file to write (.safetensors, diffusers format).
        tuned: the fine-tuned model (a diffusers folder, e.g. a full fine-tune's export).
        base: the model it was fine-tuned from.
        resize: instead of tuned and base: a LoRA file to bring to the given rank.
        rank: the rank of the Linear modules (at most; exact when the change's rank is lower).
        conv_rank: also extract the denoiser's Conv2d modules, at this rank.
        modules: attention: the modules the family's LoRA adapts by default (attention projections; for Flux.1
            also the feed-forward layers); linear: every Linear layer.
        text_encoders: also extract the text encoders a LoRA may adapt (the CLIPs, never T5).
        min_difference: leave out modules whose weight changed by at most this fraction (Frobenius norm).
        device: where the SVDs run; cuda when available, else cpu.
        dtype: the dtype of the written tensors.
    """
    check_lora_output(output)
    check_rank(rank, "rank")
    check_rank(conv_rank, "conv_rank")
    if resize is not None:
        if tuned is not None or base is not None:
            raise UserError("resize: give either resize or tuned and base, not both")
        lora, errors = resize_lora(read_lora_file(Path(resize), "resize"), rank)
    elif tuned is None or base is None:
        raise UserError("tuned and base: give both models to extract from (or resize: a LoRA file)")
    else:
        lora, errors = extract_from_models(tuned, base, rank, conv_rank, modules, text_encoders, min_difference, device)
    print(write_lora_file(lora, Path(output), getattr(torch, dtype)))
    print(f"{len(lora)} modules; {errors.summary()}")


def extract_from_models(
    tuned: str,
    base: str,
    rank: int,
    conv_rank: int | None,
    modules: str,
    text_encoders: bool,
    min_difference: float,
    device: str | None,
) -> tuple[LoraWeights, Approximation]:
    """The LoRA of ``tuned - base`` over the chosen components (see :func:`extract`), one component pair in
    memory at a time."""
    tuned_folder, base_folder = ModelFolder.open(tuned, "tuned"), ModelFolder.open(base, "base")
    check_same_components(base_folder, {"tuned": tuned_folder})
    family = family_of(base_folder)
    names = family.capabilities.lora_components if text_encoders else (family.denoiser_name,)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    lora, errors = {}, Approximation()
    for name in names:
        targets = family.default_lora_targets(name) if modules == "attention" else None
        conv = conv_rank is not None and name == family.denoiser_name
        base_module, tuned_module = base_folder.load(name), tuned_folder.load(name)
        check_same_architecture(base_module.state_dict(), tuned_module.state_dict(), f"{name} of tuned")
        pairs = weight_pairs(name, base_module, tuned_module, targets, conv, torch.device(device))
        part, part_errors = extract_lora(pairs, rank, conv_rank, min_difference)
        lora.update({path: LoraLayer(layer.down.cpu(), layer.up.cpu(), layer.alpha) for path, layer in part.items()})
        errors.update(part_errors)
    return lora, errors


def family_of(folder: ModelFolder) -> ModelFamily:
    """The sdft family of a model folder (it knows the denoiser, the LoRA components and their default targets)."""
    from sdft.families import Flux, StableDiffusion, StableDiffusion3, StableDiffusionXL

    families = {
        cls.pipeline_class.__name__: cls for cls in (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux)
    }
    if folder.pipeline_class_name not in families:
        raise UserError(
            f"base: {folder.pipeline_class_name} is no family sdft knows ({', '.join(families)}); "
            "extract from one of those"
        )
    return families[folder.pipeline_class_name](str(folder.path))


def weight_pairs(
    component: str,
    base: nn.Module,
    tuned: nn.Module,
    targets: list[str] | None,
    conv: bool,
    device: torch.device,
) -> Iterator[tuple[str, Tensor, Tensor]]:
    """(module path, base weight, tuned weight) of the Linear modules named by ``targets`` (module names or dotted
    suffixes, as peft matches them; None: every Linear) and, if ``conv``, of every Conv2d."""
    base_modules = dict(base.named_modules())
    for name, module in tuned.named_modules():
        is_linear = isinstance(module, nn.Linear) and (
            targets is None or any(name == t or name.endswith(f".{t}") for t in targets)
        )
        if is_linear or (conv and isinstance(module, nn.Conv2d)):
            yield f"{component}.{name}", base_modules[name].weight.to(device), module.weight.to(device)
