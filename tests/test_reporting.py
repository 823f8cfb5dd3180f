"""The run report: markdown contents, one plot per metric, grid links, and errors on missing or bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from sdft.errors import UserError
from sdft.reporting import plot_title, read_evaluation, read_metrics, rule_limit, tie_band, write_report

ROWS = [
    {"step": 0, "val/clip_i": 0.61, "val/clip_t": 0.24, "val/dino": 0.35, "val/pres": 0.30},
    {"step": 100, "val/clip_i": 0.7234, "val/clip_t": 0.245, "val/dino": 0.5512, "val/pres": 0.31},
    {"step": 200, "val/clip_i": 0.74, "val/clip_t": 0.23, "val/dino": 0.5601, "val/pres": 0.33},
    {"step": 300, "val/clip_i": 0.80, "val/clip_t": 0.20, "val/dino": 0.6199, "val/pres": 0.36},
]
SELECTION = {
    "step": 100,
    "reason": "step 100 has the highest val/dino within 0.02 of the best",
    "candidates": [100, 200],
    "rejected": {"300": "val/clip_t 0.20 < base 0.24 - 0.03"},
    "rule": {"fidelity": "val/dino", "clip_t_margin": 0.03, "pres_margin": 0.05, "tie_tolerance": 0.02},
    "export": "best",
}
REFERENCE = {"val/clip_i": 0.88, "val/dino": 0.77, "num_reference_images": 5}


def make_run(
    root: Path, rows: list[dict] = ROWS, selection: dict | None = SELECTION, grids: bool = True, best: bool = True
) -> Path:
    """A run folder with metrics.jsonl, reference.json, optional selection.json, small grid PNGs and best/."""
    run = root / "version_0"
    (run / "evaluation").mkdir(parents=True)
    if best:
        (run / "best").mkdir()
    lines = []
    for row in rows:
        grid = f"evaluation/step_{row['step']:06d}.png"
        if grids:
            Image.new("RGB", (16, 8), (row["step"] % 256, 0, 0)).save(run / grid)
        lines.append(json.dumps({**row, "grid": grid}))
    (run / "evaluation" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "evaluation" / "reference.json").write_text(json.dumps(REFERENCE))
    if selection is not None:
        (run / "evaluation" / "selection.json").write_text(json.dumps(selection))
    (run / "config.yaml").write_text("model: {}\n")
    return run


def table_row(text: str, first_cell: str) -> str:
    """The markdown table line whose first cell is ``first_cell``."""
    return next(line for line in text.splitlines() if re.match(rf"\|\s*{re.escape(first_cell)}\s*\|", line))


def test_report_lists_selection_values_and_markers(tmp_path: Path) -> None:
    report = write_report(make_run(tmp_path))
    assert report == (tmp_path / "version_0" / "report" / "report.md").resolve()
    text = report.read_text()
    assert text.startswith("# Run report: version_0")
    assert "Chosen step: 100" in text and SELECTION["reason"] in text
    assert "config.yaml" in text
    assert "Rule: fidelity = `val/dino`, clip_t_margin = `0.03`" in text
    assert "Candidates (met the constraints): 100, 200" in text and "Exported checkpoint: `best`" in text
    assert "Rejected steps:\n\n- step 300: val/clip_t 0.20 < base 0.24 - 0.03" in text
    for row in ROWS:
        line = table_row(text, str(row["step"]) if row["step"] != 100 else "**100**")
        for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres"):
            assert f"{row[key]:.3f}" in line
    assert "0.723" in table_row(text, "**100**") and "0.7234" not in text
    assert "base model" in table_row(text, "0") and "★" in table_row(text, "**100**")
    assert "rejected: val/clip_t 0.20 < base 0.24 - 0.03" in table_row(text, "300")
    ceiling = table_row(text, "real-real ceiling")
    assert "0.880" in ceiling and "0.770" in ceiling and "5 images" in ceiling


def test_one_plot_per_metric_embedded(tmp_path: Path) -> None:
    output = tmp_path / "out"
    text = write_report(make_run(tmp_path), output).read_text()
    for name in ("val_clip_i", "val_clip_t", "val_dino", "val_pres"):
        with Image.open(output / f"{name}.png") as image:
            assert image.format == "PNG" and image.size == (600, 350)
        assert f"]({name}.png)" in text
    assert sorted(path.name for path in output.glob("*.png")) == sorted(
        f"{name}.png" for name in ("val_clip_i", "val_clip_t", "val_dino", "val_pres")
    )
    assert not list(output.glob(".*.tmp"))


def test_grid_links_resolve_relative_to_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    output = tmp_path / "elsewhere" / "report"
    report = write_report(run, output)
    targets = re.findall(r"!\[probes at step \d+\]\(([^)]+)\)", report.read_text())
    assert len(targets) == len(ROWS)
    for target, row in zip(targets, ROWS, strict=True):
        assert not Path(target).is_absolute()
        assert (report.parent / target).resolve() == (run / f"evaluation/step_{row['step']:06d}.png").resolve()


def test_missing_grids_are_skipped_with_a_note(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path, grids=False)).read_text()
    assert "probes at step" not in text and "No evaluation grids were found." in text
    assert "Grid files not found, not shown: step 0 (evaluation/step_000000.png), step 100 (" in text


def test_missing_selection_is_reported(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path, selection=None)).read_text()
    assert "No selection was recorded" in text
    assert "★" not in text and "**" not in table_row(text, "100")


def test_run_without_pres_has_no_pres_plot(tmp_path: Path) -> None:
    rows = [{key: value for key, value in row.items() if key != "val/pres"} for row in ROWS]
    report = write_report(make_run(tmp_path, rows=rows))
    assert (report.parent / "val_dino.png").is_file()
    assert not (report.parent / "val_pres.png").exists()
    assert "val/pres" not in report.read_text()


def test_missing_metrics_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"evaluation/metrics\.jsonl not found.*SubjectEvaluator"):
        read_metrics(tmp_path)


def test_a_folder_with_nothing_to_report_is_one_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(UserError, match=rf"^{re.escape(str(tmp_path))} has nothing to report: no evaluation"):
        write_report(tmp_path)
    with pytest.raises(UserError, match="missing is not a folder"):
        write_report(tmp_path / "missing")


def test_malformed_line_names_the_line(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    path = run / "evaluation" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 400, "val/dino": \n')
    with pytest.raises(UserError, match=r"metrics\.jsonl line 5 is not valid JSON"):
        read_metrics(run)


def test_read_metrics_sorts_by_step(tmp_path: Path) -> None:
    run = make_run(tmp_path, rows=list(reversed(ROWS)))
    assert [row["step"] for row in read_metrics(run)] == [0, 100, 200, 300]


def test_each_metric_says_which_direction_is_better(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path)).read_text()
    header = table_row(text, "step")
    assert "val/clip_i ↑ | val/clip_t ↑ | val/dino ↑ | val/pres ↓" in header
    assert "↑ higher is better, ↓ lower is better." in text
    assert "### val/pres ↓" in text and "### val/dino ↑" in text
    assert plot_title("val/pres") == "val/pres vs step (lower is better)"
    assert plot_title("val/loss") == "val/loss vs step (lower is better)"
    assert plot_title("val/clip_t") == "val/clip_t vs step (higher is better)"


def test_the_selection_rule_limits_and_the_tie_band_are_drawn_and_spelled_out(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    evaluation = read_evaluation(run)
    assert rule_limit(evaluation, "val/clip_t")[1] == pytest.approx(0.24 - 0.03)
    assert rule_limit(evaluation, "val/pres")[1] == pytest.approx(0.30 + 0.05)
    assert rule_limit(evaluation, "val/dino") is None
    assert tie_band(evaluation, "val/dino") == pytest.approx((0.5601 - 0.02, 0.5601, 0.02))  # best candidate: 200
    assert tie_band(evaluation, "val/clip_t") is None
    text = write_report(run).read_text()
    assert "the rule floor 0.210 (base 0.240 - 0.03); steps beyond it are rejected" in text
    assert "the rule ceiling 0.350 (base 0.300 + 0.05)" in text
    assert "the tie band 0.540-0.560 (within 0.02 of the best competing step)" in text


def test_grid_rows_are_labelled_with_their_prompts_and_seeds(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    probes = [("a sks dog in the snow", False), ("a red sks dog", False), ("a dog", True)]
    records = [{"prompt": prompt, "seed": seed, "class_prompt": bare} for prompt, bare in probes for seed in (0, 1)]
    (run / "evaluation" / "probes.json").write_text(json.dumps({"columns": 2, "probes": records}))
    text = write_report(run).read_text()
    assert "1. `a sks dog in the snow` (seeds 0, 1)\n2. `a red sks dog` (seeds 0, 1)\n" in text
    assert "3. `a dog` (bare class prompt, seeds 0, 1)" in text
    assert text.index("3. `a dog`") < text.index("### Step 0 (base model)")


def test_a_chosen_step_below_the_base_model_on_fidelity_is_warned_about(tmp_path: Path) -> None:
    assert "**Warning:**" not in write_report(make_run(tmp_path / "fine")).read_text()
    rows = [{**row, "val/dino": 0.30} if row["step"] == 100 else row for row in ROWS]
    text = write_report(make_run(tmp_path / "worse", rows=rows)).read_text()
    assert "**Warning:** the chosen step 100 has val/dino 0.300, below the base model's 0.350 (step 0)" in text


def test_an_export_that_does_not_exist_is_not_claimed(tmp_path: Path) -> None:
    text = write_report(make_run(tmp_path, best=False)).read_text()
    assert "Exported checkpoint" not in text
    assert "No export of the chosen step (`best/` does not exist in the run folder)." in text


def test_a_malformed_selection_names_the_file(tmp_path: Path) -> None:
    run = make_run(tmp_path, selection={"reason": "no step"})
    with pytest.raises(UserError, match=r"selection\.json is malformed"):
        write_report(run)


def test_standard_errors_are_shown_beside_each_value_and_the_plot_draws_them(tmp_path: Path) -> None:
    errors = {"val/clip_i": 0.011, "val/clip_t": 0.021, "val/dino": 0.031, "val/pres": 0.041}
    rows = [{**row, "se": errors} for row in ROWS]
    output = tmp_path / "out"
    text = write_report(make_run(tmp_path, rows), output).read_text()
    line = table_row(text, "300")
    for key, error in errors.items():
        assert f"{ROWS[3][key]:.3f} ± {error:.3f}" in line
    assert "± is the standard error of the mean over the probe images" in text
    plain = write_report(make_run(tmp_path / "plain"), tmp_path / "plain_out").read_text()
    assert "±" not in table_row(plain, "300") and "standard error" not in plain
    with Image.open(output / "val_dino.png") as drawn, Image.open(tmp_path / "plain_out" / "val_dino.png") as bare:
        assert drawn.tobytes() != bare.tobytes()  # the error bars change the picture
