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
