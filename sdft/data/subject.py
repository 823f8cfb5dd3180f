"""A subject to learn: a folder of its photos and the prompt that names it (DreamBooth's instance data)."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sdft import assets
from sdft.data.images import check_resolution, list_images, load_rgb, prepare_image, resize_short_side
from sdft.data.sampling import RunSampler, item_at
from sdft.data.templates import prompt_templates as prompt_templates_of
from sdft.objectives import step_seed

Example = dict[str, torch.Tensor | str]


class SubjectImages(Dataset):
    """Run position -> one augmented example ``{"pixel_values": (3, R, R) in [-1, 1], "prompts": str}``.

    Images are decoded once and kept with their short side at the resolution; crops, flips and (with templates)
    prompts are drawn per position from a seeded generator, so an example depends on the position alone.
    """

    def __init__(
        self,
        images: list[Image.Image],
        prompt: str,
        resolution: int,
        center_crop: bool,
        flip_probability: float,
        seed: int,
        templates: tuple[str, ...] = (),
    ) -> None:
        """
        Args:
            images: decoded photos, short side at ``resolution``.
            prompt: the prompt of every example, or with ``templates`` the phrase that fills their ``{}``.
            resolution: side of the square crops.
            center_crop: crop the centre; otherwise a random crop per position.
            flip_probability: probability of a left-right mirror per position.
            seed: seeds the order and augmentation.
            templates: prompt templates, one drawn per position; empty uses ``prompt`` as it is.
        """
        self.images, self.prompt, self.resolution = images, prompt, resolution
        self.center_crop, self.flip_probability, self.seed = center_crop, flip_probability, seed
        self.templates = templates

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> Example:
        generator = torch.Generator().manual_seed(step_seed(self.seed, position, 1))
        flip = bool(torch.rand((), generator=generator) < self.flip_probability)
        image = self.images[item_at(position, len(self.images), self.seed)]
        pixels = prepare_image(image, self.resolution, self.center_crop, flip, generator)
        if not self.templates:
            return {"pixel_values": pixels, "prompts": self.prompt}
        template = self.templates[int(torch.randint(len(self.templates), (), generator=generator))]
        return {"pixel_values": pixels, "prompts": template.format(self.prompt)}


class SubjectDataModule(LightningDataModule):
    """Photos of one subject and its instance prompt (``a photo of sks dog``), for DreamBooth-style training.

    Training draws ``trainer.max_steps`` batches by run position (see :mod:`sdft.data.sampling`); validation
    shows every photo once, centre-cropped and unflipped.
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
        """
        super().__init__()
        if not instance_prompt.strip():
            raise ValueError("data.instance_prompt is empty; name the subject, e.g. 'a photo of sks dog'")
        if not 0.0 <= random_flip <= 1.0:
            raise ValueError(f"data.random_flip is a probability in [0, 1], got {random_flip}")
        self.instance_dir, self.instance_prompt, self.resolution = instance_dir, instance_prompt, resolution
        self.center_crop, self.random_flip, self.batch_size = center_crop, random_flip, batch_size
        self.num_workers, self.seed = num_workers, seed
        self.templates = (
            () if prompt_templates is None else prompt_templates_of(prompt_templates, "data.prompt_templates")
        )
        self.images: list[Image.Image] = []

    def prepare_data(self) -> None:
        assets.resolve(self.instance_dir)

    def setup(self, stage: str) -> None:
        if not self.images:
            self.images = read_subject(Path(assets.resolve(self.instance_dir)), self.resolution, "data.instance_dir")

    def instance_dataset(self, augment: bool) -> SubjectImages:
        """The subject's examples, augmented as configured or (for validation) centre-cropped and unflipped."""
        center_crop = self.center_crop or not augment
        flip = self.random_flip if augment else 0.0
        templates = self.templates if augment else self.templates[:1]
        return SubjectImages(
            self.images, self.instance_prompt, self.resolution, center_crop, flip, self.seed, templates
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer.max_steps < 1:
            raise ValueError("trainer.max_steps is not set; sdft trains for a number of steps, e.g. max_steps: 1000")
        per_step = self.batch_size * trainer.accumulate_grad_batches * trainer.world_size
        sampler = RunSampler(
            trainer.global_step * per_step,
            trainer.max_steps * per_step,
            trainer.world_size,
            trainer.global_rank,
        )
        return DataLoader(
            self.instance_dataset(augment=True),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.instance_dataset(augment=False), batch_size=self.batch_size, num_workers=self.num_workers
        )


def read_subject(folder: Path, resolution: int, key: str) -> list[Image.Image]:
    """Decode and check every photo in ``folder``; keep each with its short side scaled to ``resolution``.

    Args:
        folder: the photo folder.
        resolution: the training resolution; photos far smaller are rejected, smaller ones warned about.
        key: the config key that named the folder, for messages.
    """
    images = []
    for path in list_images(folder, key):
        image = load_rgb(path)
        check_resolution(path, image.size, resolution, "data.resolution")
        images.append(resize_short_side(image, resolution))
    return images
