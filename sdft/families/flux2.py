"""FLUX.2 [klein] (Black Forest Labs 2026): a Qwen3 language model reads the prompt through its chat template, three
of its hidden layers stacked per token condition a rectified-flow transformer (``Flux2Transformer2DModel``) of
double- and single-stream blocks over the FLUX.2 autoencoder's latents, patchified 2x2 and batch-normalised."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from transformers import AutoProcessor, AutoTokenizer, Mistral3ForConditionalGeneration, Qwen3ForCausalLM

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.families.base import (
    Capabilities,
    Conditioning,
    LatentPosterior,
    ModelFamily,
    NoisedLatents,
    chat_prompts,
)
from sdft.families.rectified_flow import KEY, RectifiedFlowSchedule, flow_objective

#: latent pixels per side patchified into one channel block (and one image token)
PATCH = 2
#: the transformer modules diffusers' ``train_dreambooth_lora_flux2_klein.py`` adapts by default: the double-stream
#: blocks' attention projections of the image stream and every single-stream block's fused input projection; each
#: single block's output projection (``single_transformer_blocks.{i}.attn.to_out``) joins them by its whole name,
#: since its suffix also names a double block's ``to_out`` list (see :meth:`Flux2Klein.default_lora_targets`)
TRANSFORMER_TARGETS = ["to_k", "to_q", "to_v", "to_out.0", "to_qkv_mlp_proj"]


def patchify(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents (B, C, H, W) -> (B, 4C, H/2, W/2), each 2x2 patch's four pixels as channels of one position, a
    channel's four first (``Flux2KleinPipeline._patchify_latents``)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return patches.permute(0, 1, 3, 5, 2, 4).reshape(batch, channels * PATCH * PATCH, height // PATCH, width // PATCH)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """Patchified latents (B, C, h, w) -> image tokens (B, h * w, C) in row-major order."""
    return latents.flatten(2).transpose(1, 2)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image tokens (B, h * w, C) -> (B, C, h, w): the inverse of :func:`pack`."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def position_ids(batch: int, height: int, width: int, length: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The rotary coordinates (time, row, column, sequence) of the image tokens (B, h * w, 4), ``(0, row, column, 0)``
    in row-major order, and of the text tokens (B, L, 4), ``(0, 0, 0, index)``, as the pipeline lays them out."""
    zero = torch.arange(1)
    image = torch.cartesian_prod(zero, torch.arange(height), torch.arange(width), zero)
    text = torch.cartesian_prod(zero, zero, zero, torch.arange(length))
    return image.expand(batch, -1, -1).to(device), text.expand(batch, -1, -1).to(device)


class Flux2Klein(ModelFamily):
    """FLUX.2 [klein] from any diffusers folder, e.g. ``black-forest-labs/FLUX.2-klein-base-4B``.

    The prompt embedding is Qwen3's hidden states at layers 9, 18 and 27 (by default) for every token of the
    chat-templated prompt padded to ``max_sequence_length``, concatenated per token, as
    ``Flux2KleinPipeline.encode_prompt`` makes it. The denoiser's latent space is the VAE's latents patchified 2x2
    and normalised by the VAE's batch-norm statistics, in which the pipeline draws its noise: :meth:`encode_posterior`
    maps the posterior there, and :meth:`predict` packs it into tokens and back. LoRA adapts the transformer; Qwen3
    takes neither LoRA nor new tokens.
    """

    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    pipeline_class = Flux2KleinPipeline
    #: the text encoder's hidden layers whose states, concatenated per token, are the prompt embedding (the
    #: pipeline's ``text_encoder_out_layers``)
    hidden_layers: ClassVar[tuple[int, ...]] = (9, 18, 27)
    #: the text encoder's and tokenizer's classes
    encoder_classes: ClassVar[dict[str, type]] = {"tokenizer": AutoTokenizer, "text_encoder": Qwen3ForCausalLM}
    capabilities = Capabilities(
        lora_components=("transformer",),
        block_types=("Flux2TransformerBlock", "Flux2SingleTransformerBlock"),
        pixel_multiple=8 * PATCH,
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = 512,
        weighting_scheme: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "none",
        precondition_outputs: bool = False,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-flux2-klein``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``bf16``.
            max_sequence_length: the prompt's length in tokens after the chat template (the pipeline's 512).
            weighting_scheme: timestep density on the scheduler's unshifted sigmas (its shift is dynamic):
                ``uniform`` (diffusers' script), ``logit_normal``, ``mode`` or ``cosmap``.
            logit_mean: mean of the logit-normal density's normal.
            logit_std: standard deviation of the logit-normal density's normal.
            mode_scale: scale of the ``mode`` density.
            loss_weighting: per-example loss weight: ``none``, ``sigma_sqrt`` or ``cosmap``.
            precondition_outputs: train ``noisy - sigma * output`` against the clean latents instead of the velocity.
        """
        super().__init__(pretrained_model_name_or_path, revision, variant)
        self.objective = flow_objective(
            weighting_scheme, logit_mean, logit_std, mode_scale, loss_weighting, precondition_outputs, False
        )
        if max_sequence_length < 1:
            raise UserError(f"{KEY}.max_sequence_length must be positive (tokens), got {max_sequence_length}")
        self.max_sequence_length = max_sequence_length
        self.guidance_scale = 1.0

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            **self.encoder_classes,
            "vae": AutoencoderKLFlux2,
            "transformer": Flux2Transformer2DModel,
        }
        self.load_components(source, classes)
        self.noise_schedule = RectifiedFlowSchedule.from_pretrained(source, self.revision, 1, **self.objective)
        self.pipeline_config = dict(self.pipeline_class.load_config(source, revision=self.revision))
        self.finish_loading()

    def default_lora_targets(self, component: str) -> list[str]:
        singles = len(self.transformer.single_transformer_blocks)
        return [*TRANSFORMER_TARGETS, *(f"single_transformer_blocks.{index}.attn.to_out" for index in range(singles))]

    def prompt_tokens(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The chat-templated prompts (reasoning off) as token ids and attention mask, padded to
        ``max_sequence_length``, as ``Flux2KleinPipeline`` tokenizes them."""
        return self.tokenizer(
            chat_prompts(self.tokenizer, prompts, enable_thinking=False),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The text encoder's hidden states at :attr:`hidden_layers` for every token of :meth:`prompt_tokens`
        (padding included, as the pipeline keeps it), concatenated per token: ``encoder_hidden_states`` (B, L, 3D)."""
        inputs = self.prompt_tokens(prompts)
        device = self.text_encoder.device
        output = self.text_encoder(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        states = torch.cat([output.hidden_states[layer] for layer in self.hidden_layers], dim=-1)
        return {"encoder_hidden_states": states}

    def latent_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel mean and standard deviation (1, 4C, 1, 1) of the patchified latents: the VAE's batch norm's
        running statistics, with its epsilon."""
        norm = self.vae.bn
        mean = norm.running_mean.view(1, -1, 1, 1)
        return mean, torch.sqrt(norm.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps)

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        """The VAE's posterior, patchified 2x2 and normalised by the batch-norm statistics (mean and standard
        deviation alike): the latent space in which ``Flux2KleinPipeline`` draws noise and which it decodes."""
        distribution = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        mean, std = self.latent_statistics()
        return LatentPosterior(
            ((patchify(distribution.mean) - mean) / std).to(pixels.dtype),
            (patchify(distribution.std) / std).to(pixels.dtype),
        )

    def guidance(self, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The distilled guidance each example is told (B,) where the transformer has a guidance embedding ([dev]);
        None for [klein]'s, which has none."""
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full((batch_size,), self.guidance_scale, device=device, dtype=torch.float32)

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        """Pack the noisy latents into tokens, run the transformer with the image and text positions and the guidance
        (none for [klein]), and unpack its velocity back to (B, C, h, w)."""
        noisy = noised.noisy
        batch, _, height, width = noisy.shape
        states = conditioning.kwargs["encoder_hidden_states"]
        image_ids, text_ids = position_ids(batch, height, width, states.shape[1], noisy.device)
        output = self.transformer(
            hidden_states=pack(noisy),
            encoder_hidden_states=states,
            timestep=noised.timesteps / self.noise_schedule.num_train_timesteps,
            guidance=self.guidance(batch, noisy.device),
            img_ids=image_ids,
            txt_ids=text_ids,
            return_dict=False,
        )[0]
        return self.noise_schedule.prediction(unpack(output, height, width), noised)

    def sampling_options(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def pipeline(self) -> Flux2KleinPipeline:
        """Over the live components; a step-distilled [klein] (``is_distilled`` in its ``model_index.json``) samples
        without classifier-free guidance."""
        return self.live_pipeline(is_distilled=bool(self.pipeline_config.get("is_distilled", False)))

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> Flux2KleinPipeline:
        return self.pretrained_pipeline(device, dtype)


class Flux2(Flux2Klein):
    """FLUX.2 [dev] from any diffusers folder, e.g. ``black-forest-labs/FLUX.2-dev``: [klein]'s transformer, latents
    and objective, read by Mistral Small 3 (``Mistral3ForConditionalGeneration``, its layers 10, 20 and 30) through
    its processor's chat template with the pipeline's system message, and told a distilled guidance.
    """

    pipeline_class = Flux2Pipeline
    hidden_layers = (10, 20, 30)
    encoder_classes = {"tokenizer": AutoProcessor, "text_encoder": Mistral3ForConditionalGeneration}

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = 512,
        guidance_scale: float = 1.0,
        weighting_scheme: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "none",
        precondition_outputs: bool = False,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-flux2-dev``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load.
            max_sequence_length: the chat's length in tokens, system message included (the pipeline's 512).
            guidance_scale: the guidance the distilled model is told during training (1, as for Flux.1).
            weighting_scheme: timestep density on the unshifted sigmas, as :class:`Flux2Klein`'s.
            logit_mean: mean of the logit-normal density's normal.
            logit_std: standard deviation of the logit-normal density's normal.
            mode_scale: scale of the ``mode`` density.
            loss_weighting: per-example loss weight: ``none``, ``sigma_sqrt`` or ``cosmap``.
            precondition_outputs: train ``noisy - sigma * output`` against the clean latents instead of the velocity.
        """
        super().__init__(
            pretrained_model_name_or_path,
            revision,
            variant,
            max_sequence_length,
            weighting_scheme,
            logit_mean,
            logit_std,
            mode_scale,
            loss_weighting,
            precondition_outputs,
        )
        self.guidance_scale = guidance_scale

    def prompt_tokens(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The pipeline's system message and each prompt as a chat through the processor's template, padded to
        ``max_sequence_length``, as ``Flux2Pipeline`` tokenizes them."""
        conversations = [
            [
                {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                {"role": "user", "content": [{"type": "text", "text": prompt.replace("[IMG]", "")}]},
            ]
            for prompt in prompts
        ]
        return self.tokenizer.apply_chat_template(
            conversations,
            add_generation_prompt=False,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_sequence_length,
        )

    def pipeline(self) -> Flux2Pipeline:
        return self.live_pipeline()
