"""The run page, report.html: its contents (the chosen step, escaping, image links, several runs, the strength
section) and, in Debian's headless Chromium, no console errors, every image loaded, a slider that shows another
step, the chosen step marked, and every grid listed when script is off."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from browser_pages import loaded_images, open_page, severe_console_entries, shown_frames
from PIL import Image
from test_reporting import ROWS, SELECTION, make_run
from torch.utils.tensorboard import SummaryWriter

from sdft.cli import main
from sdft.errors import UserError
from sdft.reporting import write_comparison, write_report

ERRORS = {"val/clip_i": 0.011, "val/clip_t": 0.021, "val/dino": 0.031, "val/pres": 0.041}
PROMPTS = ['a <b>sks</b> dog & "friends"', "a sks dog in the snow"]
STRENGTH = {
    "scales": [0.5, 1.0, 1.5],
    "rows": [
        {"scale": scale, "val/dino": 0.3 + scale / 10, "val/clip_t": 0.3 - scale / 10, "se": {"val/dino": 0.02}}
        | {"grid": f"evaluation/strength_{scale:.2f}.png"}
        for scale in (0.5, 1.0, 1.5)
    ],
    "scale": 1.0,
    "reason": "scale 1.0 keeps val/clip_t above the floor",
    "rejected": {"1.5": "val/clip_t 0.15 < 0.21"},
}


def make_page_run(root: Path, selection: dict | None = SELECTION, strength: dict | None = None) -> Path:
    """A synthetic run for the page: make_run's evaluation with standard errors, probes.json with two prompts of
    two seeds, a TensorBoard loss curve, and the strength measurement's grids when given one."""
    run = make_run(root, rows=[{**row, "se": ERRORS} for row in ROWS], selection=selection)
    probes = [{"prompt": prompt, "seed": seed, "class_prompt": False} for prompt in PROMPTS for seed in (0, 1)]
    (run / "evaluation" / "probes.json").write_text(json.dumps({"columns": 2, "probes": probes}))
    writer = SummaryWriter(str(run))
    for step in range(40):
        writer.add_scalar("train/loss", 0.1 + 0.05 * (step % 3) - step / 1000, step)
    writer.close()
    if strength is not None:
        for row in strength["rows"]:
            Image.new("RGB", (16, 8), (0, 200, 0)).save(run / row["grid"])
        data = json.loads((run / "evaluation" / "selection.json").read_text())
        (run / "evaluation" / "selection.json").write_text(json.dumps({**data, "strength": strength}))
    return run


def page_of(run: Path, output: Path | None = None, embed_images: bool = False) -> str:
    """The text of the report.html that write_report writes for ``run``."""
    report = write_report(run, output, embed_images)
    return report.with_suffix(".html").read_text()


def test_the_page_is_written_beside_the_markdown_and_marks_the_chosen_step(tmp_path: Path) -> None:
    run = make_page_run(tmp_path)
    html = page_of(run)
    assert (run / "report" / "report.md").is_file()
    assert '<p class="badge chosen">★ Step 100</p>' in html and SELECTION["reason"] in html
    assert re.search(r'<tr class="chosen"><th scope="row">100 ★</th>', html)
    assert re.search(r'<tr class="rejected"><th scope="row">300</th>', html)
    assert "rejected: val/clip_t 0.20 &lt; base 0.24 - 0.03" in html
    assert html.count('<figure class="chart">') == 4 + 1  # four metrics and train/loss
    assert html.count('class="se-bar"') == 4 and "0.723 ± 0.011" in html
    assert html.count('class="chosen-point"') == 4 and html.count('class="rejected-point"') == 4
    assert "rule floor 0.210 (base 0.240 - 0.03)" in html and "tie band (within 0.02 of the best)" in html
    assert 'id="step-1" data-key="100"' in html
    assert '<input type="range" id="step-slider" min="0" max="3" step="1" value="1">' in html  # at the chosen step
    assert "<code>best/</code> · the chosen step (100)" in html
    assert 'id="strength"' not in html
    assert "http://" not in html and "https://" not in html


def test_text_from_the_files_is_escaped(tmp_path: Path) -> None:
    selection = {**SELECTION, "reason": "<script>alert(1)</script> won", "rejected": {"300": "x < y & <i>z</i>"}}
    run = make_page_run(tmp_path, selection)
    (run / "config.yaml").write_text("model:\n  note: <img src=x onerror=alert(1)>\n")
    html = page_of(run)
    assert html.count("<script>") == 1  # the page's own
    assert "&lt;script&gt;alert(1)&lt;/script&gt; won" in html and "x &lt; y &amp; &lt;i&gt;z&lt;/i&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>sks</b>" not in html and "<code>a &lt;b&gt;sks&lt;/b&gt; dog &amp; &quot;friends&quot;</code>" in html


def test_images_are_referenced_relative_to_the_page_or_embedded(tmp_path: Path) -> None:
    run = make_page_run(tmp_path)
    for output in (run / "report", tmp_path / "elsewhere" / "deeper"):
        html = page_of(run, output)
        sources = re.findall(r'<img class="zoom[^"]*" src="([^"]+)"', html)
        assert len(sources) == len(ROWS) + 1  # every step's grid and the chosen one beside the reason
        assert all((output / source).resolve().parent == (run / "evaluation").resolve() for source in sources)
    embedded = page_of(run, tmp_path / "embedded", embed_images=True)
    sources = re.findall(r'<img class="zoom[^"]*" src="([^"]+)"', embedded)
    assert len(sources) == len(ROWS) + 1 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "evaluation/step_" not in embedded


def test_several_runs_share_axes_and_show_their_chosen_steps_side_by_side(tmp_path: Path) -> None:
    first = make_page_run(tmp_path / "a")
    second = make_page_run(tmp_path / "b", {**SELECTION, "step": 200})
    (second / "config.yaml").write_text("model: {rank: 16}\n")
    page = write_comparison([first, second])
    assert page == first / "report" / "compare-b_version_0" / "report.html"
    html = page.read_text()
    assert "Comparison of 2 runs" in html
    assert html.count('<article class="run-card"') == 2
    assert "★ Step 100" in html and "★ Step 200" in html
    charts = re.findall(r'<figure class="chart">.*?</figure>', html)[:5]
    for chart in charts:  # four metrics and train/loss, before each run's own sections
        assert 'stroke="#0072B2"' in chart and 'stroke="#E69F00"' in chart
        assert "a/version_0" in chart and "b/version_0" in chart
    assert "<code>model.rank</code>" in html and "<code>16</code>" in html
    assert html.count('<details class="run"') == 2 and 'id="run1-step-slider"' in html


def test_the_strength_section_is_shown_only_when_selection_records_one(tmp_path: Path) -> None:
    assert 'id="strength"' not in page_of(make_page_run(tmp_path / "none"))
    null = make_page_run(tmp_path / "null", strength=None)
    data = json.loads((null / "evaluation" / "selection.json").read_text())
    (null / "evaluation" / "selection.json").write_text(json.dumps({**data, "strength": None}))
    assert 'id="strength"' not in page_of(null)
    html = page_of(make_page_run(tmp_path / "measured", strength=STRENGTH))
    section = html[html.index('id="strength"') : html.index('id="training"')]
    assert "★ Recommended LoRA scale 1" in section and STRENGTH["reason"] in section
    assert re.search(r'<tr class="chosen"><th scope="row">1 ★</th>', section)
    assert "rejected: val/clip_t 0.15 &lt; 0.21" in section and "0.350 ± 0.020" in section
    assert section.count('<figure class="chart">') == 2 and "vs LoRA scale" in section
    assert "rule floor 0.210 (base 0.240 - 0.03)" in section  # the limit the scales are held to
    assert len(re.findall(r'class="frame[ "]', section)) == 3 and 'id="scale-slider"' in section
    malformed = make_page_run(tmp_path / "malformed", strength={**STRENGTH, "rows": [{"grid": "evaluation/x.png"}]})
    with pytest.raises(UserError, match=r"selection\.json has a malformed 'strength'"):
        write_report(malformed)


def test_sdft_report_takes_one_run_or_a_list_of_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    first, second = make_page_run(tmp_path / "a"), make_page_run(tmp_path / "b")
    main(["report", str(first)])
    report = first / "report"
    assert capsys.readouterr().out.split() == [str(report / "report.md"), str(report / "report.html")]
    main(["report", f"[{first},{second}]", "--output", str(tmp_path / "both")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "both" / "report.html")
    assert "Comparison of 2 runs" in (tmp_path / "both" / "report.html").read_text()


# -- in headless Chromium ---------------------------------------------------------------------------------------


def test_the_page_works_in_headless_chromium(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page = write_report(make_page_run(tmp_path, strength=STRENGTH)).with_suffix(".html")
    open_page(browser, page)
    assert severe_console_entries(browser) == []
    loaded = loaded_images(browser)
    assert len(loaded) == len(ROWS) + 1 + 3 and all(loaded)  # step grids, the chosen one, the scale grids
    assert shown_frames(browser, "step") == ["100"]
    chosen = browser.find_element("css selector", '.gallery[data-name="step"] .frame.chosen')
    assert chosen.is_displayed() and "★ chosen" in chosen.text
    output = browser.find_element("css selector", '.gallery[data-name="step"] output')
    assert output.text == "Step 100 ★ chosen"
    slider = browser.find_element("id", "step-slider")
    slider.send_keys(Keys.ARROW_RIGHT)
    assert shown_frames(browser, "step") == ["200"] and output.text == "Step 200"
    slider.send_keys(Keys.HOME)
    assert shown_frames(browser, "step") == ["0"] and output.text == "Step 0 base model"
    assert shown_frames(browser, "scale") == ["1"]
    browser.find_element("css selector", '.steps a[href="#step-3"]').click()
    assert shown_frames(browser, "step") == ["300"] and slider.get_attribute("value") == "3"
    image = browser.find_element("css selector", '.gallery[data-name="step"] .frame:not([hidden]) img')
    image.click()
    assert browser.find_element("css selector", "dialog.lightbox").get_attribute("open") is not None
    enlarged = browser.find_element("css selector", "dialog.lightbox img")
    assert enlarged.get_attribute("src") == image.get_attribute("src")
    ActionChains(browser).send_keys(Keys.ARROW_LEFT).perform()
    assert shown_frames(browser, "step") == ["200"]
    assert severe_console_entries(browser) == []


def test_the_comparison_page_works_in_headless_chromium(browser, tmp_path: Path) -> None:
    first, second = make_page_run(tmp_path / "a"), make_page_run(tmp_path / "b", {**SELECTION, "step": 200})
    open_page(browser, write_comparison([first, second]))
    assert severe_console_entries(browser) == []
    loaded = loaded_images(browser)
    assert len(loaded) == 2 * (len(ROWS) + 2) and all(loaded)  # per run: its steps, its choice twice
    browser.find_element("css selector", 'details.run[style*="#E69F00"] summary').click()
    assert shown_frames(browser, "run1-step") == ["200"]


def test_without_script_every_grid_is_listed(browser, tmp_path: Path) -> None:
    page = write_report(make_page_run(tmp_path)).with_suffix(".html")
    browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        browser.get(page.resolve().as_uri())
        assert shown_frames(browser, "step") == [str(row["step"]) for row in ROWS]
        assert not browser.find_element("css selector", ".controls").is_displayed()
        assert "★ Step 100" in browser.find_element("id", "choice").text
    finally:
        browser.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
