"""Open a Snakemake HTML report in headless Chromium and read back what each figure renders."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)


def rendered_figures(
    report: Path, category: str, names: list[str], subcategory: str | None = None
) -> dict[str, int]:
    """Per file name: the natural width (px) of the PNG shown after clicking its eye icon, found
    under ``category`` (and ``subcategory`` when the category has several)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    widths = {}
    try:
        browser.get(report.resolve().as_uri())
        _wait(lambda: browser.find_elements(By.XPATH, f"//span[contains(text(), '{category}')]"))
        for name in names:
            browser.find_element(By.XPATH, f"//span[contains(text(), '{category}')]").click()
            if subcategory:
                _wait(
                    lambda: browser.find_elements(
                        By.XPATH, f"//span[contains(text(), '{subcategory}')]"
                    )
                )[0].click()
            row = _wait(
                lambda n=name: browser.find_elements(
                    By.XPATH, f"//td[contains(text(), '{n}')]/ancestor::tr[1]"
                )
            )[0]
            row.find_element(By.CSS_SELECTOR, "a[iconname='eye']").click()
            image = _wait(
                lambda: [
                    i
                    for i in browser.find_elements(By.TAG_NAME, "img")
                    if (i.get_attribute("src") or "").startswith("data:image/png")
                ]
            )[0]
            widths[name] = _wait(
                lambda img=image: browser.execute_script(
                    "return arguments[0].complete && arguments[0].naturalWidth", img
                )
            )
            browser.get(report.resolve().as_uri())
    finally:
        browser.quit()
    return widths


def _wait(probe, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError("the report did not show the expected element in time")
