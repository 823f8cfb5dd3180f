"""Reading subject photos: folder errors, every pixel mode to RGB, EXIF rotation, resolution checks, crops."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdft.data.images import (
    ImageDataError,
    check_resolution,
    list_images,
    load_rgb,
    prepare_image,
)

KEY = "data.instance_dir"


def save_rgb(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (8, 8)) -> Path:
    """Write a solid RGB image (format from the suffix) and return its path."""
    Image.new("RGB", size, color).save(path)
    return path


def halves_image(width: int, height: int) -> Image.Image:
    """An RGB image whose left half is black and right half white."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, width // 2 :] = 255
    return Image.fromarray(pixels)


def window_image(width: int, height: int) -> Image.Image:
    """An RGB image whose red is the column index and green the row index, so each crop is recognisable."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[..., 0] = np.arange(width)[None, :]
    pixels[..., 1] = np.arange(height)[:, None]
    return Image.fromarray(pixels)


# ---- list_images ----


def test_missing_folder_names_folder_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ImageDataError, match=rf"nowhere does not exist; set {re.escape(KEY)} to a folder of images"):
        list_images(missing, KEY)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    path = save_rgb(tmp_path / "photo.png")
    with pytest.raises(ImageDataError, match=r"photo\.png is a file, not a folder"):
        list_images(path, KEY)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageDataError, match=rf"contains no images.*set {re.escape(KEY)}"):
        list_images(tmp_path, KEY)


def test_folder_with_only_sidecars_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a photo of sks toy")
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "c.CAPTION").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "sub").mkdir()
    save_rgb(tmp_path / "sub" / "nested.png")
    with pytest.raises(ImageDataError, match="contains no images"):
        list_images(tmp_path, KEY)


@pytest.mark.parametrize("name", ["Thumbs.db", "notes.pdf", "notes.docx", "README"])
def test_a_stray_non_image_file_is_skipped_with_a_warning_naming_it(tmp_path: Path, name: str) -> None:
    save_rgb(tmp_path / "a.png")
    (tmp_path / name).write_bytes(b"not an image")
    kind = Path(name).suffix.lower() or "no extension"
    with pytest.warns(UserWarning, match=rf"{re.escape(name)}: not an image \({kind}\); skipped") as caught:
        assert list_images(tmp_path, KEY) == [tmp_path / "a.png"]
    assert len(caught) == 1


def test_several_stray_files_are_one_warning_with_their_count(tmp_path: Path) -> None:
    save_rgb(tmp_path / "a.png")
    for name in ("Thumbs.db", "notes.pdf", "README"):
        (tmp_path / name).write_bytes(b"not an image")
    with pytest.warns(UserWarning) as caught:
        assert list_images(tmp_path, KEY) == [tmp_path / "a.png"]
    assert [str(warning.message) for warning in caught] == [
        f"3 files in {tmp_path} are not images and are skipped: README, Thumbs.db, notes.pdf"
    ]


def test_hidden_files_and_sidecars_are_skipped_silently(tmp_path: Path) -> None:
    save_rgb(tmp_path / "a.png")
    for name in (".DS_Store", "._a.png", "a.txt", "a.json", "metadata.jsonl"):
        (tmp_path / name).write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list_images(tmp_path, KEY) == [tmp_path / "a.png"]


def test_a_folder_of_only_non_images_still_has_no_images(tmp_path: Path) -> None:
    (tmp_path / "Thumbs.db").write_bytes(b"x")
    with (
        pytest.warns(UserWarning, match="Thumbs.db: not an image"),
        pytest.raises(ImageDataError, match="contains no images"),
    ):
        list_images(tmp_path, KEY)


def test_lists_sorted_images_any_case_skipping_sidecars_and_hidden(tmp_path: Path) -> None:
    for name in ("c.PNG", "a.jpg", "b.JpEg", "d.webp"):
        save_rgb(tmp_path / name)
    (tmp_path / "a.txt").write_text("caption")
    (tmp_path / "._a.jpg").write_bytes(b"AppleDouble junk")
    (tmp_path / ".hidden.pdf").write_bytes(b"x")
    assert [path.name for path in list_images(tmp_path, KEY)] == ["a.jpg", "b.JpEg", "c.PNG", "d.webp"]


# ---- load_rgb: unreadable files ----


def test_corrupt_png_is_named(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageDataError, match=r"broken\.png could not be read as an image.*re-save it"):
        load_rgb(path)


def test_zero_byte_and_text_named_png_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.png").write_text("this is text, not an image\n")
    for name in ("empty.jpg", "notes.png"):
        with pytest.raises(
            ImageDataError, match=rf"{name.replace('.', '[.]')} could not be read as an image.*re-save it"
        ):
            load_rgb(tmp_path / name)


def test_webp_is_decoded(tmp_path: Path) -> None:
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.webp", lossless=True)
    assert load_rgb(tmp_path / "red.webp").getpixel((8, 8)) == (255, 0, 0)


def test_truncated_jpeg_is_named(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / "full.jpg"
    Image.fromarray(noise).save(full, quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageDataError, match=r"cut\.jpg could not be read as an image.*or remove it"):
        load_rgb(path)


def test_an_image_over_pillows_pixel_limit_says_to_downscale_it(tmp_path: Path, monkeypatch) -> None:
    save_rgb(tmp_path / "huge.png", size=(20, 15))  # 300 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses images over twice this
    expected = (
        r"huge\.png is 300 pixels, more than Pillow's safety limit of 200; "
        r"downscale it \(e\.g\. to 2048 px on the long side\) or remove it$"
    )
    with pytest.raises(ImageDataError, match=expected):
        load_rgb(tmp_path / "huge.png")


# ---- load_rgb: modes ----


def test_rgba_transparent_pixels_become_white(tmp_path: Path) -> None:
    pixels = np.array([[[255, 0, 0, 255], [0, 0, 255, 0], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(pixels).save(tmp_path / "alpha.png")
    image = load_rgb(tmp_path / "alpha.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0)
    assert image.getpixel((1, 0)) == (255, 255, 255)
    assert all(abs(channel - 127) <= 1 for channel in image.getpixel((2, 0)))


def test_la_composited_on_white(tmp_path: Path) -> None:
    Image.fromarray(np.array([[[40, 255], [40, 0]]], np.uint8), "LA").save(tmp_path / "la.png")
    image = load_rgb(tmp_path / "la.png")
    assert [image.getpixel((x, 0)) for x in range(2)] == [(40, 40, 40), (255, 255, 255)]


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    image.putpalette([0, 255, 0, 0, 0, 0, 10, 20, 30])
    image.save(tmp_path / "palette.png", transparency=1)
    loaded = load_rgb(tmp_path / "palette.png")
    assert [loaded.getpixel((x, 0)) for x in range(3)] == [(0, 255, 0), (255, 255, 255), (10, 20, 30)]


def test_grey_l(tmp_path: Path) -> None:
    Image.new("L", (3, 2), 77).save(tmp_path / "grey.png")
    image = load_rgb(tmp_path / "grey.png")
    assert image.mode == "RGB" and image.size == (3, 2) and image.getpixel((2, 1)) == (77, 77, 77)


def test_cmyk(tmp_path: Path) -> None:
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "print.tif")
    assert load_rgb(tmp_path / "print.tif").getpixel((1, 1)) == (255, 0, 0)


def test_sixteen_bit_scaled_by_shift(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 256, 32768, 65535]], np.uint16)).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode == "I;16"
    image = load_rgb(tmp_path / "scan.png")
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 1, 128, 255]


def test_dark_sixteen_bit_stays_dark(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 200, 511]], np.uint16)).save(tmp_path / "dark.tif")
    image = load_rgb(tmp_path / "dark.tif")
    assert [image.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (0, 0, 0), (1, 1, 1)]


def test_bilevel(tmp_path: Path) -> None:
    Image.fromarray(np.array([[False, True]])).save(tmp_path / "fax.png")
    assert Image.open(tmp_path / "fax.png").mode == "1"
    image = load_rgb(tmp_path / "fax.png")
    assert [image.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_int32_and_float(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 300, 65535]], np.int32), "I").save(tmp_path / "int.tif")
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "float.tif")
    as_int, as_float = load_rgb(tmp_path / "int.tif"), load_rgb(tmp_path / "float.tif")
    assert [as_int.getpixel((x, 0))[0] for x in range(3)] == [0, 1, 255]
    assert [as_float.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    with pytest.warns(UserWarning, match=r"anim\.gif is animated \(2 frames\); its first frame is used"):
        assert load_rgb(tmp_path / "anim.gif").getpixel((2, 2)) == (255, 0, 0)


def test_exif_orientation_six_rotates_clockwise(tmp_path: Path) -> None:
    pixels = np.full((40, 80, 3), 255, np.uint8)
    pixels[:16, :16] = (255, 0, 0)  # stored top-left corner marked red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    image = load_rgb(tmp_path / "phone.jpg")
    assert image.size == (40, 80)
    red, green, blue = image.getpixel((40 - 6, 6))  # the top-left corner turned into the top-right one
    assert red > 200 and green < 60 and blue < 60
    assert min(image.getpixel((6, 6))) > 200
    assert min(image.getpixel((6, 80 - 6))) > 200


# ---- check_resolution ----


def test_far_too_small_raises(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    expected = r"tiny\.png is 300x200, far smaller than data\.resolution=512; use a larger image or lower"
    with pytest.raises(ImageDataError, match=expected):
        check_resolution(path, (300, 200), 512, "data.resolution")


def test_slightly_small_warns_with_file_name(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"small\.png is 600x400.*upscaled"):
        check_resolution(tmp_path / "small.png", (600, 400), 512, "data.resolution")


def test_large_enough_is_silent(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_resolution(tmp_path / "big.png", (900, 512), 512, "data.resolution")


# ---- prepare_image ----


def test_center_crop_without_resize_is_exact() -> None:
    tensor = prepare_image(halves_image(64, 32), 32, center_crop=True, flip=False, generator=None)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert torch.all(tensor[:, :, :16] == -1.0) and torch.all(tensor[:, :, 16:] == 1.0)


def test_resize_short_side_then_center_crop() -> None:
    tensor = prepare_image(halves_image(256, 128), 32, center_crop=True, flip=False, generator=None)
    assert tensor.shape == (3, 32, 32)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert torch.allclose(tensor[:, :, :14], torch.tensor(-1.0), atol=0.02)
    assert torch.allclose(tensor[:, :, 18:], torch.tensor(1.0), atol=0.02)


def test_upscales_small_images() -> None:
    tensor = prepare_image(halves_image(16, 20), 32, center_crop=True, flip=False, generator=None)
    assert tensor.shape == (3, 32, 32)
    # scaled up (not padded): the two halves fill the crop, softened only at the seam
    assert torch.allclose(tensor[:, :, :14], torch.tensor(-1.0), atol=0.02)
    assert torch.allclose(tensor[:, :, 18:], torch.tensor(1.0), atol=0.02)


def test_flip_mirrors_the_crop() -> None:
    plain = prepare_image(halves_image(64, 32), 32, center_crop=True, flip=False, generator=None)
    flipped = prepare_image(halves_image(64, 32), 32, center_crop=True, flip=True, generator=None)
    assert torch.all(flipped[:, :, :16] == 1.0) and torch.all(flipped[:, :, 16:] == -1.0)
    assert torch.equal(flipped, plain.flip(2))


@pytest.mark.parametrize("size", [(64, 32), (32, 64)])
def test_random_crop_is_deterministic_per_seed_and_a_true_window(size: tuple[int, int]) -> None:
    image = window_image(*size)  # short side == resolution, so no resize: crops are exact windows
    full = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1.0

    def crop(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return prepare_image(image, 32, center_crop=False, flip=False, generator=generator)

    assert torch.equal(crop(0), crop(0))
    crops = [crop(seed) for seed in range(8)]
    assert len({tuple(c[:, 0, 0].tolist()) for c in crops}) > 1
    windows = [full[:, top : top + 32, left : left + 32] for top in range(33) for left in range(33)]
    assert all(any(torch.equal(c, window) for window in windows) for c in crops)


def test_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="load_rgb"):
        prepare_image(Image.new("L", (8, 8)), 8, center_crop=True, flip=False, generator=None)
