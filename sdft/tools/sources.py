"""What ``sdft generate`` samples from, checked before any model loads: a base model's family, LoRA files, embedding
files and a run's checkpoints; then loaded into a diffusers pipeline.

Every check reads file names, JSON and safetensors headers only, so a user's mistake is one line within a second.
torch and diffusers are imported by the functions that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdft.assets import resolve
from sdft.errors import UserError

#: kohya's key prefixes (sd-scripts networks/lora.py) and the component each adapts
KOHYA_COMPONENTS = {
    "lora_unet": "denoiser",
    "lora_te": "text_encoder",
    "lora_te1": "text_encoder",
    "lora_te2": "text_encoder_2",
    "lora_te3": "text_encoder_3",
}
#: the components a diffusers-format LoRA file names as its keys' first part
DIFFUSERS_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")


# -- the base model ---------------------------------------------------------------------------------------------------


def family_names() -> dict[str, type]:
    """sdft's model families by class name (``StableDiffusion``, ``StableDiffusionXL``, ...)."""
    import sdft.families as families

    found = {name: getattr(families, name) for name in families.__all__}
    return {name: cls for name, cls in found.items() if getattr(cls, "pipeline_class", None) is not None}


def check_model_path(model: str) -> None:
    """Refuse, in one line, a ``--model`` that is a file or a run folder, or a local path that does not exist."""
    path = Path(model)
    if path.is_file():
        raise UserError(
            f"--model {model} is a file; give the base model's diffusers folder or hub id, and LoRA or embedding "
            "files with --lora or --embeddings"
        )
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        raise UserError(f"--model {model} is a run folder; pass it as --run {model}")
    if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise UserError(f"--model {model} does not exist; give a diffusers model folder, a hub id or builtin:tiny-sd1")


def pipeline_class_name(model: str) -> str:
    """The ``_class_name`` of a model's ``model_index.json``: a local folder's, or the hub's for a hub id."""
    folder = Path(resolve(model))
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise UserError(
                f"--model {model} has no model_index.json: give a diffusers pipeline folder (e.g. a full "
                "fine-tune's export), or name its family with --family"
            )
        return json.loads(index.read_text())["_class_name"]
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(model)["_class_name"]
    except (OSError, ValueError) as error:
        raise UserError(
            f"--model {model} is no local folder and its model_index.json cannot be read: {first_line(error)}"
        ) from None


def detect_family(model: str, family: str | None) -> type:
    """The :class:`~sdft.families.ModelFamily` class of ``model``: ``family`` by name, else the one whose pipeline
    class is the model's ``model_index.json`` ``_class_name``."""
    check_model_path(model)
    families = family_names()
    if family is not None:
        if family not in families:
            raise UserError(f"--family {family} is unknown; use one of {', '.join(sorted(families))}")
        return families[family]
    class_name = pipeline_class_name(model)
    for cls in families.values():
        if cls.pipeline_class.__name__ == class_name:
            return cls
    known = ", ".join(sorted(cls.pipeline_class.__name__ for cls in families.values()))
    raise UserError(f"--model {model} is a {class_name}; sdft generates with {known} (or name one with --family)")


# -- LoRA files -------------------------------------------------------------------------------------------------------


def safetensors_keys(file: Path, argument: str) -> list[str]:
    """The tensor names of a safetensors file (its header only), refused in one line if it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as opened:
            return list(opened.keys())
    except Exception as error:  # safetensors raises its own error types for a file that is not one
        raise UserError(f"{argument} {file} is not a safetensors file ({first_line(error)}); give one") from None


def lora_file(path: Path) -> Path:
    """The LoRA file that ``--lora path`` names: the file itself, or in an export folder (LoRA or pivotal tuning)
    its ``pytorch_lora_weights.safetensors``, else its one ``*lora*.safetensors``; refused in one line otherwise."""
    from sdft.methods.lora import LORA_WEIGHTS

    path = Path(path)
    if path.is_file():
        return path
    if (path / "model_index.json").is_file():
        raise UserError(f"--lora {path} is a full pipeline folder; pass it as --model {path}")
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        raise UserError(f"--lora {path} is a run folder; pass it as --run {path} to compare its checkpoints")
    if (path / LORA_WEIGHTS).is_file():
        return path / LORA_WEIGHTS
    found = sorted(path.glob("*lora*.safetensors")) if path.is_dir() else []
    if len(found) == 1:
        return found[0]
    state = f"has no {LORA_WEIGHTS} (nor one other *lora*.safetensors)" if path.is_dir() else "does not exist"
    raise UserError(f"--lora {path} {state}; give a LoRA .safetensors file or an export folder that holds one")


def adapted_components(keys: list[str]) -> set[str]:
    """The pipeline components a LoRA file adapts, read from its keys in diffusers (``unet.``, ``text_encoder_2.``)
    or kohya (``lora_unet_``, ``lora_te2_``; ``denoiser`` for ``lora_unet_``) form; unknown prefixes are skipped."""
    found = set()
    for key in keys:
        head = key.split(".", 1)[0]
        kohya = "_".join(head.split("_")[:2])
        if head in DIFFUSERS_COMPONENTS:
            found.add(head)
        elif kohya in KOHYA_COMPONENTS:
            found.add(KOHYA_COMPONENTS[kohya])
    return found


def check_lora(file: Path, family: type, model: str) -> None:
    """Refuse a file that holds no LoRA weights, or adapts a component ``family``'s models lack (a LoRA for another
    kind of model), before any model loads."""
    keys = safetensors_keys(file, "--lora")
    if not any(part in key for key in keys for part in ("lora_A", "lora_down", "lora.down", "lokr_w1", "hada_w1_a")):
        raise UserError(
            f"--lora {file} holds no LoRA weights (no lora_A, lora_down, lokr_w1 or hada_w1_a tensors); an embedding "
            "file goes to --embeddings"
        )
    own = {family.denoiser_name, "denoiser", *family.text_encoder_names}
    foreign = sorted(adapted_components(keys) - own)
    if foreign:
        raise UserError(
            f"--lora {file} adapts {', '.join(foreign)}, which {family.__name__} models ({model}) lack: it is a LoRA "
            "for another kind of model; use one trained on this model's family"
        )


def check_lora_fits(file: Path, family: type, model: str, variant: str | None) -> None:
    """Refuse a LoRA whose modules or shapes do not fit ``model`` (another model with the same component names, such
    as an SDXL LoRA on SD 1.x), from the file and the model's configs alone, before the pipeline loads."""
    from sdft.interop.formats import check_lora_fits as check_fits

    check_fits(file, family(model, variant=variant), "--lora")


def lora_modules(pipeline: Any, adapter: str) -> int:
    """How many modules of the pipeline's components carry the LoRA ``adapter``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from torch import nn

    modules = [c for c in pipeline.components.values() if isinstance(c, nn.Module)]
    return sum(
        1
        for component in modules
        for module in component.modules()
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "lora_A", {})
    )


@dataclass
class FusedAdapters:
    """Adapters diffusers' LoRA loader cannot take (LoKr, LoHa, a DoRA per input column), applied to the weights
    themselves: each weight ``W0 + scale * (W - W0)``, W the weight the layer makes of W0
    (:func:`sdft.interop.lora_weights.adapted_weight`).

    Attributes:
        changes: (the live weight, W0, W - W0) of every adapted module, in float32.
    """

    changes: list[tuple[Any, Any, Any]]

    def apply(self, scale: float) -> None:
        """Set every adapted weight at the adapters' strength ``scale``."""
        import torch

        with torch.no_grad():
            for weight, base, change in self.changes:
                weight.copy_(base + scale * change)


def load_loras(pipeline: Any, files: list[Path], family: Any, model: str) -> tuple[list[str], FusedAdapters]:
    """Load adapter files (diffusers, kohya, A1111, ComfyUI or LyCORIS format, read by
    :func:`sdft.interop.formats.read_lora`) into ``pipeline``: LoRA and DoRA layers as diffusers adapters ``lora_0``,
    ``lora_1``, ...; LoKr and LoHa layers (which diffusers does not load) fused into the weights at a strength set per
    column. Refuse in one line a file that does not fit the model (shapes) or adapts none of its modules. Returns
    the adapter names and the fused adapters."""
    from sdft.interop.formats import read_lora
    from sdft.interop.lora_weights import diffusers_loads, diffusers_state_dict

    names, fused = [], FusedAdapters([])
    for index, file in enumerate(files):
        name = f"lora_{index}"
        weights = read_lora(file, family)  # a file that does not fit the model is refused here, by name
        loadable = {path: layer for path, layer in weights.items() if diffusers_loads(layer)}
        fused.changes += weight_changes(pipeline, {path: weights[path] for path in weights.keys() - loadable.keys()})
        if not loadable:
            continue
        try:
            pipeline.load_lora_weights(diffusers_state_dict(loadable), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as error:
            detail = first_line(error, "mismatch")
            raise UserError(f"--lora {file} does not fit {model}: {detail}; use a LoRA trained on this model") from None
        if lora_modules(pipeline, name) == 0:
            raise UserError(f"--lora {file} adapts no module of {model}; use a LoRA trained on this model")
        names.append(name)
    return names, fused


def weight_changes(pipeline: Any, weights: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """(the live weight, its value, the change the layer makes) of each layer's module in ``pipeline``."""
    from sdft.interop.lora_weights import adapted_weight
    from sdft.interop.merging import find_module

    changes = []
    for path, layer in weights.items():
        component, _, name = path.partition(".")
        weight = find_module(dict(getattr(pipeline, component).named_modules()), name).weight
        base = weight.detach().float().cpu().clone()
        change = adapted_weight(layer, base) - base
        changes.append((weight, base.to(weight.device), change.to(weight.device)))
    return changes


def first_line(error: BaseException, containing: str = "") -> str:
    """The first non-empty line of an error's message (the first holding ``containing`` if any does), without its
    final full stop: the detail of a one-line :class:`UserError`."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [repr(error)]
    return next((line for line in lines if containing in line), lines[0]).rstrip(".")


# -- embedding files --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedding:
    """A new word's embedding vectors for every text encoder that takes new tokens.

    Attributes:
        file: where they were read.
        token: the word prompts name it by.
        keys: the file's tensor holding each token encoder's vectors, in the family's token-encoder order.
    """

    file: Path
    token: str
    keys: tuple[str, ...]


def embedding_file(path: Path) -> Path:
    """The embedding file ``--embeddings path`` names: the file, or the ``learned_embeds.safetensors`` of an export
    folder (textual inversion or pivotal tuning)."""
    from sdft.methods.tokens import EMBEDDINGS_FILE

    path = Path(path)
    if path.is_dir() and (path / EMBEDDINGS_FILE).is_file():
        return path / EMBEDDINGS_FILE
    if not path.is_file():
        state = "has no " + EMBEDDINGS_FILE if path.is_dir() else "does not exist"
        raise UserError(f"--embeddings {path} {state}; give an embedding .safetensors file or an export folder")
    return path


def read_embedding(path: Path, token: str | None, family: type) -> Embedding:
    """Check an embedding file against ``family`` and name its word, before any model loads.

    A diffusers file of one encoder is keyed by its word; an A1111 file (``emb_params``) and a file keyed by
    encoder (SDXL's ``clip_l`` / ``clip_g``) are named by the file's stem, as A1111 names them, unless ``token``.
    """
    from sdft.methods.tokens import A1111_KEY, EMBEDDINGS_FILE

    file = embedding_file(path)
    encoders, encoder_keys = family.capabilities.token_encoders, family.capabilities.embedding_keys
    if not encoders:
        raise UserError(f"--embeddings {file}: {family.__name__} models take no new words; drop --embeddings")
    keys = safetensors_keys(file, "--embeddings")
    if encoder_keys and set(encoder_keys) <= set(keys):
        if token is None and file.name == EMBEDDINGS_FILE:
            raise UserError(
                f"--embeddings {file} does not name its word; give it with --embedding_tokens, e.g. ['<sks>']"
            )
        return Embedding(file, token or file.stem, tuple(encoder_keys))
    if len(encoders) == 1 and keys == [A1111_KEY]:
        return Embedding(file, token or file.stem, (A1111_KEY,))
    if len(encoders) == 1 and len(keys) == 1:
        return Embedding(file, token or keys[0], (keys[0],))
    expected = " and ".join(encoder_keys) if encoder_keys else f"one tensor (diffusers) or {A1111_KEY} (A1111)"
    raise UserError(
        f"--embeddings {file} holds {', '.join(keys[:4])}: {family.__name__} embeddings hold {expected}; "
        "give an embedding trained on this model's family"
    )


def load_embeddings(pipeline: Any, embeddings: list[Embedding], family: type, model: str) -> None:
    """Add each embedding's word to the pipeline's tokenizers and text encoders (diffusers' loader, one encoder at a
    time); refuse in one line a word the tokenizer already has, or vectors of the wrong width."""
    from safetensors.torch import load_file

    tokenizer_of = dict(zip(family.text_encoder_names, family.tokenizer_names, strict=True))
    for embedding in embeddings:
        tensors = load_file(embedding.file)
        for encoder, key in zip(family.capabilities.token_encoders, embedding.keys, strict=True):
            tokenizer = getattr(pipeline, tokenizer_of[encoder])
            if embedding.token in tokenizer.get_vocab():
                raise UserError(
                    f"--embeddings {embedding.file}: its word {embedding.token!r} is already in the tokenizer of "
                    f"{model}; name it with --embedding_tokens, e.g. ['<{embedding.token.strip('<>')}>']"
                )
            width = getattr(pipeline, encoder).get_input_embeddings().weight.shape[-1]
            if tensors[key].shape[-1] != width:
                raise UserError(
                    f"--embeddings {embedding.file} holds vectors {tensors[key].shape[-1]} wide, but the {encoder} of "
                    f"{model} takes {width}: it was trained for another model; use one trained on this model"
                )
            try:
                pipeline.load_textual_inversion(
                    tensors[key], token=embedding.token, text_encoder=getattr(pipeline, encoder), tokenizer=tokenizer
                )
            except ValueError as error:
                raise UserError(f"--embeddings {embedding.file} does not fit {model}: {first_line(error)}") from None


# -- runs -------------------------------------------------------------------------------------------------------------


def check_run(run: Path) -> None:
    """Refuse a ``--run`` that is no run folder, naming a version folder inside it when there is one."""
    if (run / "config.yaml").is_file() and (run / "checkpoints").is_dir():
        return
    versions = sorted(run.glob("version_*/config.yaml")) if run.is_dir() else []
    if versions:
        raise UserError(f"--run {run} is a folder of runs; give one of them, e.g. --run {versions[-1].parent}")
    state = "does not exist" if not run.exists() else "has no config.yaml and checkpoints/"
    raise UserError(f"--run {run} {state}; give a run folder made by sdft fit, e.g. runs/quickstart/version_0")


def run_checkpoints(run: Path, steps: list[int] | None, compare: bool) -> list[tuple[int, Path | None]]:
    """The (step, checkpoint) pairs to sample, in step order; step 0 is the base model (no checkpoint).

    Args:
        run: a run folder.
        steps: the steps to sample; None: step 0 and every checkpoint when ``compare``, else the last checkpoint.
        compare: whether the checkpoints are the comparison axis.
    """
    from sdft.runs import checkpoints_by_step

    found = dict(checkpoints_by_step(run / "checkpoints"))
    if not found:
        raise UserError(f"--run {run}: {run / 'checkpoints'} holds no .ckpt file; train longer or save checkpoints")
    available: dict[int, Path | None] = {0: None, **found}
    if steps is None:
        steps = sorted(available) if compare else [max(found)]
    missing = sorted(set(steps) - set(available))
    if missing:
        listed = ", ".join(str(step) for step in sorted(available))
        raise UserError(f"--checkpoint_steps {missing}: {run} has checkpoints of steps {listed} (0 is the base model)")
    return [(step, available[step]) for step in sorted(set(steps))]


def run_model(run: Path, model: str | None) -> Any:
    """The run's fine-tuner from its ``config.yaml`` (not loaded); ``model`` replaces its base model path."""
    from sdft.methods.base import DiffusionFineTuner
    from sdft.runs import instantiate, read_config

    section = read_config(run / "config.yaml")["model"]
    if model is not None:
        section["init_args"]["family"].setdefault("init_args", {})["pretrained_model_name_or_path"] = model
    return instantiate(section, DiffusionFineTuner)
