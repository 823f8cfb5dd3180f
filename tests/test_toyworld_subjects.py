"""Novel subjects: eight figures in the world's colours and patterns, each with eyes and an accessory no world object
has, and a strict oracle that reads every feature of each on its photos, never finds one in a world scene, and
names the one feature a changed subject gets wrong."""

from __future__ import annotations

import functools
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdft.toyworld import oracle, parse_caption, world_dataset
from sdft.toyworld.backgrounds import draw_background
from sdft.toyworld.draw import Placement, place, rasterize, render
from sdft.toyworld.masks import centroid_of, radius_of
from sdft.toyworld.scenes import BACKGROUNDS, COLORS, PATTERNS, POSITIONS, SHAPES, SUBJECT_SHAPES, Scene, shade
from sdft.toyworld.shapes import (
    ACCESSORIES,
    ACCESSORY_COLORS,
    EYE_WHITE,
    HAT,
    Outline,
    Part,
    body_parts,
    body_to_figure,
    subject_parts,
)
from sdft.toyworld.subjects import (
    DEVELOPMENT_SUBJECTS,
    HELD_OUT_SUBJECTS,
    PHOTO_BACKGROUNDS,
    Subject,
    subject_photos,
    subject_prompts,
)

SUBJECTS = DEVELOPMENT_SUBJECTS + HELD_OUT_SUBJECTS
FEATURES = oracle.SUBJECT_FEATURES
#: 3 seeds x 4 photos: 12 photos of each subject
PHOTO_SEEDS, PHOTOS_PER_SEED = (0, 1, 2), 4


def by_identifier(subject: Subject) -> str:
    return subject.identifier


@functools.cache
def photos(subject: Subject) -> tuple[Image.Image, ...]:
    """The subject's photos as :func:`subject_photos` writes them, over ``PHOTO_SEEDS``."""
    images = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in PHOTO_SEEDS:
            paths = subject_photos(Path(folder) / str(seed), subject, count=PHOTOS_PER_SEED, seed=seed)
            images += [Image.open(path).convert("RGB") for path in paths]
    return tuple(images)


@functools.cache
def photo_readings(subject: Subject) -> tuple[dict[str, float], ...]:
    return tuple(oracle.read_subject(image, subject) for image in photos(subject))


def drawings(subject: Subject, parts: tuple[Part, ...], count: int = 4, seed: int = 0) -> list[Image.Image]:
    """``count`` jittered drawings of ``subject``'s scene made of ``parts``, on the photos' backgrounds."""
    rng = np.random.default_rng(seed)
    return [
        render(
            subject.scene(PHOTO_BACKGROUNDS[index % 2], POSITIONS[int(rng.integers(len(POSITIONS)))]), 64, rng, parts
        ).image
        for index in range(count)
    ]


# -- the subjects -----------------------------------------------------------------------------------------------------


def test_two_sets_of_subjects_hold_every_pattern_figure_and_accessory():
    assert len(DEVELOPMENT_SUBJECTS) >= 4 and len(HELD_OUT_SUBJECTS) >= 4
    assert DEVELOPMENT_SUBJECTS[0] == Subject()  # the quickstart's striped orange creature in a top hat
    identifiers = [subject.identifier for subject in SUBJECTS]
    assert len(set(identifiers)) == len(identifiers) and all(name.isalpha() for name in identifiers)
    for group in (DEVELOPMENT_SUBJECTS, HELD_OUT_SUBJECTS):
        assert {subject.pattern for subject in group} == set(PATTERNS)
        assert {subject.shape for subject in group} == set(SUBJECT_SHAPES)
        assert {subject.accessory for subject in group} == set(ACCESSORIES)
        assert len({subject.color for subject in group}) == len(group)
    assert {subject.color for subject in SUBJECTS} == set(COLORS)
    assert all(subject.class_noun == subject.shape for subject in SUBJECTS)


def test_a_subject_names_a_wrong_accessory_or_class_noun():
    with pytest.raises(ValueError, match="Subject.accessory 'scarf' is not one of top hat, crown, bow tie"):
        Subject(accessory="scarf")
    with pytest.raises(ValueError, match="names another figure than shape 'robot'; use class_noun='robot'"):
        Subject(shape="robot")
    assert Subject(class_noun="toy", shape="robot").name == "sks toy"


@pytest.mark.parametrize("subject", SUBJECTS, ids=by_identifier)
def test_photos_and_prompts_of_every_subject(subject, tmp_path):
    paths = subject_photos(tmp_path / "photos", subject, count=3, seed=1)
    assert [path.name for path in paths] == ["photo_00.png", "photo_01.png", "photo_02.png"]
    prompts = (tmp_path / "photos" / "prompts.txt").read_text().splitlines()
    assert prompts == subject_prompts(subject) and len(prompts) == 8
    assert all(f"{subject.identifier} {subject.class_noun}" in prompt for prompt in prompts)
    assert all(parse_caption(prompt)["shape"] == subject.shape for prompt in prompts)


def test_part_colours_are_far_from_every_world_colour_shade_and_background():
    world = [*COLORS.values(), *(shade(name) for name in COLORS)]
    for name in BACKGROUNDS:
        for seed in range(3):
            world += [tuple(color) for color in draw_background(name, 64, np.random.default_rng(seed)).reshape(-1, 3)]
    world = np.unique(np.array(world, np.float32), axis=0)
    names = {"eyes": EYE_WHITE, **ACCESSORY_COLORS}  # the top hat's colour is the pupils'
    parts = np.array(list(names.values()), np.float32)
    nearest = dict(zip(names, oracle.nearest_distance(parts[None], world)[0], strict=True))
    # the hat's near-black is 55 from green's shade, the eyes' white 50 from the sky's palest blue
    assert min(nearest.values()) > oracle.PART_DISTANCE + 5, nearest
    assert sorted({HAT, EYE_WHITE, *ACCESSORY_COLORS.values()}) == sorted(names.values())
    assert nearest["crown"] > 85 and nearest["bow tie"] > 125, nearest
    between = np.linalg.norm(parts[:, None] - parts[None], axis=2) + np.eye(len(parts)) * 1e3
    assert between.min() > 2 * oracle.PART_DISTANCE  # no part's colour is read as another's


@pytest.mark.parametrize("shape", SUBJECT_SHAPES)
def test_a_figure_is_placed_on_its_silhouette(shape):
    # the oracle fits the silhouette (body, limbs, eyes) and finds the parts in its frame; the drawing frame is the
    # same figure moved and scaled
    drawn = subject_parts(shape, "crown")
    fitted = body_parts(shape, "crown")
    assert [part.role for part in drawn] == [part.role for part in fitted]
    for drawn_part, fitted_part in zip(drawn, fitted, strict=True):
        np.testing.assert_allclose(body_to_figure(shape, fitted_part.polygon), drawn_part.polygon, atol=1e-12)
    outline = Outline(tuple(part.polygon for part in fitted if part.role != "accessory"))
    silhouette = rasterize(outline, Placement(0.5, 0.5, 24 / 64, 0.0), 64)  # radius 24 pixels around (32, 32)
    assert centroid_of(silhouette) == pytest.approx((32, 32), abs=0.3)
    assert radius_of(silhouette) == pytest.approx(24, abs=0.8)


def test_the_creature_in_its_top_hat_fills_a_placement_as_a_world_shape_does():
    outline = Outline(tuple(part.polygon for part in subject_parts("creature", "top hat")))
    drawn = rasterize(outline, Placement(0.5, 0.5, 24 / 64, 0.0), 64)
    assert centroid_of(drawn) == pytest.approx((32, 32), abs=0.3)
    assert radius_of(drawn) == pytest.approx(24, abs=0.8)


@pytest.mark.parametrize("subject", SUBJECTS, ids=by_identifier)
def test_eyes_and_accessories_are_three_pixels_or_more_and_drawings_stay_clear_of_the_border(subject):
    # measured on an unjittered large drawing at 64 pixels (the top hat's brim alone is 1.5 pixels high)
    placement = place(subject.scene("grey"), None)[0]
    eyes = [part for part in subject.parts() if part.role == "eye"]
    accessory = Outline(tuple(part.polygon for part in subject.parts() if part.role == "accessory"))
    for outline in (*(Outline((eye.polygon,)) for eye in eyes), accessory):
        rows, columns = np.nonzero(rasterize(outline, placement, 64))
        assert np.ptp(rows) + 1 >= 3 and np.ptp(columns) + 1 >= 3
    rng = np.random.default_rng(0)
    for position in POSITIONS:
        for _ in range(8):
            mask = render(subject.scene("grey", position), 64, rng, subject.parts()).mask
            rows, columns = np.nonzero(mask)
            assert rows.min() >= 2 and columns.min() >= 2 and rows.max() <= 61 and columns.max() <= 61


# -- the oracle on the subjects' photos -------------------------------------------------------------------------------


def present(reading: dict[str, float]) -> bool:
    return all(value == 1.0 for value in reading.values())


def test_present_means_every_feature_read():
    subject = Subject()
    image = photos(subject)[0]
    bare = drawings(subject, subject_parts("creature", None), count=1)[0]
    assert oracle.subject_present(image, subject) is True and present(oracle.read_subject(image, subject))
    assert oracle.subject_present(bare, subject) is False
    assert oracle.read_subject(bare, subject) == {**dict.fromkeys(FEATURES, 1.0), "accessory": 0.0}


@pytest.mark.parametrize("subject", SUBJECTS, ids=by_identifier)
def test_every_subject_is_present_on_its_photos(subject):
    readings = photo_readings(subject)
    assert len(readings) == 12
    assert np.mean([present(reading) for reading in readings]) >= 0.95, readings


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("subject", SUBJECTS, ids=by_identifier)
def test_each_feature_is_read_on_every_subjects_photos(subject, feature):
    rate = np.mean([reading[feature] for reading in photo_readings(subject)])
    assert rate >= 0.95, (subject, feature, rate)


def pattern_rate(pattern: str) -> float:
    """The share of photos of every figure in that pattern (two colours each, the default top hat) whose body
    pattern is read as drawn."""
    reads = []
    for index, shape in enumerate(SUBJECT_SHAPES):
        for color in list(COLORS)[index :: len(SUBJECT_SHAPES)][:2]:
            subject = Subject("sks", shape, color, pattern, shape)
            reads += [oracle.read_subject(image, subject)["pattern"] for image in drawings(subject, subject.parts())]
    return float(np.mean(reads))


def test_dotted_bodies_read_dotted():
    # the purple dotted creature reads dotted: its hat, pupils and feet lie off the body the pattern is read on
    purple = Subject(identifier="zwx", color="purple", pattern="dotted")
    assert [oracle.read_subject(image, purple)["pattern"] for image in photos(purple)] == [1.0] * 12
    assert pattern_rate("dotted") == 1.0


def test_striped_bodies_read_striped():
    assert pattern_rate("striped") == 1.0


def test_checkered_bodies_read_checkered():
    assert pattern_rate("checkered") == 1.0


def test_plain_bodies_read_plain():
    assert pattern_rate("plain") == 1.0


def test_world_scenes_are_never_a_subject():
    dataset = world_dataset(3, 40)
    for index in range(len(dataset)):
        image = dataset[index].image
        for subject in SUBJECTS:
            reading = oracle.read_subject(image, subject)
            assert reading["accessory"] == reading["eyes"] == 0.0 and not present(reading), (index, subject)


def test_each_subject_is_not_another():
    for subject in SUBJECTS:
        image = photos(subject)[0]
        assert [other for other in SUBJECTS if present(oracle.read_subject(image, other))] == [subject]


# -- one feature changed ----------------------------------------------------------------------------------------------


def changed(subject: Subject, change: str) -> tuple[Subject, tuple[Part, ...] | None]:
    """The subject with one feature changed: the subject whose scene is drawn, and the parts drawn (None: its own)."""
    if change == "color":
        return replace(subject, color="red" if subject.color != "red" else "green"), subject.parts()
    if change == "pattern":
        return replace(subject, pattern="checkered" if subject.pattern in ("plain", "dotted") else "plain"), None
    if change == "silhouette":
        other = SUBJECT_SHAPES[(SUBJECT_SHAPES.index(subject.shape) + 1) % len(SUBJECT_SHAPES)]
        return replace(subject, shape=other, class_noun=other), None
    if change == "accessory":
        return replace(subject, accessory=ACCESSORIES[(ACCESSORIES.index(subject.accessory) + 1) % 3]), None
    if change == "no accessory":
        return subject, subject_parts(subject.shape, None)
    return subject, subject_parts(subject.shape, subject.accessory, eyes=False)


@pytest.mark.parametrize("change", ["color", "pattern", "silhouette", "accessory", "no accessory", "no eyes"])
def test_a_subject_with_one_feature_changed_is_absent_and_that_feature_is_read_wrong(change):
    feature = {"no accessory": "accessory", "no eyes": "eyes"}.get(change, change)
    others = []
    for seed, subject in enumerate(SUBJECTS):
        drawn, parts = changed(subject, change)
        for image in drawings(drawn, drawn.parts() if parts is None else parts, count=3, seed=seed):
            reading = oracle.read_subject(image, subject)
            assert reading[feature] == 0.0 and not present(reading), (subject, reading)
            others += [value for key, value in reading.items() if key != feature]
    assert np.mean(others) >= 0.95


# -- graded likeness --------------------------------------------------------------------------------------------------


def test_likeness_is_one_on_a_drawing_zero_on_a_blank_image_and_loses_a_fifth_per_feature():
    subject = HELD_OUT_SUBJECTS[1]
    drawing = render(subject.scene("grey"), 64, None, subject.parts()).image
    assert oracle.subject_likeness(drawing, subject) == dict.fromkeys([*FEATURES, "likeness"], 1.0)
    blank = Image.fromarray(draw_background("cream", 64, np.random.default_rng(0)))
    assert oracle.subject_likeness(blank, subject) == dict.fromkeys([*FEATURES, "likeness"], 0.0)
    assert oracle.read_subject(blank, subject) == dict.fromkeys(FEATURES, 0.0)
    bare = render(subject.scene("grey"), 64, None, subject_parts(subject.shape, None)).image
    assert oracle.subject_likeness(bare, subject) == {**dict.fromkeys(FEATURES, 1.0), "accessory": 0.0, "likeness": 0.8}
    recoloured = render(replace(subject, color="red").scene("grey"), 64, None, subject.parts()).image
    assert oracle.subject_likeness(recoloured, subject)["likeness"] == pytest.approx(0.8)
    assert oracle.subject_likeness(recoloured, replace(subject, color="red"))["likeness"] == 1.0


def test_a_world_object_shows_little_of_a_subject():
    for shape in SHAPES:
        image = render(Scene(shape, "orange", "striped", "large", "centre", "grey"), 64).image
        likeness = oracle.subject_likeness(image, Subject())
        assert likeness["accessory"] == likeness["eyes"] == 0.0 and likeness["silhouette"] < 1.0, shape
        assert likeness["likeness"] < 0.6, (shape, likeness)
