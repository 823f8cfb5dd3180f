"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, a UNet, a KL autoencoder and a DDPM objective."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

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
from sdft.families.ddpm import (
    UNET_ATTENTION,
    DDPMSchedule,
    check_min_snr_gamma,
    check_prediction_type,
    with_prediction_type,
)


class StableDiffusion(ModelFamily):
    """Stable Diffusion 1.x (epsilon) and 2.x (v-prediction for the 768 px models), from any diffusers folder.

    The prediction type comes from the model's scheduler config unless overridden.
    """

    denoiser_name = "unet"
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    pipeline_class = StableDiffusionPipeline
    capabilities = Capabilities(
        lora_components=("unet", "text_encoder"),
        token_encoders=("text_encoder",),
        block_types=("BasicTransformerBlock", "ResnetBlock2D"),
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        prediction_type: str | None = None,
        min_snr_gamma: float | None = None,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-sd1``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``fp16``.
            prediction_type: ``epsilon``, ``v_prediction`` or ``sample``; None reads the scheduler config.
            min_snr_gamma: weight each example's loss by min-SNR-gamma (Hang et al. 2023), e.g. 5; None weighs
                every example 1.
        """
        super().__init__(pretrained_model_name_or_path, revision, variant)
        check_prediction_type(prediction_type)
        check_min_snr_gamma(min_snr_gamma)
        self.prediction_type = prediction_type
        self.min_snr_gamma = min_snr_gamma

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            "tokenizer": CLIPTokenizer,
            "text_encoder": CLIPTextModel,
            "vae": AutoencoderKL,
            "unet": UNet2DConditionModel,
        }
        self.load_components(source, classes)
        self.noise_schedule = DDPMSchedule.from_pretrained(
            source, self.revision, self.prediction_type, self.min_snr_gamma
        )
        self.prediction_type = self.noise_schedule.prediction_type
        self.finish_loading()

    def default_lora_targets(self, component: str) -> list[str]:
        return list(UNET_ATTENTION if component == self.denoiser_name else CLIP_ATTENTION)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        input_ids = token_ids(self.tokenizer, prompts, self.tokenizer.model_max_length, self.text_encoder.device)
        return {"encoder_hidden_states": self.text_encoder(input_ids)[0]}

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        return self.vae_posterior(pixels, 0.0, self.vae.config.scaling_factor)

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        return self.unet(noised.noisy, noised.timesteps, **conditioning.kwargs).sample

    def pipeline(self) -> StableDiffusionPipeline:
        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.noise_schedule.sampler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> StableDiffusionPipeline:
        pipeline = self.pretrained_pipeline(device, dtype, safety_checker=None, requires_safety_checker=False)
        pipeline.scheduler = with_prediction_type(pipeline.scheduler, self.prediction_type)
        return pipeline
