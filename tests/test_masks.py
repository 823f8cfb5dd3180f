"""Masked loss: masks read from each source, cropped and mirrored exactly as their images, turned into latent-pixel
weights, and a background weighted 0 that changes no gradient, for a UNet and for packed transformers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from training import PROMPT, fit, lora_tuner, subject_data

from sdft.data import CaptionDataModule, SubjectDataModule
from sdft.data.class_images import class_image_order
from sdft.data.images import ImageDataError, image_files, list_images
from sdft.data.toy import write_toy_class
from sdft.errors import UserError
from sdft.families import Flux, Flux2Klein, StableDiffusion
from sdft.families.base import NoisedLatents
from sdft.objectives import latent_loss_mask, masked_mse, per_example_mse

#: (width, height) of the test images: a short side of 48 is scaled to the training resolution of 32
SIZES = {"a": (64, 48), "b": (48, 72)}
RESOLUTION = 32


def binary_mask(seed: int, size: tuple[int, int]) -> np.ndarray:
    """A random mask (H, W) of 0 and 255, different left and right, so a wrong crop or mirror shows."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 2, (size[1], size[0])) * 255).astype(np.uint8)


def photo(mask: np.ndarray, seed: int) -> np.ndarray:
    """An RGB picture (H, W, 3) whose green channel is ``255 - mask``: what is left of it after loading tells the
    mask that belongs at each pixel."""
    rgb = np.random.default_rng(seed + 100).integers(0, 256, (*mask.shape, 3)).astype(np.uint8)
    rgb[..., 1] = 255 - mask
    return rgb


def write_masked_images(folder: Path, source: str) -> None:
    """Images ``a`` and ``b`` with their masks, from ``source``: ``sibling`` (``a_mask.png``), ``alpha`` (the image's
    transparency, the background white once composited) or ``metadata`` (a ``mask`` column naming ``masks/a.png``);
    and ``c``, with no mask."""
    folder.mkdir()
    rows = []
    for seed, (name, size) in enumerate(SIZES.items()):
        mask = binary_mask(seed, size)
        if source == "alpha":
            Image.fromarray(np.dstack([photo(mask, seed), mask])).save(folder / f"{name}.png")
        else:
            Image.fromarray(photo(mask, seed)).save(folder / f"{name}.png")
        if source == "sibling":
            Image.fromarray(mask).save(folder / f"{name}_mask.png")
        if source == "metadata":
            (folder / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask).save(folder / "masks" / f"{name}.png")
        rows.append({"file_name": f"{name}.png", "text": f"photo {name}", "mask": f"masks/{name}.png"})
    Image.fromarray(photo(np.full((48, 48), 255, np.uint8), 9)).save(folder / "c.png")  # green 0: all subject
    rows.append({"file_name": "c.png", "text": "photo c", "mask": None})
    if source == "metadata":
        (folder / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def attached(data, max_steps: int):
    data.trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False)
    data.setup("fit")
    return data


def masked_data(folder: Path, source: str, **options):
    options = {"resolution": RESOLUTION, "center_crop": False, "random_flip": 0.5, "mask_weight": 0.25, **options}
    if source == "metadata":
        return CaptionDataModule(str(folder), **options)
    return SubjectDataModule(str(folder), PROMPT, **options)


def expected_weights(pixels: torch.Tensor, mask_weight: float) -> torch.Tensor:
    """The loss weights (1, R, R) that an example's own pixels imply: its mask is ``255 - green``."""
    green = (pixels[1] + 1) * 127.5
    return (mask_weight + (1 - mask_weight) * (1 - green / 255))[None]


@pytest.mark.parametrize("source", ["sibling", "alpha", "metadata"])
def test_each_mask_source_is_resized_cropped_and_mirrored_as_its_image(tmp_path, source):
    write_masked_images(tmp_path / "data", source)
    with pytest.warns(UserWarning, match=r"1 of 3 images in .* have no mask and train on every pixel: c\.png"):
        data = attached(masked_data(tmp_path / "data", source), max_steps=12)
    batches = [*data.train_dataloader(), *data.val_dataloader()]
    examples = [(b["pixel_values"][0], b["loss_mask"][0], b["crop_top_left"][0]) for b in batches]
    for pixels, weights, _ in examples:
        assert weights.shape == (1, RESOLUTION, RESOLUTION)
        # resized with the image's filter, so equal up to the rounding of each to 8 bits
        torch.testing.assert_close(weights, expected_weights(pixels, 0.25), atol=2 / 255, rtol=0)
    assert {round(float(w.min()), 6) for _, w, _ in examples} >= {0.25, 1.0}  # c's examples weigh every pixel 1
    assert len({tuple(corner.tolist()) for _, _, corner in examples}) > 3  # random crops, mirrored or not
    with pytest.warns(UserWarning, match="have no mask"):
        mirrored = attached(masked_data(tmp_path / "data", source, random_flip=1.0), max_steps=12)
        plain = attached(masked_data(tmp_path / "data", source, random_flip=0.0), max_steps=12)
    for flipped, unflipped in zip(mirrored.train_dataloader(), plain.train_dataloader(), strict=True):
        assert torch.equal(flipped["pixel_values"], unflipped["pixel_values"].flip(-1))  # the same crop, mirrored
        assert torch.equal(flipped["loss_mask"], unflipped["loss_mask"].flip(-1))


def test_masks_are_not_images_and_are_not_read_without_mask_weight(tmp_path):
    write_masked_images(tmp_path / "data", "sibling")
    assert [path.name for path in list_images(tmp_path / "data", "data.instance_dir")] == ["a.png", "b.png", "c.png"]
    assert [path.name for path in image_files(tmp_path / "data")] == ["a.png", "b.png", "c.png"]
    data = attached(masked_data(tmp_path / "data", "sibling", mask_weight=None), max_steps=2)
    assert len(data.images) == 3 and data.masks == []
    assert "loss_mask" not in next(iter(data.train_dataloader()))


def test_class_images_are_never_masked(tmp_path):
    write_masked_images(tmp_path / "data", "sibling")
    (tmp_path / "data" / "c.png").unlink()
    write_toy_class(tmp_path / "classes", num_images=2, size=64)
    data = masked_data(
        tmp_path / "data",
        "sibling",
        mask_weight=0.0,
        class_prompt="a photo of a toy",
        class_dir=str(tmp_path / "classes"),
    )
    data.prepare_class_images = lambda: class_image_order(image_files(tmp_path / "classes"), 2)
    batch = next(iter(attached(data, max_steps=1).train_dataloader()))
    is_prior = batch["is_prior"].bool()
    assert torch.equal(batch["loss_mask"][is_prior], torch.ones(1, 1, RESOLUTION, RESOLUTION))
    assert batch["loss_mask"][~is_prior].min() == 0


def test_bad_masks_are_named_before_training(tmp_path):
    write_masked_images(tmp_path / "data", "sibling")
    folder = tmp_path / "data"
    with pytest.raises(UserError, match=r"data\.mask_weight is the loss weight of background pixels, in \[0, 1\]"):
        masked_data(folder, "sibling", mask_weight=1.5)
    Image.new("L", (10, 10)).save(folder / "a_mask.png")
    message = r"mask \S*a_mask\.png is 10x10 but its image \S*a\.png is 64x48; a mask must have its image's size"
    with pytest.raises(ImageDataError, match=message):
        masked_data(folder, "sibling").check()
    (folder / "a_mask.png").write_bytes(b"not a png")
    with pytest.raises(ImageDataError, match=r"mask \S*a_mask\.png could not be read .*write it as a greyscale PNG"):
        masked_data(folder, "sibling").check()
    for name in ("a", "b"):
        (folder / f"{name}_mask.png").unlink()
    with pytest.raises(UserError, match=r"data\.mask_weight is set but no image in \S* has a mask"):
        masked_data(folder, "sibling").check()
    write_masked_images(tmp_path / "captions", "metadata")
    (tmp_path / "captions" / "masks" / "b.png").unlink()
    message = r"metadata\.jsonl line 2: mask 'masks/b\.png' does not exist"
    with pytest.raises(UserError, match=message):
        masked_data(tmp_path / "captions", "metadata").check()


# -- the loss ----------------------------------------------------------------------------------------------------------


def test_latent_loss_mask_averages_the_pixels_of_each_latent_pixel():
    pixels = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    latent = latent_loss_mask(pixels.view(1, 1, 4, 4), (2, 2))
    assert latent.flatten().tolist() == [0.75, 0.0, 0.0, 1.0]
    assert latent_loss_mask(pixels.view(1, 1, 4, 4), (1, 1)).item() == 7 / 16  # a factor of 4 as readily as 2


def test_masked_mse_is_the_weighted_mean_over_the_weights_sum():
    target = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2 channels, 1, 2): squared errors 1, 4, 9, 16
    weights = torch.tensor([[[[1.0, 0.5]]]])
    # (1 + 0.5 * 4 + 9 + 0.5 * 16) / (1 + 0.5 + 1 + 0.5)
    assert masked_mse(torch.zeros_like(target), target, weights).item() == pytest.approx(20 / 3)
    assert masked_mse(torch.zeros_like(target), target, torch.zeros_like(weights)).item() == 0
    prediction = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        masked_mse(prediction, torch.zeros_like(prediction), torch.ones(3, 1, 5, 5)),
        per_example_mse(prediction, torch.zeros_like(prediction)),
    )


def test_examples_without_a_loss_mask_weigh_every_pixel_beside_ones_with_one():
    plain = NoisedLatents(torch.zeros(1, 4, 2, 2), torch.zeros(1), torch.zeros(1, 4, 2, 2))
    masked = NoisedLatents(
        torch.zeros(1, 4, 2, 2), torch.zeros(1), torch.zeros(1, 4, 2, 2), loss_mask=torch.zeros(1, 1, 2, 2)
    )
    assert NoisedLatents.cat([plain, plain]).loss_mask is None
    assert NoisedLatents.cat([masked, plain]).loss_mask.flatten().tolist() == [0.0] * 4 + [1.0] * 4


def background_step_gradients(model, mask_weight: float | None, background_target: float) -> dict[str, torch.Tensor]:
    """The trained parameters' gradients of one real ``training_step`` on two 32 px examples whose left half is the
    subject (``mask_weight`` on the right half; None: no mask), with ``background_target`` added to the target of
    every latent pixel of the right half: what the background would teach."""
    pixels = torch.rand(2, 3, RESOLUTION, RESOLUTION, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = {"pixel_values": pixels, "prompts": [PROMPT] * 2, "position": torch.arange(2)}
    if mask_weight is not None:
        weights = torch.full((2, 1, RESOLUTION, RESOLUTION), mask_weight)
        weights[..., : RESOLUTION // 2] = 1.0
        batch["loss_mask"] = weights
    family, noise_latents = model.family, model.family.noise_latents

    def with_background_target(*args) -> NoisedLatents:
        noised = noise_latents(*args)
        noised.target[..., noised.target.shape[-1] // 2 :] += background_target  # the right half of the latents
        return noised

    family.noise_latents = with_background_target
    model.zero_grad()
    model.training_step(batch, 0).backward()
    family.noise_latents = noise_latents
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.requires_grad}


@pytest.mark.parametrize(
    ("family_class", "fixture"),
    [(StableDiffusion, "tiny_sd1"), (Flux, "tiny_flux"), (Flux2Klein, "tiny_flux2_klein")],
)
def test_a_background_weighted_zero_changes_no_gradient(family_class, fixture, request):
    model = lora_tuner(family_class(str(request.getfixturevalue(fixture))), cache="off")
    model.configure_model()
    model.log = lambda *args, **kwargs: None  # a training step outside a fit
    masked = background_step_gradients(model, 0.0, 0.0)
    assert sum(grad.abs().sum() for grad in masked.values()) > 0  # (the A matrices get none while B is zero)
    moved = background_step_gradients(model, 0.0, 5.0)
    assert all(torch.equal(moved[name], grad) for name, grad in masked.items())
    for mask_weight in (None, 0.1):  # the background counts: its target moves the gradient
        counted = background_step_gradients(model, mask_weight, 0.0)
        changed = background_step_gradients(model, mask_weight, 5.0)
        assert any(not torch.allclose(changed[name], grad) for name, grad in counted.items())


def test_the_loss_falls_with_masks(tiny_sd1, subject_dir, tmp_path):
    folder = tmp_path / "subject"
    shutil.copytree(subject_dir, folder)
    disc = np.hypot(*np.mgrid[-32:32, -32:32]) < 20
    for path in list_images(folder, "data.instance_dir"):
        Image.fromarray((disc * 255).astype(np.uint8)).save(folder / f"{path.stem}_mask.png")
    data = subject_data(folder, mask_weight=0.1)
    trained = fit(lora_tuner(tiny_sd1, lr=1e-2), data, tmp_path / "run", steps=4)
    assert trained.loss_after < trained.loss_before
