"""Reading a folder of subject photos: listing, decoding to RGB, resolution checks, and the crop to a tensor.

Real photo folders hold phone JPEGs rotated by EXIF, PNGs with transparency, 16-bit scans, palette GIFs and
the odd caption file or ``Thumbs.db``. Everything here either turns an image file into a plain RGB image or raises
:class:`ImageDataError` naming the file and the fix. Listing skips hidden files and sidecars (``.txt`` captions)
silently, and any other non-image file with a warning that names it.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from sdft.data.notices import FileWarning, group_line, grouped_file_warnings
from sdft.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
SIDECAR_EXTENSIONS = frozenset({".txt", ".json", ".jsonl", ".caption", ".npz", ".npy", ".yaml", ".yml"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
WHITE = (255, 255, 255, 255)
#: the key of an image's metadata that holds its size in the file, (height, width), before any resize
ORIGINAL_SIZE = "original_size"
#: the VAE's downsampling factor: the training resolution must be a multiple of it
LATENT_FACTOR = 8
#: how a mask beside its image is named: ``cat.jpg`` -> ``cat_mask.png``
MASK_SUFFIX = "_mask.png"


class ImageDataError(UserError):
    """A subject image or image folder that cannot be used; the message names the path and the fix."""


def list_images(folder: Path, key: str) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name; hidden files, sidecars and the images' masks
    (``cat_mask.png`` beside ``cat.jpg``) are skipped.

    Args:
        folder: the folder of images.
        key: the config key that named the folder (e.g. ``"data.instance_dir"``), quoted in errors.
    """
    folder = Path(folder)
    check_folder(folder, key)
    with grouped_file_warnings():
        images = without_masks([path for path in sorted(folder.iterdir()) if _is_image_file(path)])
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ImageDataError(
            f"{folder} contains no images ({extensions}; subfolders are not searched); "
            f"add photos to it or set {key} to another folder"
        )
    return images


def warn_duplicate_images(paths: list[Path]) -> None:
    """Warn once about images whose bytes are identical (a copy trains as often again): a pair names both files,
    many copies of one photo are one line naming it, how many repeat it and the first few.

    Args:
        paths: distinct image files, in the order they are used.
    """
    copies: dict[str, list[Path]] = {}
    for path in paths:
        copies.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
    repeated = [files for files in copies.values() if len(files) > 1]
    if len(repeated) == 1 and len(repeated[0]) == 2:
        first, copy = repeated[0]
        message = (
            f"{first} and {copy} are the same image (identical bytes), so it trains twice as often as the others; "
            "remove one unless that is intended"
        )
    elif len(repeated) == 1:
        first, *others = repeated[0]
        message = group_line(
            f"files repeat {first} (identical bytes)",
            [path.name for path in others],
            f"it trains {len(others) + 1} times as often as the others: remove the copies unless that is intended",
        )
    elif repeated:
        message = group_line(
            "files repeat another image (identical bytes)",
            [f"{path.name} = {files[0].name}" for files in repeated for path in files[1:]],
            "those images train more often than the others: remove the copies unless that is intended",
        )
    else:
        return
    warnings.warn(message, UserWarning, stacklevel=2)


def check_folder(folder: Path, key: str) -> None:
    """Raise, naming ``key``, unless ``folder`` is an existing folder."""
    if not folder.exists():
        raise ImageDataError(f"{folder} does not exist; set {key} to a folder of images")
    if not folder.is_dir():
        raise ImageDataError(f"{folder} is a file, not a folder; set {key} to a folder of images")


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` by name, none if it does not exist; other entries and the images'
    masks are ignored."""
    if not folder.is_dir():
        return []
    return without_masks(
        [
            path
            for path in sorted(folder.iterdir())
            if not path.name.startswith(".") and path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        ]
    )


def mask_file(image: Path) -> Path:
    """Where an image's mask lies beside it: ``cat.jpg`` -> ``cat_mask.png``."""
    return image.with_name(f"{image.stem}{MASK_SUFFIX}")


def without_masks(paths: list[Path]) -> list[Path]:
    """``paths`` less the masks of the others (``cat_mask.png`` beside ``cat.jpg``): a mask is never an image."""
    masks = {mask_file(path) for path in paths}
    return [path for path in paths if path not in masks]


def _is_image_file(path: Path) -> bool:
    """Whether ``path`` is an image to use; hidden files, folders and sidecars are skipped silently, other files
    (``Thumbs.db``, ``notes.pdf``) with a warning that names them.

    Args:
        path: one entry of the image folder.
    """
    if path.name.startswith(".") or path.is_dir():
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return True
    if suffix not in SIDECAR_EXTENSIONS:
        kind = suffix or "no extension"
        message = f"{path}: not an image ({kind}); skipped"
        kind_of_file = f"files in {path.parent} are not images and are skipped"
        warnings.warn(FileWarning(message, kind_of_file, path.name), stacklevel=2)
    return False


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file to an upright 8-bit RGB image: EXIF rotation applied, transparency on white.

    Animated files give their first frame; 16-bit and float images are scaled to 8 bits by their range.

    Args:
        path: the image file.
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            frames = getattr(opened, "n_frames", 1)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(path, error) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDataError(
            f"{path} could not be read as an image ({error}); re-save it as PNG or JPEG, or remove it"
        ) from error
    if frames > 1:
        message = f"{path} is animated ({frames} frames); its first frame is used"
        kind = f"images in {path.parent} are animated"
        warnings.warn(FileWarning(message, kind, path.name, "their first frames are used"), stacklevel=2)
    return _to_rgb(image, path)


def _too_many_pixels(path: Path, error: Image.DecompressionBombError) -> ImageDataError:
    """The error for an image Pillow refuses to decode because of its size (its decompression-bomb limit).

    Args:
        path: the image file.
        error: Pillow's error, whose message holds the image's pixel count.
    """
    limit = 2 * Image.MAX_IMAGE_PIXELS  # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"is {int(found[1]):,} pixels, more than" if found else "has more pixels than"
    return ImageDataError(
        f"{path} {size} Pillow's safety limit of {limit:,}; downscale it (e.g. to 2048 px on the long side) "
        f"or remove it"
    )


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparent pixels on white.

    Args:
        image: the decoded image, any mode.
        path: its file, quoted in errors.
    """
    if image.mode in HIGH_DEPTH_MODES:
        image = Image.fromarray(_grey_to_uint8(np.asarray(image), image.mode))
    try:
        if image.mode in ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE), rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:
        raise ImageDataError(
            f"{path} has pixel mode {image.mode}, which cannot be converted to RGB ({error}); "
            f"re-save it as an 8-bit RGB PNG or JPEG"
        ) from error


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale one-channel 16-bit, 32-bit or float pixels (H, W) to uint8 by the range they use.

    ``I;16*`` is 16-bit (``v >> 8``); ``I`` and ``F`` count as 8-bit if their peak is below 256, 16-bit
    below 65,536, else are scaled by their peak; floats peaking at or below 1.0 count as [0, 1]. Negatives
    clip to 0.

    Args:
        values: the pixel array of shape (H, W).
        mode: its Pillow mode.
    """
    is_float = values.dtype.kind == "f"
    values = np.clip(np.nan_to_num(values.astype(np.float64)), 0.0, None)
    peak = float(values.max(initial=0.0))
    if is_float and peak <= 1.0:
        return np.round(values * 255.0).astype(np.uint8)
    if peak >= 65536.0:
        levels = peak + 1.0
    elif mode.startswith("I;16") or peak >= 256.0:
        levels = 65536.0
    else:
        levels = 256.0
    return np.floor(values * (256.0 / levels)).astype(np.uint8)


def check_resolution(path: Path, size: tuple[int, int], resolution: int, key: str) -> None:
    """Raise if an image is far smaller than the training resolution, warn if it will be upscaled.

    Args:
        path: the image file, quoted in the message.
        size: its (width, height) in pixels.
        resolution: the training resolution (the side of the square crop).
        key: the config key that set the resolution (e.g. ``"data.resolution"``).
    """
    width, height = size
    short_side = min(width, height)
    if short_side < resolution // 2:
        raise ImageDataError(
            f"{path} is {width}x{height}, far smaller than {key}={resolution}; use a larger image or lower {key}"
        )
    if short_side < resolution:
        message = f"{path} is {width}x{height}, smaller than {key}={resolution}; it will be upscaled and look soft"
        kind = f"images in {path.parent} are smaller than {key}={resolution}"
        advice = "they will be upscaled and look soft"
        warnings.warn(FileWarning(message, kind, f"{path.name} ({width}x{height})", advice), stacklevel=2)


def prepare_image(
    image: Image.Image,
    resolution: int,
    center_crop: bool,
    flip: bool,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Resize the short side to ``resolution``, crop a square, optionally mirror; float (3, R, R) in [-1, 1].

    Args:
        image: an RGB image, as from :func:`load_rgb`.
        resolution: the side R of the square output, in pixels.
        center_crop: crop the centre; otherwise a random offset drawn from ``generator``.
        flip: mirror left-right (the caller draws this decision).
        generator: the source of the random crop offsets; torch's default generator when None.
    """
    return prepare_crop(image, resolution, center_crop, flip, generator)[0]


def prepare_crop(
    image: Image.Image,
    resolution: int,
    center_crop: bool,
    flip: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """:func:`prepare_image`, and where the crop's top-left corner lies in the resized image as shown (mirrored
    when flipped): ``(pixels (3, R, R), (top, left))``, the crop SDXL is conditioned on."""
    if resolution < 1:
        raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
    return prepare_sized_crop(image, (resolution, resolution), center_crop, flip, generator)


def prepare_sized_crop(
    image: Image.Image,
    size: tuple[int, int],
    center_crop: bool,
    flip: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize to cover ``size``, crop it, optionally mirror: ``(pixels (3, H, W) in [-1, 1], (top, left))``, the
    crop's corner in the resized image as shown (mirrored when flipped).

    Args:
        image: an RGB image, as from :func:`load_rgb`.
        size: the (width W, height H) of the output, in pixels (an aspect-ratio bucket, or a square).
        center_crop: crop the centre; otherwise a random offset drawn from ``generator``.
        flip: mirror left-right (the caller draws this decision).
        generator: the source of the random crop offsets; torch's default generator when None.
    """
    if image.mode != "RGB":
        raise ValueError(f"prepare_image needs an RGB image, got mode {image.mode}; load it with load_rgb")
    image = resize_to_cover(image, size)
    left, top = _crop_offsets(image.size, size, center_crop, generator)
    crop = image.crop((left, top, left + size[0], top + size[1]))
    if flip:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        left = image.width - left - size[0]
    pixels = torch.from_numpy(np.array(crop, dtype=np.uint8))
    return (pixels.permute(2, 0, 1).float() / 127.5 - 1.0).contiguous(), (top, left)


def resize_to_cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale (bicubic) so the image just covers ``size`` (width, height), keeping its aspect ratio; for a square
    this is :func:`resize_short_side`.

    Args:
        image: the image to scale.
        size: the (width, height) it must cover.
    """
    scale = max(size[0] / image.width, size[1] / image.height)
    cover = (max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale)))
    if cover == image.size:
        return image
    return image.resize(cover, Image.Resampling.BICUBIC)


def resize_short_side(image: Image.Image, resolution: int) -> Image.Image:
    """Scale (bicubic) so the shorter side is exactly ``resolution``, keeping the aspect ratio.

    Args:
        image: the image to scale.
        resolution: the target length of the shorter side.
    """
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def center_square(image: Image.Image, side: int | None = None) -> Image.Image:
    """The centred ``side`` x ``side`` square of an image (default: the largest one)."""
    side = min(image.size) if side is None else side
    left, top = _crop_offsets(image.size, (side, side), center=True, generator=None)
    return image.crop((left, top, left + side, top + side))


def _crop_offsets(
    size: tuple[int, int], crop: tuple[int, int], center: bool, generator: torch.Generator | None
) -> tuple[int, int]:
    """The (left, top) corner of a ``crop`` (width, height) inside ``size``: centred or uniformly random.

    Args:
        size: the (width, height) of the image to crop.
        crop: the (width, height) of the crop.
        center: centre the crop instead of drawing its position.
        generator: the source of the random offsets.
    """
    slack_x, slack_y = size[0] - crop[0], size[1] - crop[1]
    if center:
        return slack_x // 2, slack_y // 2
    left = int(torch.randint(slack_x + 1, (1,), generator=generator))
    top = int(torch.randint(slack_y + 1, (1,), generator=generator))
    return left, top


def read_resized(path: Path, resolution: int) -> Image.Image:
    """Decode an image, reject it if far below ``data.resolution``, and scale its short side to the resolution.

    The size it had in its file stays in the image's metadata, ``info["original_size"]`` as (height, width): SDXL
    is conditioned on it.
    """
    image = load_rgb(path)
    check_resolution(path, image.size, resolution, "data.resolution")
    resized = resize_short_side(image, resolution)
    resized.info = {**resized.info, ORIGINAL_SIZE: (image.height, image.width)}
    return resized


def original_size(image: Image.Image) -> tuple[int, int]:
    """The (height, width) an image had in its file, as :func:`read_resized` recorded it (else its own size)."""
    return image.info.get(ORIGINAL_SIZE, (image.height, image.width))


# -- options shared by the data modules ------------------------------------------------------------------------------


def check_data_options(resolution: int, random_flip: float, batch_size: int, num_workers: int) -> None:
    """Reject data-module options that cannot work, naming the ``data.`` key and the fix.

    Args:
        resolution: the side of the square training crops, in pixels.
        random_flip: the probability of mirroring an example.
        batch_size: examples per batch on each device.
        num_workers: data-loader worker processes.
    """
    if resolution < LATENT_FACTOR or resolution % LATENT_FACTOR:
        nearest = max(LATENT_FACTOR, LATENT_FACTOR * round(resolution / LATENT_FACTOR))
        raise UserError(
            f"data.resolution must be a positive multiple of {LATENT_FACTOR} (the VAE's downsampling factor), "
            f"got {resolution}; use e.g. {nearest}"
        )
    check_probability("data.random_flip", random_flip)
    if batch_size < 1:
        raise UserError(f"data.batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise UserError(f"data.num_workers must be 0 (load in the training process) or more, got {num_workers}")


def check_probability(key: str, value: float) -> None:
    """Raise, naming ``key``, unless ``value`` is a probability in [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise UserError(f"{key} is a probability in [0, 1], got {value}")
