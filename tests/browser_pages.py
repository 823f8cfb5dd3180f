"""Reading a page in the headless Chromium of the ``browser`` fixture (``conftest.py``)."""

from __future__ import annotations

from pathlib import Path


def open_page(browser, page: Path) -> None:
    """Open ``page`` from its file and wait until every image has loaded or failed."""
    browser.get(page.resolve().as_uri())
    browser.execute_async_script(
        "const done = arguments[0];"
        "Promise.all(Array.from(document.images, (image) => image.decode().catch(() => null))).then(() => done());"
    )


def severe_console_entries(browser) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def loaded_images(browser) -> list[bool]:
    return browser.execute_script("return Array.from(document.images, (i) => i.complete && i.naturalWidth > 0);")


def shown_frames(browser, gallery: str) -> list[str]:
    """The keys of the grids of a gallery that are on screen."""
    frames = browser.find_elements("css selector", f'.gallery[data-name="{gallery}"] .frame')
    return [frame.get_attribute("data-key") for frame in frames if frame.is_displayed()]
