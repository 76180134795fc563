"""The dashboard in headless Chromium (Debian's chromium + chromedriver, driven by Selenium).

The page must load without console errors, show the seeded repository's snapshots, and its
"Backup now" button must take a snapshot; a snapshot's id opens a view of it (its tree, a JSON
viewer, a download); the cost column fits its card. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import types
from pathlib import Path

import pytest

from casstore.client import Repository
from casstore.gc.retention import apply_retention
from casstore.service.runs import snapshot_step
from casstore.service.scheduler import Scheduler, parse_schedule
from tests.test_api import BINARY, TOKEN, make_settings, running_server, take_snapshots

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
RUNS = 10
HOUR = 3600.0

pytestmark = pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                                       "chromium-driver)")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads")})
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1400,1050", "--hide-scrollbars"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def seeded_history(settings) -> None:
    """Scheduled runs every 6 h over the last two and a half days, the data growing each time."""
    import casstore.snapshot.builder

    now = [time.time() - (RUNS - 1) * 6 * HOUR - 2 * HOUR]
    fake_time = types.SimpleNamespace(time_ns=lambda: int(now[0] * 1e9))   # snapshots dated in the past
    rng = random.Random(5)
    source = Path(settings.source)

    def evolving_snapshot(repo, s):
        day = len(list((source / "market").glob("day-*.json")))
        rows = [{"symbol": f"S{i}", "price": round(rng.uniform(1, 500), 2), "note": rng.randbytes(24).hex()}
                for i in range(400 + 150 * day)]
        (source / "market" / f"day-{day}.json").write_text(json.dumps(rows))
        with open(source / "ai_hub" / "communication_log.jsonl", "a") as log:
            log.write("\n" + json.dumps({"n": day, "msg": "run"}))
        return snapshot_step(repo, s)

    def sleep(seconds):
        now[0] += seconds

    loop = Scheduler(settings, parse_schedule("6h"), clock=lambda: now[0], sleep=sleep, max_nap=1e9,
                     steps=(("snapshot", evolving_snapshot),))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(casstore.snapshot.builder, "time", fake_time)
        loop.run_forever(until=now[0] + (RUNS - 1) * 6 * HOUR + 1)


def wait_until(condition, timeout: float = 15, what: str = "the page"):
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:   # the page re-rendered while it was read: look again
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#snapshots tr[data-id]")


def console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(a in entry["message"] for a in allowed)]


def test_dashboard_shows_snapshots_and_backup_now_takes_one(tmp_path, browser):
    from selenium.webdriver.common.by import By

    settings = make_settings(tmp_path, schedule="6h")
    seeded_history(settings)
    with running_server(settings) as url:
        browser.get(url + "/")
        wait_until(lambda: len(rows(browser)) == RUNS, what=f"{RUNS} snapshot rows")
        assert browser.title == "casstore"
        assert browser.find_element(By.ID, "c-count").text == str(RUNS)
        assert "in " in browser.find_element(By.ID, "c-next").text                  # the next scheduled run
        assert "ok" in browser.find_element(By.ID, "c-last-run").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart path")) == 3     # area + two lines
        assert len(browser.find_elements(By.CSS_SELECTOR, "#cost tr")) == 3
        assert browser.find_element(By.ID, "health").text == "healthy"
        assert browser.find_element(By.ID, "sync-now").get_attribute("disabled")   # no remote configured
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))

        browser.find_element(By.ID, "backup-now").click()
        wait_until(lambda: len(rows(browser)) == RUNS + 1, timeout=30, what="the new snapshot's row")
        toast = wait_until(lambda: browser.find_element(By.ID, "toast").text, what="the toast")
        assert toast.startswith("Backup ") and "saved" in toast
        assert console_errors(browser) == []
        with Repository.open_local(settings.repository, settings) as repo:
            ids = [s.id for s in repo.snapshots()]
        assert len(ids) == RUNS + 1 and rows(browser)[0].get_attribute("data-id") == ids[0]


def test_dashboard_asks_for_the_token_once_per_session(tmp_path, browser):
    from selenium.webdriver.common.by import By

    settings = make_settings(tmp_path, api_token=TOKEN)
    take_snapshots(settings, 2)
    with running_server(settings) as url:
        browser.get(url + "/")
        modal = browser.find_element(By.ID, "token-modal")
        wait_until(lambda: modal.is_displayed(), what="the token prompt")
        browser.find_element(By.ID, "token-input").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
        wait_until(lambda: len(rows(browser)) == 2, what="the snapshots after the token")
        assert browser.execute_script("return sessionStorage.getItem('casstore.api-token')") == TOKEN
        browser.refresh()
        wait_until(lambda: len(rows(browser)) == 2, what="the snapshots after a reload")
        assert not browser.find_element(By.ID, "token-modal").is_displayed()
        # the only console errors are the browser's own notes on the first, unauthenticated 401s
        assert console_errors(browser, allowed=("401",)) == []


def bytes_text(n: int) -> str:
    """The page's bytes() for sizes under 1 MiB."""
    return f"{n} B" if n < 1024 else f"{n / 1024:.2f} KiB" if n < 10 * 1024 else f"{n / 1024:.1f} KiB"


def test_the_cost_column_fits_its_card_on_a_narrower_window(tmp_path, browser):
    from selenium.webdriver.common.by import By

    settings = make_settings(tmp_path, remote="s3://bucket/casstore")   # provider aws: a "current" tag too
    take_snapshots(settings, 1)
    browser.set_window_size(1100, 900)
    with running_server(settings) as url:
        browser.get(url + "/")
        wait_until(lambda: len(rows(browser)) == 1, what="the snapshot row")
        wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "#cost td.usd"), what="the cost table")
        overflow = browser.execute_script("""
            const card = document.getElementById("cost").closest(".card").getBoundingClientRect();
            return [...document.querySelectorAll("#cost td")].map((td) => td.getBoundingClientRect().right - card.right)
                                                               .filter((over) => over > -1);""")
        assert overflow == [], f"cost cells stick out of their card by {overflow} px"
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-1100.png"))


def test_a_snapshot_id_opens_its_tree_a_json_viewer_and_a_download(tmp_path, browser):
    from selenium.webdriver.common.by import By

    settings = make_settings(tmp_path)
    data = Path(settings.source)
    (data / "ai_hub" / "metrics.json").write_text('{"score": NaN, "best": Infinity, "n": 3}')
    os.symlink("ai_hub/metrics.json", data / "current")
    first, second = take_snapshots(settings, 2)
    with running_server(settings) as url:
        browser.get(url + "/")
        wait_until(lambda: len(rows(browser)) == 2, what="two snapshot rows")
        link = rows(browser)[1].find_element(By.CSS_SELECTOR, "td.id a")
        assert link.text == first[:8]
        link.click()
        viewer = browser.find_element(By.ID, "viewer")

        def entries() -> dict:
            return {r.get_attribute("data-path"): r for r in viewer.find_elements(By.CSS_SELECTOR, "tr[data-path]")}

        wait_until(lambda: "ai_hub" in entries(), what="the snapshot's root directory")
        assert viewer.is_displayed() and first[:8] in browser.find_element(By.ID, "viewer-title").text
        assert browser.current_url.endswith(f"#snapshot/{first}")
        assert entries()["current"].text.startswith("current → ai_hub/metrics.json")

        entries()["ai_hub"].find_element(By.TAG_NAME, "a").click()
        wait_until(lambda: "ai_hub/metrics.json" in entries(), what="the ai_hub directory")
        entries()["ai_hub/metrics.json"].find_element(By.TAG_NAME, "a").click()
        shown = wait_until(lambda: browser.find_elements(By.ID, "viewer-json"), what="the JSON viewer")[0]
        assert json.loads(shown.text) == {"score": None, "best": None, "n": 3}   # NaN/Infinity arrive as null

        browser.back()                                  # a real link: history works
        wait_until(lambda: "ai_hub/collective_intelligence.json" in entries(), what="back in ai_hub")
        browser.find_element(By.CSS_SELECTOR, "#viewer-crumbs a").click()
        wait_until(lambda: "market" in entries(), what="the root again")
        entries()["market"].find_element(By.TAG_NAME, "a").click()
        wait_until(lambda: "market/big.bin" in entries(), what="the market directory")
        entries()["market/big.bin"].find_element(By.TAG_NAME, "a").click()
        download = browser.find_element(By.ID, "viewer-download")
        wait_until(lambda: download.is_displayed(), what="the download button")
        assert "Not a JSON file" in browser.find_element(By.ID, "viewer-content").text
        download.click()
        saved = tmp_path / "downloads" / "big.bin"
        wait_until(lambda: saved.exists() and saved.read_bytes() == BINARY, what="the downloaded file")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "dashboard-snapshot-view.png"))

        browser.find_element(By.ID, "viewer-close").click()
        wait_until(lambda: not viewer.is_displayed(), what="the view to close")
        assert console_errors(browser) == []


def test_the_repository_column_keeps_its_sizes_after_retention(tmp_path, browser):
    from selenium.webdriver.common.by import By

    settings = make_settings(tmp_path)
    ids = []
    for i in range(3):
        (Path(settings.source) / f"day-{i}.bin").write_bytes(random.Random(i).randbytes(3000))
        ids += take_snapshots(settings, 1)
    with Repository.open_local(settings.repository, settings) as repo:
        recorded = {s.id: s.manifest.summary["repository_bytes"] for s in repo.snapshots()}
        assert len(apply_retention(repo, {"last": 1}).removed) == 2
    with running_server(settings) as url:
        browser.get(url + "/")
        wait_until(lambda: len(rows(browser)) == 1, what="the one snapshot left")
        cells = rows(browser)[0].find_elements(By.TAG_NAME, "td")
        assert cells[7].text == bytes_text(recorded[ids[2]]) != "0 B"


def test_the_tree_view_shows_hostile_names_as_escaped_text(tmp_path, browser):
    """Names, a symlink target and a host from the repository: shown as text, never as HTML, with
    control and bidi-override characters as visible escapes (issue 13)."""
    from selenium.webdriver.common.by import By

    settings = make_settings(tmp_path, host="host\x1b[2J\u202e")
    data = Path(settings.source)
    (data / "dir\x9b<b>bold\u202e").mkdir()
    (data / "dir\x9b<b>bold\u202e" / "f\u202etxt.json").write_text("{}")
    (data / "ctl\x1b[31m").mkdir()
    os.symlink("<img src=x onerror=alert(1)>\x1b]0;t\x07", data / "link\r")
    (data / os.fsdecode(b"bad\xffname")).write_bytes(b"x")
    first, = take_snapshots(settings, 1)
    with running_server(settings) as url:
        browser.get(url + "/")
        wait_until(lambda: len(rows(browser)) == 1, what="the snapshot row")
        assert "host\\x1b[2J\\u202e" in rows(browser)[0].text
        browser.get(url + f"/#snapshot/{first}")

        def listed() -> str:    # what the viewer shows, exactly (chromedriver cannot carry a lone surrogate)
            return browser.execute_script("return document.getElementById('viewer-content').textContent")

        wait_until(lambda: "link\\r → " in listed(), what="the snapshot's root directory")
        for text in ("dir\\x9b<b>bold\\u202e/", "ctl\\x1b[31m/", "bad\\xffname",
                     "link\\r → <img src=x onerror=alert(1)>\\x1b]0;t\\x07"):
            assert text in listed(), (text, listed())
        assert not any(c in listed() for c in "\x1b\x07\r\x9b\u202e\udcff"), repr(listed())
        assert browser.find_elements(By.CSS_SELECTOR, "#viewer-content img, #viewer-content td b") == []
        assert "host\\x1b[2J\\u202e" in browser.find_element(By.ID, "viewer-title").text

        links = browser.find_elements(By.CSS_SELECTOR, "#viewer-content a.entry")
        assert not any(a.text.startswith("ctl") for a in links)     # the API refuses that path: not a link
        next(a for a in links if a.text.startswith("dir\\x9b")).click()
        wait_until(lambda: "f\\u202etxt.json" in listed(), what="the hostile directory")
        crumbs = browser.execute_script("return document.getElementById('viewer-crumbs').textContent")
        assert crumbs.endswith("dir\\x9b<b>bold\\u202e") and "\u202e" not in crumbs
        assert console_errors(browser) == []
