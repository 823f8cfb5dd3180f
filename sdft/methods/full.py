"""Full fine-tuning: every weight of the denoiser, and optionally of the text encoders, trains (DreamBooth, Ruiz
et al. 2022, arXiv 2208.12242, with prior preservation from the data; or text-to-image fine-tuning on captions)."""

from __future__ import annotations

from pathlib import Path

import torch

from sdft.assets import resolve
from sdft.errors import UserError
from sdft.interop.model_card import MethodFacts
from sdft.methods.base import DiffusionFineTuner, ParameterGroups


class FullFineTuner(DiffusionFineTuner):
    """Train the whole denoiser (and optionally the text encoders); export a complete diffusers pipeline folder in
    safetensors that ``DiffusionPipeline.from_pretrained`` loads."""

    def __init__(
        self,
        *args,
        train_text_encoder: bool = False,
        text_encoder_lr: float | None = None,
        **kwargs,
    ) -> None:
        """
        Args:
            train_text_encoder: also fine-tune the text encoder(s).
            text_encoder_lr: the text encoders' learning rate; None uses the optimizer's.
        """
        super().__init__(*args, **kwargs)
        if text_encoder_lr is not None and not train_text_encoder:
            raise UserError(
                "model.init_args.text_encoder_lr is set but model.init_args.train_text_encoder is false; "
                "set train_text_encoder: true or drop text_encoder_lr"
            )
        if text_encoder_lr is not None and text_encoder_lr <= 0:
            raise UserError(f"model.init_args.text_encoder_lr must be positive, got {text_encoder_lr}")
        if self.speed.quantize is not None:
            raise UserError(
                f"model.init_args.speed.quantize {self.speed.quantize}: full fine-tuning trains every weight of the "
                "denoiser, which a quantized base cannot hold; set quantize: null, or train a LoRA"
            )
        self.train_text_encoder = train_text_encoder
        self.text_encoder_lr = text_encoder_lr

    def configure_trainable(self) -> None:
        for module in self.family.components(self.train_text_encoder).values():
            module.requires_grad_(True)
            module.train()

    def parameter_groups(self) -> ParameterGroups:
        denoiser = {"params": list(self.family.denoiser.parameters())}
        if not self.train_text_encoder:
            return [denoiser]
        trained = self.family.components(text_encoders=True)
        trained.pop(self.family.denoiser_name)
        encoders = {"params": [p for m in trained.values() for p in m.parameters()]}
        if self.text_encoder_lr is not None:
            encoders["lr"] = self.text_encoder_lr
        return [denoiser, encoders]

    def write_export(self, directory: Path) -> Path:
        """The live pipeline; a frozen component held in a lower dtype for training (``speed.frozen_dtype``) is
        written as the source's own weights instead, so the export loses no precision it did not train."""
        self.family.pipeline().save_pretrained(directory, safe_serialization=True)
        family = self.family
        for name in self.lowered_frozen_components():
            component = getattr(family, name)
            base = type(component).from_pretrained(
                resolve(family.pretrained_model_name_or_path),
                subfolder=name,
                revision=family.revision,
                variant=family.variant,
            )
            base.save_pretrained(directory / name, safe_serialization=True)
        return directory

    def card_facts(self) -> MethodFacts:
        """A whole pipeline, tagged DreamBooth when it learned a subject (the data had an instance prompt)."""
        settings = {"train_text_encoder": self.train_text_encoder}
        if self.text_encoder_lr is not None:
            settings["text_encoder_lr"] = self.text_encoder_lr
        pipeline = self.family.pipeline_class.__name__
        return MethodFacts(
            "Full fine-tuning",
            ("dreambooth",) if self.current_run_notes().trigger else (),
            settings,
            {"model_index.json": f"the diffusers pipeline folder: `{pipeline}.from_pretrained(folder)`"},
            whole_pipeline=True,
        )

    def lowered_frozen_components(self) -> list[str]:
        """The pipeline components that train nothing and hold weights below float32."""
        names = [*self.family.text_encoder_names, "vae"]
        return [
            name
            for name in names
            if not any(p.requires_grad for p in getattr(self.family, name).parameters())
            and any(p.is_floating_point() and p.dtype != torch.float32 for p in getattr(self.family, name).parameters())
        ]
