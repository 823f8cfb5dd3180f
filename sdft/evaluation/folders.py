"""Scoring folders of generated images against the subject photos, DreamBench style (REFERENCE.md Sec. 1).

Layout::

    subjects/<subject>/*.jpg                 the real photos of each subject
    generated/<subject>/*.png                the generated images
    generated/<subject>/metadata.jsonl       one line per image: {"file_name": "0001.png", "text": "a sks dog ..."}

``metadata.jsonl`` is the Hugging Face imagefolder caption format. An entry with ``"class_prompt": true`` marks an
image generated from the bare class prompt (``a dog``): it counts for PRES only, never for CLIP-I, CLIP-T or DINO.
The full DreamBench protocol is 25 prompts x 4 images per subject
(:func:`sdft.evaluation.prompts.dreambench_prompts`) plus, for PRES, images of the bare class prompt.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sdft.data.images import center_square, list_images, load_rgb, resize_short_side
from sdft.errors import UserError
from sdft.evaluation.backbones import DEFAULT_CLIP, DEFAULT_DINO, load_clip, load_dino
from sdft.evaluation.features import ClipFeatures, DinoFeatures
from sdft.evaluation.scoring import SubjectMetrics
from sdft.files import write_jsonl

METADATA_FILE = "metadata.jsonl"
LOAD_SIDE = 224
METRIC_KEYS = ("val/clip_i", "val/clip_t", "val/dino", "val/pres", "ceiling/clip_i", "ceiling/dino")
COUNT_KEYS = ("num_generated", "num_real")
TABLE_COLUMNS = {
    "n_gen": "num_generated",
    "CLIP-I": "val/clip_i",
    "CLIP-T": "val/clip_t",
    "DINO": "val/dino",
    "PRES": "val/pres",
    "ceil CLIP-I": "ceiling/clip_i",
    "ceil DINO": "ceiling/dino",
}


@dataclass(frozen=True)
class GeneratedImage:
    """One generated image and how it was made.

    Args:
        path: the image file.
        prompt: the prompt it was generated from, identifier included.
        class_prompt: True for images of the bare class prompt (PRES only).
    """

    path: Path
    prompt: str
    class_prompt: bool


def read_generated_folder(folder: Path) -> list[GeneratedImage]:
    """The images of ``generated/<subject>/`` with their prompts, checked against ``metadata.jsonl`` both ways.

    Args:
        folder: one subject's folder of generated images.
    """
    folder = Path(folder)
    images = list_images(folder, "generated_dir")
    entries = read_metadata(folder / METADATA_FILE)
    listed = {entry.path for entry in entries}
    unlisted = sorted(path.name for path in images if path not in listed)
    if unlisted:
        raise UserError(
            f"{folder / METADATA_FILE} has no entry for {', '.join(unlisted)}; add a line "
            f'{{"file_name": "{unlisted[0]}", "text": "<its prompt>"}} per image, or remove the images'
        )
    return entries


def read_metadata(path: Path) -> list[GeneratedImage]:
    """Parse ``metadata.jsonl``: one ``{"file_name", "text"[, "class_prompt"]}`` object per line.

    Args:
        path: the ``metadata.jsonl`` file inside a generated subject folder.
    """
    if not path.is_file():
        raise UserError(
            f"{path} is missing; write one line per generated image, "
            f'{{"file_name": "0001.png", "text": "a sks dog in the snow"}}, so CLIP-T knows each prompt'
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = [parse_metadata_line(line, path, number) for number, line in enumerate(lines, 1) if line.strip()]
    names = [entry.path.name for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"{path} lists {', '.join(duplicates)} more than once; keep one line per image")
    return entries


def parse_metadata_line(line: str, path: Path, number: int) -> GeneratedImage:
    """One line of ``metadata.jsonl`` -> :class:`GeneratedImage`, checking the image file exists.

    Args:
        line: the JSON text of the line.
        path: the ``metadata.jsonl`` file, quoted in errors.
        number: the 1-based line number, quoted in errors.
    """
    where = f"{path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where} is not valid JSON ({error}); fix or remove the line") from error
    if not isinstance(record, dict) or not isinstance(record.get("file_name"), str):
        raise UserError(f'{where} needs a "file_name" string, e.g. {{"file_name": "0001.png", "text": "..."}}')
    if not isinstance(record.get("text"), str):
        raise UserError(f'{where} needs a "text" string holding the prompt of {record["file_name"]}')
    class_prompt = record.get("class_prompt", False)
    if not isinstance(class_prompt, bool):
        raise UserError(f'{where}: "class_prompt" must be true or false, got {class_prompt!r}')
    image = path.parent / record["file_name"]
    if not image.is_file():
        raise UserError(f"{where} lists {image}, which does not exist; add the image or remove the line")
    return GeneratedImage(image, record["text"], class_prompt)


def load_square(path: Path, side: int = LOAD_SIDE) -> Tensor:
    """Load an image as a (3, side, side) uint8 tensor: short side resized (bicubic), then center-cropped.

    The extractors resize and center-crop again, so images of any size can share a batch.

    Args:
        path: the image file.
        side: the side of the square, in pixels.
    """
    image = center_square(resize_short_side(load_rgb(path), side), side)
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def load_batches(paths: list[Path], batch_size: int) -> Iterator[Tensor]:
    """Stream images as (B, 3, 224, 224) uint8 batches, so big folders are never held in memory at once.

    Args:
        paths: the image files, in order.
        batch_size: images per batch; the last batch may be smaller.
    """
    for start in range(0, len(paths), batch_size):
        yield torch.stack([load_square(path) for path in paths[start : start + batch_size]])


def score_subject(
    generated_dir: Path,
    subject_dir: Path,
    identifier: str,
    clip: ClipFeatures,
    dino: DinoFeatures,
    batch_size: int = 16,
) -> dict[str, float]:
    """CLIP-I, CLIP-T, DINO, PRES and the real-real ceilings of one subject's generated images.

    ``val/pres`` is present only when class-prompt images exist; the ceilings only with at least 2 real photos.

    Args:
        generated_dir: the subject's generated images and their ``metadata.jsonl``.
        subject_dir: the subject's real photos.
        identifier: the rare token removed from the prompts for CLIP-T (e.g. ``sks``).
        clip: the CLIP image/text embedder, for CLIP-I and CLIP-T.
        dino: the DINO embedder, for DINO and PRES.
        batch_size: images embedded at once.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}; pass --batch_size 1 or more")
    entries = read_generated_folder(generated_dir)
    subject_images = [entry for entry in entries if not entry.class_prompt]
    class_images = [entry for entry in entries if entry.class_prompt]
    check_subject_prompts(subject_images, generated_dir, identifier)
    real = torch.cat(list(load_batches(list_images(subject_dir, "subject_dir"), batch_size)))
    metrics = SubjectMetrics(identifier, clip, dino, with_pres=bool(class_images)).to(module_device(dino))
    metrics.set_reference(real)
    for images, entries in generated_batches(subject_images + class_images, batch_size):
        metrics.update(images, [entry.prompt for entry in entries], [entry.class_prompt for entry in entries])
    scores = metrics.compute().values
    ceilings = {name.replace("val/", "ceiling/"): value for name, value in metrics.ceilings().items()}
    scores.update({name: value for name, value in ceilings.items() if value is not None})
    return {**scores, "num_generated": len(subject_images), "num_real": len(real)}


def check_subject_prompts(images: list[GeneratedImage], folder: Path, identifier: str) -> None:
    """Raise if no image comes from a subject prompt; warn if no prompt contains the identifier.

    Args:
        images: the images not marked ``class_prompt``.
        folder: the generated subject folder, quoted in messages.
        identifier: the rare token the prompts should contain.
    """
    if not images:
        raise UserError(
            f"every image in {folder / METADATA_FILE} is marked class_prompt, so CLIP-I, CLIP-T and DINO have "
            f'nothing to score; add images generated from the subject prompts ("a {identifier} dog ...")'
        )
    if not any(identifier in image.prompt.split() for image in images):
        warnings.warn(
            f"no prompt in {folder / METADATA_FILE} contains the identifier {identifier!r}, so CLIP-T scores the "
            "prompts unchanged; pass the identifier used for generation",
            UserWarning,
            stacklevel=3,
        )


def generated_batches(images: list[GeneratedImage], batch_size: int) -> Iterator[tuple[Tensor, list[GeneratedImage]]]:
    """Stream (pixels, entries) batches of generated images.

    Args:
        images: the generated images with their prompts.
        batch_size: images per batch.
    """
    batches = load_batches([image.path for image in images], batch_size)
    for start, pixels in zip(range(0, len(images), batch_size), batches, strict=True):
        yield pixels, images[start : start + batch_size]


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer.

    Args:
        module: a feature extractor.
    """
    tensor = next(module.parameters(), None)
    return tensor.device if tensor is not None else next(module.buffers()).device


def match_subjects(generated: Path, subjects: Path) -> list[str]:
    """The subject names with generated images; each must have a photos folder. Warns about unscored subjects.

    Args:
        generated: the folder of ``<subject>/`` folders of generated images.
        subjects: the folder of ``<subject>/`` folders of real photos.
    """
    for folder, key in ((generated, "generated"), (subjects, "subjects")):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; set {key} to a folder of <subject>/ folders")
    names = subfolder_names(generated)
    if not names:
        raise UserError(f"{generated} has no <subject>/ folders; put each subject's generated images in one")
    for name in names:
        if not (subjects / name).is_dir():
            raise UserError(
                f"{generated / name} has no photos folder {subjects / name}; add the subject's real photos there "
                "or rename the generated folder to match"
            )
    unscored = sorted(set(subfolder_names(subjects)) - set(names))
    if unscored:
        warnings.warn(
            f"subjects with photos in {subjects} but no generated images in {generated}: {', '.join(unscored)}",
            UserWarning,
            stacklevel=3,
        )
    return names


def subfolder_names(folder: Path) -> list[str]:
    """The sorted names of the visible subfolders of ``folder``.

    Args:
        folder: the parent folder.
    """
    return sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def mean_row(rows: list[dict]) -> dict:
    """The ``mean`` row: each metric averaged over the subjects that have it; counts are totals.

    Args:
        rows: one row per subject.
    """
    summary: dict = {"subject": "mean"}
    for key in METRIC_KEYS:
        values = [row[key] for row in rows if key in row]
        if values:
            summary[key] = sum(values) / len(values)
    for key in COUNT_KEYS:
        summary[key] = sum(row[key] for row in rows)
    return summary


def format_table(rows: list[dict]) -> str:
    """A plain-text table of the rows: counts as integers, metrics with 3 decimals, ``-`` where absent.

    Args:
        rows: the subject rows and the mean row.
    """
    width = max(len("subject"), *(len(row["subject"]) for row in rows))
    widths = {name: max(len(name), 6) for name in TABLE_COLUMNS}
    lines = [f"{'subject':<{width}}" + "".join(f"  {name:>{widths[name]}}" for name in TABLE_COLUMNS)]
    for row in rows:
        cells = [format_cell(row.get(key), widths[name]) for name, key in TABLE_COLUMNS.items()]
        lines.append(f"{row['subject']:<{width}}" + "".join(f"  {cell}" for cell in cells))
    return "\n".join(lines)


def format_cell(value: float | int | None, width: int) -> str:
    """One right-aligned table cell.

    Args:
        value: an int count, a float metric, or None when absent.
        width: the column width.
    """
    if value is None:
        return f"{'-':>{width}}"
    return f"{value:>{width}d}" if isinstance(value, int) else f"{value:>{width}.3f}"


def evaluate_folders(
    generated: Path,
    subjects: Path,
    identifier: str = "sks",
    clip_model: str = DEFAULT_CLIP,
    dino_model: str = DEFAULT_DINO,
    output: Path | None = None,
    batch_size: int = 16,
    device: str | None = None,
) -> list[dict]:
    """Score folders of generated images against the subject photos (DreamBench CLIP-I, CLIP-T, DINO, PRES).

    Every ``generated/<subject>/`` is scored against ``subjects/<subject>/`` (see the module docstring for the
    layout); a final ``mean`` row averages the subjects. The full DreamBench protocol is 25 prompts x 4 images per
    subject (``sdft.evaluation.prompts.dreambench_prompts``). Prints a table and returns the rows.

    Args:
        generated: folder of ``<subject>/`` folders of generated images, each with its ``metadata.jsonl``.
        subjects: folder of ``<subject>/`` folders of the real photos.
        identifier: the rare token in the prompts, removed for CLIP-T.
        clip_model: CLIP spec, e.g. ``open_clip:ViT-B-32/openai`` or ``builtin:tiny-clip``.
        dino_model: DINO spec, e.g. ``facebook/dino-vits16`` or ``builtin:tiny-dino``.
        output: a ``.jsonl`` file for the rows (one JSON object per line); not written when None.
        batch_size: images embedded at once.
        device: where the extractors run; ``cuda`` when available, else ``cpu``, when None.
    """
    generated, subjects = Path(generated), Path(subjects)
    names = match_subjects(generated, subjects)
    for name in names:  # fail on bad metadata before the models load and any subject is scored
        read_generated_folder(generated / name)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clip, dino = load_clip(clip_model).to(target), load_dino(dino_model).to(target)
    rows = [
        {"subject": name, **score_subject(generated / name, subjects / name, identifier, clip, dino, batch_size)}
        for name in names
    ]
    rows.append(mean_row(rows))
    print(format_table(rows))
    if output is not None:
        write_jsonl(Path(output), rows)
    return rows
