"""``sdft prepare``: check a folder of photos and write it as a training folder.

Every photo is decoded as training decodes it (:func:`sdft.data.images.load_rgb`: EXIF orientation applied, any
pixel mode to 8-bit RGB with transparency on white, the first frame of an animation), then checked: unreadable,
too small, or an exact or near copy of an earlier photo (by file stem: an original before its copies) are rejected
with the reason. The others are
resized (short side to the resolution) and, with ``crop="center"``, centre-cropped to a square, exactly as training
would, and written as ``<stem>.png``. With an instance prompt a ``metadata.jsonl`` captions each photo, so the
folder trains both as ``data.instance_dir`` (:class:`~sdft.data.SubjectDataModule`) and as ``data.data_dir``
(:class:`~sdft.data.CaptionDataModule`). With ``masks``, each photo's mask (``<stem>_mask.png`` beside it, else its
alpha channel: a cut-out photo) is resized and cropped with it and written as ``<output stem>_mask.png``, which
training reads with ``data.mask_weight`` (:mod:`sdft.data.masks`).

The originals are only read. The output folder is built beside its final place and renamed into it, so it exists
complete or not at all; nothing is written when too few photos are usable.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdft.errors import UserError
from sdft.files import write_atomic, write_folder_atomic, write_jsonl

if TYPE_CHECKING:
    from PIL import Image

#: the caption file the captioned data module reads (:data:`sdft.data.captions.METADATA`)
METADATA = "metadata.jsonl"
#: bits of a difference hash: an 8 x 8 grid of brighter-than-left comparisons
HASH_BITS = 64
EXIF_ORIENTATION = 0x0112
#: what :func:`PIL.ImageOps.exif_transpose` does for each EXIF orientation
ORIENTATION_CHANGES = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped upside down",
    5: "rotated and mirrored",
    6: "rotated 90° clockwise",
    7: "rotated and mirrored",
    8: "rotated 90° counter-clockwise",
}
#: plain words for the Pillow modes whose code says little
MODE_WORDS = {
    "1": "black and white",
    "L": "greyscale",
    "LA": "greyscale with alpha",
    "La": "greyscale with alpha",
    "P": "palette",
    "PA": "palette with alpha",
    "I": "32-bit greyscale",
    "I;16": "16-bit greyscale",
    "I;16L": "16-bit greyscale",
    "I;16B": "16-bit greyscale",
    "I;16N": "16-bit greyscale",
    "F": "floating-point greyscale",
}
#: photo formats Pillow does not read, which cameras and phones write
CAMERA_FORMATS = frozenset({".heic", ".heif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"})
IMAGE_SUFFIXES = {"png": ".png", "jpg": ".jpg"}
JPEG_QUALITY = 95


@dataclass(frozen=True)
class PhotoRow:
    """What became of one input file.

    Attributes:
        file: its name in the input folder.
        result: ``kept`` (pixels as they were), ``changed`` (see ``details``) or ``rejected`` (``details`` says why).
        details: the changes made, or the reason for the rejection.
        output: the name written in the output folder; None when rejected.
    """

    file: str
    result: Literal["kept", "changed", "rejected"]
    details: str = ""
    output: str | None = None


class Rejected(Exception):
    """A file that cannot be a training photo; the message is the reason shown in the table."""


@dataclass
class Photo:
    """A photo that passed the checks, as it will be written.

    Attributes:
        path: the original file.
        image: the upright RGB image at the training resolution.
        changes: what was done to its pixels, in order.
        output: its file name in the output folder.
        mask: its mask, 8-bit greyscale at the image's size; None when it has none or masks are not written.
    """

    path: Path
    image: Image.Image
    changes: list[str] = field(default_factory=list)
    output: str = ""
    mask: Image.Image | None = None


def prepare(
    input: Path,
    output: Path,
    instance_prompt: str | None = None,
    resolution: int = 512,
    crop: Literal["center", "none"] = "center",
    caption_template: str = "{}",
    file_format: Literal["png", "jpg"] = "png",
    min_side: int | None = None,
    near_duplicate_distance: int | None = 5,
    min_photos: int = 3,
    masks: bool = False,
) -> list[PhotoRow]:
    """Check a folder of photos and write the usable ones, upright, RGB and sized for training, to a new folder.

    Prints a table of every file (kept, changed and how, or rejected and why) and returns its rows.

    Args:
        input: the folder of photos; only read, never changed (subfolders and hidden files are ignored).
        output: the folder to write; it must not exist or be empty.
        instance_prompt: the prompt naming the subject, e.g. ``a photo of sks dog``; writes metadata.jsonl with
            one caption per photo. When omitted, no metadata.jsonl (the folder is then a plain instance folder).
        resolution: the short side of every written photo, in pixels (the training resolution).
        crop: ``center``: the centre square, resolution x resolution; ``none``: the whole photo, aspect ratio kept
            (for aspect-ratio bucketing).
        caption_template: each photo's caption, with ``{}`` replaced by the instance prompt.
        file_format: ``png`` (lossless) or ``jpg`` (quality 95, smaller).
        min_side: photos whose short side is smaller are rejected; when omitted, half the resolution, the size
            below which training refuses a photo.
        near_duplicate_distance: a photo whose difference hash is at most this many bits (of 64) from an earlier
            photo's is rejected as a near-duplicate (0: only identical hashes); null keeps near-duplicates.
        min_photos: fewer usable photos is an error, and nothing is written.
        masks: write each photo's mask, from ``<stem>_mask.png`` beside it or from its alpha channel (a cut-out
            photo), resized and cropped as the photo, as ``<output stem>_mask.png`` (for ``data.mask_weight``).
            Without it, mask files are rejected.
    """
    check_options(resolution, min_side, near_duplicate_distance, min_photos, instance_prompt, caption_template)
    input, output = Path(input), Path(output)
    check_input(input)
    check_output(output)
    smallest = resolution // 2 if min_side is None else min_side
    photos, rows = read_photos(input, resolution, crop, smallest, near_duplicate_distance, masks)
    name_outputs(photos, IMAGE_SUFFIXES[file_format])
    rows = [*(photo_row(photo) for photo in photos), *rows]
    rows.sort(key=lambda row: file_order(Path(row.file)))
    print(format_table(rows))
    if len(photos) < min_photos:
        raise UserError(
            f"{input} has {len(photos)} usable photos ({len(rows) - len(photos)} rejected, see the table above), "
            f"fewer than min_photos={min_photos}; add photos to {input}, or lower --min_photos"
        )
    if masks and not any(photo.mask is not None for photo in photos):
        raise UserError(
            f"--masks: no photo in {input} has a mask (<stem>_mask.png beside it, or transparency around a cut-out "
            f"subject); cut the subjects out as PNGs with transparency, or leave out --masks"
        )
    captions = None if instance_prompt is None else caption_template.replace("{}", instance_prompt)
    write_folder_atomic(output, lambda staging: write_photos(staging, photos, file_format, captions))
    print(summary(rows, output, captions is not None))
    return rows


def check_options(
    resolution: int,
    min_side: int | None,
    near_duplicate_distance: int | None,
    min_photos: int,
    instance_prompt: str | None,
    caption_template: str,
) -> None:
    """Reject option values that cannot work, naming the option and the fix."""
    if resolution < 1:
        raise UserError(f"--resolution must be a positive number of pixels, got {resolution}")
    if min_side is not None and min_side < 1:
        raise UserError(f"--min_side must be a positive number of pixels, got {min_side}")
    if near_duplicate_distance is not None and not 0 <= near_duplicate_distance <= HASH_BITS:
        raise UserError(
            f"--near_duplicate_distance is a number of bits from 0 to {HASH_BITS}, got {near_duplicate_distance}; "
            f"use null to keep near-duplicates"
        )
    if min_photos < 1:
        raise UserError(f"--min_photos must be at least 1, got {min_photos}")
    if instance_prompt is not None and not instance_prompt.strip():
        raise UserError("--instance_prompt is empty; name the subject, e.g. 'a photo of sks dog', or leave it out")
    if caption_template.count("{}") != 1:
        raise UserError(
            f"--caption_template must hold exactly one '{{}}' for the instance prompt, got {caption_template!r}"
        )


def check_input(folder: Path) -> None:
    """Raise unless ``folder`` is an existing folder."""
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise UserError(f"{folder} {state}; give the folder of photos to prepare")


def check_output(folder: Path) -> None:
    """Raise unless ``folder`` is absent or an empty folder (nothing of the user's is ever replaced)."""
    if folder.is_dir() and not any(folder.iterdir()):
        return
    if folder.exists():
        kind = "folder is not empty" if folder.is_dir() else "is a file"
        raise UserError(f"{folder} {kind}; choose a new output folder (it must not exist or be empty)")


# -- reading and checking -------------------------------------------------------------------------------------------


def read_photos(
    folder: Path, resolution: int, crop: str, min_side: int, near_distance: int | None, masks: bool = False
) -> tuple[list[Photo], list[PhotoRow]]:
    """The usable photos of ``folder`` (in :func:`file_order`), ready to write, and a row for each rejected file.

    Args:
        folder: the input folder.
        resolution: the short side of the written photos.
        crop: ``center`` or ``none``.
        min_side: the smallest short side accepted.
        near_distance: the largest difference-hash distance of a near-duplicate; None keeps them.
        masks: read each photo's mask (its mask file, else its alpha channel); without it, mask files are rejected.
    """
    from sdft.data.images import without_masks

    photos, rejected = [], []
    pixels_seen: dict[str, str] = {}
    hashes_seen: list[tuple[int, str]] = []
    files = [entry for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith(".")]
    files.sort(key=file_order)
    photo_files = set(without_masks(files))
    for path in files:
        if path not in photo_files:  # a mask goes with its photo
            if not masks:
                rejected.append(
                    PhotoRow(path.name, "rejected", "a photo's mask; --masks true writes it with its photo")
                )
            continue
        try:
            image, changes = decode(path)
            check_size(image, min_side)
            check_duplicates(image, path.name, pixels_seen, hashes_seen, near_distance)
            mask = read_photo_mask(path, image) if masks else None
        except Rejected as reason:
            rejected.append(PhotoRow(path.name, "rejected", str(reason)))
            continue
        image, sizing = fit(image, resolution, crop)
        mask = None if mask is None else fit(mask, resolution, crop)[0]
        photos.append(Photo(path, image, changes + sizing, mask=mask))
    return photos, rejected


def read_photo_mask(path: Path, image: Image.Image) -> Image.Image | None:
    """A photo's mask (its mask file, else its alpha channel), None when it has none; :class:`Rejected` when its
    mask file is unreadable or not the photo's size.

    Args:
        path: the photo file.
        image: the photo as decoded.
    """
    from sdft.data.images import ImageDataError, mask_file
    from sdft.data.masks import load_alpha, load_mask

    try:
        if mask_file(path).is_file():
            return load_mask(mask_file(path), path, (image.height, image.width))
    except ImageDataError as error:
        raise Rejected(str(error)) from error
    return load_alpha(path)


def file_order(path: Path) -> tuple[str, str]:
    """The order files are checked in, which decides which of two duplicates is kept: by stem, then extension, so
    ``IMG_1.jpg`` comes before its copies ``IMG_1 copy.jpg`` and ``IMG_1 (2).jpg``."""
    return path.stem, path.suffix


def decode(path: Path) -> tuple[Image.Image, list[str]]:
    """The photo as training sees it (upright 8-bit RGB) and what decoding changed; :class:`Rejected` if unusable.

    Args:
        path: any file of the input folder.
    """
    from PIL import Image, UnidentifiedImageError

    from sdft.data.images import IMAGE_EXTENSIONS, ImageDataError, load_rgb

    if path.stat().st_size == 0:
        raise Rejected("empty file (0 bytes)")
    try:
        with Image.open(path) as header:  # reads the header only: mode, frames, EXIF
            changes = decoding_changes(header)
    except UnidentifiedImageError as error:
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            raise Rejected(f"not an image: not {suffix[1:].upper()} or any format Pillow reads") from error
        if suffix in CAMERA_FORMATS:
            raise Rejected(f"Pillow cannot read {suffix[1:].upper()} photos; export it as JPEG or PNG") from error
        raise Rejected(f"not an image ({suffix or 'no extension'})") from error
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise Rejected(f"unreadable: {error}") from error
    try:
        with warnings.catch_warnings():  # the table says what decoding changed (an animation's first frame)
            warnings.simplefilter("ignore", UserWarning)
            return load_rgb(path), changes
    except ImageDataError as error:
        raise Rejected(f"unreadable: {error.__cause__ or error}") from error


def decoding_changes(image: Image.Image) -> list[str]:
    """What :func:`sdft.data.images.load_rgb` will change about an opened (not yet decoded) image."""
    from sdft.data.images import ALPHA_MODES

    changes = []
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        changes.append(f"first of {frames} frames")
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation in ORIENTATION_CHANGES:
        changes.append(f"{ORIENTATION_CHANGES[orientation]} (EXIF orientation {orientation})")
    if image.mode != "RGB":
        transparent = image.mode in ALPHA_MODES or "transparency" in image.info
        words = [MODE_WORDS[image.mode]] if image.mode in MODE_WORDS else []
        words += ["transparency on white"] if transparent else []
        changes.append(f"converted from {image.mode}" + (f" ({', '.join(words)})" if words else ""))
    return changes


def check_size(image: Image.Image, min_side: int) -> None:
    """Reject a photo whose short side is below ``min_side``."""
    if min(image.size) < min_side:
        raise Rejected(f"too small: {image.width}x{image.height}, short side under {min_side} px (--min_side)")


def check_duplicates(
    image: Image.Image,
    name: str,
    pixels_seen: dict[str, str],
    hashes_seen: list[tuple[int, str]],
    near_distance: int | None,
) -> None:
    """Reject a photo with the pixels of an earlier one or, within ``near_distance``, its difference hash; else
    remember it.

    Args:
        image: the decoded photo.
        name: its file name.
        pixels_seen: digest of each kept photo's pixels -> its file name.
        hashes_seen: (difference hash, file name) of each kept photo.
        near_distance: the largest hash distance of a near-duplicate; None: not checked.
    """
    digest = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
    if digest in pixels_seen:
        raise Rejected(f"duplicate of {pixels_seen[digest]} (identical pixels)")
    fingerprint = difference_hash(image)
    if near_distance is not None:
        for other, other_name in hashes_seen:
            distance = (fingerprint ^ other).bit_count()
            if distance <= near_distance:
                raise Rejected(
                    f"near-duplicate of {other_name} (difference hashes {distance} of {HASH_BITS} bits apart)"
                )
    pixels_seen[digest] = name
    hashes_seen.append((fingerprint, name))


def difference_hash(image: Image.Image, side: int = 8) -> int:
    """The difference hash (dHash, Krawetz 2013) of an image: ``side * side`` bits, one per pair of horizontally
    adjacent cells of its grey thumbnail ((side + 1) x side, box-filtered), set when the right cell is brighter.

    Rescaling, recompression and small edits flip few bits; different photos differ in about half of them.

    Args:
        image: any image.
        side: the hash is ``side * side`` bits.
    """
    import numpy as np
    from PIL import Image

    thumbnail = image.convert("L").resize((side + 1, side), Image.Resampling.BOX)
    grey = np.asarray(thumbnail, dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def fit(image: Image.Image, resolution: int, crop: str) -> tuple[Image.Image, list[str]]:
    """Scale the short side to ``resolution`` and, for ``crop="center"``, take the centre square, as training's
    centre crop does (so training changes the written photo no further); and the changes made.

    Args:
        image: an upright RGB photo.
        resolution: the short side after scaling.
        crop: ``center`` or ``none``.
    """
    from sdft.data.images import center_square, resize_short_side

    changes = []
    resized = resize_short_side(image, resolution)
    if resized.size != image.size:
        upscaled = " (upscaled: it will look soft)" if resized.width > image.width else ""
        changes.append(f"resized {size_text(image)} -> {size_text(resized)}{upscaled}")
    if crop == "center" and resized.width != resized.height:
        resized = center_square(resized, resolution)
        changes.append(f"cropped to {size_text(resized)}")
    return resized, changes


def size_text(image: Image.Image) -> str:
    return f"{image.width}x{image.height}"


# -- writing ---------------------------------------------------------------------------------------------------------


def name_outputs(photos: list[Photo], suffix: str) -> None:
    """Name each photo's output ``<stem><suffix>``, numbering stems that repeat (``cat.jpg`` and ``cat.png``)."""
    taken: set[str] = set()
    for photo in photos:
        stem, number = photo.path.stem, 1
        name = f"{stem}{suffix}"
        while name.lower() in taken:  # case-insensitive file systems would merge CAT.png and cat.png
            number += 1
            name = f"{stem}_{number}{suffix}"
        taken.add(name.lower())
        photo.output = name


def write_photos(folder: Path, photos: list[Photo], file_format: str, caption: str | None) -> None:
    """Write every photo into ``folder`` and, with a ``caption``, a ``metadata.jsonl`` row for each.

    Args:
        folder: the (empty, staging) output folder.
        photos: the photos, named.
        file_format: ``png`` or ``jpg``.
        caption: every photo's caption; None writes no metadata.
    """
    options = {"format": "PNG"} if file_format == "png" else {"format": "JPEG", "quality": JPEG_QUALITY}
    for photo in photos:
        write_atomic(folder / photo.output, lambda file, image=photo.image: image.save(file, **options))
        if photo.mask is not None:
            write_atomic(folder / mask_name(photo), lambda file, mask=photo.mask: mask.save(file, format="PNG"))
    if caption is not None:
        write_jsonl(folder / METADATA, [{"file_name": photo.output, "text": caption} for photo in photos])


# -- the table -------------------------------------------------------------------------------------------------------


def mask_name(photo: Photo) -> str:
    """The file name of a photo's mask in the output folder: ``<output stem>_mask.png``."""
    from sdft.data.images import mask_file

    return mask_file(Path(photo.output)).name


def photo_row(photo: Photo) -> PhotoRow:
    """The table row of a photo that is written (its details name its mask, when one is written)."""
    details = photo.changes + ([f"mask written as {mask_name(photo)}"] if photo.mask is not None else [])
    return PhotoRow(photo.path.name, "changed" if photo.changes else "kept", "; ".join(details), photo.output)


def format_table(rows: list[PhotoRow]) -> str:
    """The rows as an aligned text table: file, result, written as, details."""
    table = [("file", "result", "written as", "details")]
    table += [(row.file, row.result, row.output or "-", row.details) for row in rows]
    widths = [*(max(len(line[column]) for line in table) for column in range(3)), 0]  # details: last, unpadded
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)) for line in table]
    return "\n".join(line.rstrip() for line in lines)


def summary(rows: list[PhotoRow], output: Path, captions: bool) -> str:
    """The line after the table: how many files were kept, changed and rejected, and where they went."""
    counts = {result: sum(row.result == result for row in rows) for result in ("kept", "changed", "rejected")}
    written = counts["kept"] + counts["changed"]
    metadata = f" and {METADATA}" if captions else ""
    return (
        f"{len(rows)} files: {counts['kept']} kept, {counts['changed']} changed, {counts['rejected']} rejected; "
        f"wrote {written} photos{metadata} to {output}"
    )
