"""The toy world: seeded scenes, captions that read back, held-out vocabularies, folders the data modules read, a
novel subject the world never draws, and an oracle that agrees with the truth on drawn scenes."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from lightning.pytorch import Trainer
from PIL import Image, ImageDraw

from sdft.assets import TOY_WORLD_SIZE, resolve
from sdft.data import CaptionDataModule, SubjectDataModule
from sdft.toyworld import (
    Scene,
    Subject,
    Vocabulary,
    caption,
    draw,
    masks,
    oracle,
    parse_caption,
    render,
    sample_scene,
    subject_photos,
    subject_prompts,
    world_dataset,
    write_folder,
)
from sdft.toyworld.backgrounds import draw_background, typical_color
from sdft.toyworld.draw import bounding_box
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, SHAPES, SUBJECT_SHAPES, TEMPLATES, shade
from sdft.toyworld.shapes import EYE_WHITE, HAT, outline


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def attached(data, max_steps: int = 2):
    data.trainer = Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False)
    data.setup("fit")
    return data


# -- scenes and captions ----------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_another_seed_other_images():
    first, second, other = world_dataset(3, 6), world_dataset(3, 6), world_dataset(4, 6)
    assert [png_bytes(first[i].image) for i in range(6)] == [png_bytes(second[i].image) for i in range(6)]
    assert [first[i].caption for i in range(6)] == [second[i].caption for i in range(6)]
    assert all(png_bytes(first[i].image) != png_bytes(other[i].image) for i in range(6))
    image, text, scene = first[-1]  # any example alone, negative indices from the end
    assert png_bytes(image) == png_bytes(first[5].image) and (scene, text) == first.describe(5)
    with pytest.raises(IndexError, match="out of range"):
        first[6]


def test_every_template_reads_back_into_the_scene():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, Vocabulary(second_object_rate=0.5)) for _ in range(300)]
    for index, scene in enumerate(scenes):
        text = caption(scene, index % len(TEMPLATES))
        assert parse_caption(text) == scene.attributes(), text
    assert {caption(scene, 0).count(",") for scene in scenes} == {1}


def test_captions_read_as_english():
    scene = Scene("star", "red", "striped", "large", "left", "brick")
    assert caption(scene) == "a large red striped star on the left, on a brick wall"
    pair = Scene("heart", "blue", "plain", "small", "right", "sky", "above", "circle", "orange")
    assert caption(pair, 1) == "a photo of a small plain blue heart in the sky, on the right above an orange circle"


def test_prompts_written_by_hand_parse_to_what_they_mention():
    assert parse_caption("A photo of sks creature on grass, on the left") == {
        "shape": "creature",
        "background": "grass",
        "position": "left",
    }
    assert parse_caption("a green ring in the middle next to a yellow heart") == {
        "shape": "ring",
        "color": "green",
        "position": "centre",
        "relation": "next to",
        "second_color": "yellow",
        "second_shape": "heart",
    }
    assert parse_caption("a photo of a dog") == {}


def test_held_out_values_and_combinations_are_never_drawn_and_the_rest_is():
    vocabulary = Vocabulary(colors=("red", "green", "blue"), second_object_rate=0.5).hold_out(
        shape="star", background="grass"
    )
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, vocabulary) for _ in range(3000)]
    assert {scene.color for scene in scenes} == {"red", "green", "blue"}
    assert not any(scene.shape == "star" and scene.background == "grass" for scene in scenes)
    assert not any(scene.second_shape == "star" and scene.background == "grass" for scene in scenes)
    assert any(scene.shape == "star" for scene in scenes) and any(scene.background == "grass" for scene in scenes)
    assert {scene.shape for scene in scenes} == set(SHAPES)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"shapes": ("star", "creature")}, "Vocabulary.shapes 'creature' is not one of"),
        ({"colors": ()}, "Vocabulary.colors is empty"),
        ({"second_object_rate": 1.5}, r"second_object_rate is a probability in \[0, 1\]"),
    ],
)
def test_bad_vocabularies_name_the_field(options, message):
    with pytest.raises(ValueError, match=message):
        Vocabulary(**options)


def test_a_vocabulary_holding_out_everything_says_so():
    with pytest.raises(ValueError, match="held_out leaves no scene"):
        sample_scene(np.random.default_rng(0), Vocabulary(sizes=("small",)).hold_out(size="small"))
    with pytest.raises(ValueError, match="Scene.color 'teal' is not one of"):
        Scene("star", "teal", "plain", "large", "left", "grass")


# -- drawing ----------------------------------------------------------------------------------------------------------


def test_every_shape_is_centred_on_its_centroid_with_radius_one():
    for shape in SHAPES + SUBJECT_SHAPES:
        layer = Image.new("L", (1024, 1024), 0)
        pen = ImageDraw.Draw(layer)
        for polygon in outline(shape).fills:
            pen.polygon([tuple(point) for point in polygon * 256 + 512], fill=255)
        for polygon in outline(shape).holes:
            pen.polygon([tuple(point) for point in polygon * 256 + 512], fill=0)
        rows, columns = np.nonzero(np.asarray(layer))
        x, y = (columns + 0.5 - 512) / 256, (rows + 0.5 - 512) / 256
        assert abs(x.mean()) < 0.01 and abs(y.mean()) < 0.01, shape
        assert np.hypot(x - x.mean(), y - y.mean()).max() == pytest.approx(1.0, abs=0.01), shape


def test_masks_are_the_objects_and_stay_clear_of_the_border():
    dataset = world_dataset(5, 200, Vocabulary(second_object_rate=0.3))
    for index in range(len(dataset)):
        drawing = dataset.render(index)
        masks = [mask for mask in (drawing.mask, drawing.second_mask) if mask is not None]
        for mask, placement in zip(masks, drawing.placements, strict=True):
            left, top, right, bottom = bounding_box(mask)
            assert left >= 2 and top >= 2 and right <= 62 and bottom <= 62
            x, y = oracle.centroid_of(mask)
            assert abs(x - placement.x * 64) < 1.0 and abs(y - placement.y * 64) < 1.0
        if len(masks) == 2:
            assert not (oracle.dilated(masks[0]) & masks[1]).any()  # never touching
    assert drawing.box == bounding_box(drawing.mask)


def test_an_unjittered_scene_is_drawn_where_its_attributes_say():
    drawing = render(Scene("square", "yellow", "plain", "large", "right", "grey"), size=64)
    pixels = np.asarray(drawing.image).astype(int)
    assert np.array_equal(pixels[drawing.mask & oracle.eroded(drawing.mask)][0], COLORS["yellow"])
    assert np.array_equal(pixels[0, 0], (150, 150, 150))
    assert oracle.centroid_of(drawing.mask) == pytest.approx((0.72 * 64, 32), abs=0.05)
    # half side 0.21 * 64 / sqrt(2) = 9.50 pixels around (46.08, 32), and PIL fills a polygon's edge pixels too
    # (a quarter pixel at 4x supersampling): the sides lie at 36.33, 22.25, 55.83 and 41.75
    assert bounding_box(drawing.mask) == (36, 22, 56, 42)
    assert draw(Scene("square", "yellow", "plain", "large", "right", "grey"), 32).size == (32, 32)


def test_each_background_is_nearest_its_own_typical_colour():
    for name in BACKGROUNDS:
        for seed in range(3):
            mean = draw_background(name, 64, np.random.default_rng(seed)).reshape(-1, 3).mean(axis=0)
            distances = {other: np.linalg.norm(np.array(typical_color(other)) - mean) for other in BACKGROUNDS}
            assert distances[name] < 5 and min(distances.values()) == distances[name], name


def test_backgrounds_stay_far_from_every_object_colour():
    inks = [*COLORS.values(), *(shade(name) for name in COLORS), HAT, EYE_WHITE]
    for name in BACKGROUNDS:
        colors = np.unique(draw_background(name, 64, np.random.default_rng(0)).reshape(-1, 3), axis=0)
        nearest = oracle.nearest_distance(colors[None].astype(np.float32), np.array(inks, np.float32)).min()
        assert nearest > masks.FOREGROUND_DISTANCE + 5, name


# -- folders the data modules read ------------------------------------------------------------------------------------


def test_the_world_folder_is_a_caption_folder(tmp_path):
    dataset = world_dataset(0, 6)
    folder = write_folder(tmp_path / "world", dataset)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [row["file_name"] for row in rows] == [f"{index:05d}.png" for index in range(6)]
    assert [Scene(**row["scene"]) for row in rows] == [dataset[index].scene for index in range(6)]
    assert (folder / "00002.png").read_bytes() == png_bytes(dataset[2].image)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["world"]  # nothing staged left behind
    data = attached(CaptionDataModule(str(folder), resolution=64, batch_size=2))
    batch = next(iter(data.train_dataloader()))
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert set(batch["prompts"]) <= {row["text"] for row in rows}
    shown = [prompt for batch in data.val_dataloader() for prompt in batch["prompts"]]
    assert sorted(shown) == sorted(row["text"] for row in rows)


def test_subject_photos_are_an_instance_folder_with_prompts(tmp_path):
    paths = subject_photos(tmp_path / "subject", count=5, seed=2)
    assert [path.name for path in paths] == [f"photo_{index:02d}.png" for index in range(5)]
    again = subject_photos(tmp_path / "again", count=5, seed=2)
    assert [path.read_bytes() for path in paths] == [path.read_bytes() for path in again]
    data = attached(SubjectDataModule(str(tmp_path / "subject"), "a photo of sks creature", resolution=64))
    assert len(data.images) == 5
    assert next(iter(data.train_dataloader()))["pixel_values"].shape == (1, 3, 64, 64)
    prompts = (tmp_path / "subject" / "prompts.txt").read_text().splitlines()
    assert prompts == subject_prompts(Subject())
    asked = [parse_caption(prompt) for prompt in prompts]
    assert {entry["background"] for entry in asked} == {"sky", "grass", "brick", "water"}  # never cream or grey
    assert all(entry["shape"] == "creature" for entry in asked)
    assert {entry.get("position") for entry in asked} >= {"left", "right"}
    assert {entry.get("color") for entry in asked} - {None} and "orange" not in {entry.get("color") for entry in asked}


def test_the_subject_is_never_drawn_by_the_world_and_the_oracle_tells_it_apart(tmp_path):
    dataset = world_dataset(0, 5000, Vocabulary(second_object_rate=0.5))
    drawn = {dataset.describe(index)[0] for index in range(len(dataset))}
    assert not {scene.shape for scene in drawn} & set(SUBJECT_SHAPES)
    assert not {scene.second_shape for scene in drawn} & set(SUBJECT_SHAPES)
    subject = Subject()
    world = [oracle.subject_present(dataset[index].image, subject) for index in range(40)]
    photos = [oracle.subject_present(Image.open(path), subject) for path in subject_photos(tmp_path, count=6)]
    assert not any(world) and all(photos)
    with pytest.raises(ValueError, match="Subject.shape 'star' is not one of creature"):
        Subject(shape="star")


# -- the oracle -------------------------------------------------------------------------------------------------------


def agreement(count: int, keys: tuple[str, ...], seed: int, with_masks: bool = False) -> dict[str, float]:
    """The share of drawn scenes on which the oracle reads each attribute as drawn."""
    dataset = world_dataset(seed, count, Vocabulary(second_object_rate=0.3))
    hits: dict[str, list[bool]] = {}
    for index in range(count):
        drawing, scene = dataset.render(index), dataset.describe(index)[0]
        expected = {key: value for key, value in scene.attributes().items() if key in keys}
        masks = (drawing.mask, drawing.second_mask) if with_masks else None
        for key, hit in oracle.score(drawing.image, expected, masks).items():
            hits.setdefault(key, []).append(hit)
    return {key: float(np.mean(values)) for key, values in hits.items()}


def test_the_oracle_reads_colour_background_and_position_of_drawn_scenes():
    shares = agreement(300, ("color", "background", "position"), seed=11)
    assert set(shares) == {"color", "background", "position"}
    assert all(share >= 0.95 for share in shares.values()), shares


def test_the_oracle_reads_every_attribute_of_drawn_scenes_with_or_without_their_masks():
    keys = ("shape", "color", "pattern", "size", "position", "background", "relation", "second_color")
    assert all(share >= 0.9 for share in agreement(80, keys, seed=12).values())
    assert all(share >= 0.9 for share in agreement(80, keys, seed=12, with_masks=True).values())


def test_the_oracle_judges_generated_images_of_another_size_and_empty_ones():
    scene = Scene("heart", "pink", "plain", "large", "left", "water")
    large = draw(scene, 256, np.random.default_rng(0))
    assert oracle.score(large, scene.attributes()) == dict.fromkeys(scene.attributes(), True)
    assert oracle.score(large, {"color": "green", "position": "right"}) == {"color": False, "position": False}
    empty = Image.fromarray(draw_background("cream", 64, np.random.default_rng(0)))
    assert oracle.read_attributes(empty) == {"background": "cream"}
    assert oracle.score(empty, {"color": "red"}) == {"color": False}
    assert oracle.subject_present(empty, Subject()) is False


def test_the_toy_world_and_its_creature_are_builtin_folders():
    world = Path(resolve("builtin:toyworld-scenes"))
    rows = [json.loads(line) for line in (world / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == TOY_WORLD_SIZE and all((world / row["file_name"]).is_file() for row in rows)
    assert rows[0]["text"] == world_dataset(seed=0, count=TOY_WORLD_SIZE)[0].caption
    creature = Path(resolve("builtin:toyworld-creature"))
    assert len(sorted(creature.glob("photo_*.png"))) == 5 and (creature / "prompts.txt").read_text().strip()
