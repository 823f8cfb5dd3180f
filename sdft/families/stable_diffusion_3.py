"""Stable Diffusion 3 and 3.5 (Esser et al. 2024, arXiv 2403.03206): CLIP-L, CLIP-G and an optional T5 read the
prompt, an MMDiT (``SD3Transformer2DModel``) denoises with the rectified-flow objective."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

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

#: the transformer projections diffusers' ``train_dreambooth_lora_sd3.py`` adapts by default
TRANSFORMER_ATTENTION = [
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn.to_k",
    "attn.to_out.0",
    "attn.to_q",
    "attn.to_v",
]


def joint_text_states(clip_states: list[torch.Tensor], t5_states: torch.Tensor) -> torch.Tensor:
    """SD3's text sequence: the CLIP hidden states side by side (B, 77, sum of widths), zero-padded to T5's width
    and followed by T5's states (B, L, D), as ``StableDiffusion3Pipeline.encode_prompt`` joins them.

    Returns:
        (B, 77 + L, D).
    """
    clip = torch.cat(clip_states, dim=-1)
    clip = F.pad(clip, (0, t5_states.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5_states.to(clip.dtype)], dim=-2)


class StableDiffusion3(ModelFamily):
    """Stable Diffusion 3 / 3.5 from any diffusers folder, e.g. ``stabilityai/stable-diffusion-3.5-medium``.

    The transformer attends to the penultimate hidden states of CLIP-L (``text_encoder``) and CLIP-G
    (``text_encoder_2``) side by side, followed by T5's (``text_encoder_3``, zeros when it is dropped), and is given
    both CLIPs' projected pooled embeddings. LoRA may adapt the transformer and the two CLIPs, never T5; the family
    takes no new tokens. The training objective is rectified flow with diffusers' SD3 defaults (logit-normal
    timesteps, preconditioned outputs); see :class:`~sdft.families.rectified_flow.RectifiedFlowSchedule`.
    """

    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizer_names = ("tokenizer", "tokenizer_2", "tokenizer_3")
    pipeline_class = StableDiffusion3Pipeline
    capabilities = Capabilities(
        lora_components=("transformer", "text_encoder", "text_encoder_2"),
        block_types=("JointTransformerBlock",),
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        use_t5: bool = True,
        max_sequence_length: int = 256,
        weighting_scheme: str = "logit_normal",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        loss_weighting: str = "none",
        precondition_outputs: bool = True,
        resolution_shift: bool = False,
    ) -> None:
        """
        Args:
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-sd3``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. ``fp16``.
            use_t5: load the T5 text encoder; false drops it (zeros in its place, as the pipeline does without it).
            max_sequence_length: T5 prompt length in tokens (the pipeline samples with 256 unless told otherwise).
            weighting_scheme: timestep density: ``logit_normal``, ``mode``, ``cosmap`` or ``uniform``.
            logit_mean: mean of the logit-normal density's normal.
            logit_std: standard deviation of the logit-normal density's normal.
            mode_scale: scale of the ``mode`` density.
            loss_weighting: per-example loss weight: ``none``, ``sigma_sqrt`` or ``cosmap``.
            precondition_outputs: train ``noisy - sigma * output`` against the clean latents (diffusers' SD3 default).
            resolution_shift: shift the training noise levels by the image's token count (schedulers with
                ``use_dynamic_shifting`` only).
        """
        super().__init__(pretrained_model_name_or_path, revision, variant)
        self.objective = flow_objective(
            weighting_scheme, logit_mean, logit_std, mode_scale, loss_weighting, precondition_outputs, resolution_shift
        )
        check_max_sequence_length(max_sequence_length)
        self.use_t5 = use_t5
        self.max_sequence_length = max_sequence_length
        if not use_t5:  # the dropped encoder is no text encoder of this instance
            self.text_encoder_names, self.tokenizer_names = self.text_encoder_names[:2], self.tokenizer_names[:2]

    def source(self) -> dict[str, str | None]:
        return {**super().source(), "use_t5": str(self.use_t5).lower()}

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            "tokenizer": CLIPTokenizer,
            "tokenizer_2": CLIPTokenizer,
            "text_encoder": CLIPTextModelWithProjection,
            "text_encoder_2": CLIPTextModelWithProjection,
        }
        self.load_components(source, classes)
        self.tokenizer_3, self.text_encoder_3 = None, None
        if self.use_t5:
            self.load_components(source, {"tokenizer_3": T5TokenizerFast, "text_encoder_3": T5EncoderModel})
        self.load_components(source, {"vae": AutoencoderKL, "transformer": SD3Transformer2DModel})
        patch_size = self.transformer.config.patch_size
        self.noise_schedule = RectifiedFlowSchedule.from_pretrained(source, self.revision, patch_size, **self.objective)
        self.finish_loading()

    def default_lora_targets(self, component: str) -> list[str]:
        return list(TRANSFORMER_ATTENTION if component == self.denoiser_name else CLIP_ATTENTION)

    def clip_states(
        self, tokenizer: CLIPTokenizer, encoder: CLIPTextModelWithProjection, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One CLIP's penultimate hidden states (B, 77, width) and projected pooled embedding (B, projection)."""
        ids = token_ids(tokenizer, prompts, tokenizer.model_max_length, encoder.device)
        output = encoder(ids, output_hidden_states=True)
        return output.hidden_states[-2].to(self.text_encoder.dtype), output.text_embeds

    def t5_states(self, prompts: list[str]) -> torch.Tensor:
        """T5's last hidden states (B, max_sequence_length, width), or zeros of the transformer's joint width."""
        if self.text_encoder_3 is None:
            width = self.transformer.config.joint_attention_dim
            shape = (len(prompts), self.max_sequence_length, width)
            return torch.zeros(shape, device=self.text_encoder.device, dtype=self.text_encoder.dtype)
        ids = token_ids(self.tokenizer_3, prompts, self.max_sequence_length, self.text_encoder_3.device)
        return self.text_encoder_3(ids)[0]

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The joint text sequence as ``encoder_hidden_states`` and both CLIPs' pooled embeddings side by side as
        ``pooled_projections``, as ``StableDiffusion3Pipeline.encode_prompt`` builds them."""
        states_l, pooled_l = self.clip_states(self.tokenizer, self.text_encoder, prompts)
        states_g, pooled_g = self.clip_states(self.tokenizer_2, self.text_encoder_2, prompts)
        states = joint_text_states([states_l, states_g], self.t5_states(prompts))
        pooled = torch.cat([pooled_l, pooled_g], dim=-1)
        return {"encoder_hidden_states": states, "pooled_projections": pooled}

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        return self.vae_posterior(pixels, *latent_scaling(self.vae))

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        output = self.transformer(
            hidden_states=noised.noisy, timestep=noised.timesteps, **conditioning.kwargs, return_dict=False
        )[0]
        return self.noise_schedule.prediction(output, noised)

    def sampling_options(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def pipeline(self) -> StableDiffusion3Pipeline:
        return StableDiffusion3Pipeline(
            transformer=self.transformer,
            scheduler=self.noise_schedule.sampler(),
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self.tokenizer_2,
            text_encoder_3=self.text_encoder_3,
            tokenizer_3=self.tokenizer_3,
        )

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> StableDiffusion3Pipeline:
        dropped = {} if self.use_t5 else {"text_encoder_3": None, "tokenizer_3": None}
        return self.pretrained_pipeline(device, dtype, **dropped)
