"""Full fine-tuning: every weight of the denoiser, and optionally of the text encoders, trains (DreamBooth, Ruiz
et al. 2022, arXiv 2208.12242, with prior preservation from the data; or text-to-image fine-tuning on captions)."""

from __future__ import annotations

from pathlib import Path

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
            raise ValueError(
                "model.init_args.text_encoder_lr is set but model.init_args.train_text_encoder is false; "
                "set train_text_encoder: true or drop text_encoder_lr"
            )
        if text_encoder_lr is not None and text_encoder_lr <= 0:
            raise ValueError(f"model.init_args.text_encoder_lr must be positive, got {text_encoder_lr}")
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
        self.family.pipeline().save_pretrained(directory, safe_serialization=True)
        return directory
