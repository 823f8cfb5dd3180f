"""Z-Image (Tongyi-MAI 2025): a Qwen3 language model reads the prompt through its chat template, and a single-stream
DiT (``ZImageTransformer2DModel``) denoises the FLUX.1 autoencoder's latents, patchified inside the transformer,
with image and caption tokens in one sequence."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
from transformers import AutoTokenizer, Qwen3Model

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
from sdft.families.rectified_flow import KEY, RectifiedFlowSchedule, flow_objective, latent_scaling

#: latent pixels per side of one image token (the transformer's default ``patch_size``)
PATCH = 2
#: the transformer modules LoRA adapts by default, in every block (the noise and context refiners and the main
#: layers): the attention projections and the SwiGLU feed-forward, as DiffSynth-Studio's and musubi-tuner's Z-Image
#: LoRAs do
TRANSFORMER_TARGETS = [
    "attention.to_q",
    "attention.to_k",
    "attention.to_v",
    "attention.to_out.0",
    "feed_forward.w1",
    "feed_forward.w2",
    "feed_forward.w3",
]
#: the longest prompt the transformer places: its first rotary axis (``axes_lens[0]``) spans 1,024 positions, shared
#: by the caption and, after it, the image
MAX_PROMPT_TOKENS = 1024


class ZImage(ModelFamily):
    """Z-Image from any diffusers folder, e.g. ``Tongyi-MAI/Z-Image-Turbo``.

    The caption is the second-to-last hidden layer of the Qwen3 encoder at the prompt's tokens (padding dropped), as
    ``ZImagePipeline.encode_prompt`` makes it; the conditioning keeps it padded with its mask (``cap_feats``,
    ``cap_mask``) so that it batches and caches as a tensor. The transformer takes lists of per-image latents and
    captions and its time input runs the other way (``1 - sigma``); it predicts ``x0 - noise``, the negated velocity.
    :meth:`predict` hides all three, so the prediction is comparable with the rectified-flow target in (B, C, H, W).
    LoRA adapts the transformer; the language model takes neither LoRA nor new tokens.
    """

    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    pipeline_class = ZImagePipeline
    capabilities = Capabilities(
        lora_components=("transformer",),
        block_types=("ZImageTransformerBlock",),
        pixel_multiple=8 * PATCH,
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = 512,
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "none",
        precondition_outputs: bool = False,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-zimage``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``bf16``.
            max_sequence_length: the prompt's length in tokens after the chat template (the pipeline's 512).
            weighting_scheme: timestep density over the scheduler's shifted sigmas (Z-Image's static shift 3):
                ``logit_normal`` (musubi-tuner's ``shift`` sampling), ``uniform``, ``mode`` or ``cosmap``.
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
        if not 0 < max_sequence_length <= MAX_PROMPT_TOKENS:
            raise UserError(
                f"{KEY}.max_sequence_length must be in [1, {MAX_PROMPT_TOKENS}] (Qwen3 tokens), "
                f"got {max_sequence_length}"
            )
        self.max_sequence_length = max_sequence_length

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            "tokenizer": AutoTokenizer,
            "text_encoder": Qwen3Model,
            "vae": AutoencoderKL,
            "transformer": ZImageTransformer2DModel,
        }
        self.load_components(source, classes)
        self.noise_schedule = RectifiedFlowSchedule.from_pretrained(source, self.revision, PATCH, **self.objective)
        self.finish_loading()

    def default_lora_targets(self, component: str) -> list[str]:
        return list(TRANSFORMER_TARGETS)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The chat-templated prompts through Qwen3, padded to ``max_sequence_length``: its second-to-last hidden
        states as ``cap_feats`` (B, L, D) and the tokens that are the prompt's as ``cap_mask`` (B, L)."""
        inputs = self.tokenizer(
            chat_prompts(self.tokenizer, prompts, enable_thinking=True),
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        mask = inputs.attention_mask.to(device).bool()
        states = self.text_encoder(
            input_ids=inputs.input_ids.to(device), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-2]
        return {"cap_feats": states, "cap_mask": mask}

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        return self.vae_posterior(pixels, *latent_scaling(self.vae))

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        """Run the transformer on each image with its caption (the prompt's tokens only), at time ``1 - sigma``, and
        negate its output into the velocity ``noise - x0``."""
        kwargs = conditioning.kwargs
        captions = [states[mask] for states, mask in zip(kwargs["cap_feats"], kwargs["cap_mask"], strict=True)]
        images = list(noised.noisy.unsqueeze(2).unbind(0))  # (C, frames = 1, H, W) each
        time = 1 - noised.timesteps / self.noise_schedule.num_train_timesteps
        output = self.transformer(images, time, captions, return_dict=False)[0]
        velocity = -torch.stack(output).squeeze(2)
        return self.noise_schedule.prediction(velocity, noised)

    def sampling_options(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def pipeline(self) -> ZImagePipeline:
        return self.live_pipeline()

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> ZImagePipeline:
        return self.pretrained_pipeline(device, dtype)
