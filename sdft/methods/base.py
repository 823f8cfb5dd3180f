"""The shared training step: every method trains some part of a model family with the family's objective."""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image

from sdft.assets import cache_dir
from sdft.batches import Batch, cat_batches, split_prior
from sdft.caching import EncodingCache, encoder_identity
from sdft.errors import UserError
from sdft.families.base import Conditioning, LatentPosterior, ModelFamily, NoisedLatents
from sdft.faults import (
    NONFINITE_ACTIONS,
    all_finite,
    check_finite_weights,
    first_nonfinite,
    nonfinite_step_message,
    nonfinite_weights_error,
)
from sdft.files import write_folder_atomic
from sdft.interop.model_card import (
    MethodFacts,
    ModelCard,
    RunFacts,
    place_samples,
    read_run_facts,
    write_model_card,
)
from sdft.methods.run_notes import RunNotes, SizedData, SubjectData, tensors_digest
from sdft.objectives import (
    latent_loss_mask,
    masked_mse,
    offset_noise,
    per_example_mse,
    perturbed_noise,
    prior_preservation_loss,
    step_seed,
)
from sdft.offloading import BlockOffload
from sdft.sharding import ShardedStrategy, shard_family
from sdft.speed import NO_SWITCHES, SpeedOptions, apply_speed_options, offload_blocks, quantize_frozen

ParameterGroups = list[dict[str, Any]]

#: generator streams of an example's draws: instance and class (prior) examples at one run position draw apart,
#: and validation examples apart from both
INSTANCE_STREAM, PRIOR_STREAM, VALIDATION_STREAM = 0, 1, 2
#: generator key of the initial values of new weights (adapters, token embeddings)
INIT_STREAM = 3
#: what a run may cache while the encoders are frozen: nothing, in memory, or also on disk for later runs
CACHE_MODES = ("off", "memory", "disk")


@dataclass
class ExampleDraws:
    """The random draws of one example (or, joined, of a batch's examples), each from the example's own generator.

    Attributes:
        eps: the posterior sample's standard normal draw (C, h, w), or (B, C, h, w) joined.
        levels: a uniform noise level per repeat (repeats,), or (B * repeats,).
        noise: standard normal noise per repeat (repeats, C, h, w), or (B * repeats, C, h, w).
        offsets: the noise offset's standard normal draws (repeats, C, 1, 1); None when there is no noise offset.
        perturbations: input perturbation's standard normal draws, the shape of ``noise``; None when there is none.
    """

    eps: torch.Tensor
    levels: torch.Tensor
    noise: torch.Tensor
    offsets: torch.Tensor | None = None
    perturbations: torch.Tensor | None = None

    @classmethod
    def join(cls, draws: list[ExampleDraws]) -> ExampleDraws:
        """The draws of consecutive examples as one batch's: ``eps`` stacked, the per-repeat draws joined."""
        first = draws[0]
        offsets = None if first.offsets is None else torch.cat([d.offsets for d in draws])
        perturbations = None if first.perturbations is None else torch.cat([d.perturbations for d in draws])
        return cls(
            torch.stack([d.eps for d in draws]),
            torch.cat([d.levels for d in draws]),
            torch.cat([d.noise for d in draws]),
            offsets,
            perturbations,
        )


class DiffusionFineTuner(LightningModule):
    """Base of every method: owns the family, the seeded training step, validation loss and slim checkpoints.

    A method (subclass) fills in two hooks: :meth:`configure_trainable` decides what trains, and
    :meth:`write_export` writes the trained result in the format its consumers load. It may also override
    :meth:`parameter_groups` (per-part learning rates), :meth:`rewrite_prompts` (e.g. spelling a new word as its
    tokens) and :meth:`card_facts` (what the export's model card says about the method and its files). The family,
    not the method, turns a batch into conditioning (:meth:`ModelFamily.encode_conditioning`). Checkpoints hold only
    trainable tensors plus the optimizer, scheduler and loop state; the frozen base model is reloaded from its source
    on resume. Every export carries a model card (``README.md``) that states what its run folder tells.

    Batches with an ``is_prior`` mask (prior preservation, see :class:`sdft.data.SubjectDataModule`) are trained on
    ``instance loss + prior_loss_weight * prior loss``; both parts are logged.
    """

    #: whether the trained weights are an adapter applied at a strength (see :meth:`adapter_scale`)
    scalable = False

    def __init__(
        self,
        family: ModelFamily,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        gradient_checkpointing: bool = False,
        seed: int = 0,
        validation_noise_levels: int = 4,
        prior_loss_weight: float | None = None,
        cache: str = "memory",
        speed: SpeedOptions = NO_SWITCHES,
        noise_offset: float = 0.0,
        input_perturbation: float = 0.0,
        nonfinite: str = "stop",
    ) -> None:
        """
        Args:
            family: the model family and base weights, e.g. ``sdft.families.StableDiffusion``.
            optimizer: optimizer class and its arguments (lr, weight decay, ...); gets the trainable parameters only.
            lr_scheduler: learning-rate scheduler, stepped every optimizer step; None keeps the rate constant.
            gradient_checkpointing: recompute denoiser activations in the backward pass to save memory.
            seed: seeds the noise, timesteps and posterior samples of every step (a function of seed and step).
            validation_noise_levels: each validation image is scored at this many evenly spaced noise levels.
            prior_loss_weight: weight of the class-image (prior preservation) loss; None means 1 when the data has
                class images. Setting it for data without class images is an error.
            cache: ``memory`` encodes each distinct centre-cropped image (its VAE posterior) and each prompt once
                while the VAE and text encoders are frozen, and reuses them; ``disk`` also keeps them under
                ``$SDFT_CACHE/encodings`` for later runs of the same model; ``off`` encodes every step. The loss
                is the same either way.
            speed: memory and speed switches (frozen weights in bf16, channels-last, compile, attention backend);
                see :class:`sdft.speed.SpeedOptions`. Applied when the model is set up for a trainer.
            noise_offset: shift each training example's noise by this times a standard normal draw per channel
                (offset noise, Guttenberg 2023), e.g. 0.05, so the model can learn overall brightness; 0 turns it off.
            input_perturbation: noise each training example's input with its noise plus this times another standard
                normal draw, while the target keeps the unperturbed noise (Ning et al. 2023), e.g. 0.1; 0 turns it
                off. Neither option touches validation, which stays a fixed measurement.
            nonfinite: a step whose loss or gradients hold a nan or an infinity: ``stop`` ends the fit before the
                weights change, naming the step; ``skip`` drops the step (no update) and counts it in
                ``train/skipped_steps``. Under ``16-mixed`` precision the grad scaler skips overflowing gradients
                itself; the loss is still checked.
        """
        super().__init__()
        self.family = family
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.gradient_checkpointing = gradient_checkpointing
        self.seed = seed
        self.validation_noise_levels = validation_noise_levels
        if prior_loss_weight is not None and prior_loss_weight < 0:
            raise UserError(f"model.init_args.prior_loss_weight must be >= 0, got {prior_loss_weight}")
        self.prior_loss_weight = prior_loss_weight
        if cache not in CACHE_MODES:
            raise UserError(f"model.init_args.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
        self.cache = cache
        self.caches: dict[str, EncodingCache] = {}
        self.speed = speed
        #: the frozen text encoders wait in CPU memory (``speed.offload_text_encoders``, after the prompts are cached)
        self.text_encoders_offloaded = False
        #: the denoiser's blocks whose frozen weights wait in CPU memory (``speed.offload_blocks``), once set up
        self.block_offload: BlockOffload | None = None
        for key, value in (("noise_offset", noise_offset), ("input_perturbation", input_perturbation)):
            if not value >= 0:
                raise UserError(f"model.init_args.{key} must be >= 0 (0 turns it off), got {value}")
        self.noise_offset = noise_offset
        self.input_perturbation = input_perturbation
        if nonfinite not in NONFINITE_ACTIONS:
            raise UserError(
                f"model.init_args.nonfinite must be one of {', '.join(NONFINITE_ACTIONS)}, got {nonfinite!r}"
            )
        self.nonfinite = nonfinite
        self.skipped_steps = 0  # steps dropped for a non-finite loss or gradient (nonfinite: skip)
        self.loss_faults: list[torch.Tensor] = []  # whether each loss since the last optimizer step was non-finite
        self.strict_loading = False  # checkpoints omit the frozen base model
        #: what an export outside a fit says about its run (``sdft export`` sets it from the run's config.yaml)
        self.run_notes = RunNotes()
        self.fit_run_dir: Path | None = None  # the trainer's log folder, once attached to one
        #: the global step and digest of the trained tensors of the checkpoint loaded last (see :meth:`weights_step`)
        self.loaded_checkpoint: tuple[int, str] | None = None

    # -- hooks for methods -------------------------------------------------------------------------------------

    def check(self) -> None:
        """Refuse settings that can be checked before the family loads (one-line errors naming the key): the
        optimizer's learning rate. A method extends it with what it needs of the family."""
        check_learning_rate(self.optimizer)

    @abstractmethod
    def configure_trainable(self) -> None:
        """Make the trained parameters (and only those) require gradients, adding adapters if the method has any."""

    @abstractmethod
    def write_export(self, directory: Path) -> Path:
        """Write the trained result into the empty folder ``directory``; return the main file or folder written."""

    def parameter_groups(self) -> ParameterGroups:
        """The optimizer's parameter groups; one group of every trainable parameter unless a method splits them
        (e.g. to give the text encoder its own learning rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def rewrite_prompts(self, prompts: list[str]) -> list[str]:
        """The prompts as the text encoders should read them; unchanged unless a method adds words."""
        return prompts

    def card_facts(self) -> MethodFacts:
        """What the model card of an export says about the method: its name, tags and settings, the files it writes
        and the lines that load them into the base model's pipeline."""
        return MethodFacts(type(self).__name__)

    def conditioning(self, batch: Batch) -> Conditioning:
        """A batch -> the denoiser's conditioning, by the family, from the method's rewritten prompts (their
        embeddings from the prompt cache while the text encoders are frozen)."""
        prompts = self.rewrite_prompts(list(batch["prompts"]))
        return self.family.condition(self.prompt_embeddings(prompts), batch)

    def prompt_embeddings(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """What the text encoders make of (rewritten) prompts: from the prompt cache while the encoders are frozen,
        bringing offloaded encoders back to the accelerator for the prompts it lacks."""
        cache = None if self.text_encoders_train() else self.encoding_cache("prompts")
        if cache is None:
            return self.family.encode_prompts(prompts)

        def encode(rows: list[int]) -> dict[str, torch.Tensor]:
            with self.text_encoders_on_device():
                return self.family.encode_prompts([prompts[row] for row in rows])

        return cache.encode(prompts, encode, self.device)

    @contextlib.contextmanager
    def text_encoders_on_device(self) -> Iterator[None]:
        """The offloaded text encoders (``speed.offload_text_encoders``) on the model's device for the block, back in
        CPU memory after it; nothing moves otherwise."""
        if not self.text_encoders_offloaded:
            yield
            return
        encoders = list(self.family.text_encoders().values())
        for encoder in encoders:
            encoder.to(self.device)
        try:
            yield
        finally:
            for encoder in encoders:
                encoder.to("cpu")

    def offload_text_encoders(self) -> None:
        """Encode every prompt the data module can produce into the prompt cache, then move the frozen text encoders
        to CPU memory (``speed.offload_text_encoders``), saying how much they held."""
        if self.cache == "off" or self.text_encoders_train():
            raise UserError(
                "model.init_args.speed.offload_text_encoders needs frozen text encoders and the prompt cache "
                "(model.init_args.cache: memory or disk): set offload_text_encoders: false, or train no text encoder"
            )
        if self.trainer.world_size > 1:
            raise UserError(
                "model.init_args.speed.offload_text_encoders works in single-process fits for now; set it to false "
                f"for this run of {self.trainer.world_size} processes"
            )
        data = self.trainer.datamodule
        prompts = sorted(data.training_prompts()) if hasattr(data, "training_prompts") else []
        # under the training precision's autocast, as training encodes: the cache's entries are a function of it (the
        # cache encodes each new prompt on its own, so one call holds no more than one prompt's activations)
        if prompts:
            with torch.no_grad(), self.trainer.precision_plugin.forward_context():
                self.prompt_embeddings(self.rewrite_prompts(prompts))
        encoders = list(self.family.text_encoders().values())
        size = sum(tensor.numel() * tensor.element_size() for e in encoders for tensor in e.state_dict().values())
        for encoder in encoders:
            encoder.to("cpu")
        self.text_encoders_offloaded = True
        rank_zero_info(f"{len(prompts)} prompts cached; the text encoders ({size / 2**30:.2f} GiB) wait in CPU memory")

    def text_encoders_train(self) -> bool:
        """Whether any text-encoder weight (a LoRA, a new token's embedding) is being trained."""
        return any(p.requires_grad for encoder in self.family.text_encoders().values() for p in encoder.parameters())

    def encoding_cache(self, kind: str) -> EncodingCache | None:
        """The run's cache of ``latents`` (VAE posteriors) or ``prompts`` (prompt embeddings), made on first use;
        None when ``cache`` is off."""
        if self.cache == "off":
            return None
        if kind not in self.caches:
            if self.cache == "memory":
                self.caches[kind] = EncodingCache()
            else:
                encoders = [self.family.vae] if kind == "latents" else list(self.family.text_encoders().values())
                options = {} if kind == "latents" else self.family.sampling_options()
                options["precision"] = self.trainer.precision  # autocast changes the encodings
                identity = encoder_identity(kind, self.family, encoders, options)
                self.caches[kind] = EncodingCache.on_disk(cache_dir() / "encodings", identity)
        return self.caches[kind]

    def export(self, directory: str | Path, average: str | None = None) -> Path:
        """Write the trained result where its consumers load it (a diffusers LoRA file, a pipeline, ...), with a model
        card (``README.md``, and the step's samples as ``samples.png`` where the run has them).

        The export is written beside ``directory`` and renamed into place, so an existing export is replaced only
        by a complete one; weights holding a nan or an infinity are refused and nothing is written. Returns the main
        file or folder written.

        Args:
            directory: the export folder.
            average: how the weights were averaged (e.g. ``the exponential moving average ...``) when they are no
                step's own; the card then shows no step's evaluation or samples.
        """

        def build(staging: Path) -> Path:
            written = self.write_export(staging).relative_to(staging)
            write_model_card(staging, self.model_card(staging, average))
            return written

        directory = Path(directory)
        check_finite_weights(self.trainable_state_dict(), f"the export {directory}", self.weights_step())
        return directory / write_folder_atomic(directory, build)

    def model_card(self, directory: Path, average: str | None = None) -> ModelCard:
        """The facts of the card of the export in ``directory`` (its files written): the method's, the run's notes
        and what the run folder holds about the step of the weights; the step's samples are put into the folder."""
        notes, step = self.current_run_notes(), self.weights_step()
        run = read_run_facts(notes.run_dir, None if average else step) if notes.run_dir else RunFacts()
        facts = self.card_facts()
        files = {name: use for name, use in facts.files.items() if (directory / name).exists()}
        return ModelCard(
            base_model=self.family.pretrained_model_name_or_path,
            pipeline=self.family.pipeline_class.__name__,
            method=replace(facts, files=files),
            step=step,
            title=notes.title,
            instance_prompt=notes.trigger,
            resolution=notes.resolution,
            average=average,
            run=run,
            image=place_samples(run, directory),
        )

    def current_run_notes(self) -> RunNotes:
        """What the trainer and data module tell about the run during a fit, else :attr:`run_notes`."""
        if self._trainer is None:
            return self.run_notes
        data, logger = self.trainer.datamodule, self.trainer.logger
        return RunNotes(
            resolution=data.resolution if isinstance(data, SizedData) else None,
            trigger=data.instance_prompt if isinstance(data, SubjectData) else None,
            title=logger.name if logger is not None else None,
            run_dir=self.fit_run_dir,
        )

    def weights_step(self) -> int:
        """The training step of the live trained weights: the global step of the checkpoint loaded last while they
        are still its tensors (e.g. the best step, exported from its checkpoint), else the trainer's."""
        if self.loaded_checkpoint is not None:
            step, digest = self.loaded_checkpoint
            if tensors_digest(self.trainable_state_dict()) == digest:
                return step
        return self.global_step

    # -- model ---------------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank makes it here
        self.fit_run_dir = Path(log_dir) if log_dir else None  # (a logger may have no folder)

    def configure_model(self) -> None:
        if self.family.is_loaded:
            return
        sharded = self._trainer is not None and isinstance(self.trainer.strategy, ShardedStrategy)
        if sharded and self.trainer.global_rank != 0:
            self.family.load_denoiser_weights = False  # its shards come from rank 0 (shard_family)
        if self._trainer is not None and self.speed.offload_blocks is not None:
            check_one_process("offload_blocks", self.trainer.world_size, sharded)
        self.family.load()
        if self._trainer is not None and self.speed.quantize is not None:
            if sharded:
                raise UserError(
                    f"model.init_args.speed.quantize {self.speed.quantize} does not shard yet: set it to null, or "
                    "train on one device"
                )
            quantize_frozen(self.family, self.speed.quantize)  # before adapters wrap the linear layers
        with torch.random.fork_rng(devices=[]):  # new weights (adapters, tokens) are a function of the seed alone
            torch.manual_seed(step_seed(self.seed, INIT_STREAM))
            self.configure_trainable()
        if self.gradient_checkpointing:
            self.family.denoiser.enable_gradient_checkpointing()
        if self._trainer is not None:  # a checkpoint read for an export keeps the base weights as loaded
            apply_speed_options(self.family, self.speed, self.trainer.precision)
            if sharded:
                shard_family(self.family, self.device_mesh["data_parallel"])
            if self.speed.offload_blocks is not None:  # last: the model is as it will train
                self.block_offload = offload_blocks(self.family, self.speed.offload_blocks)

    def _apply(self, fn: Any, recurse: bool = True) -> DiffusionFineTuner:
        """Every move or cast of the model (``.to(device)``, ``.to(dtype)``, ``.cpu()``) passes through here: the
        offloaded blocks' frozen weights (``speed.offload_blocks``) stay in CPU memory, taking the new dtype."""
        if self.block_offload is None:
            return super()._apply(fn, recurse)
        with self.block_offload.conversion():
            return super()._apply(fn, recurse)

    def on_fit_start(self) -> None:
        """Put the VAE back in the dtype its family pins (SDXL: float32) after a ``-true`` precision (``bf16-true``)
        converted the whole module; start the fit with no loss awaiting its non-finite check."""
        self.loss_faults = []
        vae_dtype = self.family.capabilities.vae_dtype
        if vae_dtype is not None:
            self.family.vae.to(vae_dtype)
        if self.speed.offload_text_encoders:
            self.offload_text_encoders()

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint holds: every parameter that requires a gradient, by state-dict key."""
        return {name: param.detach() for name, param in self.named_parameters() if param.requires_grad}

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer(self.parameter_groups())
        if self.lr_scheduler is None:
            return {"optimizer": optimizer}
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.lr_scheduler(optimizer), "interval": "step"},
        }

    # -- steps ---------------------------------------------------------------------------------------------------

    def posterior(self, batch: Batch) -> LatentPosterior:
        """The VAE posterior of each image of a batch, from the latent cache where the image was seen before."""
        pixels = batch["pixel_values"]
        cache = self.encoding_cache("latents")
        if cache is None or "image_key" not in batch:
            return self.family.encode_posterior(pixels)
        keys = [key or None for key in batch["image_key"]]
        encodings = cache.encode(keys, lambda rows: vars(self.family.encode_posterior(pixels[rows])), pixels.device)
        return LatentPosterior(**encodings)

    def noised_latents(
        self, batch: Batch, stream: int, levels: torch.Tensor | None = None, repeats: int = 1
    ) -> NoisedLatents:
        """A batch's images -> noised latents and targets. Each example's randomness (posterior sample, noise level,
        noise) comes from a generator keyed by its run position and ``stream`` alone, so an example draws the same
        whatever the batch size, accumulation, device count or resume. Training examples get the noise offset, and
        an input made from perturbed noise with the target and weight of the unperturbed noise, when so configured.
        A batch with masks (``loss_mask``) gives each latent pixel the mean weight of the pixels it stands for.

        Args:
            batch: ``pixel_values`` (B, 3, H, W) in [-1, 1], each example's ``position`` and, for masked images,
                each pixel's loss weight ``loss_mask`` (B, 1, H, W).
            stream: separates draws of the same position (instance, class and validation examples).
            levels: noise levels in [0, 1) for each of the B * repeats examples; None draws them.
            repeats: noise each image this many times (consecutive rows), e.g. at several fixed levels.
        """
        posterior = self.posterior(batch)
        shape = posterior.mean.shape[1:]
        positions = batch["position"].tolist()
        drawn = ExampleDraws.join([self.example_draws(int(position), stream, shape, repeats) for position in positions])
        latents = posterior.sample(drawn.eps).repeat_interleave(repeats, 0)
        if levels is None:
            levels = drawn.levels
        noise = drawn.noise
        if drawn.offsets is not None:
            noise = offset_noise(noise, self.noise_offset, drawn.offsets)
        noised = self.family.noise_latents(latents, noise, levels)
        if "loss_mask" in batch:
            mask = latent_loss_mask(batch["loss_mask"], latents.shape[-2:])
            noised = replace(noised, loss_mask=mask.repeat_interleave(repeats, 0))
        if drawn.perturbations is None:
            return noised
        perturbed = perturbed_noise(noise, self.input_perturbation, drawn.perturbations)
        return replace(noised, noisy=self.family.noise_latents(latents, perturbed, levels).noisy)

    def example_draws(self, position: int, stream: int, shape: torch.Size, repeats: int) -> ExampleDraws:
        """One example's random draws, in order: the posterior sample's standard normal ``eps`` (shape), then per
        repeat a uniform noise level and standard normal noise; then, for training examples only (not the validation
        stream's) and only when the option is on, the noise offset's draws (repeats, C, 1, 1) and input
        perturbation's (repeats, *shape)."""
        generator = self.make_generator(self.seed, position, stream)
        eps = torch.randn(shape, generator=generator, device=self.device)
        levels, noise = [], []
        for _ in range(repeats):
            levels.append(torch.rand(1, generator=generator, device=self.device))
            noise.append(torch.randn(shape, generator=generator, device=self.device))
        drawn = ExampleDraws(eps, torch.cat(levels), torch.stack(noise))
        if stream == VALIDATION_STREAM:
            return drawn
        if self.noise_offset:
            drawn.offsets = torch.randn((repeats, shape[0], 1, 1), generator=generator, device=self.device)
        if self.input_perturbation:
            drawn.perturbations = torch.randn((repeats, *shape), generator=generator, device=self.device)
        return drawn

    def training_inputs(self, batch: Batch) -> tuple[NoisedLatents, Conditioning, list[int]]:
        """A training batch -> the denoiser's inputs and targets, its conditioning, and the sizes of the batch's
        parts (instance examples, then class examples when the batch has an ``is_prior`` mask)."""
        parts = split_prior(batch) if "is_prior" in batch else (batch,)
        streams = (INSTANCE_STREAM, PRIOR_STREAM)[: len(parts)]
        noised = [self.noised_latents(part, stream) for part, stream in zip(parts, streams, strict=True)]
        return NoisedLatents.cat(noised), self.conditioning(cat_batches(parts)), [len(p["prompts"]) for p in parts]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, parts = self.training_loss(batch)
        for name, losses in parts.items():
            self.log(f"train/{name}_loss", losses.mean(), batch_size=len(losses), sync_dist=True)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["prompts"]), sync_dist=True)
        self.loss_faults.append(~torch.isfinite(loss.detach()))
        return loss

    def training_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A training batch's loss, and with prior preservation its parts' per-example losses (``instance``,
        ``prior``); with prior preservation the loss is ``instance loss + prior_loss_weight * prior loss``."""
        noised, conditioning, sizes = self.training_inputs(batch)
        if len(sizes) == 1 and self.prior_loss_weight is not None:
            raise UserError(
                "model.init_args.prior_loss_weight is set but the batches hold no class images: set "
                "data.class_prompt to turn prior preservation on, or drop prior_loss_weight"
            )
        losses = weighted_losses(self.family.predict(noised, conditioning), noised)
        if len(sizes) == 1:
            return losses.mean(), {}
        instance, prior = losses.split(sizes)
        weight = 1.0 if self.prior_loss_weight is None else self.prior_loss_weight
        return prior_preservation_loss(instance, prior, weight), {"instance": instance, "prior": prior}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Before the weights change: a step whose loss or gradients are not finite ends the fit or is dropped
        (``nonfinite``); ``train/skipped_steps`` counts the dropped steps, logged from the first one on."""
        fault = self.nonfinite_fault(optimizer)
        if fault is not None and self.nonfinite == "stop":
            raise UserError(nonfinite_step_message(self.global_step + 1, fault))
        if fault is not None:
            for group in optimizer.param_groups:  # a parameter without a gradient is left as it is
                for param in group["params"]:
                    param.grad = None
            self.skipped_steps += 1
            rank_zero_warn(f"step {self.global_step + 1}: {fault}; the step is skipped (nonfinite: skip)")
        if self.skipped_steps:
            self.log("train/skipped_steps", float(self.skipped_steps))

    def nonfinite_fault(self, optimizer: torch.optim.Optimizer) -> str | None:
        """What is not finite in the step about to update the weights, on any rank (every rank decides alike):
        a training loss since the last optimizer step, or a gradient ``optimizer`` is about to apply; None when all
        is finite."""
        faults, self.loss_faults = self.loss_faults, []
        fault = "the training loss is nan or inf" if faults and bool(torch.stack(faults).any()) else None
        if fault is None and self.trainer.precision != "16-mixed":  # float16's grad scaler skips its overflows
            fault = self.nonfinite_gradient(optimizer)
        if self.trainer.strategy.reduce_boolean_decision(fault is not None, all=False):
            return fault or "a loss or gradient on another rank holds nan or inf"
        return None

    def nonfinite_gradient(self, optimizer: torch.optim.Optimizer) -> str | None:
        """Which gradient of those ``optimizer`` is about to apply holds a nan or an infinity; None when none does.
        The parameters are named (a walk over the whole model) only once one is found."""
        grads = [param.grad for group in optimizer.param_groups for param in group["params"]]
        if all_finite([grad for grad in grads if grad is not None]):
            return None
        name = first_nonfinite({n: p.grad for n, p in self.named_parameters() if p.grad is not None})
        return f"the gradient of {name or 'a parameter'} holds nan or inf"

    def validation_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Loss on fixed images at fixed, evenly spaced noise levels and fixed noise: comparable across steps."""
        num_levels, size = self.validation_noise_levels, len(batch["prompts"])
        levels = ((torch.arange(num_levels, device=self.device) + 0.5) / num_levels).repeat(size)
        noised = self.noised_latents(batch, VALIDATION_STREAM, levels, repeats=num_levels)
        conditioning = self.conditioning(batch).repeat_interleave(num_levels)
        loss = weighted_losses(self.family.predict(noised, conditioning), noised).mean()
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        return loss

    def make_generator(self, *keys: int) -> torch.Generator:
        """A generator on this module's device, seeded from integer keys."""
        return torch.Generator(self.device).manual_seed(step_seed(*keys))

    # -- sampling ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        seeds: list[int],
        resolution: int,
        num_inference_steps: int = 25,
        guidance_scale: float = 7.5,
    ) -> list[Image.Image]:
        """One image per (prompt, seed) pair, from the weights in training, in eval mode."""
        pipeline = self.family.pipeline()
        pipeline.set_progress_bar_config(disable=True)
        training = [module for module in self.modules() if module.training]
        self.eval()
        # the training precision's autocast: frozen weights in bf16 (speed.frozen_dtype) run beside float32 ones
        autocast = self.trainer.precision_plugin.forward_context() if self._trainer else contextlib.nullcontext()
        try:
            generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
            with autocast, self.text_encoders_on_device():
                return pipeline(
                    prompt=prompts,
                    generator=generators,
                    height=resolution,
                    width=resolution,
                    num_inference_steps=num_inference_steps,
                    **self.family.guidance_options(guidance_scale, len(prompts)),
                    **self.family.sampling_options(),
                ).images
        finally:
            for module in training:  # each module as it was: train() would recurse into frozen encoders (T5 dropout)
                module.training = True

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trained tensors, and refuse (on every rank) to write them when one is not finite."""
        trainable = self.trainable_state_dict()
        name = first_nonfinite(trainable)
        if self.trainer.strategy.reduce_boolean_decision(name is not None, all=False):
            raise nonfinite_weights_error(name, "a checkpoint", self.trainer.global_step)
        checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items() if key in trainable}
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        if "state_dict" in checkpoint:  # (a sharding strategy loads the weights itself and checks them there)
            self.check_trained_tensors(checkpoint["state_dict"])
            trained = {key: checkpoint["state_dict"][key] for key in self.trainable_state_dict()}
            self.loaded_checkpoint = (checkpoint["global_step"], tensors_digest(trained))

    def check_trained_tensors(self, keys: Iterable[str]) -> None:
        """Refuse a checkpoint whose state-dict ``keys`` lack a tensor this model trains: another method or config
        wrote it."""
        missing = sorted(set(self.trainable_state_dict()) - set(keys))
        if missing:
            raise UserError(
                f"the checkpoint lacks {len(missing)} trained tensors (first: {missing[0]}); it was written by another "
                "method or configuration: resume with the config of the run that wrote it"
            )


def check_one_process(switch: str, processes: int, sharded: bool) -> None:
    """Refuse a speed switch that works in single-process fits only, in a fit of several processes or a sharded one.

    Args:
        switch: the key under ``model.init_args.speed``.
        processes: the trainer's world size.
        sharded: whether the strategy shards the model.
    """
    if processes > 1 or sharded:
        run = f"{processes} processes{', sharded' if sharded else ''}"
        raise UserError(
            f"model.init_args.speed.{switch} works in single-process fits without sharding for now; set it to null "
            f"for this run ({run})"
        )


def check_learning_rate(optimizer: OptimizerCallable) -> None:
    """Refuse an optimizer that torch refuses, or whose learning rate is not positive, by building it over a
    stand-in parameter (the real ones do not exist before the family loads).

    Args:
        optimizer: the method's optimizer callable (``model.init_args.optimizer``).
    """
    configured = getattr(optimizer, "keywords", {})  # a config's optimizer is a partial of its init_args
    if "lr" in configured:
        check_positive_rate(configured["lr"])
    try:
        built = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except ValueError as error:  # torch's own range checks, e.g. "Invalid weight_decay value: -1"
        raise UserError(
            f"model.init_args.optimizer.init_args: {error}; set the optimizer's arguments in range"
        ) from error
    check_positive_rate(built.param_groups[0].get("lr", 1.0))


def check_positive_rate(rate: float | torch.Tensor) -> None:
    """Raise a :class:`UserError` naming ``model.init_args.optimizer.init_args.lr`` unless ``rate`` is positive."""
    if not rate > 0:
        raise UserError(
            f"model.init_args.optimizer.init_args.lr must be positive, got {float(rate)}; e.g. lr: 1e-4 (LoRA) or "
            "5e-6 (full fine-tuning)"
        )


def weighted_losses(prediction: torch.Tensor, noised: NoisedLatents) -> torch.Tensor:
    """Each example's loss: its MSE against the target (weighted per latent pixel where it has a loss mask, see
    :func:`sdft.objectives.masked_mse`), times the family's per-example weight (B,)."""
    if noised.loss_mask is None:
        return per_example_mse(prediction, noised.target) * noised.weight
    return masked_mse(prediction, noised.target, noised.loss_mask) * noised.weight
