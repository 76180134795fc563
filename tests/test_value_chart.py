"""The dashboard's "A value over time" chart in headless Chromium: one point per snapshot where
collective_iq changed, as GET /api/cloud/history gives them. Screenshot: test-artifacts/value-chart.png."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.test_api import make_settings, running_server, take_snapshots
from tests.test_dashboard import ARTIFACTS, browser, console_errors, pytestmark, wait_until  # noqa: F401

VALUES = [142, 142, 150, 149, 149, 160]


@pytest.fixture
def served_history(tmp_path):
    settings = make_settings(tmp_path)
    ci = tmp_path / "data" / "ai_hub" / "collective_intelligence.json"
    for n, iq in enumerate(VALUES):
        ci.write_text(json.dumps({"collective_iq": iq, "accuracy": 0.9, "run": n}))
        take_snapshots(settings)
    with running_server(settings) as url:
        yield url


def test_the_value_chart_draws_each_change(served_history, request):
    from selenium.webdriver.common.by import By

    driver = request.getfixturevalue("browser")
    driver.get(served_history + "/")
    points = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#value-chart circle.value-point"),
                        what="the value chart")
    rows = httpx.get(served_history + "/api/cloud/history",
                     params={"path": "ai_hub/collective_intelligence.json", "key": "collective_iq"}).json()["rows"]
    assert [r["value"] for r in rows] == [142, 150, 149, 160]
    assert len(points) == len(rows)
    steps = driver.find_element(By.CSS_SELECTOR, "#value-chart path").get_attribute("d")
    assert steps.startswith("M") and steps.count("V") == len(rows) - 1    # a step per change
    titles = [p.find_element(By.TAG_NAME, "title").get_attribute("textContent") for p in points]
    assert [t.rsplit(" ", 1)[-1] for t in titles] == ["142", "150", "149", "160"]
    assert "4 changes of collective_iq" in driver.find_element(By.ID, "value-note").text
    ARTIFACTS.mkdir(exist_ok=True)
    driver.execute_script("document.getElementById('value-card').scrollIntoView()")
    driver.find_element(By.ID, "value-card").screenshot(str(ARTIFACTS / "value-chart.png"))

    driver.find_element(By.ID, "value-key").clear()
    driver.find_element(By.ID, "value-key").send_keys("accuracy")
    driver.find_element(By.CSS_SELECTOR, "#value-form button").click()
    wait_until(lambda: "1 changes of accuracy" in driver.find_element(By.ID, "value-note").text, what="accuracy")
    assert console_errors(driver) == []
