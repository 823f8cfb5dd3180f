"""A subject to learn: a folder of its photos and the prompt that names it (DreamBooth's instance data)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from sdft import assets
from sdft.batches import collate_pairs
from sdft.data.buckets import BucketPlan, bucket_sizes, plan_buckets
from sdft.data.class_images import ClassImageSpec, class_image_order, default_class_dir, ensure_class_images
from sdft.data.images import (
    check_data_options,
    check_folder,
    image_files,
    list_images,
    read_resized,
    warn_duplicate_images,
)
from sdft.data.masks import LossMasks, check_mask_weight, read_masks
from sdft.data.notices import grouped_file_warnings
from sdft.data.sampling import AugmentedImages, Example, examples_per_step, train_loader
from sdft.data.templates import prompt_templates as prompt_templates_of
from sdft.errors import UserError
from sdft.objectives import step_seed

#: seed stream of the class examples' order and augmentation, apart from the instance examples'
CLASS_STREAM = 2


class PriorPreservationExamples(Dataset):
    """Run position -> an instance example and a class example, which :func:`sdft.batches.collate_pairs` batches
    as B instance examples followed by B class examples, with an ``is_prior`` mask, for any batch size B."""

    def __init__(self, instances: AugmentedImages, classes: AugmentedImages) -> None:
        self.instances, self.classes = instances, classes

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, position: int) -> tuple[Example, Example]:
        return self.instances[position], self.classes[position]


def check_class_options(
    class_prompt: str | None, class_dir: str | None, count: int, steps: int, batch_size: int
) -> None:
    """Reject prior-preservation options that cannot work, naming the ``data.`` key and the fix.

    Args:
        class_prompt: the prompt of the class images, or None (no prior preservation).
        class_dir: the folder of class images, or None (a cache folder).
        count: ``data.num_class_images``.
        steps: ``data.class_generation_steps``.
        batch_size: ``data.class_generation_batch_size``.
    """
    if class_prompt is not None and not class_prompt.strip():
        raise UserError("data.class_prompt is empty; name the subject's class, e.g. 'a photo of a dog'")
    if class_dir is not None and class_prompt is None:
        raise UserError(
            "data.class_dir is set but data.class_prompt is not: prior preservation needs the prompt of the "
            "class images, e.g. class_prompt: 'a photo of a dog'"
        )
    if count < 1:
        raise UserError(f"data.num_class_images must be a positive integer, got {count}")
    if steps < 1:
        raise UserError(f"data.class_generation_steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise UserError(f"data.class_generation_batch_size must be at least 1, got {batch_size}")


class SubjectDataModule(LightningDataModule):
    """Photos of one subject and its instance prompt (``a photo of sks dog``), for DreamBooth-style training.

    Training draws ``trainer.max_steps`` batches by run position (see :mod:`sdft.data.sampling`); validation
    shows every photo once, centre-cropped and unflipped.

    With a ``class_prompt`` (prior preservation, DreamBooth) each batch also holds as many class images as instance
    images; class images come from ``class_dir`` and, where it holds fewer than ``num_class_images``, are generated
    by the base model before training (see :mod:`sdft.data.class_images`).

    With ``mask_weight`` each example carries its photo's mask as pixel loss weights (``loss_mask``, see
    :mod:`sdft.data.masks`), validation examples too, so that ``val/loss`` measures what training optimises.

    With ``buckets`` each photo trains in the aspect-ratio bucket nearest its own (see :mod:`sdft.data.buckets`)
    and every batch holds one bucket; class images are cropped into the bucket of their batch. Validation stays
    square at ``resolution``, so that ``val/loss`` compares with runs without buckets and a batch may mix photos
    of any shape.
    """

    def __init__(
        self,
        instance_dir: str,
        instance_prompt: str,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: float = 0.0,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        prompt_templates: str | list[str] | None = None,
        class_prompt: str | None = None,
        class_dir: str | None = None,
        num_class_images: int = 100,
        class_generation_steps: int = 30,
        class_generation_batch_size: int = 4,
        mask_weight: float | None = None,
        buckets: int | list[tuple[int, int]] | None = None,
    ) -> None:
        """
        Args:
            instance_dir: folder of the subject's photos (or ``builtin:toy-subject``).
            instance_prompt: the prompt that names the subject with a rare identifier, e.g. ``a photo of sks dog``;
                with ``prompt_templates``, the phrase that fills each template, e.g. ``<sks> dog``.
            resolution: side of the square training crops, in pixels.
            center_crop: crop the centre of each photo; otherwise a random crop per example.
            random_flip: probability of mirroring an example left-right.
            batch_size: examples per batch on each device.
            num_workers: data-loader worker processes.
            seed: seeds the order and augmentation of the examples.
            prompt_templates: draw each example's prompt from templates (textual inversion): ``object``,
                ``style``, or a list of templates with one ``{}``. Validation uses the first template.
            class_prompt: the prompt of the subject's class, e.g. ``a photo of a dog``; setting it turns prior
                preservation on.
            class_dir: folder of class images; missing ones are generated into it. None: a cache folder per
                base model, prompt, resolution and seed (``$SDFT_CACHE/class-images``), reused by later runs.
            num_class_images: class images to train with (100-200 is usual).
            class_generation_steps: sampler steps per generated class image.
            class_generation_batch_size: class images per pipeline call when generating.
            mask_weight: train with masks (``<stem>_mask.png`` beside a photo, or its alpha channel): the loss weight
                of background pixels, e.g. 0.1, or 0 for a background not learnt at all; a photo without a mask
                counts every pixel, class images are never masked. None: masks are not read.
            buckets: train each photo at the aspect ratio nearest its own instead of a square crop: a step in pixels
                (e.g. 64: every size with sides multiples of it, at most ``resolution ** 2`` pixels, from 1:2 to
                2:1) or the sizes as ``[width, height]`` pairs. None: square crops of side ``resolution``.
        """
        super().__init__()
        check_data_options(resolution, random_flip, batch_size, num_workers)
        check_mask_weight(mask_weight)
        #: the aspect-ratio buckets' (width, height); empty: square crops
        self.bucket_sizes = bucket_sizes(resolution, buckets)
        if not instance_prompt.strip():
            raise UserError("data.instance_prompt is empty; name the subject, e.g. 'a photo of sks dog'")
        check_class_options(
            class_prompt, class_dir, num_class_images, class_generation_steps, class_generation_batch_size
        )
        self.instance_dir, self.instance_prompt, self.resolution = instance_dir, instance_prompt, resolution
        self.center_crop, self.random_flip, self.batch_size = center_crop, random_flip, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.templates = (
            () if prompt_templates is None else prompt_templates_of(prompt_templates, "data.prompt_templates")
        )
        self.class_prompt, self.class_dir, self.num_class_images = class_prompt, class_dir, num_class_images
        self.class_generation_steps, self.class_generation_batch_size = (
            class_generation_steps,
            class_generation_batch_size,
        )
        self.mask_weight = mask_weight
        self.images: list[Image.Image] = []
        #: each photo's mask once read (None: the photo has none), when ``mask_weight`` is set
        self.masks: list[Image.Image | None] = []
        self.class_images: list[Image.Image] = []
        #: the class images already in ``class_dir``, decoded by :meth:`check` (None: not read yet)
        self.found_class_images: dict[Path, Image.Image] | None = None

    @property
    def prior_preservation(self) -> bool:
        """Whether batches carry class images (a class prompt is set)."""
        return self.class_prompt is not None

    def prepare_data(self) -> None:
        assets.resolve(self.instance_dir)
        if self.class_dir is not None:
            assets.resolve(self.class_dir)

    def check(self) -> None:
        """Read and check what a user may have got wrong, without a model: the photos (listed, duplicates warned
        about, decoded) and, with prior preservation, the class images already in ``class_dir``.

        The decoded images are kept for :meth:`setup`, so a second call, or ``setup`` after it, decodes nothing.
        """
        self.read_photos()
        if self.prior_preservation:
            self.read_class_folder()

    def setup(self, stage: str) -> None:
        self.read_photos()
        if stage == "fit" and self.prior_preservation and not self.class_images:
            self.read_class_folder()
            found = self.found_class_images
            paths = self.prepare_class_images()
            self.class_images = [found.pop(path) if path in found else self.read_image(path) for path in paths]
            found.clear()

    def read_image(self, path: Path) -> Image.Image:
        """One image decoded, checked against ``data.resolution`` and scaled to it."""
        return read_resized(path, self.resolution)

    def read_photos(self) -> None:
        """Decode the subject's photos and, with ``mask_weight``, their masks, once; identical files are warned
        about by name."""
        if self.images:
            return
        folder = Path(assets.resolve(self.instance_dir))
        photos = list_images(folder, "data.instance_dir")
        warn_duplicate_images(photos)
        with grouped_file_warnings():
            images = [self.read_image(path) for path in photos]
        if self.mask_weight is not None:
            self.masks = read_masks(photos, images, {}, folder)
        self.images = images

    def read_class_folder(self) -> None:
        """Decode the class images already in ``class_dir`` that training would use, once (none without one)."""
        if self.found_class_images is not None:
            return
        paths = []
        if self.class_dir is not None:
            folder = Path(assets.resolve(self.class_dir))
            if folder.exists():
                check_folder(folder, "data.class_dir")
            paths = class_image_order(image_files(folder), self.num_class_images)
            check_apart(Path(assets.resolve(self.instance_dir)), folder, paths)
        with grouped_file_warnings():
            self.found_class_images = {path: self.read_image(path) for path in paths}

    def class_image_spec(self) -> ClassImageSpec:
        return ClassImageSpec(
            self.class_prompt, self.num_class_images, self.resolution, self.seed, self.class_generation_steps
        )

    def prepare_class_images(self) -> list[Path]:
        """The class images to train with, generating missing ones with the trainer's base model (all ranks)."""
        trainer = self.trainer
        if trainer is None or trainer.lightning_module is None:
            raise RuntimeError("class images are prepared in setup() of a fit: attach the data module to a Trainer")
        family = trainer.lightning_module.family
        spec, device = self.class_image_spec(), trainer.strategy.root_device
        if self.class_dir is None:
            folder = default_class_dir(assets.cache_dir(), family.source(), spec)
        else:
            folder = Path(assets.resolve(self.class_dir))
        dtype = torch.float16 if device.type == "cuda" else None
        return ensure_class_images(
            folder,
            spec,
            family.source(),
            lambda: family.base_pipeline(device, dtype),
            key="data.class_dir",
            device=device,
            batch_size=self.class_generation_batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            barrier=trainer.strategy.barrier,
            sampling_options=family.sampling_options(),
            guidance_options=family.guidance_options,
        )

    def instance_dataset(self, augment: bool, buckets: BucketPlan | None = None) -> AugmentedImages:
        """The subject's examples, augmented as configured or (for validation) centre-cropped and unflipped; with
        ``buckets``, each cropped into its bucket."""
        prompts = [self.instance_prompt] * len(self.images)
        center_crop = self.center_crop or not augment
        flip = self.random_flip if augment else 0.0
        templates = self.templates if augment else self.templates[:1]
        masks = None if self.mask_weight is None else LossMasks(self.masks, self.mask_weight)
        return AugmentedImages(
            self.images,
            prompts,
            self.resolution,
            center_crop,
            flip,
            self.seed,
            templates,
            loss_masks=masks,
            buckets=buckets,
        )

    def class_dataset(self, buckets: BucketPlan | None = None) -> AugmentedImages:
        """The class examples: the class prompt on class images, augmented like the instance examples; with masks,
        a ``loss_mask`` of ones (class images are never masked); with the instances' ``buckets``, each cropped into
        the bucket of its step."""
        prompts, seed = [self.class_prompt] * len(self.class_images), step_seed(self.seed, CLASS_STREAM)
        masks = None if self.mask_weight is None else LossMasks.unmasked(len(self.class_images))
        shared = None if buckets is None else buckets.sharing(len(self.class_images))
        return AugmentedImages(
            self.class_images,
            prompts,
            self.resolution,
            self.center_crop,
            self.random_flip,
            seed,
            loss_masks=masks,
            buckets=shared,
        )

    def training_prompts(self) -> set[str]:
        """Every prompt a training or validation example can carry (the class prompt with prior preservation)."""
        prompts = self.instance_dataset(augment=True).possible_prompts()
        prompts |= self.instance_dataset(augment=False).possible_prompts()
        return prompts | ({self.class_prompt} if self.prior_preservation else set())

    def bucket_plan(self) -> BucketPlan | None:
        """The photos' buckets and the per-step draw of this fit (None without buckets)."""
        per_step = examples_per_step(self.trainer, self.batch_size)
        return plan_buckets(self.images, self.bucket_sizes, per_step, self.seed)

    def train_dataloader(self) -> DataLoader:
        buckets = self.bucket_plan()
        dataset, collate = self.instance_dataset(augment=True, buckets=buckets), default_collate
        if self.prior_preservation:
            dataset, collate = PriorPreservationExamples(dataset, self.class_dataset(buckets)), collate_pairs
        return train_loader(dataset, self.trainer, self.batch_size, self.num_workers, collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.instance_dataset(augment=False), batch_size=self.batch_size, num_workers=self.num_workers
        )


def check_apart(instance_dir: Path, class_dir: Path, class_paths: list[Path]) -> None:
    """Refuse class images that are the subject's photos: ``class_dir`` being ``instance_dir``, or a class image
    with the bytes of a photo. They would train the subject in as the class prior, which prior preservation exists
    to keep apart (and generated class images would land among the photos).

    Args:
        instance_dir: the folder of the subject's photos (``data.instance_dir``).
        class_dir: the folder of class images (``data.class_dir``).
        class_paths: the class images training would use.
    """
    fix = "class images are other members of the class, never the subject; give data.class_dir a folder of its own"
    if instance_dir.resolve() == class_dir.resolve():
        raise UserError(f"data.class_dir is data.instance_dir ({instance_dir}): {fix}")
    photos = {hashlib.sha256(path.read_bytes()).digest(): path for path in image_files(instance_dir)}
    for path in class_paths:
        if (photo := photos.get(hashlib.sha256(path.read_bytes()).digest())) is not None:
            raise UserError(f"class image {path} is the subject's photo {photo}: {fix}, or remove the copy")
