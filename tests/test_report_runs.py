"""`sdft report` on a run without an evaluator (a captioned set): its TensorBoard curves and its samples."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from training import brief_fit

from sdft.data.toy import write_toy_captions
from sdft.reporting import read_curves, write_report


def test_a_run_without_an_evaluator_reports_its_loss_curves_and_samples(tmp_path: Path) -> None:
    images = tmp_path / "captioned"
    write_toy_captions(images, num_images=4, size=64, seed=0)
    run = brief_fit("configs/sd15/captions_lora.yaml", tmp_path, {"data_dir": str(images)}, evaluate=False)
    assert not (run / "evaluation").exists()
    report = write_report(run)
    text = report.read_text()
    assert "No subject evaluation in this run" in text
    for tag in ("train/loss", "val/loss", "lr-AdamW"):
        assert (report.parent / f"curve_{tag.replace('/', '_')}.png").is_file()
    assert "### train/loss ↓" in text and "### val/loss ↓" in text and "### lr-AdamW\n" in text
    assert not (report.parent / "curve_epoch.png").exists()
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    curves = read_curves(run)
    assert curves["train/loss"] == [(event.step, event.value) for event in events.Scalars("train/loss")]
    assert [step for step, _ in curves["lr-AdamW"]] == sorted({event.step for event in events.Scalars("lr-AdamW")})
    for step in (0, 2):
        assert f"### Samples at step {step}\n\n`a photo of sks toy`, seeds 0, 1:" in text
        for seed in (0, 1):
            link = f"](../samples/step_{step:06d}/0_{seed}.png)"
            assert link in text and (report.parent / link[2:-1]).resolve().is_file()
