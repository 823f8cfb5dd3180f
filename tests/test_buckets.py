"""Aspect-ratio buckets: photos of three shapes train in three sizes, every batch of one size, drawn in proportion
to the buckets' photos, the same batches resumed or split over two ranks, with SDXL's crop conditioning, masks
and cache keys following the real crop."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from training import PROMPT, fit, lora_tuner, resumed_losses

from sdft.data import CaptionDataModule, SubjectDataModule
from sdft.data.buckets import BucketPlan, bucket_sizes, generated_buckets, nearest_bucket
from sdft.data.images import load_rgb, resize_to_cover
from sdft.errors import UserError
from sdft.families.stable_diffusion_xl import micro_conditioning

#: the photos' (width, height) in their files: three wide, two square, one tall
PHOTOS = ((96, 64), (108, 72), (120, 72), (64, 64), (70, 70), (64, 96))
#: the buckets of data.resolution 64 at a 16-pixel step, tall to wide
BUCKETS = [(48, 80), (64, 64), (80, 48)]


@pytest.fixture(scope="module")
def shaped_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photos of three aspect ratios, each a smooth pattern of its own, in grey (so a mask can equal a channel)."""
    folder = tmp_path_factory.mktemp("shaped")
    for index, (width, height) in enumerate(PHOTOS):
        y, x = np.mgrid[0:height, 0:width]
        grey = 127.5 + 127.5 * np.sin(x / (3.0 + index) + y / (5.0 + index) + index)
        Image.fromarray(grey.astype(np.uint8)).convert("RGB").save(folder / f"photo{index}.png")
        Image.fromarray(grey.astype(np.uint8)).save(folder / f"photo{index}_mask.png")
    return folder


def bucketed(folder: Path, **options) -> SubjectDataModule:
    options = {"resolution": 64, "buckets": 16, "batch_size": 2, "random_flip": 0.5, "center_crop": False, **options}
    return SubjectDataModule(str(folder), PROMPT, **options)


def attached(data, max_steps: int, world_size: int = 1, rank: int = 0, global_step: int = 0):
    """``data`` set up under a trainer's step counters and ranks, as its training loader reads them."""
    data.trainer = SimpleNamespace(
        max_steps=max_steps,
        global_step=global_step,
        world_size=world_size,
        global_rank=rank,
        accumulate_grad_batches=1,
    )
    data.setup("fit")
    return data


def test_generated_buckets_hold_at_most_the_square_pixels_between_1_2_and_2_1():
    assert generated_buckets(64, 16) == BUCKETS
    sdxl = generated_buckets(1024, 64)
    assert (1024, 1024) in sdxl and (1344, 768) in sdxl and (768, 1344) in sdxl and (1408, 704) in sdxl
    assert all(w * h <= 1024**2 and 0.5 <= w / h <= 2 and w % 64 == h % 64 == 0 for w, h in sdxl)
    assert [nearest_bucket(size, BUCKETS) for size in PHOTOS] == [2, 2, 2, 1, 1, 0]


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        (12, "data.buckets as a step must be a positive multiple of 8"),
        (128, "data.buckets step 128 exceeds data.resolution 64"),
        ([[64, 60]], "data.buckets: 64x60 needs sides that are positive multiples of 8 .* e.g. 64x64"),
        ([[64, 64], [64, 64]], "data.buckets lists a size twice"),
    ],
)
def test_bucket_mistakes_name_the_key_and_the_fix(buckets, message):
    with pytest.raises(UserError, match=message):
        bucket_sizes(64, buckets)


def test_batches_never_mix_buckets_and_each_bucket_is_drawn_as_often_as_its_photos(shaped_dir):
    batches = list(attached(bucketed(shaped_dir), max_steps=24).train_dataloader())
    sizes = [tuple(batch["pixel_values"].shape[2:]) for batch in batches]
    assert set(sizes) == {(80, 48), (64, 64), (48, 80)}  # (H, W) of the three buckets
    assert all(len(batch["pixel_values"]) == 2 for batch in batches)
    plan = BucketPlan.of_images(PHOTOS, BUCKETS, examples_per_step=2, seed=0)
    assert plan.members == ((5,), (3, 4), (0, 1, 2))
    drawn = Counter(plan.bucket_at(2 * step) for step in range(3000))
    assert [drawn[bucket] / 3000 for bucket in range(3)] == pytest.approx([1 / 6, 2 / 6, 3 / 6], abs=0.03)


def test_sdxl_conditioning_and_the_mask_follow_the_real_crop(shaped_dir):
    data = attached(bucketed(shaped_dir, mask_weight=0.0), max_steps=12)
    dataset = data.train_dataloader().dataset
    by_size = {image.info["original_size"]: index for index, image in enumerate(data.images)}  # sizes all differ
    for position in range(24):
        example = dataset[position]
        pixels, (top, left) = example["pixel_values"], example["crop_top_left"].tolist()
        height, width = pixels.shape[1:]
        index = by_size[tuple(example["original_size"].tolist())]
        photo = load_rgb(shaped_dir / f"photo{index}.png")
        assert example["original_size"].tolist() == [photo.height, photo.width]
        shown = resize_to_cover(data.images[index], (width, height))
        crop = torch.from_numpy(np.array(shown, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        flipped = not torch.equal(crop[:, top : top + height, left : left + width], pixels)
        if flipped:  # the corner is measured in the mirrored image
            mirrored = crop.flip(-1)
            assert torch.equal(mirrored[:, top : top + height, left : left + width], pixels)
        # a grey photo whose mask is its own grey: with mask_weight 0 the loss weights are the crop's pixels
        assert example["loss_mask"].shape == (1, height, width)
        assert example["loss_mask"][0] == pytest.approx((pixels[0] + 1) / 2, abs=1 / 255)
    time_ids = micro_conditioning(example["original_size"][None], example["crop_top_left"][None], (height, width))
    assert time_ids[0].tolist() == [photo.height, photo.width, top, left, height, width]


def test_two_ranks_take_disjoint_halves_of_the_global_batch_of_one_process(shaped_dir):
    alone = list(attached(bucketed(shaped_dir, batch_size=4), max_steps=6).train_dataloader())
    ranks = [list(attached(bucketed(shaped_dir), 6, world_size=2, rank=rank).train_dataloader()) for rank in (0, 1)]
    for step, batch in enumerate(alone):
        for rank, batches in enumerate(ranks):
            assert torch.equal(batches[step]["position"], batch["position"][rank::2])
            assert torch.equal(batches[step]["pixel_values"], batch["pixel_values"][rank::2])
    assert len({tuple(batch["pixel_values"].shape[2:]) for batch in alone}) > 1


def test_a_resumed_fit_logs_the_uninterrupted_losses(shaped_dir, tiny_sd1, tmp_path):
    torch.manual_seed(0)
    straight = fit(lora_tuner(tiny_sd1), bucketed(shaped_dir), tmp_path / "straight", steps=6, every=3)
    resumed = resumed_losses(
        lora_tuner(tiny_sd1), bucketed(shaped_dir), tmp_path / "resumed", 6, straight.checkpoint(3)
    )
    assert sorted(resumed) == [4, 5, 6]
    assert resumed == pytest.approx({step: straight.losses[step] for step in (4, 5, 6)}, rel=1e-6)


def test_another_bucket_is_another_cache_key(shaped_dir):
    square = attached(bucketed(shaped_dir, buckets=None, center_crop=True), max_steps=6).train_dataloader().dataset
    buckets = attached(bucketed(shaped_dir, center_crop=True), max_steps=6).train_dataloader().dataset
    keys = {}
    for dataset, name in ((square, "square"), (buckets, "buckets")):
        for position in range(12):
            example = dataset[position]
            keys.setdefault(int(example["original_size"].prod()), {})[name] = example["image_key"]
    wide = keys[96 * 64]
    assert wide["square"].endswith("(3, 64, 64)") and wide["buckets"].endswith("(3, 48, 80)")


def test_captioned_images_and_class_images_train_in_their_batch_bucket(shaped_dir, tmp_path):
    for path in shaped_dir.glob("photo?.png"):
        (shaped_dir / path.with_suffix(".txt").name).write_text(f"a pattern {path.stem}")
    captions = attached(CaptionDataModule(str(shaped_dir), resolution=64, buckets=16, batch_size=2), 12)
    sizes = {tuple(batch["pixel_values"].shape[2:]) for batch in captions.train_dataloader()}
    assert sizes == {(80, 48), (64, 64), (48, 80)}
    classes = tmp_path / "classes"
    classes.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (40 * index, 90, 200)).save(classes / f"{index:04d}.png")
    options = {"class_prompt": "a pattern", "class_dir": str(classes), "num_class_images": 2}
    data = bucketed(shaped_dir, **options)
    data.prepare_class_images = lambda: sorted(classes.iterdir())  # the class images are there: none to generate
    batches = list(attached(data, max_steps=12).train_dataloader())  # collated: instances and classes of one size
    assert all(batch["is_prior"].tolist() == [False, False, True, True] for batch in batches)
    assert {tuple(batch["pixel_values"].shape[2:]) for batch in batches} == {(80, 48), (64, 64), (48, 80)}
