"""``speed.offload_text_encoders``: every prompt the data can produce is cached before the first step, the frozen
encoders then wait in CPU memory and are not run again while training, sampling brings them back for its own
prompts, and the losses are those of a run that keeps them on the device."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback
from training import LossRecorder, cpu_trainer, lora_tuner, subject_data

from sdft.data.sampling import AugmentedImages
from sdft.errors import UserError
from sdft.families import ZImage
from sdft.speed import SpeedOptions

OFFLOAD = SpeedOptions(offload_text_encoders=True)


class EncoderCalls(Callback):
    """Counts the text encoder's forward calls before the first training batch and after it."""

    def __init__(self) -> None:
        self.before, self.during, self.training = 0, 0, False

    def on_fit_start(self, trainer, pl_module) -> None:
        def count(*_) -> None:
            if self.training:
                self.during += 1
            else:
                self.before += 1

        pl_module.family.text_encoder.register_forward_hook(count)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.training = True


def test_possible_prompts_are_every_template_of_every_prompt_and_the_dropped_one():
    images = AugmentedImages([], ["sks dog", "sks dog"], 32, True, 0.0, 0, ("a photo of {}", "{} on grass"))
    assert images.possible_prompts() == {"a photo of sks dog", "sks dog on grass"}
    captions = AugmentedImages([], ["a", "b"], 32, True, 0.0, 0, caption_dropout=0.1)
    assert captions.possible_prompts() == {"a", "b", ""}


def fit_counting(tmp_path, subject_dir, speed: SpeedOptions, prompt: str = "a photo of sks toy"):
    model = lora_tuner(ZImage("builtin:tiny-zimage"), lr=5e-3, speed=speed)
    data = subject_data(subject_dir, prompt)
    calls, losses = EncoderCalls(), LossRecorder()
    cpu_trainer(tmp_path, 3, [calls, losses]).fit(model, datamodule=data)
    return model, calls, losses.losses


def test_offloaded_encoders_are_not_run_while_training_and_the_losses_are_unchanged(tmp_path, subject_dir):
    model, calls, losses = fit_counting(tmp_path / "offloaded", subject_dir, OFFLOAD)
    assert model.text_encoders_offloaded and model.family.text_encoder.device == torch.device("cpu")
    assert calls.before == 1 and calls.during == 0  # the one prompt, cached before the first step
    kept, kept_calls, kept_losses = fit_counting(tmp_path / "kept", subject_dir, SpeedOptions())
    assert kept_calls.before == 0 and kept_calls.during == 1  # without it, the first step encodes
    assert losses == pytest.approx(kept_losses, rel=1e-6)
    images = model.generate(["a photo of sks toy"], [0], 32, num_inference_steps=2)  # sampling brings them back
    assert len(images) == 1 and calls.during == 2  # its prompt and the empty one of classifier-free guidance
    assert model.family.text_encoder.device == torch.device("cpu")


def test_offloading_needs_the_prompt_cache(tmp_path, subject_dir):
    model = lora_tuner(ZImage("builtin:tiny-zimage"), speed=OFFLOAD, cache="off")
    data = subject_data(subject_dir, resolution=32)
    with pytest.raises(UserError, match=r"speed.offload_text_encoders needs frozen text encoders and the prompt cache"):
        cpu_trainer(tmp_path, 1).fit(model, datamodule=data)
