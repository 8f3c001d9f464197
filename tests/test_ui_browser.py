"""The session browser in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

The app runs under uvicorn in a thread on a free loopback port, over a real SQLite store. Nothing is downloaded at
run time: the driver path is given explicitly, so Selenium Manager never runs. Set PRAISON_UI_SCREENSHOTS=docs/ui
to save a screenshot of each page there.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn", reason="the ui extra is not installed: pip install 'praison-db[ui]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'praison-db[dev]'")

import uvicorn  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from praison_db import db  # noqa: E402
from praison_db.facade import PraisonDB  # noqa: E402
from praison_db.ui import create_app  # noqa: E402
from tests import servers  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
XSS = "<script>alert(1)</script>"
VIEWER_TZ = "Asia/Tokyo"  # not UTC, so local-time rendering is visible
WAIT = 15  # seconds any one element may take to appear (live refresh polls every 2 s)


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(Path(p).name))]
    if missing:
        servers.unavailable("Chromium for the browser tests", f"{', '.join(missing)} not found; run scripts/browser as root")


def seed(store: PraisonDB) -> None:
    conv, state = store.conversations, store.state
    conv.create_session("support-42", user_id="bob", agent_id="helpdesk", session_type="team", name="Refund request")
    conv.add_messages(
        "support-42",
        [{"role": "user", "content": "I was charged twice for order 1187."}, {"role": "assistant", "content": "Sorry about that, Bob: refunded."}],
    )
    conv.create_session("weather-7", user_id="alice", agent_id="weather-bot", name="Trip planning", metadata={"channel": "web"})
    conv.add_messages(
        "weather-7",
        [
            {"role": "system", "content": "You are a helpful travel assistant."},
            {"role": "user", "content": XSS},
            {"role": "user", "content": "What's the weather in Paris tomorrow?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_paris", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "day": "tomorrow"}'}}
                ],
            },
            {"role": "tool", "content": '{"forecast": "sunny", "high_c": 21, "low_c": 12}', "tool_call_id": "call_paris"},
            {"role": "assistant", "content": "Tomorrow in Paris: sunny, 12 to 21 °C. " + "Pack light layers. " * 60, "metadata": {"model": "gpt-4o-mini", "latency_ms": 812}},
        ],
    )
    conv.create_session("history-1", user_id="carol", agent_id="tutor", name="Long lesson")
    conv.add_messages("history-1", [{"role": "user" if i % 2 else "assistant", "content": f"lesson turn {i}"} for i in range(1, 121)])
    state.scope("session", "weather-7").set("preferences", {"units": "metric", "home": "Lyon"}, ttl=86400)
    state.scope("session", "weather-7").set("last_city", "Paris", ttl=1800)
    state.scope("user", "alice").set("plan", "pro")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, PraisonDB]]:
    _browser_or_skip()
    folder = tmp_path_factory.mktemp("ui-browser")
    with db(f"sqlite:///{folder}/praison.db", session_dir=folder / "home") as store:
        seed(store)
        # Listening before the server thread starts: the browser's first connection waits in the backlog.
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(store), log_level="warning", lifespan="off"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{port}", store
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            sock.close()


@pytest.fixture(scope="module")
def browser(served: Any) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-GB"):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER, env={**os.environ, "TZ": VIEWER_TZ})
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception as e:  # a browser that cannot start is a missing tool, reported like a missing server
        servers.unavailable("Chromium for the browser tests", e)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver) -> WebDriverWait:
    # Live refresh swaps a region's HTML: an element found just before the swap goes stale, so look again.
    return WebDriverWait(driver, WAIT, ignored_exceptions=(StaleElementReferenceException,))


def shot(driver: WebDriver, name: str) -> None:
    folder = os.environ.get("PRAISON_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def no_alert(driver: WebDriver) -> bool:
    try:
        _ = driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def test_sessions_list_filters_by_user(served: Any, browser: WebDriver) -> None:
    base, _ = served
    browser.get(base + "/")
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "table.sessions a.sid")))
    ids = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.sessions a.sid")]
    assert ids[0] == "history-1" and set(ids) == {"support-42", "weather-7", "history-1"}
    shot(browser, "sessions")
    field = browser.find_element(By.ID, "f-user")
    field.clear()
    field.send_keys("alice")
    browser.find_element(By.ID, "apply-filters").click()
    wait(browser).until(EC.url_contains("user=alice"))
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.sessions a.sid")] == ["weather-7"]


def test_session_shows_tool_calls_with_results_and_script_as_text(served: Any, browser: WebDriver) -> None:
    base, _ = served
    browser.get(base + "/?user=alice")
    wait(browser).until(EC.element_to_be_clickable((By.LINK_TEXT, "weather-7"))).click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-6")))
    assert no_alert(browser)
    user = browser.find_element(By.CSS_SELECTOR, "#msg-2 .content")
    assert user.text == XSS and user.is_displayed()
    call = browser.find_element(By.ID, "call-call_paris")
    assert "get_weather" in call.text and '"city": "Paris"' in call.text and "sunny" in call.text
    result_link = browser.find_element(By.CSS_SELECTOR, "#msg-5 .pair a")
    assert "get_weather" in result_link.text
    # The viewer's own time zone: the script rewrote the UTC text; the UTC form stays in the title.
    when = browser.find_element(By.CSS_SELECTOR, "#msg-1 time")
    assert when.get_attribute("title").endswith("UTC") and "UTC" not in when.text and when.text
    long_reply = browser.find_element(By.CSS_SELECTOR, "#msg-6 details.long")
    assert long_reply.get_attribute("open") is None
    long_reply.find_element(By.TAG_NAME, "summary").click()
    wait(browser).until(lambda d: long_reply.get_attribute("open") is not None)
    browser.find_element(By.CSS_SELECTOR, "#msg-6 details.raw summary").click()
    assert "gpt-4o-mini" in browser.find_element(By.CSS_SELECTOR, "#msg-6 details.raw pre").text
    if os.environ.get("PRAISON_UI_SCREENSHOTS"):
        browser.set_window_size(1280, 1500)  # tall enough for the tool call, its result and the folded reply
        long_reply.find_element(By.TAG_NAME, "summary").click()  # fold it again for the picture
        browser.execute_script("window.scrollTo(0, 0)")
        shot(browser, "session")
        browser.set_window_size(1280, 900)


def test_older_pages_of_a_long_session(served: Any, browser: WebDriver) -> None:
    base, _ = served
    browser.get(base + "/session?id=history-1")
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-120")))
    assert browser.find_elements(By.ID, "msg-70") == []
    browser.find_element(By.ID, "load-older").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-21")))
    assert browser.find_element(By.CSS_SELECTOR, "#msg-70 .content").text == "lesson turn 70"
    browser.find_element(By.ID, "load-older").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-1")))
    assert browser.find_elements(By.ID, "load-older") == []
    browser.find_element(By.ID, "jump-newest").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-120")))


def test_live_refresh_shows_a_new_message(served: Any, browser: WebDriver) -> None:
    base, store = served
    browser.get(base + "/session?id=support-42")
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-2")))
    browser.find_element(By.CSS_SELECTOR, "#msg-2 details.raw summary").click()  # the reader unfolds something
    store.conversations.add_message("support-42", "user", "Thanks! When will it arrive?")
    wait(browser).until(EC.presence_of_element_located((By.ID, "msg-3")))
    assert browser.find_element(By.CSS_SELECTOR, "#msg-2 details.raw").get_attribute("open") is not None
    assert browser.find_element(By.CSS_SELECTOR, "#msg-1 details.raw").get_attribute("open") is None
    assert browser.find_element(By.CSS_SELECTOR, "#msg-3 .content").text == "Thanks! When will it arrive?"
    assert browser.find_element(By.ID, "message-count").text == "3"


def test_sessions_list_refreshes_while_an_agent_writes(served: Any, browser: WebDriver) -> None:
    base, store = served
    browser.get(base + "/")
    wait(browser).until(EC.presence_of_element_located((By.LINK_TEXT, "weather-7")))
    store.conversations.create_session("just-started", user_id="frank")
    store.conversations.add_message("just-started", "user", "hello?")
    wait(browser).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.sessions a.sid")[0].text == "just-started")
    assert "Updated" in browser.find_element(By.ID, "live-status").text


def test_delete_asks_for_confirmation(served: Any, browser: WebDriver) -> None:
    base, store = served
    store.conversations.create_session("scratch", user_id="dave")
    store.conversations.add_message("scratch", "user", "temporary")
    browser.get(base + "/session?id=scratch")
    wait(browser).until(EC.element_to_be_clickable((By.ID, "delete"))).click()
    wait(browser).until(EC.element_to_be_clickable((By.ID, "cancel-delete"))).click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "session-id")))
    assert store.conversations.get_session("scratch") is not None
    browser.find_element(By.ID, "delete").click()
    wait(browser).until(EC.element_to_be_clickable((By.ID, "confirm-delete"))).click()
    notice = wait(browser).until(EC.presence_of_element_located((By.ID, "deleted-notice")))
    assert "scratch" in notice.text
    assert store.conversations.get_session("scratch") is None
    assert "scratch" not in [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.sessions a.sid")]


def test_state_tab_and_overview(served: Any, browser: WebDriver) -> None:
    base, _ = served
    browser.get(base + "/")
    wait(browser).until(EC.element_to_be_clickable((By.LINK_TEXT, "State"))).click()
    wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "table.state code.key")))
    keys = [k.text for k in browser.find_elements(By.CSS_SELECTOR, "table.state code.key")]
    assert {"session:weather-7:preferences", "session:weather-7:last_city", "user:alice:plan"} <= set(keys)
    shot(browser, "state")
    scope = browser.find_element(By.ID, "s-scope")
    scope.send_keys("session:weather-7")
    browser.find_element(By.ID, "apply-state").click()
    wait(browser).until(EC.url_contains("scope=session"))
    rows = browser.find_elements(By.CSS_SELECTOR, "table.state tbody tr")
    assert sorted(r.find_element(By.CSS_SELECTOR, "code.key").text for r in rows) == ["session:weather-7:last_city", "session:weather-7:preferences"]
    assert any("min" in r.text for r in rows) and any("h" in r.text.split()[-1] for r in rows)
    browser.find_element(By.LINK_TEXT, "Overview").click()
    wait(browser).until(EC.presence_of_element_located((By.ID, "count-sessions")))
    assert browser.find_element(By.CSS_SELECTOR, "table.overview").text.count("ok") >= 2
    shot(browser, "overview")


def test_keyboard_reaches_the_filters_and_links(served: Any, browser: WebDriver) -> None:
    base, _ = served
    browser.get(base + "/")
    wait(browser).until(EC.presence_of_element_located((By.ID, "f-user")))
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("\ue004")  # Tab: the skip link comes first
    assert browser.switch_to.active_element.text == "Skip to content"
    reached = []
    for _ in range(12):  # bounded walk through the focus order
        browser.switch_to.active_element.send_keys("\ue004")
        reached.append(browser.switch_to.active_element.get_attribute("id") or browser.switch_to.active_element.text)
    assert "f-user" in reached and "Sessions" in reached
