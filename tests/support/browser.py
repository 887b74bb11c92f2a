"""The MLflow UI in a real headless Chromium (selenium, Debian's chromium and chromedriver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# Headless, and nothing the browser would fetch on its own (updates, sync, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_driver(tmp_path: Path, performance_log: bool = False) -> Any:
    """Headless chromium; ``performance_log``: every request it sends, for ``get_log``."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("chromium and chromedriver are needed (Debian chromium, chromium-driver; "
                    "./dev test installs them)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    if performance_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))
