"""The static leaderboard page in a real headless Chromium: loads from file:// without console
errors; sorting and filtering work. `.ci/run` installs Chromium and its driver from Debian."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from harness.cli import main
from harness.entries import read_entries

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')"
)
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "Chromium is not installed: apt-get install chromium chromium-driver (as .ci/run does)",
        allow_module_level=True,
    )

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="harness-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(small_runs, tmp_path_factory, browser):
    out = tmp_path_factory.mktemp("site")
    assert (
        main(["leaderboard", str(small_runs["figs"]), str(small_runs["lin"]), "--out", str(out)])
        == 0
    )
    browser.get((out / "index.html").as_uri())
    return browser


def visible_rows(section) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in section.find_elements(By.CSS_SELECTOR, "tbody tr")
        if tr.is_displayed()
    ]


def column(rows: list[list[str]], i: int) -> list[str]:
    return [r[i] for r in rows]


def test_page_loads_from_the_file_system_without_console_errors(page, small_runs):
    severe = [entry for entry in page.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    sections = page.find_elements(By.CSS_SELECTOR, "section.track")
    ids = {
        read_entries(small_runs["figs"])[0].track.id,
        read_entries(small_runs["lin"])[0].track.id,
    }
    assert {s.get_attribute("data-track") for s in sections} == ids
    assert sum(len(visible_rows(s)) for s in sections) == 3 + 2


def test_clicking_a_header_sorts_within_the_track(page, small_runs):
    track = read_entries(small_runs["figs"])[0].track.id
    section = page.find_element(By.CSS_SELECTOR, f'section[data-track="{track}"]')
    uds = [float(v.split(" ")[0]) for v in column(visible_rows(section), 3)]
    assert uds == sorted(uds)  # ranked by UD, lowest first
    header = section.find_element(By.CSS_SELECTOR, 'th[data-key="poison"]')
    header.click()
    assert column(visible_rows(section), 1) == ["clean", "noise-class", "noise-sample"]
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column(visible_rows(section), 1) == ["noise-sample", "noise-class", "clean"]
    assert header.get_attribute("aria-sort") == "descending"
    ud_header = section.find_element(By.CSS_SELECTOR, 'th[data-key="ud"]')
    ud_header.click()
    ud_header.click()
    uds = [float(v.split(" ")[0]) for v in column(visible_rows(section), 3)]
    assert uds == sorted(uds, reverse=True)


def test_filters_by_poison_defence_and_track(page, small_runs):
    poison = Select(page.find_element(By.ID, "filter-poison"))
    track = Select(page.find_element(By.ID, "filter-track"))
    defence = Select(page.find_element(By.ID, "filter-defence"))
    sections = page.find_elements(By.CSS_SELECTOR, "section.track")
    poison.select_by_value("noise-sample")
    shown = [s for s in sections if s.is_displayed()]
    assert len(shown) == 1 and column(visible_rows(shown[0]), 1) == ["noise-sample"]
    poison.select_by_value("")
    lin_track = read_entries(small_runs["lin"])[0].track.id
    track.select_by_value(lin_track)
    shown = [s for s in sections if s.is_displayed()]
    assert [s.get_attribute("data-track") for s in shown] == [lin_track]
    assert sorted(column(visible_rows(shown[0]), 1)) == ["clean", "noise-class"]
    assert column(visible_rows(shown[0]), 6) == ["2: 0, 1", "2: 0, 1"]
    defence.select_by_value("none")
    poison.select_by_value("noise-sample")  # not in this track: nothing left to show
    assert not any(s.is_displayed() for s in sections)
    assert page.find_element(By.ID, "empty").is_displayed()
    track.select_by_value("")
    poison.select_by_value("")
    defence.select_by_value("")
    assert sum(len(visible_rows(s)) for s in sections) == 5
    assert [e for e in page.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_repositorys_leaderboard_page_loads_with_every_track(browser):
    folder = Path(__file__).resolve().parent.parent / "leaderboard"
    browser.get((folder / "index.html").as_uri())
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    sections = browser.find_elements(By.CSS_SELECTOR, "section.track")
    tracks = {e.track.id for e in read_entries(folder)}
    assert {s.get_attribute("data-track") for s in sections} == tracks
