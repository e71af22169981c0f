"""The Dagster UI in a real browser: Debian's headless Chromium, driven by Selenium through
Debian's chromedriver, opens the webserver over the demo definitions, waits for the asset graph
and finds the study assets. A screenshot is kept in test-artifacts/ for whoever reviews the run."""
from __future__ import annotations

import shutil

import httpx
import pytest

from tests.dagster_webserver import ROOT, running_webserver

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
# The flags this machine needs: no sandbox as root, no GPU, and no background connections
# (the closed network refuses them, many at a time).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    def ready(base: str) -> bool:
        return httpx.get(f"{base}/server_info", timeout=5).status_code == 200

    with running_webserver(tmp_path_factory.mktemp("dagster_home"), ready) as base:
        yield base


def test_the_asset_graph_shows_the_study_assets_in_chromium(ui, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        def body(d) -> str:
            return d.find_element("tag name", "body").text

        def dismiss_dialogs(d) -> None:  # the first visit's "join the community" dialog
            for button in d.find_elements("xpath", "//button[normalize-space()='Skip']"):
                button.click()

        group = f"{ui}/locations/assets.definitions/asset-groups/study"
        driver.get(group)
        # The lineage graph is drawn when its nodes are. The UI centres a large graph at a fixed zoom, so which
        # nodes are in view depends on the layout (the study report downstream moved the centre): any study
        # table will do; the List tab below checks them all.
        drawn = ("patient_xref", "cohort_attrition", "prospective_cohort", "effect_estimates", "iptw_weights")
        WebDriverWait(driver, 90, poll_frequency=1).until(
            lambda d: dismiss_dialogs(d) or any(name in body(d) for name in drawn))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dagster-study-lineage.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        driver.set_window_size(1600, 6000)  # the list renders only visible rows: make all 20 visible
        driver.get(f"{group}/list")  # the List tab: every asset of the group with its description
        wanted = ("cohort", "effect_estimates", "survival_curves", "prospective_cohort", "iptw_weights")
        WebDriverWait(driver, 60, poll_frequency=1).until(
            lambda d: dismiss_dialogs(d) or all(name in body(d) for name in wanted))
        assert "IPTW-weighted Cox hazard ratios" in body(driver)  # descriptions reach the UI
        driver.save_screenshot(str(ARTIFACTS / "dagster-study-assets.png"))
    finally:
        driver.quit()
