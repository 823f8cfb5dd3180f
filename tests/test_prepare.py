"""``sdft prepare``: photos decoded upright to RGB, duplicates and unusable files rejected with the reason, the output
folder written whole or not at all, originals untouched, and the result read by sdft's own data modules."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from jsonargparse import auto_cli
from PIL import Image

from sdft.errors import UserError
from sdft.tools.prepare import METADATA, PhotoRow, difference_hash, prepare

RED, BLUE = (255, 0, 0), (0, 0, 255)


def photo(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A smooth random RGB picture; different seeds give pictures whose difference hashes are far apart."""
    grid = np.random.default_rng(seed).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR)


def save_photos(folder: Path, seeds: range, size: tuple[int, int] = (64, 48)) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = [folder / f"photo_{seed}.png" for seed in seeds]
    for seed, path in zip(seeds, paths, strict=True):
        photo(seed, size).save(path)
    return paths


def folder_digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's contents hash and modification time, by name."""
    return {
        path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(folder.iterdir())
    }


def rows_by_file(rows: list[PhotoRow]) -> dict[str, PhotoRow]:
    return {row.file: row for row in rows}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image).astype(int)


def test_difference_hash_sets_a_bit_where_the_right_cell_is_brighter() -> None:
    rising = Image.fromarray(np.tile(np.arange(0, 90, 10, dtype=np.uint8), (8, 1)))  # 9 x 8, brighter rightwards
    assert difference_hash(rising) == 2**64 - 1
    assert difference_hash(rising.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == 0
    first_row_rises = np.zeros((8, 9), np.uint8)
    first_row_rises[0] = np.arange(9)
    assert difference_hash(Image.fromarray(first_row_rises)) == 0xFF << 56  # rows are read top first, MSB first


def test_exif_rotated_photo_comes_out_upright_and_originals_are_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    photos = tmp_path / "photos"
    save_photos(photos, range(3))
    stored = np.zeros((60, 80, 3), np.uint8)  # landscape as stored: red top-left quarter, blue elsewhere
    stored[...] = BLUE
    stored[:30, :40] = RED
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: show the stored image rotated 90 degrees clockwise
    Image.fromarray(stored).save(photos / "phone.jpg", exif=exif, quality=95)
    before = folder_digest(photos)

    rows = prepare(photos, tmp_path / "out", resolution=30, crop="none")

    assert folder_digest(photos) == before
    row = rows_by_file(rows)["phone.jpg"]
    assert (row.result, row.output) == ("changed", "phone.png")
    assert row.details == "rotated 90° clockwise (EXIF orientation 6); resized 60x80 -> 30x40"
    upright = pixels(tmp_path / "out" / "phone.png")
    assert upright.shape == (40, 30, 3)  # portrait, the short side at the resolution
    assert np.abs(upright[5, 25] - RED).max() < 40  # the red quarter is now top-right
    assert np.abs(upright[5, 5] - BLUE).max() < 40
    assert np.abs(upright[35, 25] - BLUE).max() < 40
    assert not (tmp_path / "out" / METADATA).exists()  # no instance prompt, no captions
    table = capsys.readouterr().out
    assert re.search(r"\nphone\.jpg +changed +phone\.png +rotated 90° clockwise \(EXIF orientation 6\)", table)
    assert "4 files: 0 kept, 4 changed, 0 rejected; wrote 4 photos to" in table


def test_every_pixel_mode_is_converted_to_rgb(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(0).convert("CMYK").save(photos / "cmyk.jpg", quality=95)
    rgba = photo(1).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.pad(np.full((38, 54), 255, np.uint8), ((10, 0), (10, 0)))))  # clear corner
    rgba.save(photos / "rgba.png")
    palette = photo(2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(photos / "palette.png")
    grey16 = np.asarray(photo(3).convert("L"), np.uint16) * 257
    Image.fromarray(grey16).save(photos / "scan16.png")
    photo(4).convert("L").save(photos / "grey.png")
    frames = [photo(seed) for seed in (5, 6, 7)]
    frames[0].save(photos / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    photo(8).save(photos / "plain.png")

    rows = rows_by_file(prepare(photos, tmp_path / "out", resolution=48, crop="none"))

    assert {name: row.details for name, row in rows.items()} == {
        "animated.gif": "first of 3 frames; converted from P (palette)",
        "cmyk.jpg": "converted from CMYK",
        "grey.png": "converted from L (greyscale)",
        "palette.png": "converted from P (palette, transparency on white)",
        "plain.png": "",
        "rgba.png": "converted from RGBA (transparency on white)",
        "scan16.png": "converted from I;16 (16-bit greyscale)",
    }
    assert rows["plain.png"].result == "kept"
    out = tmp_path / "out"
    assert (pixels(out / "rgba.png")[:10, :10] == 255).all()  # transparent corner on white
    assert np.array_equal(pixels(out / "rgba.png")[20:, 20:], np.asarray(photo(1))[20:, 20:])
    assert np.abs(pixels(out / "scan16.png")[..., 0] - np.asarray(photo(3).convert("L"))).max() <= 1
    first_frame = np.asarray(frames[0].convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB")).astype(int)
    assert np.abs(pixels(out / "animated.png") - first_frame).mean() < 12  # GIF quantisation, but frame 0
    assert np.abs(pixels(out / "cmyk.png") - np.asarray(photo(0))).mean() < 8


def test_duplicates_and_near_duplicates_are_rejected_naming_the_photo_they_copy(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (first, other, third) = save_photos(photos, range(3))
    shutil.copy(first, photos / "photo_0 copy.png")  # the same bytes; by name it would come first
    photo(0).save(photos / "photo_0_resaved.png", compress_level=1)  # other bytes, the same pixels
    smaller = io.BytesIO()
    photo(0).resize((60, 45), Image.Resampling.BICUBIC).save(smaller, "JPEG", quality=85)
    (photos / "photo_0_small.jpg").write_bytes(smaller.getvalue())

    rows = rows_by_file(prepare(photos, tmp_path / "out", resolution=32))

    assert [name for name, row in rows.items() if row.result != "rejected"] == [p.name for p in (first, other, third)]
    assert rows["photo_0 copy.png"].details == "duplicate of photo_0.png (identical pixels)"
    assert rows["photo_0_resaved.png"].details == "duplicate of photo_0.png (identical pixels)"
    assert rows["photo_0_small.jpg"].details.startswith("near-duplicate of photo_0.png (difference hashes ")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["photo_0.png", "photo_1.png", "photo_2.png"]

    kept = rows_by_file(prepare(photos, tmp_path / "all", resolution=32, near_duplicate_distance=None))
    assert kept["photo_0_small.jpg"].result == "changed"
    assert kept["photo_0 copy.png"].result == "rejected"


def test_unusable_files_are_rejected_with_the_reason(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_photos(photos, range(3))
    encoded = io.BytesIO()
    photo(9, (256, 192)).save(encoded, "JPEG", quality=95)
    (photos / "truncated.jpg").write_bytes(encoded.getvalue()[: len(encoded.getvalue()) // 2])
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.png").write_text("not a picture\n")
    (photos / "captions.txt").write_text("a photo of sks dog\n")
    (photos / "IMG_0003.HEIC").write_bytes(b"\0\0\0\x18ftypheic" + bytes(100))
    photo(10, (20, 12)).save(photos / "thumbnail.png")
    (photos / ".hidden.png").write_bytes(b"")
    (photos / "subfolder").mkdir()

    rows = rows_by_file(prepare(photos, tmp_path / "out", resolution=32))

    assert {name: row.details for name, row in rows.items() if row.result == "rejected"} == {
        "IMG_0003.HEIC": "Pillow cannot read HEIC photos; export it as JPEG or PNG",
        "captions.txt": "not an image (.txt)",
        "empty.png": "empty file (0 bytes)",
        "notes.png": "not an image: not PNG or any format Pillow reads",
        "thumbnail.png": "too small: 20x12, short side under 16 px (--min_side)",
        "truncated.jpg": rows["truncated.jpg"].details,
    }
    assert rows["truncated.jpg"].details.startswith("unreadable: image file is truncated")
    assert len(rows) == 9  # hidden files and folders are not listed


def test_too_few_usable_photos_is_an_error_and_nothing_is_written(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    first, _ = save_photos(photos, range(2))
    shutil.copy(first, photos / "copy.png")

    message = r"has 2 usable photos \(1 rejected, see the table above\), fewer than min_photos=3; add photos to"
    with pytest.raises(UserError, match=re.escape(str(photos)) + " " + message):
        prepare(photos, tmp_path / "out", resolution=32)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["photos"]  # no output, no staging folder left
    assert len(prepare(photos, tmp_path / "out", min_photos=2, resolution=32)) == 3


def test_the_output_folder_must_be_new_or_empty(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_photos(photos, range(3))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")

    with pytest.raises(UserError, match=r"used folder is not empty; choose a new output folder"):
        prepare(photos, tmp_path / "used")
    with pytest.raises(UserError, match=r"file is a file; choose a new output folder"):
        prepare(photos, tmp_path / "file")
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"

    (tmp_path / "empty").mkdir()
    auto_cli(prepare, args=[str(photos), str(tmp_path / "empty"), "--resolution", "32"])  # as the command line does
    assert len(list((tmp_path / "empty").iterdir())) == 3


def test_the_output_trains_as_an_instance_folder_and_as_a_captioned_set(tmp_path: Path) -> None:
    from sdft.data import CaptionDataModule, SubjectDataModule

    photos = tmp_path / "photos"
    save_photos(photos, range(3), size=(80, 48))
    photo(3).save(photos / "photo_0.jpg", quality=95)  # the same stem as photo_0.png

    rows = prepare(
        photos,
        tmp_path / "out",
        "a photo of sks dog",
        resolution=32,
        caption_template="{}, on a sofa",
        file_format="jpg",
    )

    out = tmp_path / "out"
    written = [row.output for row in rows]
    assert written == ["photo_0.jpg", "photo_0_2.jpg", "photo_1.jpg", "photo_2.jpg"]  # photo_0.jpg came first
    metadata = [json.loads(line) for line in (out / METADATA).read_text().splitlines()]
    assert metadata == [{"file_name": name, "text": "a photo of sks dog, on a sofa"} for name in sorted(written)]
    assert rows[1].details == "resized 80x48 -> 53x32; cropped to 32x32"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no skipped file, duplicate or unlisted image to warn about
        subject = SubjectDataModule(str(out), "a photo of sks dog", resolution=32)
        subject.check()
        captioned = CaptionDataModule(str(out), resolution=32)
        captioned.check()
    assert [image.size for image in subject.images] == [(32, 32)] * 4
    assert captioned.captions == ["a photo of sks dog, on a sofa"] * 4
    assert [path.name for path in captioned.files] == sorted(written)


def test_options_that_cannot_work_are_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    save_photos(photos, range(3))
    with pytest.raises(UserError, match=r"--caption_template must hold exactly one '\{\}'"):
        prepare(photos, tmp_path / "out", "sks", caption_template="a photo")
    with pytest.raises(UserError, match=r"--near_duplicate_distance is a number of bits from 0 to 64, got 65"):
        prepare(photos, tmp_path / "out", near_duplicate_distance=65)
    with pytest.raises(UserError, match=r"nowhere does not exist; give the folder of photos"):
        prepare(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_masks_are_written_from_the_alpha_of_cut_out_photos(tmp_path: Path) -> None:
    from sdft.data import SubjectDataModule

    photos = tmp_path / "photos"
    save_photos(photos, range(3), size=(80, 48))
    alpha = np.zeros((48, 80), np.uint8)
    alpha[8:40, 30:50] = 255  # the subject, cut out
    cut_out = np.dstack([np.asarray(photo(7, (80, 48))), alpha])
    Image.fromarray(cut_out).save(photos / "cut_out.png")
    Image.fromarray(alpha).save(photos / "photo_1_mask.png")  # a mask beside its photo goes with it

    save_photos(tmp_path / "uncut", range(3))
    with pytest.raises(UserError, match=r"--masks: no photo in \S*uncut has a mask \(<stem>_mask\.png beside it, or"):
        prepare(tmp_path / "uncut", tmp_path / "none", resolution=32, masks=True)
    assert not (tmp_path / "none").exists()
    rows = rows_by_file(prepare(photos, tmp_path / "out", resolution=32, masks=True))

    out = tmp_path / "out"
    assert rows["cut_out.png"].details.endswith("mask written as cut_out_mask.png")
    assert rows["photo_1.png"].details.endswith("mask written as photo_1_mask.png")
    assert "photo_1_mask.png" not in rows  # not a photo
    assert sorted(path.name for path in out.iterdir()) == [
        "cut_out.png",
        "cut_out_mask.png",
        "photo_0.png",
        "photo_1.png",
        "photo_1_mask.png",
        "photo_2.png",
    ]
    expected = np.asarray(Image.fromarray(alpha).resize((53, 32), Image.Resampling.BICUBIC))[:, 10:42]
    for name in ("cut_out_mask.png", "photo_1_mask.png"):
        with Image.open(out / name) as mask:
            assert mask.mode == "L" and np.array_equal(np.asarray(mask), expected)  # resized and cropped as its photo
    subject = SubjectDataModule(str(out), "a photo of sks dog", resolution=32, mask_weight=0.0)
    with pytest.warns(UserWarning, match="2 of 4 images .* have no mask"):
        subject.check()
    assert [mask is not None for mask in subject.masks] == [True, False, True, False]
    plain = rows_by_file(prepare(photos, tmp_path / "plain", resolution=32))
    assert plain["photo_1_mask.png"].result == "rejected" and "--masks" in plain["photo_1_mask.png"].details
