"""A captioned image set for text-to-image fine-tuning (LoRA or full): every image trains with its own caption.

Two layouts are read, chosen by ``caption_source``:

- ``metadata``: a ``metadata.jsonl`` in the folder, one JSON object per line with ``file_name`` (the image's path
  relative to the folder) and ``text`` (its caption): the Hugging Face ``imagefolder`` layout that diffusers'
  ``train_text_to_image`` reads;
- ``txt``: a ``.txt`` file beside each image with the same stem (``cat.png`` and ``cat.txt``);
- ``auto`` (default): ``metadata`` when ``metadata.jsonl`` exists, else ``txt``.

With ``mask_weight``, an image's mask (:mod:`sdft.data.masks`) is the file its row names under ``mask`` (relative to
the folder), else ``<stem>_mask.png`` beside it, else its alpha channel.

Empty captions are allowed (the image then trains unconditionally, as caption dropout does) but warned about by
file; a set whose captions are all empty is an error. An image listed twice in ``metadata.jsonl``, or two files
with identical bytes, are warned about by name. Examples follow the step-indexed scheme of
:mod:`sdft.data.sampling`: the image, its crop and flip, and whether its caption is dropped depend only on the run
position and the seed, so a resumed run sees exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader

from sdft import assets
from sdft.data.buckets import BucketPlan, bucket_sizes, plan_buckets
from sdft.data.images import (
    check_data_options,
    check_folder,
    check_probability,
    image_files,
    list_images,
    read_resized,
    warn_duplicate_images,
)
from sdft.data.masks import LossMasks, check_mask_weight, read_masks
from sdft.data.notices import group_line, grouped_file_warnings
from sdft.data.sampling import AugmentedImages, examples_per_step, train_loader
from sdft.errors import UserError

Captioned = list[tuple[Path, str]]

METADATA = "metadata.jsonl"
CAPTION_SOURCES = ("auto", "metadata", "txt")
ROW_EXAMPLE = '{"file_name": "cat.png", "text": "a photo of a cat on a sofa"}'
NAMES_SHOWN = 5


class CaptionDataError(UserError):
    """A caption file or metadata row that cannot be used; the message names the file and the fix."""


class CaptionDataModule(LightningDataModule):
    """A folder of captioned images, for text-to-image fine-tuning: each image trains with its own caption.

    Training draws ``trainer.max_steps`` batches by run position (see :mod:`sdft.data.sampling`); validation
    shows every image once, centre-cropped and unflipped, with its caption (and its mask, with ``mask_weight``).

    With ``buckets`` each image trains in the aspect-ratio bucket nearest its own (see :mod:`sdft.data.buckets`)
    and every batch holds one bucket. Validation stays square at ``resolution``, so that ``val/loss`` compares with
    runs without buckets and a batch may mix images of any shape.
    """

    def __init__(
        self,
        data_dir: str,
        caption_source: str = "auto",
        caption_dropout: float = 0.0,
        resolution: int = 512,
        center_crop: bool = True,
        random_flip: float = 0.0,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        mask_weight: float | None = None,
        buckets: int | list[tuple[int, int]] | None = None,
    ) -> None:
        """
        Args:
            data_dir: folder of images and their captions (or ``builtin:toy-captions``).
            caption_source: ``metadata`` (``metadata.jsonl`` rows of ``file_name`` and ``text``), ``txt`` (a
                ``.txt`` beside each image) or ``auto`` (``metadata.jsonl`` if present, else ``.txt`` files).
            caption_dropout: probability of training an example on the empty caption (keeps guidance working).
            resolution: side of the square training crops, in pixels.
            center_crop: crop the centre of each image; otherwise a random crop per example.
            random_flip: probability of mirroring an example left-right (avoid for text or asymmetric subjects).
            batch_size: examples per batch on each device.
            num_workers: data-loader worker processes.
            seed: seeds the order, augmentation and caption dropout of the examples.
            mask_weight: train with masks (a ``mask`` in the image's metadata row, ``<stem>_mask.png`` beside it,
                or its alpha channel): the loss weight of background pixels, e.g. 0.1, or 0 for a background not
                learnt at all; an image without a mask counts every pixel. None: masks are not read.
            buckets: train each image at the aspect ratio nearest its own instead of a square crop: a step in pixels
                (e.g. 64: every size with sides multiples of it, at most ``resolution ** 2`` pixels, from 1:2 to
                2:1) or the sizes as ``[width, height]`` pairs. None: square crops of side ``resolution``.
        """
        super().__init__()
        if caption_source not in CAPTION_SOURCES:
            raise UserError(f"data.caption_source must be one of {', '.join(CAPTION_SOURCES)}, got {caption_source!r}")
        check_probability("data.caption_dropout", caption_dropout)
        check_data_options(resolution, random_flip, batch_size, num_workers)
        check_mask_weight(mask_weight)
        #: the aspect-ratio buckets' (width, height); empty: square crops
        self.bucket_sizes = bucket_sizes(resolution, buckets)
        self.data_dir, self.caption_source, self.caption_dropout = data_dir, caption_source, caption_dropout
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.mask_weight = mask_weight
        self.images: list[Image.Image] = []
        #: each example's mask (None: its image has none), when ``mask_weight`` is set
        self.masks: list[Image.Image | None] = []
        self.captions: list[str] = []
        self.files: list[Path] = []

    def prepare_data(self) -> None:
        assets.resolve(self.data_dir)

    def check(self) -> None:
        """Read and check what a user may have got wrong, without a model: the captions (rows, files, empty and
        repeated entries, identical images) and the images, decoded.

        The decoded images are kept for :meth:`setup`, so a second call, or ``setup`` after it, decodes nothing.
        """
        if self.images:
            return
        folder = Path(assets.resolve(self.data_dir))
        pairs = read_captions(folder, self.caption_source)
        with grouped_file_warnings():
            decoded = {path: read_resized(path, self.resolution) for path in dict.fromkeys(path for path, _ in pairs)}
        self.files = [path for path, _ in pairs]
        self.captions = [caption for _, caption in pairs]
        if self.mask_weight is not None:
            metadata = metadata_file(folder, self.caption_source)
            named = {} if metadata is None else metadata_masks(metadata)
            masks = dict(zip(decoded, read_masks(list(decoded), list(decoded.values()), named, folder), strict=True))
            self.masks = [masks[path] for path in self.files]
        self.images = [decoded[path] for path in self.files]

    def setup(self, stage: str) -> None:
        self.check()

    def dataset(self, augment: bool, buckets: BucketPlan | None = None) -> AugmentedImages:
        """The examples, augmented as configured or (for validation) centre-cropped, unflipped, never dropped; with
        ``buckets``, each cropped into its bucket."""
        return AugmentedImages(
            self.images,
            self.captions,
            self.resolution,
            self.center_crop or not augment,
            self.random_flip if augment else 0.0,
            self.seed,
            caption_dropout=self.caption_dropout if augment else 0.0,
            loss_masks=None if self.mask_weight is None else LossMasks(self.masks, self.mask_weight),
            buckets=buckets,
        )

    def training_prompts(self) -> set[str]:
        """Every prompt a training or validation example can carry: each caption, and ``""`` where they drop."""
        return self.dataset(augment=True).possible_prompts() | self.dataset(augment=False).possible_prompts()

    def train_dataloader(self) -> DataLoader:
        buckets = plan_buckets(
            self.images, self.bucket_sizes, examples_per_step(self.trainer, self.batch_size), self.seed
        )
        dataset = self.dataset(augment=True, buckets=buckets)
        return train_loader(dataset, self.trainer, self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset(augment=False), batch_size=self.batch_size, num_workers=self.num_workers)


# -- reading captions -------------------------------------------------------------------------------------------------


def read_captions(folder: Path, source: str) -> Captioned:
    """The (image file, caption) pairs of a captioned folder, checked; empty captions warned about by file.

    Args:
        folder: the data folder.
        source: ``metadata``, ``txt`` or ``auto`` (see the module docstring).
    """
    check_folder(folder, "data.data_dir")
    metadata = metadata_file(folder, source)
    pairs = read_txt_captions(folder, source) if metadata is None else read_metadata(metadata)
    check_captions(pairs, folder)
    warn_duplicate_images(list(dict.fromkeys(path for path, _ in pairs)))
    return pairs


def metadata_file(folder: Path, source: str) -> Path | None:
    """The ``metadata.jsonl`` a caption source reads (it may not exist for ``metadata``); None for ``.txt`` captions.

    Args:
        folder: the data folder.
        source: ``metadata``, ``txt`` or ``auto`` (see the module docstring).
    """
    if source == "metadata" or (source == "auto" and (folder / METADATA).is_file()):
        return folder / METADATA
    return None


def read_metadata(metadata: Path) -> Captioned:
    """The rows of a ``metadata.jsonl``: image files (relative to its folder) and their captions.

    Args:
        metadata: the ``metadata.jsonl`` file.
    """
    if not metadata.is_file():
        nested = sorted(str(path.parent) for path in metadata.parent.glob(f"*/{METADATA}"))
        hint = f" (found one in {', '.join(nested)}: point data.data_dir there)" if nested else ""
        raise CaptionDataError(
            f"{metadata} does not exist{hint}; data.caption_source=metadata needs one JSON object per line like "
            f"{ROW_EXAMPLE}; write it, or set data.caption_source to txt for .txt captions beside the images"
        )
    lines = read_text(metadata).splitlines()
    numbers = [number for number, line in enumerate(lines, start=1) if line.strip()]
    pairs = [metadata_row(metadata, number, lines[number - 1]) for number in numbers]
    if not pairs:
        raise CaptionDataError(f"{metadata} has no rows; add one line per image like {ROW_EXAMPLE}")
    warn_unlisted_images(metadata.parent, {path.resolve() for path, _ in pairs})
    warn_repeated_rows(metadata, numbers, pairs)
    return pairs


def metadata_row(metadata: Path, number: int, line: str) -> tuple[Path, str]:
    """One line of ``metadata.jsonl`` -> (image file, caption); the errors name the file and line.

    Args:
        metadata: the ``metadata.jsonl`` file, for messages and to resolve ``file_name``.
        number: the line number, from 1.
        line: the line's text.
    """
    where = f"{metadata} line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise CaptionDataError(
            f"{where} is not valid JSON ({error.msg}, column {error.colno}); each line must be one object like "
            f"{ROW_EXAMPLE}"
        ) from error
    if not isinstance(row, dict):
        raise CaptionDataError(f"{where} is a JSON {type(row).__name__}, not an object like {ROW_EXAMPLE}")
    missing = [key for key in ("file_name", "text") if key not in row]
    if missing:
        raise CaptionDataError(
            f"{where} has no {' and no '.join(missing)} key; every row needs file_name (the image's path relative "
            f"to data.data_dir) and text (its caption), like {ROW_EXAMPLE}"
        )
    for key in ("file_name", "text"):
        if not isinstance(row[key], str):
            raise CaptionDataError(f"{where}: {key} must be a string, got {json.dumps(row[key])}")
    image = metadata.parent / row["file_name"]
    if not image.is_file():
        raise CaptionDataError(
            f"{where}: file_name {row['file_name']!r} does not exist ({image}); fix the path (relative to "
            f"data.data_dir) or remove the row"
        )
    return image, row["text"].strip()


def metadata_masks(metadata: Path) -> dict[Path, Path]:
    """The mask files that the rows of a (checked) ``metadata.jsonl`` name under ``mask``, by image file; a row
    without one, or with null, names none. The errors name the file and line.

    Args:
        metadata: the ``metadata.jsonl`` file, read by :func:`read_metadata`.
    """
    masks = {}
    for number, line in enumerate(read_text(metadata).splitlines(), start=1):
        row = json.loads(line) if line.strip() else {}
        if row.get("mask") is None:
            continue
        where, mask = f"{metadata} line {number}", row["mask"]
        if not isinstance(mask, str):
            raise CaptionDataError(f"{where}: mask must be a string (a path relative to data.data_dir) or null")
        if not (metadata.parent / mask).is_file():
            raise CaptionDataError(
                f"{where}: mask {mask!r} does not exist ({metadata.parent / mask}); fix the path (relative to "
                f"data.data_dir) or remove the key"
            )
        masks[metadata.parent / row["file_name"]] = metadata.parent / mask
    return masks


def read_txt_captions(folder: Path, source: str) -> Captioned:
    """Every image of ``folder`` with the caption in the ``.txt`` file of the same stem beside it.

    Args:
        folder: the data folder.
        source: the configured caption source (``txt`` or ``auto``), for messages.
    """
    images = list_images(folder, "data.data_dir")
    uncaptioned = [path.name for path in images if not path.with_suffix(".txt").is_file()]
    if uncaptioned:
        context = f"there is no {METADATA} and " if source == "auto" else ""
        raise CaptionDataError(
            f"data.caption_source={source}: {context}{len(uncaptioned)} of {len(images)} images in {folder} have no "
            f".txt caption beside them: {names(uncaptioned)}; write <image stem>.txt next to each (cat.png -> "
            f"cat.txt), or list the images with their captions in {folder / METADATA}"
        )
    return [(path, read_text(path.with_suffix(".txt")).strip()) for path in images]


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents, or an error naming the file."""
    try:
        return path.read_text(encoding="utf-8-sig")  # a byte-order mark (Notepad) is dropped
    except UnicodeDecodeError as error:
        raise CaptionDataError(f"{path} is not UTF-8 text ({error.reason}); re-save it as UTF-8") from error


def check_captions(pairs: Captioned, folder: Path) -> None:
    """Reject a set whose captions are all empty; warn, by file, about the empty ones of a set that has others.

    Args:
        pairs: (image file, caption) pairs.
        folder: the data folder, for messages.
    """
    empty = [relative_name(path, folder) for path, caption in pairs if not caption]
    if len(empty) == len(pairs):
        raise CaptionDataError(
            f"every caption in {folder} is empty, so nothing would be learnt from text; write the captions "
            f"(or check data.caption_source)"
        )
    if empty:
        warnings.warn(
            f"{len(empty)} of {len(pairs)} images in {folder} have an empty caption and train unconditionally: "
            f"{names(empty)}; write their captions if that is not intended",
            UserWarning,
            stacklevel=2,
        )


def warn_repeated_rows(metadata: Path, numbers: list[int], pairs: Captioned) -> None:
    """Warn once about rows that list an image an earlier row lists: one such row names both lines and the image,
    several are one line naming the first few.

    Args:
        metadata: the ``metadata.jsonl`` file.
        numbers: the line number of each row.
        pairs: the (image file, caption) of each row.
    """
    first_row: dict[Path, int] = {}
    repeats = []
    for number, (path, _) in zip(numbers, pairs, strict=True):
        first = first_row.setdefault(path.resolve(), number)
        if first != number:
            repeats.append((first, number, relative_name(path, metadata.parent)))
    if len(repeats) == 1:
        first, number, name = repeats[0]
        message = (
            f"{metadata} lines {first} and {number} both list {name}, so it trains twice as often as the others; "
            "remove one row unless that is intended"
        )
    elif repeats:
        message = group_line(
            f"rows of {metadata} list an image an earlier row lists",
            [f"line {number} ({name}, as line {first})" for first, number, name in repeats],
            "those images train more often than the others: remove the repeated rows unless that is intended",
        )
    else:
        return
    warnings.warn(message, UserWarning, stacklevel=2)


def warn_unlisted_images(folder: Path, listed: set[Path]) -> None:
    """Warn about images directly in ``folder`` that ``metadata.jsonl`` leaves out (they are not trained on)."""
    unlisted = [path.name for path in image_files(folder) if path.resolve() not in listed]
    if unlisted:
        warnings.warn(
            f"{len(unlisted)} images in {folder} are not listed in {METADATA} and are not trained on: "
            f"{names(unlisted)}; add rows for them or move them out",
            UserWarning,
            stacklevel=2,
        )


def relative_name(path: Path, folder: Path) -> str:
    """A file's path as a message shows it: relative to the data folder when it is inside it."""
    return str(path.relative_to(folder) if path.is_relative_to(folder) else path)


def names(items: list[str]) -> str:
    """The first few names of a list, and how many more there are."""
    shown = ", ".join(items[:NAMES_SHOWN])
    return shown if len(items) <= NAMES_SHOWN else f"{shown} and {len(items) - NAMES_SHOWN} more"
