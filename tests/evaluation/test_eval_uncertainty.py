"""Standard errors, paired differences and within-prompt diversity, against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from sdft.evaluation.uncertainty import (
    Difference,
    one_sided_z,
    paired_difference,
    standard_error,
    within_prompt_diversity,
)


def test_standard_error_is_the_sample_deviation_over_root_n():
    # mean 2, squared deviations 1 + 0 + 1 = 2, sample variance 1, se = 1 / sqrt(3)
    assert standard_error([1.0, 2.0, 3.0]) == pytest.approx(1 / math.sqrt(3))
    assert standard_error([0.7]) == 0.0 and standard_error([]) == 0.0


def test_a_paired_difference_removes_what_the_probes_share():
    # the probes differ a lot (0.1 .. 0.9) but the second step is 0.05 above the first on each, give or take 0.01
    first = [0.1, 0.5, 0.9, 0.3]
    second = [0.16, 0.54, 0.96, 0.34]
    change = paired_difference(second, first)
    assert change.mean == pytest.approx(0.05)
    assert change.se == pytest.approx(standard_error([0.06, 0.04, 0.06, 0.04]))
    assert change.se < 0.01 < standard_error(first) / 10
    assert change.count == 4
    assert change.describe() == f"+0.0500 ± {change.se:.4f} (paired, 4 probes)"


def test_paired_scores_must_match_in_length():
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        paired_difference([0.1, 0.2], [0.1])


def test_bounds_and_the_one_sided_quantile():
    assert one_sided_z(0.95) == pytest.approx(1.6449, abs=1e-4)
    assert one_sided_z(0.5) == pytest.approx(0.0)
    change = Difference(-0.05, 0.01, 12)
    assert change.upper(2.0) == pytest.approx(-0.03) and change.lower(2.0) == pytest.approx(-0.07)
    with pytest.raises(ValueError, match="confidence"):
        one_sided_z(1.0)


def test_within_prompt_diversity_is_the_mean_cosine_distance_per_prompt():
    # prompt 0: orthogonal pair (distance 1); prompt 1: identical pair (0) and a third at 90 degrees to both
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    assert within_prompt_diversity(embeddings, [0, 0, 1, 1, 1]) == pytest.approx([1.0, 2 / 3])
    assert within_prompt_diversity(embeddings[:2], [0, 1]) == []  # one image a prompt: no pair
