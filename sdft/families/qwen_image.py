"""Qwen-Image (Qwen 2025): Qwen2.5-VL reads the prompt inside a fixed describe-the-image chat, and an MMDiT
(``QwenImageTransformer2DModel``) denoises the latents of Qwen-Image's own video-style autoencoder, normalised per
channel and packed 2x2 as Flux.1 packs them."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.families.base import Capabilities, Conditioning, LatentPosterior, ModelFamily, NoisedLatents
from sdft.families.flux import PACKING, pack_latents, unpack_latents
from sdft.families.rectified_flow import KEY, RectifiedFlowSchedule, flow_objective

#: the chat around the prompt, and the number of its leading tokens dropped from the states (``QwenImagePipeline``'s
#: ``prompt_template_encode`` and ``prompt_template_encode_start_idx``)
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
DROPPED_TOKENS = 34
#: the longest prompt the pipeline takes, in tokens after the dropped ones
MAX_PROMPT_TOKENS = 1024
#: the transformer modules diffusers' ``train_dreambooth_lora_qwen_image.py`` adapts by default: the image stream's
#: attention projections of every block
TRANSFORMER_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


class QwenImage(ModelFamily):
    """Qwen-Image from any diffusers folder, e.g. ``Qwen/Qwen-Image``.

    The prompt's states are Qwen2.5-VL's last hidden layer after the template's first 34 tokens, as
    ``QwenImagePipeline.encode_prompt`` makes them; the conditioning keeps them padded to ``max_sequence_length`` with
    their mask, so they cache as tensors, and :meth:`predict` trims a batch to its longest prompt as the pipeline pads
    it. The latents are the autoencoder's (one frame) normalised by its per-channel ``latents_mean`` and
    ``latents_std``. Classifier-free guidance is the pipeline's ``true_cfg_scale`` with a blank negative prompt
    (:meth:`guidance_options`). LoRA adapts the transformer; Qwen2.5-VL takes neither LoRA nor new tokens.
    """

    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder",)
    tokenizer_names = ("tokenizer",)
    pipeline_class = QwenImagePipeline
    guidance_parameter = "true_cfg_scale"
    capabilities = Capabilities(
        lora_components=("transformer",),
        block_types=("QwenImageTransformerBlock",),
        pixel_multiple=8 * PACKING,
    )

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        variant: str | None = None,
        max_sequence_length: int = MAX_PROMPT_TOKENS,
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
            pretrained_model_name_or_path: hub id, local diffusers folder, or ``builtin:tiny-qwen-image``.
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load.
            max_sequence_length: the prompt's length in tokens (the pipeline's 1,024 at most); a shorter one saves
                cache space and truncates longer prompts.
            weighting_scheme: timestep density: ``uniform`` (diffusers' script), ``logit_normal``, ``mode`` or
                ``cosmap``.
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
        if not 0 < max_sequence_length <= MAX_PROMPT_TOKENS:
            raise UserError(
                f"{KEY}.max_sequence_length must be in [1, {MAX_PROMPT_TOKENS}] (Qwen2.5-VL tokens), "
                f"got {max_sequence_length}"
            )
        self.max_sequence_length = max_sequence_length

    def load(self) -> None:
        source = resolve(self.pretrained_model_name_or_path)
        classes = {
            "tokenizer": AutoTokenizer,
            "text_encoder": Qwen2_5_VLForConditionalGeneration,
            "vae": AutoencoderKLQwenImage,
            "transformer": QwenImageTransformer2DModel,
        }
        self.load_components(source, classes)
        self.noise_schedule = RectifiedFlowSchedule.from_pretrained(source, self.revision, PACKING, **self.objective)
        self.finish_loading()

    def default_lora_targets(self, component: str) -> list[str]:
        return list(TRANSFORMER_TARGETS)

    def encode_prompts(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """Qwen2.5-VL's last hidden states of the templated prompts from the first token after the template's
        opening, zero where the prompt has ended: ``encoder_hidden_states`` (B, L, D) and
        ``encoder_hidden_states_mask`` (B, L), L = ``max_sequence_length``."""
        inputs = self.tokenizer(
            [PROMPT_TEMPLATE.format(prompt) for prompt in prompts],
            padding="max_length",
            max_length=self.max_sequence_length + DROPPED_TOKENS,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        mask = inputs.attention_mask.to(device)
        states = self.text_encoder(
            input_ids=inputs.input_ids.to(device), attention_mask=mask, output_hidden_states=True
        ).hidden_states[-1]
        mask = mask[:, DROPPED_TOKENS:].bool()
        return {
            "encoder_hidden_states": states[:, DROPPED_TOKENS:] * mask[..., None],
            "encoder_hidden_states_mask": mask,
        }

    def latent_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The autoencoder's per-channel latent mean and standard deviation, (1, C, 1, 1) each."""
        config = self.vae.config
        return torch.tensor(config.latents_mean).view(1, -1, 1, 1), torch.tensor(config.latents_std).view(1, -1, 1, 1)

    def encode_posterior(self, pixels: torch.Tensor) -> LatentPosterior:
        """The posterior of the autoencoder (run on each image as a one-frame video), normalised per channel."""
        distribution = self.vae.encode(pixels.to(self.vae.dtype).unsqueeze(2)).latent_dist
        mean, std = (statistic.to(pixels.device) for statistic in self.latent_statistics())
        return LatentPosterior(
            ((distribution.mean.squeeze(2) - mean) / std).to(pixels.dtype),
            (distribution.std.squeeze(2) / std).to(pixels.dtype),
        )

    def predict(self, noised: NoisedLatents, conditioning: Conditioning) -> torch.Tensor:
        """Trim the prompts to the batch's longest (the pipeline's padding), pack the noisy latents into 2x2 tokens,
        run the transformer with the images' token grid, and unpack its velocity back to (B, C, H, W)."""
        noisy = noised.noisy
        batch, _, height, width = noisy.shape
        mask = conditioning.kwargs["encoder_hidden_states_mask"]
        # a mask without values (the meta device of a memory plan) keeps every position: the longest a prompt can be
        length = mask.shape[1] if mask.is_meta else int(mask.sum(dim=1).max())
        mask = mask[:, :length]
        output = self.transformer(
            hidden_states=pack_latents(noisy),
            encoder_hidden_states=conditioning.kwargs["encoder_hidden_states"][:, :length],
            # the pipeline passes no mask when none pads
            encoder_hidden_states_mask=None if mask.is_meta or mask.all() else mask,
            timestep=noised.timesteps / self.noise_schedule.num_train_timesteps,
            img_shapes=[[(1, height // PACKING, width // PACKING)]] * batch,
            return_dict=False,
        )[0]
        return self.noise_schedule.prediction(unpack_latents(output, height, width), noised)

    @classmethod
    def guidance_options(cls, guidance_scale: float, batch_size: int) -> dict[str, Any]:
        """Classifier-free guidance as Qwen-Image samples with it: ``true_cfg_scale`` against a blank negative prompt
        (its ``guidance_scale`` is only for guidance-distilled models); none at a scale of 1 or less."""
        if guidance_scale <= 1:
            return {}
        return {"true_cfg_scale": guidance_scale, "negative_prompt": [" "] * batch_size}

    def sampling_options(self) -> dict[str, Any]:
        return {"max_sequence_length": self.max_sequence_length}

    def pipeline(self) -> QwenImagePipeline:
        return self.live_pipeline()

    def base_pipeline(self, device: torch.device, dtype: torch.dtype | None = None) -> QwenImagePipeline:
        return self.pretrained_pipeline(device, dtype)
