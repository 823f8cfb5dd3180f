import math

import pytest
import torch
from torch.testing import assert_close

from sdft.evaluation.prompts import dreambench_prompts
from sdft.evaluation.similarity import (
    cosine_matrix,
    mean_cross_similarity,
    mean_distinct_pair_similarity,
    strip_identifier,
)

ROOT_HALF = 1 / math.sqrt(2)


def test_cosine_matrix_matches_hand_computed_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    expected = torch.tensor([[ROOT_HALF, -1.0], [ROOT_HALF, 0.0], [1.0, -ROOT_HALF]])
    assert_close(cosine_matrix(a, b), expected)


def test_cosine_matrix_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match=r"\(N, D\) and \(M, D\)"):
        cosine_matrix(torch.ones(2, 3), torch.ones(2, 4))


def test_mean_cross_similarity_averages_all_pairs():
    generated = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    reference = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, -5.0]])
    # cosines: row 1 -> [1/sqrt2, 1, 0], row 2 -> [1/sqrt2, 0, -1]
    expected = (2 * ROOT_HALF + 1 + 0 + 0 - 1) / 6
    assert mean_cross_similarity(generated, reference).item() == pytest.approx(expected, abs=1e-6)


def test_mean_distinct_pair_similarity_excludes_the_diagonal():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # off-diagonal cosines: (1,2)=0, (1,3)=1/sqrt2, (2,3)=1/sqrt2, each counted twice over 6 ordered pairs
    expected = (0 + ROOT_HALF + ROOT_HALF) / 3
    assert mean_distinct_pair_similarity(embeddings).item() == pytest.approx(expected, abs=1e-6)


def test_mean_distinct_pair_similarity_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        mean_distinct_pair_similarity(torch.ones(1, 4))


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a sks dog in the snow", "a dog in the snow"),
        ("sks dog", "dog"),
        ("a red  sks\tdog ", "a red dog"),
        ("a sksdog next to a sks", "a sksdog next to a"),
        ("a photo of a dog", "a photo of a dog"),
    ],
)
def test_strip_identifier_removes_whole_words_only(prompt, expected):
    assert strip_identifier(prompt, "sks") == expected


def test_strip_identifier_rejects_an_empty_identifier():
    with pytest.raises(ValueError, match="identifier"):
        strip_identifier("a dog", " ")


def test_dreambench_object_prompts():
    prompts = dreambench_prompts("sks", "backpack", live=False)
    assert len(prompts) == len(set(prompts)) == 25
    assert prompts[0] == "a sks backpack in the jungle"
    assert prompts[9] == "a sks backpack on top of a purple rug in a forest"
    assert prompts[12] == "a sks backpack with the Eiffel Tower in the background"
    assert prompts[19] == "a sks backpack on top of a white rug"
    assert prompts[20] == "a red sks backpack"
    assert prompts[24] == "a cube shaped sks backpack"


def test_dreambench_live_prompts_differ_only_in_11_to_20():
    live = dreambench_prompts("sks", "dog", live=True)
    objects = dreambench_prompts("sks", "dog", live=False)
    assert len(live) == 25
    assert live[:10] == objects[:10] and live[20:] == objects[20:]
    assert live[10] == "a sks dog wearing a red hat"
    assert live[13] == "a sks dog wearing a black top hat and a monocle"
    assert live[19] == "a sks dog in a purple wizard outfit"
    assert all(a != b for a, b in zip(live[10:20], objects[10:20], strict=True))
