"""Shared fixtures: a tiny model folder per family and a toy subject, built once per session, fully offline."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from script_modules import script_modules

from sdft.assets import resolve


def pytest_configure(config: pytest.Config) -> None:
    # No test may reach a model hub: fail fast instead of hanging on the network. huggingface_hub reads these when
    # it is imported, so nothing here imports it before they are set (sdft's tiny models are imported in fixtures).
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[variable] = "1"


@pytest.fixture(scope="session", autouse=True)
def asset_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in assets (``builtin:...``) go to a per-session folder, never to the user's cache."""
    folder = tmp_path_factory.mktemp("sdft-cache")
    previous = os.environ.get("SDFT_CACHE")
    os.environ["SDFT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SDFT_CACHE")
    else:
        os.environ["SDFT_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdft.tiny_models import build_tiny_sd1

    return build_tiny_sd1(tmp_path_factory.mktemp("models") / "tiny-sd1", seed=0)


@pytest.fixture(scope="session")
def tiny_sd2_v(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-sd2-v"))


@pytest.fixture(scope="session")
def tiny_sdxl(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_sd3(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-flux"))


@pytest.fixture(scope="session")
def tiny_zimage(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-zimage"))


@pytest.fixture(scope="session")
def tiny_flux2_klein(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-flux2-klein"))


@pytest.fixture(scope="session")
def tiny_qwen_image(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-qwen-image"))


@pytest.fixture(scope="session")
def tiny_flux2_dev(asset_cache: Path) -> Path:
    return Path(resolve("builtin:tiny-flux2-dev"))


@pytest.fixture(scope="session")
def subject_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("subject")
    from sdft.data.toy import write_toy_subject

    write_toy_subject(folder, num_images=4, size=64, seed=0)
    return folder


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """One headless Chromium for the session, with a fresh profile; skipped where Chromium is not installed."""
    with script_modules("report_screenshot") as scripts:
        reason = scripts.report_screenshot.missing_chromium()
        if reason:
            pytest.skip(reason)
        with tempfile.TemporaryDirectory() as profile:
            driver = scripts.report_screenshot.start_chromium(Path(profile), 1280, 900)
            yield driver
            driver.quit()
