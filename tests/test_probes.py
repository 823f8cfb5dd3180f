"""The probe set of an evaluation: prompts from the instance prompt, even spreading, seeds, class probes."""

from __future__ import annotations

import pytest

from sdft.errors import UserError
from sdft.evaluation.probes import Probe, build_probes, infer_subject, subject_prompts


def test_identifier_and_class_come_from_the_instance_prompt():
    assert infer_subject("a photo of sks dog") == ("sks", "dog")
    with pytest.raises(UserError, match="set SubjectEvaluator's identifier and class_noun"):
        infer_subject("sks")


def test_dreambench_prompts_are_spread_evenly():
    prompts = subject_prompts("sks", "dog", live=True, prompts=None, num_prompts=5)
    assert prompts == [
        "a sks dog in the jungle",
        "a sks dog on top of a wooden floor",
        "a sks dog wearing a red hat",
        "a sks dog in a firefighter outfit",
        "a red sks dog",
    ]
    assert len(subject_prompts("sks", "dog", live=False, prompts=None, num_prompts=None)) == 25


def test_user_prompts_from_a_file_fill_the_placeholders(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a {identifier} {class_noun} on the moon\n\nan oil painting of a {identifier} {class_noun}\n")
    prompts = subject_prompts("zwx", "toy", live=False, prompts=str(path), num_prompts=None)
    assert prompts == ["a zwx toy on the moon", "an oil painting of a zwx toy"]
    with pytest.raises(UserError, match="holds no prompt"):
        subject_prompts("zwx", "toy", live=False, prompts=[], num_prompts=None)
    with pytest.raises(UserError, match=r"SubjectEvaluator.prompts: .*missing.txt is not a file"):
        subject_prompts("zwx", "toy", live=False, prompts=str(tmp_path / "missing.txt"), num_prompts=None)


def test_probes_pair_prompts_with_fixed_seeds_and_add_class_probes():
    probes = build_probes(["p1", "p2"], images_per_prompt=2, class_prompt="a dog", class_images=3, seed=10)
    assert probes[:4] == [Probe("p1", 10), Probe("p1", 11), Probe("p2", 10), Probe("p2", 11)]
    assert probes[4:] == [Probe("a dog", s, is_class=True) for s in (10, 11, 12)]
    assert build_probes(["p1"], 1, None, 3, 0) == [Probe("p1", 0)]
