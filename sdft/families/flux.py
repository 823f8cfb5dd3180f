"""Flux.1 (Black Forest Labs 2024): CLIP-L's pooled embedding and T5's sequence condition a rectified-flow
transformer (``FluxTransformer2DModel``) of double- and single-stream blocks over 2x2-packed latents, with a
guidance embedding in the guidance-distilled models (FLUX.1-dev)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from sdft.assets import resolve
from sdft.families.base import (
    CLIP_ATTENTION,
    Capabilities,
    Conditioning,
    LatentPosterior,
    ModelFamily,
    NoisedLatents,
    token_ids,
)
from sdft.families.rectified_flow import (
    RectifiedFlowSchedule,
    check_max_sequence_length,
    flow_objective,
    latent_scaling,
)

#: latent pixels per side packed into one image token
PACKING = 2
#: the transformer modules diffusers' ``train_dreambooth_lora_flux.py`` adapts by default: attention and the
#: feed-forward layers of the double-stream blocks, and the q/k/v projections of the single-stream blocks
TRANSFORMER_TARGETS = [
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
]


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, H, W) -> image tokens (B, H/2 * W/2, 4C), each a 2x2 patch in row-major order, channels
    first within the patch (``FluxPipeline._pack_latents``)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // PACKING, PACKING, width // PACKING, PACKING)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, (height // PACKING) * (width // PACKING), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Image tokens (B, H/2 * W/2, 4C) -> latents (B, C, H, W): the inverse of :func:`pack_latents`.

    Args:
        tokens: packed latents.
        height: the latent height H.
        width: the latent width W.
    """
    batch, _, features = tokens.shape
    patches = tokens.view(batch, height // PACKING, width // PACKING, features // 4, PACKING, PACKING)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, features // 4, height, width)


def latent_image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The rotary position ids of the packed image tokens (h * w, 3): ``(0, row, column)`` in row-major order
    (``FluxPipeline._prepare_latent_image_ids``).

    Args:
        height: token rows h (latent height / 2).
        width: token columns w.
        device: where the ids go.
        dtype: their dtype.
    """
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return ids.reshape(height * width, 3).to(device=device, dtype=dtype)


class Flux(ModelFamily):
    """Flux.1 from any diffusers folder, e.g. ``black-forest-labs/FLUX.1-dev``.

    The transformer reads T5's sequence (``text_encoder_2``) and CLIP-L's pooled embedding (``text_encoder``); packing
    the latents into tokens and back stays inside :meth:`predict`, so the prediction is comparable with the target in
    (B, C, H, W). LoRA may adapt the transformer and CLIP-L, never T5; the family takes no new tokens. The training
    objective is rectified flow with diffusers' Flux defaults (uniform timesteps, unweighted velocity loss); see
    :class:`~sdft.families.rectified_flow.RectifiedFlowSchedule`.
    """

    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    pipeline_class = FluxPipeline
    capabilities = Capabilities(
        lora_components=("transformer", "text_encoder"),
        block_types=("FluxTransformerBlock", "FluxSingleTransformerBlock"),
        pixel_multiple=8 * PACKING,
    )

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
        resolution_shift: bool = False,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-flux``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``fp16``.
            max_sequence_length: T5 prompt length in tokens (the pipeline samples with 512 unless told otherwise).
            guidance_scale: the guidance the distilled model is told during training (models without a guidance
                embedding, e.g. FLUX.1-schnell, ignore it).
            weighting_scheme: timestep density: ``uniform``, ``logit_normal``, ``mode`` or ``cosmap``.
            logit_mean: mean of the logit-normal density's normal.
            logit_std: standard deviation of the logit-normal density's normal.
            mode_scale: scale of the ``mode`` density.
            loss_weighting: per-example loss weight: ``none``, ``sigma_sqrt`` or ``cosmap``.
            precondition_outputs: train ``noisy - sigma * output`` against the clean latents instead of the velocity.
            resolution_shift: shift the training noise levels by the image's token count, as the sampler shifts its
                own (false trains on the unshifted levels, as diffusers' script does).
        """
        super().__init__(pretrained_model_name_or_path, revision, variant)
        self.objective = flow_objective(
            weighting_scheme, logit_mean, logit_std, mode_scale, loss_weighting, precondition_outputs, resolution_shift
        )
        check_max_sequence_length(max_sequence_length)
        self.max_sequence_length = max_sequence_length
        self.guidance_scale = guidance_scale

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            "tokenizer": CLIPTokenizer,
            "tokenizer_2": T5TokenizerFast,
            "text_encoder": CLIPTextModel,
            "text_encoder_2": T5EncoderModel,
            "vae": AutoencoderKL,
            "transformer": FluxTransformer2DModel,
        }
        self.load_components(source, classes)
        self.noise_schedule = RectifiedFlowSchedule.from_pretrained(source, self.revision, PACKING, **self.objective)
        self.finish_loading()

    def default_lora_targets(self, component: str) -> list[str]:
        return list(TRANSFORMER_TARGETS if component == self.denoiser_name else CLIP_ATTENTION)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """T5's last hidden states as ``encoder_hidden_states`` and CLIP-L's pooled output as
        ``pooled_projections``, as ``FluxPipeline.encode_prompt`` builds them."""
        clip_ids = token_ids(self.tokenizer, prompts, self.tokenizer.model_max_length, self.text_encoder.device)
        pooled = self.text_encoder(clip_ids, output_hidden_states=False).pooler_output
        t5_ids = token_ids(self.tokenizer_2, prompts, self.max_sequence_length, self.text_encoder_2.device)
        states = self.text_encoder_2(t5_ids, output_hidden_states=False)[0]
        return {"encoder_hidden_states": states, "pooled_projections": pooled}

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        return self.vae_posterior(pixels, *latent_scaling(self.vae))

    def guidance(self, batch_size: int, device: torch.device) -> torch.Tensor | None:
        """The guidance each example is told (B,), or None for a transformer without the guidance embedding."""
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.full((batch_size,), self.guidance_scale, device=device, dtype=torch.float32)

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        """Pack the noisy latents into tokens, run the transformer with the image and text position ids and the
        guidance, and unpack its velocity back to (B, C, H, W)."""
        noisy = noised.noisy
        batch, _, height, width = noisy.shape
        text_length = conditioning.kwargs["encoder_hidden_states"].shape[1]
        output = self.transformer(
            hidden_states=pack_latents(noisy),
            timestep=noised.timesteps / self.noise_schedule.num_train_timesteps,
            guidance=self.guidance(batch, noisy.device),
            img_ids=latent_image_ids(height // PACKING, width // PACKING, noisy.device, noisy.dtype),
            txt_ids=torch.zeros(text_length, 3, device=noisy.device, dtype=noisy.dtype),
            **conditioning.kwargs,
            return_dict=False,
        )[0]
        return self.noise_schedule.prediction(unpack_latents(output, height, width), noised)

    def sampling_options(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def pipeline(self) -> FluxPipeline:
        return FluxPipeline(
            scheduler=self.noise_schedule.sampler(),
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            transformer=self.transformer,
        )

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> FluxPipeline:
        return self.pretrained_pipeline(device, dtype)
