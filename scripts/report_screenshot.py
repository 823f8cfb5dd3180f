"""A screenshot of a run's page (``report.html``) in Debian's headless Chromium, for the README.

    uv run python scripts/report_screenshot.py runs/quickstart/version_0   # writes reports/report_page.png

It writes the run's report first (``sdft report``), opens the page from its file, as a reader would, and captures
the top of it at a laptop's width. The Chromium started here is the one ``tests/test_report_page.py`` drives:
Debian's ``chromium`` and ``chromium-driver`` packages, a fresh profile, nothing that reaches the network
(the driver's path is given, so Selenium Manager never runs).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from sdft.reporting import write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"
#: headless, and nothing in the background that would reach the network
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def missing_chromium() -> str | None:
    """Why headless Chromium cannot start here (its binary or its driver is not installed), or None."""
    if CHROMIUM.is_file() and CHROMEDRIVER.is_file():
        return None
    return f"headless Chromium not installed: {INSTALL}"


def start_chromium(profile: Path, width: int = 1440, height: int = 900) -> webdriver.Chrome:
    """Chromium, headless, with a fresh profile in ``profile`` and its console kept for ``get_log("browser")``.

    Args:
        profile: an empty folder for the browser's profile.
        width: the window's width in pixels.
        height: the window's height in pixels.
    """
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


def capture(page: Path, output: Path, width: int, height: int) -> None:
    """Save a PNG of the top ``height`` pixels of ``page`` at ``width``, once every image has loaded.

    Args:
        page: the HTML file.
        output: the PNG file.
        width: the window's width.
        height: the window's height.
    """
    with tempfile.TemporaryDirectory() as profile:
        browser = start_chromium(Path(profile), width, height)
        try:
            browser.get(page.resolve().as_uri())
            browser.execute_async_script(
                "const done = arguments[0];"
                "Promise.all(Array.from(document.images, (image) => image.decode().catch(() => null)))"
                ".then(() => done());"
            )
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(browser.get_screenshot_as_png())
        finally:
            browser.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder made by sdft fit")
    parser.add_argument("--output", type=Path, default=Path("reports/report_page.png"), help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="the window's width in pixels")
    parser.add_argument("--height", type=int, default=1640, help="how much of the page to capture, in pixels")
    args = parser.parse_args()
    if missing_chromium():
        parser.error(missing_chromium())
    page = write_report(args.run).with_suffix(".html")
    capture(page, args.output, args.width, args.height)
    print(args.output)


if __name__ == "__main__":
    main()
