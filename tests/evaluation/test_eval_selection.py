import pytest

from sdft.evaluation.selection import Selection, select_single, select_step


def row(step, dino, clip_t=0.30, pres=0.50, clip_i=0.80):
    return {"step": step, "val/dino": dino, "val/clip_t": clip_t, "val/pres": pres, "val/clip_i": clip_i}


BASE = row(0, dino=0.40, clip_t=0.30, pres=0.50)


def test_best_fidelity_step_is_rejected_when_clip_t_drops():
    rows = [BASE, row(200, 0.60), row(400, 0.70, clip_t=0.25), row(600, 0.64, clip_t=0.28)]
    selection = select_step(rows)
    assert selection.step == 600
    assert selection.candidates == (200, 600)
    assert set(selection.rejected) == {400}
    assert "val/clip_t 0.2500 < 0.2700" in selection.rejected[400]
    assert "0.6400" in selection.reason and "val/clip_t >= 0.2700" in selection.reason


def test_pres_rise_rejects_a_step_and_none_margin_disables_it():
    rows = [BASE, row(200, 0.60), row(400, 0.70, pres=0.60)]
    assert select_step(rows).step == 200
    assert "val/pres 0.6000 > 0.5500" in select_step(rows).rejected[400]
    assert select_step(rows, pres_margin=None).step == 400


def test_near_tie_goes_to_the_earliest_step():
    rows = [BASE, row(600, 0.70), row(200, 0.62), row(400, 0.685), row(800, 0.69)]
    selection = select_step(rows, tie_tolerance=0.02)
    assert selection.step == 400
    assert "within 0.02 of the best 0.7000 at step 600" in selection.reason
    assert select_step(rows, tie_tolerance=0.0).step == 600


def test_baseline_does_not_compete_even_with_the_best_fidelity():
    rows = [row(0, 0.90), row(100, 0.50)]
    assert select_step(rows).step == 100


def test_nothing_meets_the_constraints_falls_back_to_best_fidelity():
    rows = [BASE, row(200, 0.60, clip_t=0.20), row(400, 0.70, pres=0.90)]
    selection = select_step(rows)
    assert selection.step == 400
    assert selection.candidates == ()
    assert set(selection.rejected) == {200, 400}
    assert selection.reason.startswith("no step after the baseline met")


def test_fidelity_key_is_configurable():
    rows = [BASE, row(200, 0.60, clip_i=0.90), row(400, 0.70, clip_i=0.80)]
    assert select_step(rows, fidelity="val/clip_i", tie_tolerance=0.0).step == 200


def test_only_the_baseline_is_selected_when_alone():
    assert select_step([BASE]) == Selection(0, "only the baseline step 0 was evaluated")


def test_missing_metric_names_the_key():
    rows = [BASE, {"step": 100, "val/dino": 0.5, "val/clip_t": 0.3}]
    with pytest.raises(ValueError, match=r"lacks \['val/pres'\]"):
        select_step(rows)
    assert select_step(rows, pres_margin=None).step == 100


def test_duplicate_steps_and_empty_tables_are_errors():
    with pytest.raises(ValueError, match="duplicate"):
        select_step([BASE, row(0, 0.5)])
    with pytest.raises(ValueError, match="empty"):
        select_step([])


def test_select_single_max_min_and_ties():
    rows = [{"step": 0, "val/loss": 0.30}, {"step": 100, "val/loss": 0.20}, {"step": 200, "val/loss": 0.19}]
    assert select_single(rows, "val/loss", mode="max").step == 0
    assert select_single(rows, "val/loss", mode="min").step == 200
    assert select_single(rows, "val/loss", mode="min", tie_tolerance=0.02).step == 100
    assert "lowest" in select_single(rows, "val/loss", mode="min").reason
    with pytest.raises(ValueError, match="mode"):
        select_single(rows, "val/loss", mode="best")


def test_a_step_with_a_non_finite_metric_is_never_chosen():
    nan, inf = float("nan"), float("inf")
    rows = [BASE, row(200, 0.60), row(400, nan), row(600, 0.62, clip_t=nan), row(800, inf)]
    selection = select_step(rows)
    assert selection.step == 200 and selection.candidates == (200,)
    assert selection.rejected == {
        400: "val/dino not finite (nan or inf)",
        600: "val/clip_t not finite (nan or inf)",
        800: "val/dino not finite (nan or inf)",
    }
    strict = select_step([BASE, row(200, 0.60, clip_t=0.10), row(400, nan)])  # no candidate: best finite step
    assert strict.step == 200 and set(strict.rejected) == {200, 400}


def test_the_baseline_is_kept_when_no_later_step_has_finite_metrics():
    selection = select_step([BASE, row(200, float("nan")), row(400, 0.70, pres=float("inf"))])
    assert selection.step == 0 and "no step after the baseline has finite metrics" in selection.reason
    assert set(selection.rejected) == {200, 400}


def test_select_single_skips_non_finite_values():
    rows = [{"step": 0, "val/loss": 0.30}, {"step": 100, "val/loss": float("nan")}, {"step": 200, "val/loss": 0.25}]
    assert select_single(rows, "val/loss", mode="min").step == 200
    assert select_single(rows, "val/loss", mode="max").step == 0
    with pytest.raises(ValueError, match="no evaluated step has a finite val/loss"):
        select_single([{"step": 0, "val/loss": float("nan")}], "val/loss")


# -- with every probe's scores: differences beyond the noise ------------------------------------------------------


def scored(steps_to_values):
    """step -> metric -> per-probe scores, and the rows of their means."""
    rows = [
        {"step": step, **{key: sum(values) / len(values) for key, values in metrics.items()}}
        for step, metrics in steps_to_values.items()
    ]
    return rows, steps_to_values


NOISY_DROP = [0.30, 0.10, 0.50, 0.14]  # CLIP-T per probe, the base's [0.30, 0.30, 0.30, 0.30]: mean -0.04, se 0.09
STEADY_DROP = [0.26, 0.255, 0.265, 0.26]  # every probe 0.035-0.045 lower: clearly beyond a 0.03 margin
FLAT = [0.30] * 4
PRES = [0.5] * 4


def test_a_clip_t_drop_within_the_noise_does_not_reject_and_a_steady_one_does():
    rows, scores = scored(
        {
            0: {"val/dino": [0.40] * 4, "val/clip_t": FLAT, "val/pres": PRES},
            100: {"val/dino": [0.60] * 4, "val/clip_t": NOISY_DROP, "val/pres": PRES},
            200: {"val/dino": [0.70] * 4, "val/clip_t": STEADY_DROP, "val/pres": PRES},
        }
    )
    with_noise = select_step(rows, scores=scores)
    assert set(with_noise.rejected) == {200}
    assert "a change of -0.0400 ± 0.0020 (paired, 4 probes): beyond the margin at z = 1.64" in with_noise.rejected[200]
    assert with_noise.step == 100
    # the same means without the scores: both drops exceed the margin
    assert set(select_step(rows).rejected) == {100, 200}


def test_the_best_step_wins_only_when_it_leads_by_more_than_the_tie_tolerance_and_one_standard_error():
    steady = {"val/clip_t": FLAT, "val/pres": PRES}
    rows, scores = scored(
        {
            0: {"val/dino": [0.40] * 4, **steady},
            100: {"val/dino": [0.50, 0.50, 0.50, 0.50], **steady},
            200: {"val/dino": [0.90, 0.50, 0.50, 0.50], **steady},  # leads step 100 by 0.10 in mean, se 0.10
            300: {"val/dino": [0.62, 0.60, 0.61, 0.61], **steady},  # leads step 100 by 0.11 on every probe
        }
    )
    noisy = {step: metrics for step, metrics in scores.items() if step != 300}
    chosen = select_step([row for row in rows if row["step"] != 300], scores=noisy)
    assert chosen.step == 100
    assert "the best 0.6000 at step 200 (which leads by +0.1000 ± 0.1000 (paired, 4 probes), within 0.02 + 1" in (
        chosen.reason
    )
    assert select_step([row for row in rows if row["step"] != 300], scores=noisy, tie_standard_errors=0).step == 200
    clear = select_step([rows[0], rows[1], rows[3]], scores={step: scores[step] for step in (0, 100, 300)})
    assert clear.step == 300 and "the highest among steps [100, 300]" in clear.reason


def test_confidence_one_half_compares_the_means_alone():
    rows, scores = scored(
        {
            0: {"val/dino": [0.40] * 4, "val/clip_t": FLAT, "val/pres": PRES},
            100: {"val/dino": [0.60] * 4, "val/clip_t": NOISY_DROP, "val/pres": PRES},
        }
    )
    assert set(select_step(rows, scores=scores, confidence=0.5).rejected) == set(select_step(rows).rejected) == {100}
    assert select_step(rows, scores=scores).rejected == {}


def test_a_div_drop_rejects_a_collapsed_step_when_div_margin_is_set():
    keep = {"val/clip_t": FLAT, "val/pres": PRES}
    rows, scores = scored(
        {
            0: {"val/dino": [0.40] * 4, "val/div": [0.30, 0.32, 0.28, 0.30], **keep},
            100: {"val/dino": [0.60] * 4, "val/div": [0.25, 0.27, 0.24, 0.26], **keep},
            200: {"val/dino": [0.75] * 4, "val/div": [0.05, 0.04, 0.06, 0.05], **keep},
        }
    )
    assert select_step(rows, scores=scores).step == 200
    guarded = select_step(rows, scores=scores, div_margin=0.1)
    assert guarded.step == 100 and "val/div 0.0500 < 0.2000" in guarded.rejected[200]
