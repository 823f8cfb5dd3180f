"""A subject with a single photo (common for textual inversion): the real-real ceiling is unavailable, the rest of
the evaluation, the selection, the best export and the report work."""

from __future__ import annotations

import json
from pathlib import Path

from training import brief_fit

from sdft.data.toy import write_toy_subject
from sdft.reporting import write_report


def test_a_fit_on_one_photo_selects_exports_and_reports_without_a_ceiling(tmp_path: Path) -> None:
    photos = tmp_path / "photo"
    write_toy_subject(photos, num_images=1, size=64, seed=0)
    run = brief_fit("configs/sd15/textual_inversion.yaml", tmp_path, {"instance_dir": str(photos)})
    reference = json.loads((run / "evaluation" / "reference.json").read_text())
    assert reference == {"val/clip_i": None, "val/dino": None, "num_reference_images": 1}
    selection = json.loads((run / "evaluation" / "selection.json").read_text())
    assert selection["step"] == 2 and selection["export"] == "best"
    assert Path(selection["checkpoint"]).is_file()
    assert (run / "best" / "learned_embeds.safetensors").is_file()
    report = write_report(run)
    text = report.read_text()
    assert "### train/loss ↓" in text and (report.parent / "curve_train_loss.png").is_file()  # curves of a scored run
    assert not (report.parent / "curve_val_dino.png").exists()  # evaluated metrics are plotted from the table
    ceiling = next(line for line in text.splitlines() if line.startswith("| real-real ceiling |"))
    assert "unavailable: needs 2+ photos (1 image)" in ceiling and "0." not in ceiling
