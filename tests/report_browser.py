"""Open a Snakemake HTML report in headless Chromium and read back what it renders: each figure,
the landing page's tables, a section's listing."""

from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
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


@contextmanager
def _chromium():
    """A headless Chromium under Selenium (skips the test when either is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

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
    try:
        yield browser
    finally:
        browser.quit()


def rendered_figures(
    report: Path, category: str, names: list[str], subcategory: str | None = None
) -> dict[str, int]:
    """Per file name: the natural width (px) of the PNG shown after clicking its eye icon, found
    under ``category`` (and ``subcategory`` when the category has several)."""
    from selenium.webdriver.common.by import By

    widths = {}
    with _chromium() as browser:
        browser.get(report.resolve().as_uri())
        _wait(lambda: browser.find_elements(By.XPATH, f"//span[contains(text(), '{category}')]"))
        for name in names:
            _open_section(browser, category, subcategory)
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
    return widths


def _open_section(browser, category: str, subcategory: str | None) -> None:
    from selenium.webdriver.common.by import By

    browser.find_element(By.XPATH, f"//span[contains(text(), '{category}')]").click()
    if subcategory:
        _wait(
            lambda: browser.find_elements(By.XPATH, f"//span[contains(text(), '{subcategory}')]")
        )[0].click()


#: The landing page's rendered tables, as the browser lays them out: per table its rows' cell
#: texts, its width on screen, whether the page shows it and whether its box cuts it off
#: (wider than the room it is given).
TABLES_JS = """
return Array.from(document.querySelectorAll('.gfmtune table')).map(t => ({
  rows: Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim())),
  width: t.getBoundingClientRect().width,
  shown: t.offsetParent !== null,
  cut: t.parentElement.scrollWidth > t.parentElement.clientWidth + 1,
}));
"""
#: A section's listing: the column headings and each entry's label values (null until shown).
LISTING_JS = """
const table = document.querySelector('table.table-auto');
if (!table || !table.tBodies.length || !table.tBodies[0].rows.length) return null;
return {
  head: Array.from(table.tHead.rows[0].cells).map(c => c.textContent.trim()),
  rows: Array.from(table.tBodies[0].rows).map(
    r => Array.from(r.cells).map(c => c.textContent.trim())),
};
"""


def landing_page(report: Path, category: str, subcategory: str | None = None) -> dict:
    """What the report shows on opening: ``text`` (the landing page's), ``caveat`` (its
    synthetic-data box, "" without one) and ``tables`` (:data:`TABLES_JS`); then ``listing``,
    the entries of ``category`` (:data:`LISTING_JS`)."""
    from selenium.webdriver.common.by import By

    with _chromium() as browser:
        browser.get(report.resolve().as_uri())
        tables = _wait(lambda: browser.execute_script(TABLES_JS))
        caveats = browser.find_elements(By.CSS_SELECTOR, ".gfmtune-caveat")
        shown = {
            "text": browser.find_element(By.TAG_NAME, "body").text,
            "caveat": caveats[0].text if caveats and caveats[0].is_displayed() else "",
            "tables": tables,
        }
        _open_section(browser, category, subcategory)
        shown["listing"] = _wait(lambda: browser.execute_script(LISTING_JS))
    return shown


def _wait(probe, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError("the report did not show the expected element in time")
