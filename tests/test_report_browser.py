"""The loop's HTML report in a real headless Chromium (Debian's, installed by .ci/run): no console errors,
every image decoded and drawn, and the page's sections present."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from selfevolve.loop import evolve
from test_loop import tiny_config

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with the flags a closed network needs (no background traffic, no first-run pages)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_the_report_renders_without_errors_in_chromium(tmp_path, browser):
    evolve(tiny_config(tmp_path, iterations=1))
    page = tmp_path / "run" / "report.html"
    browser.get(page.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    images = browser.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight,"
        " i.getBoundingClientRect().width])"
    )
    assert len(images) == 2  # the metric plot and the loss curves
    assert all(done and width > 100 and height > 100 and shown > 0 for done, width, height, shown in images)
    text = browser.find_element("tag name", "body").text
    assert "Iteration 1" in text and "Shipped as" in text
    # A broken image would decode to 0x0; prove the check can see one.
    browser.execute_script("document.images[0].src = 'data:image/png;base64,AAAA'")
    assert browser.execute_script("return document.images[0].naturalWidth") == 0
