"""The static leaderboard page in a real headless Chromium: loads from file:// without console
errors; sorting and filtering work; readable track titles; clean rows as references and ranks per
defence; the poison × defence matrix; the legend; methods' papers. `.ci/run` installs Chromium
and its driver from Debian."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from harness import leaderboard
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
from test_leaderboard import md_tracks, train_defended  # noqa: E402


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
def site(small_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert (
        main(["leaderboard", str(small_runs["figs"]), str(small_runs["lin"]), "--out", str(out)])
        == 0
    )
    return out / "index.html"


@pytest.fixture
def page(site, browser):
    browser.get(site.as_uri())
    return browser


@pytest.fixture(scope="module")
def defended(tmp_path_factory) -> Path:
    return train_defended(tmp_path_factory.mktemp("defended"))


@pytest.fixture(scope="module")
def defended_site(defended, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("defended-site")
    assert main(["leaderboard", str(defended), "--out", str(out)]) == 0
    return out / "index.html"


@pytest.fixture
def defended_page(defended_site, browser):
    browser.get(defended_site.as_uri())
    return browser


def visible_rows(section, table: str = "table.ranking") -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in section.find_elements(By.CSS_SELECTOR, f"{table} tbody tr")
        if tr.is_displayed()
    ]


def column(rows: list[list[str]], i: int) -> list[str]:
    return [r[i] for r in rows]


def severe(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_page_loads_from_the_file_system_without_console_errors(page, small_runs):
    assert severe(page) == []
    sections = page.find_elements(By.CSS_SELECTOR, "section.track")
    ids = {
        read_entries(small_runs["figs"])[0].track.id,
        read_entries(small_runs["lin"])[0].track.id,
    }
    assert {s.get_attribute("data-track") for s in sections} == ids
    assert sum(len(visible_rows(s)) for s in sections) == 3 + 2


def test_tracks_are_titled_readably_with_the_id_small_beside(page, small_runs):
    (track,) = leaderboard.build(read_entries(small_runs["figs"]))
    section = page.find_element(By.CSS_SELECTOR, f'section[data-track="{track.id}"]')
    assert section.find_element(By.TAG_NAME, "h2").text == track.title
    assert section.find_element(By.CSS_SELECTOR, ".track-id code").text == track.id
    title_size = section.find_element(By.TAG_NAME, "h2").value_of_css_property("font-size")
    id_size = section.find_element(By.CSS_SELECTOR, ".track-id").value_of_css_property("font-size")
    assert float(id_size.removesuffix("px")) < float(title_size.removesuffix("px"))
    options = [o.text for o in Select(page.find_element(By.ID, "filter-track")).options]
    assert track.title in options


def test_clicking_a_header_sorts_within_the_track(page, small_runs):
    track = read_entries(small_runs["figs"])[0].track.id
    section = page.find_element(By.CSS_SELECTOR, f'section[data-track="{track}"]')
    rows = visible_rows(section)
    assert rows[0][:3] == ["none", "ref", "clean"]  # the reference first, then poisons by UD
    uds = [float(v.split(" ")[0]) for v in column(rows[1:], 3)]
    assert uds == sorted(uds)
    header = section.find_element(By.CSS_SELECTOR, 'th[data-key="poison"]')
    header.click()
    assert column(visible_rows(section), 2) == ["clean", "noise-class", "noise-sample"]
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column(visible_rows(section), 2) == ["noise-sample", "noise-class", "clean"]
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
    assert len(shown) == 1 and column(visible_rows(shown[0]), 2) == ["noise-sample"]
    poison.select_by_value("")
    lin_track = read_entries(small_runs["lin"])[0].track.id
    track.select_by_value(lin_track)
    shown = [s for s in sections if s.is_displayed()]
    assert [s.get_attribute("data-track") for s in shown] == [lin_track]
    assert sorted(column(visible_rows(shown[0]), 2)) == ["clean", "noise-class"]
    assert column(visible_rows(shown[0]), 7) == ["2: 0, 1", "2: 0, 1"]
    defence.select_by_value("none")
    poison.select_by_value("noise-sample")  # not in this track: nothing left to show
    assert not any(s.is_displayed() for s in sections)
    assert page.find_element(By.ID, "empty").is_displayed()
    track.select_by_value("")
    poison.select_by_value("")
    defence.select_by_value("")
    assert sum(len(visible_rows(s)) for s in sections) == 5
    assert severe(page) == []


def test_clean_rows_under_a_defence_are_references_and_poisons_rank_per_defence(
    defended_page, defended
):
    entries = {e.arm_id: e for e in read_entries(defended)}
    assert severe(defended_page) == []
    (section,) = defended_page.find_elements(By.CSS_SELECTOR, "section.track")
    rows = section.find_elements(By.CSS_SELECTOR, "table.ranking tbody tr")
    cells = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in rows]
    references = [
        c for c, tr in zip(cells, rows, strict=True) if "reference" in tr.get_attribute("class")
    ]
    assert [(c[0], c[1], c[2]) for c in references] == [
        ("none", "ref", "clean"),
        ("cutout", "ref", "clean"),
    ]
    for defence in ("none", "cutout"):
        poisons = [c for c in cells if c[0] == defence and c[1] != "ref"]
        uds = [entries[f"{c[2]}__{defence}__s0"].results.ud for c in poisons]
        assert [c[3] for c in poisons] == [f"{u:.3f}" for u in uds]
        assert uds == sorted(uds)
        assert column(poisons, 1) == [str(1 + sum(o < u for o in uds)) for u in uds]
    change = entries["clean__cutout__s0"].results.ud_change
    assert next(c for c in references if c[0] == "cutout")[4] == f"{change:+.3f}"


def test_the_poison_by_defence_matrix_shows_ud_and_its_change(defended_page, defended):
    entries = {e.arm_id: e for e in read_entries(defended)}
    (section,) = defended_page.find_elements(By.CSS_SELECTOR, "section.track")
    matrix = section.find_element(By.CSS_SELECTOR, "table.matrix")
    head = [th.text for th in matrix.find_elements(By.CSS_SELECTOR, "thead th")]
    assert head == ["poison", "none", "cutout"]
    lines = visible_rows(section, "table.matrix")
    assert lines[0][0] == "clean (reference)"
    for line in lines:
        poison = line[0].removesuffix(" (reference)")
        assert line[1] == f"{entries[f'{poison}__none__s0'].results.ud:.3f}"
        res = entries[f"{poison}__cutout__s0"].results
        assert line[2].split("\n") == [f"{res.ud:.3f}", f"\u0394 {res.ud_change:+.3f}"]
    Select(defended_page.find_element(By.ID, "filter-defence")).select_by_value("cutout")
    shown = [
        th.text for th in matrix.find_elements(By.CSS_SELECTOR, "thead th") if th.is_displayed()
    ]
    assert shown == ["poison", "cutout"]
    Select(defended_page.find_element(By.ID, "filter-poison")).select_by_value("noise-class")
    assert [line[0] for line in visible_rows(section, "table.matrix")] == ["noise-class"]


def test_the_legend_explains_the_columns_and_a_poison_leads_to_its_paper(defended_page):
    terms = [dt.text for dt in defended_page.find_elements(By.CSS_SELECTOR, "#legend dt")]
    assert {"UD", "#LP", "\u0394UD"} <= set(terms)
    assert defended_page.find_element(By.ID, "legend").is_displayed()
    link = defended_page.find_element(By.CSS_SELECTOR, "table.ranking td a[href^='#method-']")
    assert link.text in ("noise-class", "noise-sample")
    link.click()
    target = defended_page.find_element(By.CSS_SELECTOR, "#methods li:target")
    assert "random-noise" in target.text and "Huang et al. 2021" in target.text
    assert (
        target.find_elements(By.TAG_NAME, "a") == []
    )  # a citation without a URL or arXiv id: no link
    assert severe(defended_page) == []


def test_the_repositorys_leaderboard_page_loads_with_every_track(browser):
    folder = Path(__file__).resolve().parent.parent / "leaderboard"
    browser.get((folder / "index.html").as_uri())
    assert severe(browser) == []
    sections = browser.find_elements(By.CSS_SELECTOR, "section.track")
    tracks = {e.track.id for e in read_entries(folder)}
    assert {s.get_attribute("data-track") for s in sections} == tracks
    # a matrix for each track with defences (the paper's Table 2 ones), and UEraser's paper
    # linked from its arXiv id
    defended = {e.track.id for e in read_entries(folder) if e.defence.name != "none"}
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.matrix")) == len(defended) >= 1
    # the page shows the numbers leaderboard.md shows, exact halves (UD 1.8125) included
    table2 = next(e.track.id for e in read_entries(folder) if e.run == "table2-cifar10-cpu")
    section = browser.find_element(By.CSS_SELECTOR, f'section[data-track="{table2}"]')
    md = md_tracks((folder / "leaderboard.md").read_text())[table2]
    assert [r[:6] for r in visible_rows(section)] == [r[:6] for r in md]
    assert ["none", "2", "em", "1.812"] in [r[:4] for r in md]
    ueraser = browser.find_element(By.CSS_SELECTOR, "#methods li[id$='-ueraser'] a.paper")
    assert ueraser.get_attribute("href") == "https://arxiv.org/abs/2303.15127"
    assert ueraser.get_attribute("rel") == "noopener noreferrer"
