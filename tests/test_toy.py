"""The generated sample subject and class toys: count, size, determinism, and that the subject is one toy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdft.data.images import list_images, load_rgb
from sdft.data.toy import write_toy_class, write_toy_subject


def red_fraction(path: Path) -> float:
    """The share of pixels in the subject's saturated red."""
    pixels = np.asarray(load_rgb(path)).astype(int)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    return float(red.mean())


def test_subject_count_size_and_names(tmp_path: Path) -> None:
    paths = write_toy_subject(tmp_path / "subject" / "nested", num_images=4, size=48, seed=0)
    assert [path.name for path in paths] == ["toy_00.png", "toy_01.png", "toy_02.png", "toy_03.png"]
    assert list_images(tmp_path / "subject" / "nested", "data.instance_dir") == paths
    assert sorted(p.name for p in paths[0].parent.iterdir()) == [p.name for p in paths]  # no temp files left
    for path in paths:
        image = load_rgb(path)
        assert image.size == (48, 48)


def test_subject_same_seed_same_bytes(tmp_path: Path) -> None:
    first = write_toy_subject(tmp_path / "a", num_images=3, size=64, seed=7)
    second = write_toy_subject(tmp_path / "b", num_images=3, size=64, seed=7)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_subject_different_seed_different_photos(tmp_path: Path) -> None:
    first = write_toy_subject(tmp_path / "a", num_images=3, size=64, seed=0)
    second = write_toy_subject(tmp_path / "b", num_images=3, size=64, seed=1)
    for a, b in zip(first, second, strict=True):
        assert not np.array_equal(np.asarray(load_rgb(a)), np.asarray(load_rgb(b)))


def test_photos_of_one_subject_differ_from_each_other(tmp_path: Path) -> None:
    paths = write_toy_subject(tmp_path, num_images=3, size=64, seed=0)
    arrays = [np.asarray(load_rgb(path)) for path in paths]
    assert not np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[1], arrays[2])


def test_subject_is_red_and_class_toys_are_not(tmp_path: Path) -> None:
    subject = write_toy_subject(tmp_path / "subject", num_images=5, size=64, seed=3)
    others = write_toy_class(tmp_path / "class", num_images=8, size=64, seed=3)
    assert all(red_fraction(path) > 0.05 for path in subject)
    assert all(red_fraction(path) < 0.01 for path in others)


def test_class_is_deterministic(tmp_path: Path) -> None:
    first = write_toy_class(tmp_path / "a", num_images=3, size=32, seed=5)
    second = write_toy_class(tmp_path / "b", num_images=3, size=32, seed=5)
    assert [p.name for p in first] == ["class_toy_00.png", "class_toy_01.png", "class_toy_02.png"]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


@pytest.mark.parametrize(("num_images", "size", "match"), [(0, 64, "num_images"), (2, 8, "size")])
def test_rejects_bad_arguments(tmp_path: Path, num_images: int, size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_toy_subject(tmp_path, num_images=num_images, size=size)
