"""``sdft compare``: a run's pick, its kohya file and its checkpoint, scored on the run's probes beside the base."""

from __future__ import annotations

import json

import pytest
from browser_pages import loaded_images, open_page, severe_console_entries, shown_frames
from training import brief_fit

from sdft.cli import main
from sdft.errors import UserError
from sdft.evaluation.compare import compare
from sdft.methods.lora import kohya_file


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compared")
    options = ["--model.init_args.optimizer.init_args.lr=0.05", "--model.init_args.lr_scheduler=null"]
    return brief_fit("configs/sd15/lora.yaml", root, {"instance_dir": "builtin:toy-subject"}, *options)


def test_a_kohya_file_and_a_checkpoint_score_as_the_run_s_own_pick(run):
    checkpoint = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    main(["compare", str(run), str(kohya_file(run / "best")), str(checkpoint)])
    comparison = json.loads((run / "compare" / "comparison.json").read_text())
    base, pick, kohya, saved = comparison["entries"]
    assert base["name"] == "base model" and pick["name"] == "run/version_0 step 2 (chosen)"
    assert kohya["name"] == "run-000002" and saved["source"] == str(checkpoint)
    for entry in (kohya, saved):  # the same LoRA through diffusers' loader, sdft's kohya reader and an export
        for key in ("val/clip_i", "val/clip_t", "val/dino", "val/pres"):
            assert entry[key] == pytest.approx(pick[key], abs=2e-3)
    assert pick["val/dino"] != base["val/dino"]  # the adapter was loaded
    for entry in comparison["entries"]:
        assert (run / "compare" / entry["grid"]).is_file()
    scores = [json.loads(line) for line in (run / "compare" / "scores.jsonl").read_text().splitlines()]
    assert [row["name"] for row in scores] == [entry["name"] for entry in comparison["entries"]]
    assert comparison["selection"]["entry"] in {entry["name"] for entry in comparison["entries"]}


def test_the_page_marks_the_preferred_entry_and_lists_every_entry(run):
    comparison = json.loads((run / "compare" / "comparison.json").read_text())
    page = (run / "compare" / "report.html").read_text()
    preferred = comparison["selection"]["entry"]
    assert f'<p class="badge chosen">★ {preferred}</p>' in page
    for entry in comparison["entries"]:
        assert f'data-key="{entry["name"]}"' in page and entry["source"] in page


def test_the_page_works_in_headless_chromium(run, browser):
    names = [entry["name"] for entry in json.loads((run / "compare" / "comparison.json").read_text())["entries"]]
    open_page(browser, run / "compare" / "report.html")
    assert severe_console_entries(browser) == []
    assert all(loaded_images(browser)) and len(loaded_images(browser)) == len(names)
    slider = browser.find_element("id", "entry-slider")
    browser.execute_script("arguments[0].value = 0; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert shown_frames(browser, "entry") == [names[0]]
    browser.execute_script("arguments[0].value = 3; arguments[0].dispatchEvent(new Event('input'));", slider)
    assert shown_frames(browser, "entry") == [names[3]]


def test_without_a_run_the_probes_have_no_source(run, tmp_path):
    with pytest.raises(UserError, match="takes its probes, subject photos and base model from a run"):
        compare([kohya_file(run / "best")])
    with pytest.raises(UserError, match="does not exist"):
        compare([run, tmp_path / "missing.safetensors"])
