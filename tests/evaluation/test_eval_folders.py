import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sdft.errors import UserError
from sdft.evaluation.backbones import load_clip, load_dino
from sdft.evaluation.folders import METADATA_FILE, evaluate_folders, load_square, score_subject
from sdft.evaluation.similarity import mean_cross_similarity, mean_distinct_pair_similarity

SIDE = 224  # the loader's square side: images of this size reach the extractors unchanged
TINY = {"clip_model": "builtin:tiny-clip", "dino_model": "builtin:tiny-dino", "device": "cpu"}


@pytest.fixture(scope="module")
def clip():
    return load_clip("builtin:tiny-clip")


@pytest.fixture(scope="module")
def dino():
    return load_dino("builtin:tiny-dino")


def write_photos(folder, count, seed, size=(SIDE, SIDE)):
    """Smooth random-colour images (a coarse noise grid upscaled), saved as PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        path = folder / f"{index:04d}.png"
        coarse.resize(size, Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    return paths


def write_metadata(folder, entries):
    lines = [json.dumps(entry) for entry in entries]
    (folder / METADATA_FILE).write_text("\n".join(lines) + "\n")


def write_generated(folder, sources, prompts, class_prompt=()):
    """Copy ``sources`` into ``folder`` with their prompts; indices in ``class_prompt`` are class-prompt images."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (source, prompt) in enumerate(zip(sources, prompts, strict=True)):
        name = f"gen_{index:04d}.png"
        shutil.copy(source, folder / name)
        entry = {"file_name": name, "text": prompt}
        if index in class_prompt:
            entry["class_prompt"] = True
        entries.append(entry)
    write_metadata(folder, entries)
    return [folder / entry["file_name"] for entry in entries]


def pixels(paths):
    """Decode PNGs straight with PIL, independently of the module's loader."""
    return torch.stack([torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1) for path in paths])


def test_copies_of_the_photos_score_the_mean_over_all_real_pairs(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 3, seed=0)
    generated = write_generated(tmp_path / "generated" / "dog", real, ["a sks dog"] * 3)
    scores = score_subject(generated[0].parent, real[0].parent, "sks", clip, dino, batch_size=2)
    real_pixels = pixels(real)
    expected_dino = mean_cross_similarity(dino(pixels(generated)), dino(real_pixels)).item()
    expected_clip = mean_cross_similarity(clip(pixels(generated)), clip(real_pixels)).item()
    assert scores["val/dino"] == pytest.approx(expected_dino, abs=1e-5)
    assert scores["val/clip_i"] == pytest.approx(expected_clip, abs=1e-5)
    assert scores["val/dino"] < 0.999  # distinct photos: the mean over all pairs is not the diagonal's 1.0
    assert scores["ceiling/dino"] == pytest.approx(mean_distinct_pair_similarity(dino(real_pixels)).item(), abs=1e-5)
    assert scores["ceiling/clip_i"] == pytest.approx(mean_distinct_pair_similarity(clip(real_pixels)).item(), abs=1e-5)
    assert scores["num_generated"] == 3 and scores["num_real"] == 3
    assert "val/pres" not in scores


def test_one_photo_repeated_against_itself_scores_one(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 1, seed=1)
    generated = write_generated(tmp_path / "generated" / "dog", real * 3, ["a sks dog"] * 3)
    scores = score_subject(generated[0].parent, real[0].parent, "sks", clip, dino)
    assert scores["val/dino"] == pytest.approx(1.0, abs=1e-5)
    assert scores["val/clip_i"] == pytest.approx(1.0, abs=1e-5)
    assert "ceiling/dino" not in scores and "ceiling/clip_i" not in scores  # one photo has no distinct pairs


def test_clip_t_scores_each_image_against_its_prompt_without_the_identifier(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=2)
    sources = write_photos(tmp_path / "sources", 3, seed=3)
    prompts = ["a sks dog in the snow", "a red sks dog", "a sks dog on the beach"]
    generated = write_generated(tmp_path / "generated" / "dog", sources, prompts)
    scores = score_subject(generated[0].parent, real[0].parent, "sks", clip, dino, batch_size=2)
    image_embeddings = clip.encode_images(pixels(generated))
    stripped = ["a dog in the snow", "a red dog", "a dog on the beach"]
    expected = (image_embeddings * clip.encode_texts(stripped)).sum(-1).mean().item()
    with_identifier = (image_embeddings * clip.encode_texts(prompts)).sum(-1).mean().item()
    assert abs(expected - with_identifier) > 1e-3  # the tiny CLIP tells the two apart, so the check means something
    assert scores["val/clip_t"] == pytest.approx(expected, abs=1e-5)


def test_pres_comes_only_from_class_prompt_images(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=4)
    sources = write_photos(tmp_path / "sources", 4, seed=5)
    prompts = ["a sks dog", "a dog", "a sks dog in the snow", "a dog"]
    generated = write_generated(tmp_path / "generated" / "dog", sources, prompts, class_prompt={1, 3})
    scores = score_subject(generated[0].parent, real[0].parent, "sks", clip, dino)
    subject_images, class_images = pixels(generated[0::2]), pixels(generated[1::2])
    real_dino = dino(pixels(real))
    assert scores["val/pres"] == pytest.approx(mean_cross_similarity(dino(class_images), real_dino).item(), abs=1e-5)
    assert scores["val/dino"] == pytest.approx(mean_cross_similarity(dino(subject_images), real_dino).item(), abs=1e-5)
    clip_i = mean_cross_similarity(clip(subject_images), clip(pixels(real))).item()
    assert scores["val/clip_i"] == pytest.approx(clip_i, abs=1e-5)
    assert scores["num_generated"] == 2


def test_images_of_any_size_are_center_cropped_to_a_common_square(tmp_path, clip, dino):
    wide = np.zeros((SIDE, SIDE + 60, 3), dtype=np.uint8)
    wide[:, 30 : 30 + SIDE] = 200  # only the centre band survives the crop
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert torch.equal(load_square(tmp_path / "wide.png"), torch.full((3, SIDE, SIDE), 200, dtype=torch.uint8))
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=6, size=(300, 200))
    sources = write_photos(tmp_path / "a", 1, seed=7, size=(64, 96)) + write_photos(tmp_path / "b", 1, seed=8)
    generated = write_generated(tmp_path / "generated" / "dog", sources, ["a sks dog"] * 2)
    scores = score_subject(generated[0].parent, real[0].parent, "sks", clip, dino)
    assert scores["num_generated"] == 2 and scores["num_real"] == 2
    assert -1.0 <= scores["val/dino"] <= 1.0


def test_evaluate_folders_adds_a_mean_row_prints_a_table_and_writes_json_lines(tmp_path, capsys):
    for index, name in enumerate(("cat", "dog")):
        write_photos(tmp_path / "subjects" / name, 2, seed=10 + index)
        sources = write_photos(tmp_path / "sources" / name, 3, seed=20 + index)
        class_prompt = {2} if name == "dog" else set()
        write_generated(tmp_path / "generated" / name, sources, [f"a sks {name}", f"a sks {name}", "x"], class_prompt)
    write_photos(tmp_path / "subjects" / "bird", 1, seed=30)
    output = tmp_path / "results" / "scores.jsonl"
    with pytest.warns(UserWarning, match="bird"):
        rows = evaluate_folders(tmp_path / "generated", tmp_path / "subjects", output=output, **TINY)
    assert [row["subject"] for row in rows] == ["cat", "dog", "mean"]
    cat, dog, mean = rows
    for key in ("val/clip_i", "val/clip_t", "val/dino", "ceiling/clip_i", "ceiling/dino"):
        assert mean[key] == pytest.approx((cat[key] + dog[key]) / 2)
    assert "val/pres" not in cat and mean["val/pres"] == pytest.approx(dog["val/pres"])
    assert (cat["num_generated"], dog["num_generated"], mean["num_generated"]) == (3, 2, 5)
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows
    assert not [path for path in output.parent.iterdir() if path != output]  # no temporary file left behind
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["subject", "n_gen", "CLIP-I"]
    assert table[1].split()[:3] == ["cat", "3", f"{cat['val/clip_i']:.3f}"]
    assert table[3].split()[0] == "mean" and table[1].split()[5] == "-"  # cat has no PRES


def test_missing_metadata_is_an_error_naming_the_file(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=0)
    write_photos(tmp_path / "generated" / "dog", 2, seed=1)
    with pytest.raises(UserError, match=r"generated/dog/metadata\.jsonl is missing"):
        score_subject(tmp_path / "generated" / "dog", real[0].parent, "sks", clip, dino)


def test_listed_image_that_does_not_exist_is_an_error(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=0)
    folder = tmp_path / "generated" / "dog"
    write_generated(folder, real, ["a sks dog"] * 2)
    entries = [json.loads(line) for line in (folder / METADATA_FILE).read_text().splitlines()]
    write_metadata(folder, [*entries, {"file_name": "gen_0009.png", "text": "a sks dog"}])
    with pytest.raises(ValueError, match=r"line 3 lists .*gen_0009\.png, which does not exist"):
        score_subject(folder, real[0].parent, "sks", clip, dino)


def test_image_without_a_metadata_entry_is_an_error(tmp_path, clip, dino):
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=0)
    folder = tmp_path / "generated" / "dog"
    write_generated(folder, real, ["a sks dog"] * 2)
    shutil.copy(real[0], folder / "extra.png")
    with pytest.raises(ValueError, match=r"metadata\.jsonl has no entry for extra\.png"):
        score_subject(folder, real[0].parent, "sks", clip, dino)


def test_generated_subject_without_photos_is_an_error_naming_the_folder(tmp_path):
    real = write_photos(tmp_path / "subjects" / "dog", 2, seed=0)
    write_generated(tmp_path / "generated" / "dog", real, ["a sks dog"] * 2)
    write_generated(tmp_path / "generated" / "cat", real, ["a sks cat"] * 2)
    with pytest.raises(UserError, match=r"generated/cat has no photos folder .*subjects/cat"):
        evaluate_folders(tmp_path / "generated", tmp_path / "subjects", **TINY)


def test_evaluate_folders_with_one_photo_per_subject_scores_without_ceilings(tmp_path, capsys):
    for index, name in enumerate(("cat", "dog")):
        real = write_photos(tmp_path / "subjects" / name, 1, seed=40 + index)
        write_generated(tmp_path / "generated" / name, real * 2, [f"a sks {name}"] * 2)
    rows = evaluate_folders(tmp_path / "generated", tmp_path / "subjects", **TINY)
    for row in rows:
        assert row["val/dino"] == pytest.approx(1.0, abs=1e-5) and row["num_real"] in (1, 2)
        assert "ceiling/dino" not in row and "ceiling/clip_i" not in row
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[-4:] == ["ceil", "CLIP-I", "ceil", "DINO"]
    assert all(line.split()[-2:] == ["-", "-"] for line in table[1:])
