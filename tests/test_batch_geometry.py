"""Every example carries the size its image had in the file and where its crop lies, measured from the real resize
and crop (SDXL is conditioned on both); batches split and join whatever keys they hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdft.batches import cat_batches, collate_pairs, split_prior
from sdft.data.images import read_resized
from sdft.data.sampling import AugmentedImages


def write_ramp(path, width: int, height: int) -> None:
    """An image whose red channel is its column index and green its row index (so a crop can be located)."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    pixels = np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize(("center_crop", "flip"), [(True, 0.0), (False, 0.0), (False, 1.0)])
def test_examples_carry_the_original_size_and_the_crop_they_show(tmp_path, center_crop, flip):
    write_ramp(tmp_path / "wide.png", width=192, height=128)  # read at 64 px: 96 x 64, so crops slide along x
    image = read_resized(tmp_path / "wide.png", 64)
    examples = AugmentedImages([image], ["p"], 64, center_crop, flip, seed=0)
    lefts = set()
    for position in range(6):
        example = examples[position]
        assert example["original_size"].tolist() == [128, 192]
        top, left = example["crop_top_left"].tolist()
        shown = ((example["pixel_values"] + 1) * 127.5).round()
        columns = shown[0, 0]  # red of the first row: 2 x (column in the resized image), blurred by resizing
        unflipped = columns.flip(0) if flip else columns
        resized_left = 96 - 64 - left if flip else left  # the shown left corner, mirrored back
        assert top == 0
        assert abs(float(unflipped[0]) / 2 - resized_left) <= 1.5
        lefts.add(left)
    assert (lefts == {16}) if center_crop else len(lefts) > 1


def test_prior_batches_split_and_join_every_key():
    def example(value: float, prompt: str) -> dict:
        return {
            "pixel_values": torch.full((3, 2, 2), value),
            "prompts": prompt,
            "original_size": torch.tensor([int(value), 1]),
            "crop_top_left": torch.tensor([0, int(value)]),
        }

    batch = collate_pairs([(example(1, "a"), example(10, "c1")), (example(2, "b"), example(20, "c2"))])
    assert batch["prompts"] == ["a", "b", "c1", "c2"] and batch["is_prior"].tolist() == [False, False, True, True]
    instance, prior = split_prior(batch)
    assert instance["prompts"] == ["a", "b"] and prior["crop_top_left"].tolist() == [[0, 10], [0, 20]]
    assert set(instance) == set(prior) == {"pixel_values", "prompts", "original_size", "crop_top_left"}
    joined = cat_batches([instance, prior])
    assert joined["original_size"][:, 0].tolist() == [1, 2, 10, 20] and joined["prompts"] == batch["prompts"]
