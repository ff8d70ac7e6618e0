"""`/segments` in a real headless browser (the OS's chromium driven through chromedriver)
against a scorer serving the real Kafka and Redis: filter, read the table and the counts,
download the CSV and compare all of it with what Redis holds."""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from consumer.bench.harness import read_topic, running, wait_for
from consumer.bench.loadgen import StreamPlan, stream
from consumer.segments import scan as segments
from consumer.settings import load_settings
from state.encoding import activity_code
from training.registry import Registry
from training.simulate import simulate


def _executable(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed: deploy/install-deps installs chromium and chromium-driver"
    return found


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = _executable("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(tmp_path / "downloads"), "download.prompt_for_download": False}
    )
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    driver = webdriver.Chrome(service=Service(_executable("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_segments_page_filters_counts_plots_and_downloads_what_redis_holds(
    test_env: dict[str, str], tiny_registry: Path, tmp_path: Path, browser: WebDriver
) -> None:
    history = simulate(120, seed=7)
    settings = load_settings()
    vocabulary = Registry(tiny_registry).manifest(Registry(tiny_registry).current())["features"]["vocabulary"]
    client = redis.Redis.from_url(settings.redis_url)
    with running(test_env, tiny_registry, tmp_path / "serve.log") as scorer:
        scorer.wait_ready()
        stream(history, settings.topics.events, settings.kafka_config(), StreamPlan(), progress=False)
        read_topic(settings.kafka_bootstrap, settings.topics.next_actions, history.n_events)
        customers = len(np.unique(history.event_customer))
        wait_for(lambda: len(segments.scan(client, settings.state.key_prefix, 1)) == customers,
                 timeout=60, what="every customer's window stored")

        state = segments.scan(client, settings.state.key_prefix, 3)
        scored = state.pred_ts > 0
        # a filter with a non-empty answer: the commonest last activity, the median risk among
        # those customers, and their commonest predicted next activity at or above it
        last_code = Counter(state.last_codes[scored, -1].tolist()).most_common(1)[0][0]
        name_of = {activity_code(n): n for n in vocabulary}
        ending = scored & (state.last_codes[:, -1] == last_code)
        min_churn = float(np.floor(np.median(state.churn_risk[ending]) * 20) / 20)
        pool = ending & (state.churn_risk >= min_churn)
        predicted_code = Counter(state.pred_code[pool].tolist()).most_common(1)[0][0]
        expected = pool & (state.last_codes[:, -2] != 0) & (state.pred_code == predicted_code)
        expected_risk = {state.customer_ids[i]: float(state.churn_risk[i]) for i in np.flatnonzero(expected)}
        assert expected_risk, "the chosen filter should select someone"

        browser.get(scorer.url("/segments"))
        assert browser.title == "seqscore segments"
        assert int(browser.find_element(By.ID, "total").text) == customers
        assert int(browser.find_element(By.ID, "matched").text) == customers, "no filter: everyone"
        assert int(browser.find_element(By.ID, "scored").text) == int(scored.sum())

        browser.find_element(By.ID, "last").send_keys(f"*,{name_of[last_code]}")
        Select(browser.find_element(By.ID, "predicted")).select_by_value(name_of[predicted_code])
        churn_input = browser.find_element(By.ID, "min_churn")
        churn_input.clear()
        churn_input.send_keys(f"{min_churn:g}")
        browser.find_element(By.ID, "apply").click()
        WebDriverWait(browser, 20).until(lambda b: "predicted=" in b.current_url)

        assert int(browser.find_element(By.ID, "matched").text) == len(expected_risk)
        table = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        shown = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in table]
        assert {row[0] for row in shown} == set(expected_risk)
        assert all(abs(float(row[3]) - expected_risk[row[0]]) < 1e-4 for row in shown)
        assert all(row[2] == name_of[predicted_code] and row[1].endswith(name_of[last_code]) for row in shown)
        risks = [float(row[3]) for row in shown]
        assert risks == sorted(risks, reverse=True), "riskiest first"

        bars = browser.find_elements(By.CSS_SELECTOR, "#risk-plot rect.seg[data-bin]")
        everyone = browser.find_elements(By.CSS_SELECTOR, "#risk-plot rect.all[data-bin]")
        assert len(bars) == len(everyone) == 20
        assert sum(int(b.get_attribute("data-count") or -1) for b in bars) == len(expected_risk)
        assert sum(int(b.get_attribute("data-count") or -1) for b in everyone) == int(scored.sum())
        tallest = max(bars, key=lambda b: int(b.get_attribute("data-count") or 0))
        assert tallest.size["height"] > 0, "the plot is drawn, not only annotated"

        browser.find_element(By.ID, "download").click()
        downloaded = tmp_path / "downloads" / "segment.csv"
        wait_for(downloaded.exists, timeout=20, what="the CSV download")
        exported = list(csv.DictReader(downloaded.open()))
        assert {r["customer_id"]: float(r["churn_risk"]) for r in exported} == pytest.approx(expected_risk, abs=1e-4)
        browser.save_screenshot(str(tmp_path / "segments.png"))

        # a bad filter is named on the page, and nothing is selected from it
        last_input = browser.find_element(By.ID, "last")
        last_input.clear()
        last_input.send_keys("A,,B")
        browser.find_element(By.ID, "apply").click()
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, "error"))
        assert browser.find_element(By.ID, "error").text.startswith("last")
        assert scorer.get("/healthz")[0] == 200
        assert scorer.stop() == 0
