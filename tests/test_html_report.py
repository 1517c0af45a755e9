"""The HTML report of a small run: self-contained, and rendered in a real headless Chromium
(Debian's chromium and chromium-driver, driven by selenium)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from command import superneurons

BROWSER_HINT = "Debian: apt-get install chromium chromium-driver (CI installs them)"


def headless_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        if os.environ.get("SUPERNEURONS_REQUIRE_BROWSER"):
            pytest.fail(f"no chromium/chromedriver, and CI requires them: {BROWSER_HINT}")
        pytest.skip(f"no chromium/chromedriver on this machine: {BROWSER_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,900"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def reported(tiny_run, tmp_path):
    out, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # An early-exit benchmark saved beside the run, in the format `bench early-exit` writes.
    row = dict(model="embedded", batch_size=1, exit="k=0", k=0, full_s=0.5, early_s=0.1,
               speedup=5.0, ceiling=8.0, fraction_of_ceiling=0.625)  # fmt: skip
    (run / "bench").mkdir()
    (run / "bench" / "early-exit.json").write_text(
        json.dumps({"format": "superneurons-bench-early-exit/1", "rows": [row]})
    )
    done = superneurons("report", run)
    assert done.returncode == 0, done.stderr
    return run


def test_the_report_is_one_self_contained_page(reported):
    page = (reported / "report" / "index.html").read_text(encoding="utf-8")
    assert "<svg" in page and 'id="claims"' in page
    # Nothing is fetched: no external script, style sheet, image or font.
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"(https?:)?//", page)
    assert "<script" not in page and "<link" not in page
    for name in ("layers", "alpha", "agreement", "probe-size", "shift", "exit", "claims"):
        assert (reported / "analysis" / f"{name}.json").is_file()
    assert (
        page.count('class="confusion"')
        == len(json.loads((reported / "predictions.jsonl").read_text().splitlines()[0])) - 3
    )  # less id, label, family
    assert 'id="bench"' in page and "5.00×" in page
    assert len(page) < 3_000_000


def test_the_report_renders_in_a_real_browser(reported, tmp_path):
    from selenium.webdriver.common.by import By

    driver = headless_chromium()
    try:
        driver.get((reported / "report" / "index.html").as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        figures = driver.find_elements(By.CSS_SELECTOR, ".figure svg")
        assert len(figures) == 5  # layers, alpha, agreement, probing size, exit trade-off
        for figure in figures:
            assert figure.size["width"] > 100 and figure.size["height"] > 50
        images = driver.find_elements(By.TAG_NAME, "img")
        assert images  # the super neurons' example thumbnails
        for image in images:
            assert driver.execute_script("return arguments[0].naturalWidth", image) > 0
        cards = driver.find_elements(By.CSS_SELECTOR, ".neuron")
        neurons = json.loads((reported / "results.json").read_text())["selected"]
        assert len(cards) == min(6, len(neurons))
        for card in cards:
            histogram = card.find_element(By.TAG_NAME, "svg")
            assert histogram.size["width"] > 100 and histogram.size["height"] > 50
            assert len(card.find_elements(By.CSS_SELECTOR, ".example")) == 6
        claims = driver.find_element(By.ID, "claims").find_elements(By.TAG_NAME, "tr")
        assert len(claims) == 7  # the head and one row per claim
        assert driver.find_element(By.ID, "estimators").text.count("\n") >= 6
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_report_refuses_what_is_not_a_finished_run(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("a user's file")
    done = superneurons("report", tmp_path / "notes")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]


def test_report_refuses_before_the_analyses_what_it_cannot_write(tiny_run, tmp_path):
    out, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("analysis", "report"))
    (run / "report").write_text("a user's notes")
    done = superneurons("report", run)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"{run / 'report'} is a file" in done.stderr
    assert (run / "report").read_text() == "a user's notes" and not (run / "analysis").exists()
    (run / "report").unlink()
    (run / "predictions.jsonl").unlink()  # as in a folder `evaluate` wrote results.json into
    done = superneurons("report", run)
    assert done.returncode == 2 and "no predictions.jsonl" in done.stderr, done.stderr
    assert not (run / "analysis").exists() and not (run / "report").exists()
