"""Stable Diffusion XL (Podell et al. 2023, arXiv 2307.01952): two CLIP text encoders, a UNet with added
conditioning (the pooled text embedding and the size and crop "micro-conditioning"), a KL autoencoder kept in fp32
and the DDPM objective shared with SD 1.x/2.x."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from sdft.assets import resolve
from sdft.families.base import (
    CLIP_ATTENTION,
    Batch,
    Capabilities,
    Conditioning,
    LatentPosterior,
    ModelFamily,
    NoisedLatents,
    meta_component,
    token_ids,
)
from sdft.families.ddpm import (
    UNET_ATTENTION,
    DDPMSchedule,
    check_min_snr_gamma,
    check_prediction_type,
    with_prediction_type,
)


def micro_conditioning(
    original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size: Sequence[int]
) -> torch.Tensor:
    """SDXL's size and crop conditioning (Podell et al. 2023, arXiv 2307.01952, sec. 2.2): each example's
    ``(original height, original width, crop top, crop left, target height, target width)``, the six numbers the
    UNet embeds as ``time_ids`` (the order of diffusers' ``StableDiffusionXLPipeline._get_add_time_ids``).

    Args:
        original_size: (B, 2) each image's (height, width) in its file, before any resize.
        crop_top_left: (B, 2) the (top, left) corner of the crop in the resized image.
        target_size: the (height, width) of the training images, the same for the whole batch.
    Returns:
        (B, 6) float32.
    """
    target = torch.tensor(list(target_size), device=original_size.device).expand(len(original_size), 2)
    return torch.cat([original_size, crop_top_left.to(original_size.device), target], dim=1).float()


def latent_scaling(vae_config: Any) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """The (shift, factor) of the UNet's latent space ``(z - shift) * factor``: per channel
    ``(z - latents_mean) * scaling_factor / latents_std`` when the VAE config has ``latents_mean`` and
    ``latents_std``, else ``z * scaling_factor`` (what :class:`StableDiffusionXLPipeline` undoes before decoding).

    Args:
        vae_config: the VAE's config (``scaling_factor``, optional ``latents_mean`` / ``latents_std``).
    """
    mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
    if mean is None or std is None:
        return 0.0, vae_config.scaling_factor
    shape = (1, len(mean), 1, 1)
    return torch.tensor(mean).view(shape), vae_config.scaling_factor / torch.tensor(std).view(shape)


class StableDiffusionXL(ModelFamily):
    """Stable Diffusion XL from any diffusers folder, e.g. ``stabilityai/stable-diffusion-xl-base-1.0``.

    The prompt is read by CLIP ViT-L (``text_encoder``) and OpenCLIP ViT-bigG (``text_encoder_2``); the UNet attends
    to both penultimate hidden states side by side and is also given the second encoder's projected pooled
    embedding and each example's size and crop (``time_ids``). The VAE always runs in float32 (in fp16 it overflows
    unless it is the fp16-fixed one). The prediction type comes from the scheduler config unless overridden.
    """

    denoiser_name = "unet"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    tokenizer_names = ("tokenizer", "tokenizer_2")
    pipeline_class = StableDiffusionXLPipeline
    capabilities = Capabilities(
        lora_components=("unet", "text_encoder", "text_encoder_2"),
        token_encoders=("text_encoder", "text_encoder_2"),
        embedding_keys=("clip_l", "clip_g"),
        vae_dtype=torch.float32,
        block_types=("BasicTransformerBlock", "ResnetBlock2D"),
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        prediction_type: str | None = None,
        vae_name_or_path: str | None = None,
        min_snr_gamma: float | None = None,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-sdxl``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``fp16``.
            prediction_type: ``epsilon``, ``v_prediction`` or ``sample``; None reads the scheduler config.
            vae_name_or_path: another VAE (a folder or hub id with the VAE at its root), e.g.
                ``madebyollin/sdxl-vae-fp16-fix``; None uses the model's own.
            min_snr_gamma: weight each example's loss by min-SNR-gamma (Hang et al. 2023), e.g. 5; None weighs
                every example 1.
        """
        super().__init__(pretrained_model_name_or_path, revision, variant)
        check_prediction_type(prediction_type)
        check_min_snr_gamma(min_snr_gamma)
        self.prediction_type = prediction_type
        self.vae_name_or_path = vae_name_or_path
        self.min_snr_gamma = min_snr_gamma

    def source(self) -> dict[str, str | None]:
        return {**super().source(), "vae_name_or_path": self.vae_name_or_path}

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            "tokenizer": CLIPTokenizer,
            "tokenizer_2": CLIPTokenizer,
            "text_encoder": CLIPTextModel,
            "text_encoder_2": CLIPTextModelWithProjection,
        }
        self.load_components(source, classes)
        self.vae = self.load_vae(source, self.capabilities.vae_dtype)
        self.load_components(source, {"unet": UNet2DConditionModel})
        self.noise_schedule = DDPMSchedule.from_pretrained(
            source, self.revision, self.prediction_type, self.min_snr_gamma
        )
        self.prediction_type = self.noise_schedule.prediction_type
        pipeline_config = StableDiffusionXLPipeline.load_config(source, revision=self.revision)
        self.force_zeros_for_empty_prompt = pipeline_config.get("force_zeros_for_empty_prompt", True)
        self.finish_loading()

    def load_vae(self, source: str, dtype: torch.dtype | None) -> AutoencoderKL:
        """The model's own VAE, or the one ``vae_name_or_path`` names, in ``dtype`` (None: diffusers' default)."""
        if not self.load_weights:
            own = self.vae_name_or_path is None
            folder, subfolder, revision = (source, "vae", self.revision) if own else (self.vae_name_or_path, None, None)
            vae = meta_component(AutoencoderKL, resolve(folder), subfolder, revision)
            return vae if dtype in (None, vae.dtype) else vae.to(dtype)
        if self.vae_name_or_path is None:
            weights = {"revision": self.revision, "variant": self.variant}
            return AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=dtype, **weights)
        return AutoencoderKL.from_pretrained(resolve(self.vae_name_or_path), dtype=dtype)

    def default_lora_targets(self, component: str) -> list[str]:
        return list(UNET_ATTENTION if component == self.denoiser_name else CLIP_ATTENTION)

    def token_ids(self, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
        """Prompts -> token ids (B, 77), padded and truncated as the pipeline does, on the text encoders' device."""
        return token_ids(tokenizer, prompts, tokenizer.model_max_length, self.text_encoder.device)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Both encoders' penultimate hidden states, joined on the feature axis, as ``encoder_hidden_states``, and
        the second encoder's projected pooled embedding as ``text_embeds``."""
        clip_l = self.text_encoder(self.token_ids(self.tokenizer, prompts), output_hidden_states=True)
        clip_g = self.text_encoder_2(self.token_ids(self.tokenizer_2, prompts), output_hidden_states=True)
        states = torch.cat([clip_l.hidden_states[-2], clip_g.hidden_states[-2]], dim=-1)
        return {"encoder_hidden_states": states, "text_embeds": clip_g.text_embeds}

    def condition(self, prompt_embeddings: dict[str, torch.Tensor], batch: Batch) -> Conditioning:
        """The hidden states, and as ``added_cond_kwargs`` the pooled embedding and the size and crop
        micro-conditioning of each example."""
        states = prompt_embeddings["encoder_hidden_states"]
        pixels = batch["pixel_values"]
        time_ids = micro_conditioning(batch["original_size"], batch["crop_top_left"], pixels.shape[-2:])
        # float32 whatever the precision: bf16 would round sizes above 256 (1365 -> 1368); the UNet embeds them in fp32
        added = {"text_embeds": prompt_embeddings["text_embeds"], "time_ids": time_ids.to(states.device)}
        return Conditioning({"encoder_hidden_states": states, "added_cond_kwargs": added})

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        """The posterior of the VAE, run in its own dtype (float32) outside any autocast."""
        shift, factor = latent_scaling(self.vae.config)
        if isinstance(shift, torch.Tensor):
            shift, factor = shift.to(pixels.device), factor.to(pixels.device)
        return self.vae_posterior(pixels, shift, factor)

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        return self.unet(noised.noisy, noised.timesteps, **conditioning.kwargs).sample

    def pipeline(self) -> StableDiffusionXLPipeline:
        return StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=self.unet,
            scheduler=self.noise_schedule.sampler(),
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
            add_watermarker=False,
        )

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> StableDiffusionXLPipeline:
        source = resolve(self.pretrained_model_name_or_path)
        components = {} if self.vae_name_or_path is None else {"vae": self.load_vae(source, dtype)}
        pipeline = self.pretrained_pipeline(device, dtype, add_watermarker=False, **components)
        pipeline.scheduler = with_prediction_type(pipeline.scheduler, self.prediction_type)
        return pipeline
