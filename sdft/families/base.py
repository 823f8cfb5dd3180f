"""What every model family provides to the methods: components, encoders, an objective and a pipeline."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from diffusers import DiffusionPipeline
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sdft.assets import resolve
from sdft.batches import Batch
from sdft.errors import UserError

#: the CLIP text encoders' attention projections, LoRA's default targets there (as in diffusers' scripts)
CLIP_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]


def map_tensors(function: Callable[..., torch.Tensor], *trees: Any) -> Any:
    """Apply ``function`` to the tensors found at the same place in several nested dicts of tensors.

    Args:
        function: takes one tensor from each tree, returns a tensor.
        trees: dicts whose values are tensors, dicts of the same kind, or None (kept as None).
    """
    first = trees[0]
    if isinstance(first, dict):
        return {key: map_tensors(function, *(tree[key] for tree in trees)) for key in first}
    if first is None:
        return None
    return function(*trees)


def token_ids(tokenizer: Any, prompts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
    """Prompts -> token ids (B, max_length), padded and truncated as the diffusers pipelines do, on ``device``."""
    return tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)


def chat_prompts(tokenizer: Any, prompts: list[str], enable_thinking: bool) -> list[str]:
    """Each prompt as the user's message of a chat, followed by the opening of the assistant's turn: the text the
    language-model families' pipelines give their encoder (Z-Image with reasoning on, FLUX.2 [klein] with it off,
    which adds Qwen3's empty reasoning block)."""
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=enable_thinking,
        )
        for prompt in prompts
    ]


@dataclass
class Conditioning:
    """What the denoiser is conditioned on for a batch: its keyword arguments, which may nest (SDXL's
    ``added_cond_kwargs``) and hold sequences (T5 states) or pooled vectors, each with the batch first.

    Only the family that made it reads inside; everyone else joins and repeats it as a whole.
    """

    kwargs: dict[str, Any]

    @classmethod
    def cat(cls, parts: list[Conditioning]) -> Conditioning:
        """Join the conditioning of consecutive parts of a batch."""
        return cls(map_tensors(lambda *tensors: torch.cat(tensors), *(part.kwargs for part in parts)))

    def repeat_interleave(self, repeats: int) -> Conditioning:
        """Each example's conditioning ``repeats`` times in a row (to score an image at several noise levels)."""
        return Conditioning(map_tensors(lambda tensor: tensor.repeat_interleave(repeats, 0), self.kwargs))


@dataclass
class NoisedLatents:
    """A training example after the forward process: the denoiser input, what it should predict, the weight of
    its loss (1 unless the family's objective weights examples, e.g. flow matching's ``sigma_sqrt``) and, for masked
    images, the weight of each latent pixel in it (``loss_mask`` (B, 1, h, w), set by the method from the batch's
    masks; None: every pixel weighs 1)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.weight is None:
            self.weight = torch.ones(self.noisy.shape[0], device=self.noisy.device)

    @classmethod
    def cat(cls, parts: list[NoisedLatents]) -> NoisedLatents:
        """Join examples noised separately (e.g. instance and class examples) into one denoiser batch; a part
        without a loss mask weighs every pixel 1 beside a part with one."""
        names = [field.name for field in fields(cls) if field.name != "loss_mask"]
        joined = {name: torch.cat([getattr(part, name) for part in parts]) for name in names}
        if any(part.loss_mask is not None for part in parts):
            joined["loss_mask"] = torch.cat([part.pixel_weights() for part in parts])
        return cls(**joined)

    def pixel_weights(self) -> torch.Tensor:
        """Each latent pixel's loss weight (B, 1, h, w): the loss mask, or ones."""
        if self.loss_mask is not None:
            return self.loss_mask
        return torch.ones_like(self.target[:, :1], dtype=torch.float32)


@dataclass
class LatentPosterior:
    """The VAE's diagonal Gaussian posterior of each image, already in the denoiser's latent space (the family's
    shift and scale applied to mean and standard deviation alike), so a latent is ``mean + std * eps`` for standard
    normal ``eps``: what a latent cache keeps so that every step still samples.

    Attributes:
        mean: (B, C, h, w) posterior means.
        std: (B, C, h, w) posterior standard deviations.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, eps: torch.Tensor) -> torch.Tensor:
        """Latents ``mean + std * eps`` for standard normal draws ``eps`` of the same shape."""
        return self.mean + self.std * eps.to(self.mean)

    @classmethod
    def of(
        cls, distribution: Any, shift: float | torch.Tensor, factor: float | torch.Tensor, dtype: torch.dtype
    ) -> LatentPosterior:
        """A diffusers ``DiagonalGaussianDistribution`` mapped into the latent space ``(z - shift) * factor``.

        Args:
            distribution: the VAE encoder's posterior (``mean``, ``std``).
            shift: subtracted from the VAE's latents (a number, or per channel (1, C, 1, 1)).
            factor: then multiplied (a number, or per channel).
            dtype: the dtype of the result.
        """
        return cls(((distribution.mean - shift) * factor).to(dtype), (distribution.std * factor).to(dtype))


@dataclass(frozen=True)
class Capabilities:
    """What a family offers the methods, declared rather than discovered.

    Attributes:
        lora_components: the components LoRA may adapt (never a T5 encoder), the denoiser first.
        token_encoders: the text encoders that take new tokens (textual inversion), in embedding-file order;
            empty when the family does not support new tokens.
        embedding_keys: the keys of a multi-encoder embedding file (``clip_l``, ``clip_g``), one per token encoder;
            empty for one encoder, whose file is keyed by the placeholder.
        vae_dtype: the dtype the VAE must run in whatever the rest runs in (SDXL's VAE overflows in fp16); None
            follows the rest.
        block_types: names of the denoiser's repeated block classes (the units FSDP wraps).
        pixel_multiple: the side of a training image must be a multiple of this many pixels: the VAE's downsampling
            factor (8), times the latent patch the denoiser reads as one token where it packs latents (Flux: 2).
    """

    lora_components: tuple[str, ...]
    token_encoders: tuple[str, ...] = ()
    embedding_keys: tuple[str, ...] = ()
    vae_dtype: torch.dtype | None = None
    block_types: tuple[str, ...] = ()
    pixel_multiple: int = 8


def meta_component(component_class: type[nn.Module], source: str, subfolder: str, revision: str | None) -> nn.Module:
    """A diffusers or transformers model built from its config alone on the meta device: its parameters have their
    shapes and dtypes (a transformers model's saved ``dtype``, as ``from_pretrained`` keeps it) but no storage."""
    if issubclass(component_class, PreTrainedModel):
        config = component_class.config_class.from_pretrained(source, subfolder=subfolder, revision=revision)
        with torch.device("meta"):
            return component_class._from_config(config, dtype=getattr(config, "dtype", None))
    config = component_class.load_config(source, subfolder=subfolder, revision=revision)
    with torch.device("meta"):
        return component_class.from_config(config)


class ModelFamily(nn.Module, ABC):
    """A family of text-to-image models (SD 1.x/2.x, SDXL, SD3, ...): how it loads, encodes, noises and samples.

    The family owns its components as child modules (named as in the family's diffusers pipeline) once
    :meth:`load` has run, so a fine-tuner sees one module tree and a pipeline can be assembled from the live weights
    without a copy. Methods (LoRA, full fine-tuning, textual inversion) reach the denoiser and the text encoders
    through :attr:`denoiser` and :meth:`text_encoders` and never depend on the family's internals.
    """

    #: name of the denoiser component in the pipeline (``unet`` or ``transformer``)
    denoiser_name: ClassVar[str]
    #: names of the text-encoder components, in pipeline order
    text_encoder_names: ClassVar[tuple[str, ...]]
    #: names of the tokenizer components, one per text encoder and in the same order
    tokenizer_names: ClassVar[tuple[str, ...]]
    #: the diffusers pipeline class that samples from, and saves LoRA files for, this family
    pipeline_class: ClassVar[type[DiffusionPipeline]]
    #: what the family offers the methods (LoRA components, new tokens, VAE dtype, block types)
    capabilities: ClassVar[Capabilities]

    #: the pipeline argument whose default is the family's usual guidance scale (see :meth:`guidance_options`)
    guidance_parameter: ClassVar[str] = "guidance_scale"

    #: the family's forward process and sampler (a child module set by :meth:`load`)
    noise_schedule: nn.Module

    def __init__(
        self, pretrained_model_name_or_path: str, revision: str | None = None, variant: str | None = None
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:<name>``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``fp16``.
        """
        super().__init__()
        self.pretrained_model_name_or_path = pretrained_model_name_or_path
        self.revision = revision
        self.variant = variant
        self.is_loaded = False
        #: False: :meth:`load` builds the denoiser from its config on the meta device, without reading its weights
        #: (a sharded run's ranks other than 0, whose shards come from rank 0)
        self.load_denoiser_weights = True
        #: False: :meth:`load` builds every component from its config on the meta device, reading no weights at all
        #: (a memory plan, :mod:`sdft.memory`)
        self.load_weights = True

    @property
    def denoiser(self) -> nn.Module:
        """The network that predicts noise, velocity or flow: the main target of every method."""
        return getattr(self, self.denoiser_name)

    def text_encoders(self) -> dict[str, nn.Module]:
        """The text encoders by pipeline component name."""
        return {name: getattr(self, name) for name in self.text_encoder_names}

    def components(self, text_encoders: bool) -> dict[str, nn.Module]:
        """The denoiser and, if ``text_encoders``, the text encoders that may train (``capabilities.lora_components``:
        never a T5): what a method trains, by component name."""
        names = self.capabilities.lora_components if text_encoders else (self.denoiser_name,)
        return {name: getattr(self, name) for name in names}

    def token_encoders(self) -> dict[str, nn.Module]:
        """The text encoders that take new tokens (``capabilities.token_encoders``), in embedding-file order."""
        return {name: getattr(self, name) for name in self.capabilities.token_encoders}

    def tokenizers(self) -> dict[str, Any]:
        """Each text encoder's tokenizer, keyed by the text encoder's component name."""
        return {
            encoder: getattr(self, name)
            for encoder, name in zip(self.text_encoder_names, self.tokenizer_names, strict=True)
        }

    def check_source(self) -> None:
        """Refuse, before anything loads, a model path that is a local path but not a folder (a hub id has one
        ``/``; a path starts with ``.``, ``/`` or ``~`` or has more)."""
        source, key = (
            self.pretrained_model_name_or_path,
            "model.init_args.family.init_args.pretrained_model_name_or_path",
        )
        path = Path(source).expanduser()
        if path.is_file():
            raise UserError(f"{key}: {source} is a file; give the base model's diffusers folder or hub id")
        if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
            raise UserError(
                f"{key}: {source} does not exist; give a diffusers model folder, a hub id or a builtin: model"
            )

    def check_resolution(self, resolution: int, key: str = "data.resolution") -> None:
        """Refuse a training side that the family's latents cannot tile (``capabilities.pixel_multiple``), before
        anything loads.

        Args:
            resolution: the side of the square training images (``data.resolution``), or of an aspect-ratio bucket,
                in pixels.
            key: the config key that set it, quoted in the error.
        """
        multiple = self.capabilities.pixel_multiple
        if resolution % multiple:
            nearest = max(multiple, multiple * round(resolution / multiple))
            raise UserError(
                f"{key} must be a multiple of {multiple} for {type(self).__name__} (its VAE's factor times "
                f"its latent patch), got {resolution}; use e.g. {nearest}"
            )

    def source(self) -> dict[str, str | None]:
        """What identifies the base weights (path or hub id, revision, variant): equal sources, equal models.

        A family whose other options change the base model's samples adds them.
        """
        return {
            "pretrained_model_name_or_path": self.pretrained_model_name_or_path,
            "revision": self.revision,
            "variant": self.variant,
        }

    @abstractmethod
    def load(self) -> None:
        """Load every component from ``pretrained_model_name_or_path`` (all frozen); set ``is_loaded``."""

    def load_components(self, source: str, classes: Mapping[str, type]) -> None:
        """Load each named component from its subfolder of ``source`` and set it as an attribute, in order.

        Every component is read at the family's revision; weights (not tokenizers) also at its variant. The
        denoiser is built on the meta device from its config alone when :attr:`load_denoiser_weights` is False.

        Args:
            source: the resolved diffusers folder or hub id.
            classes: the class of each component, by pipeline component name.
        """
        from sdft.downloads import LOCAL_MODEL, weights_fetched

        key = "model.init_args.family.init_args.pretrained_model_name_or_path"
        for name, component_class in classes.items():
            with weights_fetched(f"{key} {self.pretrained_model_name_or_path} ({name})", LOCAL_MODEL):
                options = {"revision": self.revision}
                weighted = issubclass(component_class, nn.Module)
                if weighted and not (self.load_weights and (name != self.denoiser_name or self.load_denoiser_weights)):
                    setattr(self, name, meta_component(component_class, source, name, self.revision))
                    continue
                if not issubclass(component_class, PreTrainedTokenizerBase):
                    options["variant"] = self.variant
                setattr(self, name, component_class.from_pretrained(source, subfolder=name, **options))

    def finish_loading(self) -> None:
        """Freeze every component and mark the family loaded: the last step of :meth:`load`."""
        self.requires_grad_(False)
        self.is_loaded = True

    @abstractmethod
    def default_lora_targets(self, component: str) -> list[str]:
        """Module names that LoRA adapts in ``component`` when the user names none."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Prompts (already rewritten by the method) -> what the text encoders make of them: named tensors with the
        batch first, a function of the prompts and the text encoders alone (so they can be cached while the
        encoders are frozen). Gradients flow if an encoder trains."""

    def condition(self, prompt_embeddings: dict[str, torch.Tensor], batch: Batch) -> Conditioning:
        """Prompt embeddings and the rest of a batch -> the denoiser's conditioning; the embeddings as they are
        unless the family also conditions on the images' geometry (SDXL's size and crop).

        Args:
            prompt_embeddings: :meth:`encode_prompts` of the batch's prompts.
            batch: ``pixel_values`` (B, 3, H, W) and each example's ``original_size`` and ``crop_top_left`` (B, 2).
        """
        return Conditioning(dict(prompt_embeddings))

    def encode_conditioning(self, batch: Batch) -> Conditioning:
        """A batch -> the denoiser's conditioning: :meth:`condition` of :meth:`encode_prompts`.

        Args:
            batch: ``prompts`` (B strings, already rewritten by the method), ``pixel_values`` (B, 3, H, W), and
                each example's ``original_size`` and ``crop_top_left`` (B, 2) as (height, width) / (top, left).
        """
        return self.condition(self.encode_prompts(list(batch["prompts"])), batch)

    @abstractmethod
    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        """Images (B, 3, H, W) in [-1, 1] -> the VAE's posterior in the denoiser's latent space, in the dtype of
        ``pixels`` (the VAE itself runs in its own dtype): :meth:`vae_posterior` with the family's scaling."""

    def vae_posterior(
        self, pixels: torch.Tensor, shift: float | torch.Tensor, factor: float | torch.Tensor
    ) -> LatentPosterior:
        """Run the VAE encoder on images in its own dtype (outside any autocast when ``capabilities.vae_dtype`` pins
        it) and map its posterior into the latent space ``(z - shift) * factor``, in the dtype of ``pixels``."""
        pinned = self.capabilities.vae_dtype is not None and not pixels.is_meta  # autocast knows no meta device
        with torch.autocast(pixels.device.type, enabled=False) if pinned else contextlib.nullcontext():
            distribution = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
            return LatentPosterior.of(distribution, shift, factor, pixels.dtype)

    def noise_latents(self, latents: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> NoisedLatents:
        """The forward process of the family's :attr:`noise_schedule`: clean latents, standard normal noise of
        their shape and noise levels (B,) in [0, 1) -> the denoiser's input, its target and the loss weight."""
        return self.noise_schedule.noise_latents(latents, noise, levels)

    @abstractmethod
    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        """Run the denoiser; the output is directly comparable with ``noised.target``."""

    @abstractmethod
    def pipeline(self) -> DiffusionPipeline:
        """A diffusers pipeline over the live components (adapters included), for sampling."""

    @classmethod
    def guidance_options(cls, guidance_scale: float, batch_size: int) -> dict[str, Any]:
        """The keyword arguments that ask the family's pipeline for ``guidance_scale`` on a batch of ``batch_size``
        prompts: ``guidance_scale`` itself (classifier-free guidance, or Flux's distilled guidance) unless the
        pipeline spells guidance otherwise (Qwen-Image's ``true_cfg_scale`` with a negative prompt)."""
        return {"guidance_scale": guidance_scale}

    def sampling_options(self) -> dict[str, Any]:
        """Keyword arguments for every call of the family's pipeline, so sampling reads prompts as training does
        (e.g. the T5 prompt length); none unless the family has such settings."""
        return {}

    def live_pipeline(self, **options: Any) -> DiffusionPipeline:
        """The family's :attr:`pipeline_class` over the live components it names in its signature and a fresh
        sampler: :meth:`pipeline` for a family whose pipeline takes nothing else.

        Args:
            options: the pipeline's further arguments (FLUX.2 [klein]'s ``is_distilled``).
        """
        expected, _ = self.pipeline_class._get_signature_keys(self.pipeline_class)
        components = {name: getattr(self, name) for name in expected if name != "scheduler"}
        return self.pipeline_class(scheduler=self.noise_schedule.sampler(), **components, **options)

    @abstractmethod
    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> DiffusionPipeline:
        """A fresh pipeline of the base weights read from the source, apart from the live components.

        Used where the untouched base model must sample whatever the method has done to the live one, e.g. to
        generate class images for prior preservation.
        """

    def pretrained_pipeline(self, device: torch.device, dtype: torch.dtype | None, **options: Any) -> DiffusionPipeline:
        """The family's :attr:`pipeline_class` read from the source at its revision and variant, in ``dtype`` on
        ``device``, its progress bar off: the common part of :meth:`base_pipeline`.

        Args:
            device: where the pipeline goes.
            dtype: the dtype of its weights (None: diffusers' default).
            options: further ``from_pretrained`` arguments (components to replace or drop, pipeline options).
        """
        pipeline = self.pipeline_class.from_pretrained(
            resolve(self.pretrained_model_name_or_path),
            revision=self.revision,
            variant=self.variant,
            dtype=dtype,
            **options,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline.to(device)
