"""Low-rank adapters on the denoiser and optionally the text encoders, through peft: LoRA (Hu et al. 2021, arXiv
2106.09685), DoRA (Liu et al. 2024, arXiv 2402.09353: LoRA with a trained magnitude per output row), and LyCORIS's
LoKr (a Kronecker product, after KronA, arXiv 2212.10650) and LoHa (a Hadamard product, FedPara, arXiv 2108.06098).

An export writes the adapter in each of the method's ``export_formats`` into one folder:

- ``diffusers``: ``pytorch_lora_weights.safetensors``, diffusers / peft keys with the peft config (alpha included)
  in the header; ``pipe.load_lora_weights(folder)`` loads it at the trained strength (LoRA and DoRA);
- ``kohya``: ``<run name>-<step>.safetensors`` (kohya sd-scripts' naming, e.g. ``dog-000400.safetensors``), the
  layout ComfyUI, A1111 (stable-diffusion-webui), kohya sd-scripts and LyCORIS read (see
  :mod:`sdft.interop.kohya`): a ``.alpha`` tensor per module, and ``ss_*`` / ``modelspec.*`` header metadata naming
  the base model, rank, alpha, resolution, steps and the instance prompt as trigger phrase. Named after its run and
  step, files of several runs and steps can be copied side by side into ComfyUI's ``models/loras`` or A1111's
  ``models/Lora`` folder, where A1111's prompt calls the file by that name.
  LoKr and LoHa go into it as LyCORIS writes them (``lokr_w1`` ..., ``hada_w1_a`` ...).

Each kind is exported only in the formats whose consumers read it as it trained
(:data:`~sdft.interop.formats.FORMATS_OF_KIND`): LoRA both, DoRA diffusers, LoKr and LoHa kohya.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peft import PeftConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from torch import nn

from sdft.errors import UserError
from sdft.interop.formats import FORMATS_OF_KIND, check_formats, check_lora_fits, read_lora
from sdft.interop.kohya import TrainingNotes, kohya_metadata, to_kohya, write_kohya
from sdft.interop.kohya_names import kohya_names
from sdft.interop.lora_weights import KIND_NAMES, load_lora_weights_into, lora_weights_of, magnitudes_as_weights
from sdft.interop.model_card import MethodFacts, read_run_facts
from sdft.methods.adapters import Adapter, check_adapter_options, check_like_trained, peft_config
from sdft.methods.base import DiffusionFineTuner

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"

#: what each format's file is for (the model card's words)
FORMAT_USES = {
    "diffusers": "diffusers / peft {kind}: `pipe.load_lora_weights(folder)`, at the trained strength",
    "kohya": (
        "kohya {kind} for ComfyUI (`models/loras`), A1111 (`models/Lora`, called as `<lora:{name}:1>`) and kohya "
        "sd-scripts; diffusers reads the other file"
    ),
}
LYCORIS_USE = "LyCORIS {kind} for ComfyUI (`models/loras`) and kohya sd-scripts with LyCORIS (`lycoris.kohya`)"
#: the Hub tags of each kind's card
KIND_TAGS = {
    "lora": ("lora", "template:sd-lora"),
    "dora": ("lora", "dora", "template:sd-lora"),
    "lokr": ("lycoris", "lokr"),
    "loha": ("lycoris", "loha"),
}


class LoRAFineTuner(DiffusionFineTuner):
    """Train low-rank adapters (LoRA, DoRA, LoKr or LoHa); export them for diffusers
    (``pytorch_lora_weights.safetensors``, loaded by ``load_lora_weights`` at the trained strength) and for ComfyUI /
    A1111 / kohya / LyCORIS (``<run>-<step>.safetensors``), each kind in the formats that read it."""

    def __init__(
        self,
        *args,
        adapter: Adapter = "lora",
        rank: int = 16,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        target_blocks: list[int] | None = None,
        train_text_encoder: bool = False,
        text_encoder_target_modules: list[str] | None = None,
        export_formats: tuple[str, ...] | None = None,
        init_lora: str | None = None,
        lokr_factor: int = -1,
        decompose_both: bool = False,
        **kwargs,
    ) -> None:
        """
        Args:
            adapter: the adapter kind: lora; dora (LoRA plus a trained magnitude per output row); lokr (LyCORIS's
                Kronecker product of two factors); loha (LyCORIS's Hadamard product of two low-rank products).
            rank: rank r of every adapted projection (LoKr: of the factors it splits in two).
            alpha: LoRA alpha (of every adapter kind); the update is scaled by alpha / rank. None means alpha = rank
                (scale 1).
            dropout: dropout on the LoRA branch input during training (lora and dora only).
            target_modules: module names to adapt in the denoiser; None uses the family's attention projections.
            target_blocks: adapt only these of the denoiser's blocks, numbered in module order over the block types
                the family declares (SD3: ``transformer_blocks.{i}``; Flux.1: the double-stream blocks, then the
                single-stream ones); None adapts every block.
            train_text_encoder: also adapt the text encoder(s), with the same rank and alpha.
            text_encoder_target_modules: module names to adapt in the text encoders; None uses the family's default.
            export_formats: the files every export writes: ``diffusers`` (``pytorch_lora_weights.safetensors``)
                and / or ``kohya`` (``<run>-<step>.safetensors`` for ComfyUI, A1111, kohya sd-scripts and LyCORIS);
                the first listed is the export's main file. None writes every format that loads the adapter kind:
                both for lora, diffusers for dora, kohya for lokr and loha.
            init_lora: an adapter file (diffusers, kohya, A1111, ComfyUI or LyCORIS format) whose weights the fit
                starts from instead of new random ones; it must be of the kind ``adapter`` with this run's ranks and
                factor shapes, and adapt only modules this run targets. A fit resumed from a checkpoint continues
                from the checkpoint's weights.
            lokr_factor: LoKr: split each dimension into two factors, one of them this number where it divides the
                dimension (LyCORIS's ``factor``); -1 splits near the square root.
            decompose_both: LoKr: also split the smaller Kronecker factor into two rank-``rank`` matrices where
                that makes it smaller (LyCORIS's ``decompose_both``).
        """
        super().__init__(*args, **kwargs)
        if rank < 1:
            raise UserError(f"model.init_args.rank must be a positive integer, got {rank}")
        check_adapter_options(adapter, dropout, lokr_factor, decompose_both)
        self.adapter = adapter
        self.lokr_factor = lokr_factor
        self.decompose_both = decompose_both
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.dropout = dropout
        if target_blocks is not None and (not target_blocks or min(target_blocks) < 0):
            raise UserError(
                f"model.init_args.target_blocks must list block indices (0 or more), got {target_blocks}; "
                "use null to adapt every block"
            )
        self.target_modules = target_modules
        self.target_blocks = target_blocks
        self.train_text_encoder = train_text_encoder
        self.text_encoder_target_modules = text_encoder_target_modules
        export_formats = FORMATS_OF_KIND[adapter] if export_formats is None else export_formats
        check_formats(export_formats, "model.init_args.export_formats", adapter)
        self.export_formats = list(export_formats)
        self.init_lora = init_lora
        self.checkpoint_loaded = False  # its weights replace init_lora's: the file is not read

    def check(self) -> None:
        super().check()
        check_lora_fits(self.init_lora, self.family, "model.init_args.init_lora")

    scalable = True

    @contextmanager
    def adapter_scale(self, scale: float) -> Iterator[None]:
        """Apply every adapter layer at ``scale`` times its trained strength within the block: the strength that
        diffusers' ``set_adapters(..., adapter_weights)`` and ComfyUI's and A1111's LoRA strength set (DoRA scales
        its low-rank update inside the normalisation, as peft does)."""
        layers = [module for module in self.modules() if isinstance(module, BaseTunerLayer)]
        for layer in layers:
            for name in layer.active_adapters:
                layer.set_scale(name, scale)
        try:
            yield
        finally:
            for layer in layers:
                for name in layer.active_adapters:
                    layer.set_scale(name, 1.0)

    def adapted_components(self) -> dict[str, nn.Module]:
        """The pipeline components that carry an adapter, by pipeline component name."""
        return self.family.components(self.train_text_encoder)

    def adapter_config(self, component: str) -> PeftConfig:
        """The peft config for one component: the adapter kind with its options, on the user's targets or the
        family's defaults, within the chosen blocks of the denoiser (a regex over module names) when
        ``target_blocks`` is set."""
        is_denoiser = component == self.family.denoiser_name
        targets = self.target_modules if is_denoiser else self.text_encoder_target_modules
        targets = targets or self.family.default_lora_targets(component)
        if is_denoiser and self.target_blocks is not None:
            targets = within_blocks(self.chosen_blocks(), targets)
        return peft_config(
            self.adapter, self.rank, self.alpha, self.dropout, targets, self.lokr_factor, self.decompose_both
        )

    def chosen_blocks(self) -> list[str]:
        """The module names of the denoiser blocks that ``target_blocks`` names, checked against the model."""
        types = self.family.capabilities.block_types
        blocks = block_names(self.family.denoiser, types)
        outside = sorted({index for index in self.target_blocks if index >= len(blocks)})
        if outside:
            span = f"numbered 0-{len(blocks) - 1}, {blocks[0]} to {blocks[-1]}" if blocks else "none"
            raise UserError(
                f"model.init_args.target_blocks: {outside} out of range; the {self.family.denoiser_name} of "
                f"{type(self.family).__name__} has {len(blocks)} blocks of type {', '.join(types)} ({span})"
            )
        return [blocks[index] for index in sorted(set(self.target_blocks))]

    def configure_trainable(self) -> None:
        for name, module in self.adapted_components().items():
            config = self.adapter_config(name)
            try:
                module.add_adapter(config)
            except ValueError as error:
                key = "target_modules" if name == self.family.denoiser_name else "text_encoder_target_modules"
                if name == self.family.denoiser_name and self.target_blocks is not None:
                    key += " within model.init_args.target_blocks"
                raise UserError(f"model.init_args.{key} matches no module of the {name}: {error}") from error
        if "kohya" in self.export_formats:
            self.check_kohya_names()
        if self.init_lora is not None and not self.checkpoint_loaded:
            self.start_from(self.init_lora)

    def check_kohya_names(self) -> None:
        """Refuse, before training, adapted modules that a kohya file cannot name, or cannot hold as the adapter
        kind trained them (a LoKr of projections the original model fuses)."""
        components = self.adapted_components()
        names = kohya_names(self.family.pipeline_class, components)
        weights = lora_weights_of(components)
        unnamed = sorted(set(weights) - set(names.by_path))
        if unnamed:
            other = ", or set export_formats: [diffusers]" if "diffusers" in FORMATS_OF_KIND[self.adapter] else ""
            raise UserError(
                f"model.init_args.export_formats includes kohya, but {len(unnamed)} adapted modules have no name in "
                f"kohya / A1111 / ComfyUI files (first: {unnamed[0]}): leave them out of the targets{other}"
            )
        try:
            to_kohya(weights, names)
        except UserError as error:
            raise UserError(f"model.init_args.adapter {self.adapter} with export_formats kohya: {error}") from None

    def start_from(self, path: str) -> None:
        """Load a LoRA file's weights into the new adapters (their alpha / rank kept, the update the file's)."""
        if not Path(path).is_file():
            raise UserError(
                f"model.init_args.init_lora: {path} not found: pass a LoRA file (a fit resumed from a checkpoint "
                "continues from the checkpoint's weights: set init_lora: null to resume without the file)"
            )
        try:
            weights = read_lora(path, self.family)
        except UserError as error:
            raise UserError(f"model.init_args.init_lora: {error}") from None
        components = self.adapted_components()
        untargeted = sorted(set(weights) - set(lora_weights_of(components)))
        if untargeted:
            raise UserError(
                f"model.init_args.init_lora: {path} adapts {len(untargeted)} modules this run does not train (first: "
                f"{untargeted[0]}): target them (target_modules, train_text_encoder, text_encoder_target_modules) "
                "or pass another file"
            )
        check_like_trained(path, weights, lora_weights_of(components), self.adapter, self.rank)
        load_lora_weights_into(components, weights)

    def write_export(self, directory: Path) -> Path:
        """Write the LoRA in each of ``export_formats``; return the first's file."""
        writers = {"diffusers": self.write_diffusers, "kohya": self.write_kohya}
        return [writers[name](directory) for name in self.export_formats][0]

    def write_diffusers(self, directory: Path) -> Path:
        """Write ``pytorch_lora_weights.safetensors`` with each component's peft config in the header (a DoRA's
        magnitudes under the keys every diffusers loader finds)."""
        components = self.adapted_components()
        layers = {
            f"{name}_lora_layers": magnitudes_as_weights(get_peft_model_state_dict(m)) for name, m in components.items()
        }
        metadata = {
            f"{name}_lora_adapter_metadata": m.peft_config["default"].to_dict() for name, m in components.items()
        }
        self.family.pipeline_class.save_lora_weights(directory, **layers, **metadata, weight_name=LORA_WEIGHTS)
        return directory / LORA_WEIGHTS

    def write_kohya(self, directory: Path) -> Path:
        """Write the ComfyUI / A1111 file (:meth:`kohya_file_name`; a LoKr or LoHa as LyCORIS writes it) with kohya
        and model-spec metadata."""
        components = self.adapted_components()
        names = kohya_names(self.family.pipeline_class, components)
        metadata = kohya_metadata(self.family, self.training_notes())
        return write_kohya(lora_weights_of(components), names, metadata, directory / self.kohya_file_name())

    def kohya_file_name(self) -> str:
        """The ComfyUI / A1111 file's name: the run's and the weights' step (see :func:`kohya_file_name`)."""
        return kohya_file_name(self.current_run_notes().title, self.weights_step())

    def training_notes(self) -> TrainingNotes:
        """What an export's metadata says about the training: the configured rank and alpha, the base model, the
        step of the weights, and what the trainer and data module (or, outside a fit, :attr:`run_notes`) tell."""
        notes, step = self.current_run_notes(), self.weights_step()
        strength = read_run_facts(notes.run_dir, step).strength if notes.run_dir else None
        return TrainingNotes(
            base_model=self.family.pretrained_model_name_or_path,
            rank=self.rank,
            alpha=self.alpha,
            steps=step,
            resolution=notes.resolution,
            trigger=notes.trigger,
            title=notes.title,
            network_args=self.network_args(),
            strength=strength["scale"] if strength else None,
        )

    def network_args(self) -> dict[str, str] | None:
        """A LyCORIS adapter's ``ss_network_args`` (its ``algo`` and options, as LyCORIS's kohya module takes
        them); None for LoRA and DoRA."""
        if self.adapter == "loha":
            return {"algo": "loha"}
        if self.adapter == "lokr":
            return {"algo": "lokr", "factor": str(self.lokr_factor), "decompose_both": str(self.decompose_both)}
        return None

    def card_facts(self) -> MethodFacts:
        """The adapter of the configured kind, rank and alpha, its files, and the line that loads it in diffusers
        (LoRA and DoRA) from the diffusers file."""
        settings = {
            "adapter": self.adapter,
            "rank": self.rank,
            "alpha": self.alpha,
            "train_text_encoder": self.train_text_encoder,
        }
        if self.adapter == "lokr":
            settings.update(lokr_factor=self.lokr_factor, decompose_both=self.decompose_both)
        if self.target_blocks is not None:
            settings["target_blocks"] = self.target_blocks
        kind, kohya_file = KIND_NAMES[self.adapter], self.kohya_file_name()
        uses = {**FORMAT_USES, "kohya": LYCORIS_USE} if self.adapter in ("lokr", "loha") else FORMAT_USES
        file_of = {"diffusers": LORA_WEIGHTS, "kohya": kohya_file}
        name = kohya_file.removesuffix(".safetensors")
        files = {file_of[form]: uses[form].format(kind=kind, name=name) for form in self.export_formats}
        loading = (
            () if LORA_WEIGHTS not in files else (f'pipe.load_lora_weights(folder, weight_name="{LORA_WEIGHTS}")',)
        )
        return MethodFacts(kind, KIND_TAGS[self.adapter], settings, files, loading)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.checkpoint_loaded = True
        super().on_load_checkpoint(checkpoint)


def kohya_file_name(title: str | None, step: int) -> str:
    """``<title>-<step>.safetensors`` as kohya sd-scripts names its files (``lora`` without a title), so that the
    files of several runs and steps lie side by side in a ``models/loras`` folder.

    Args:
        title: the run's name.
        step: the training step of the weights.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", title or "").strip("._") or "lora"
    return f"{name}-{step:06d}.safetensors"


def kohya_file(folder: Path) -> Path | None:
    """The ComfyUI / A1111 file of an export folder: its ``.safetensors`` with kohya's ``ss_network_module`` in the
    header; None when it has none."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(path, "pt") as file:
            if "ss_network_module" in (file.metadata() or {}):
                return path
    return None


def block_names(denoiser: nn.Module, block_types: tuple[str, ...]) -> list[str]:
    """The module names of a denoiser's blocks, in module order: every outermost module whose class is one of
    ``block_types`` (e.g. ``transformer_blocks.0``, ..., ``single_transformer_blocks.37`` for Flux.1).

    Args:
        denoiser: the UNet or transformer.
        block_types: class names of its repeated blocks (the family's ``capabilities.block_types``).
    """
    names: list[str] = []
    for name, module in denoiser.named_modules():
        if type(module).__name__ in block_types and not any(name.startswith(f"{block}.") for block in names):
            names.append(name)
    return names


#: a target that names one module of a numbered block, e.g. ``single_transformer_blocks.3.attn.to_out``
WHOLE_NAME = re.compile(r"[A-Za-z_]+\.\d+\.")


def within_blocks(blocks: list[str], targets: list[str]) -> str:
    """A peft ``target_modules`` regex (matched against whole module names) for the modules named by ``targets``
    (as peft matches a list: the name itself or its dotted suffix) inside the given blocks.

    Args:
        blocks: block module names, e.g. ``transformer_blocks.12``.
        targets: module names or dotted suffixes, e.g. ``attn.to_q``; a whole module name inside a block (FLUX.2's
            ``single_transformer_blocks.3.attn.to_out``, whose suffix also names a container elsewhere) counts only
            where its block is one of ``blocks``.
    """
    prefixes = "|".join(re.escape(block) for block in blocks)
    whole = [target for target in targets if WHOLE_NAME.match(target)]
    suffixes = "|".join(re.escape(target) for target in targets if target not in whole)
    chosen = [name for name in whole if name.startswith(tuple(f"{block}." for block in blocks))]
    return "|".join([rf"(?:{prefixes})\.(?:.*\.)?(?:{suffixes})", *(re.escape(name) for name in chosen)])
