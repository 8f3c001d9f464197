"""The session browser's routes, through Starlette's TestClient, on every backend of tests/backends.py."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import warnings
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the ui extra is not installed: pip install 'praison-db[ui]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")

with warnings.catch_warnings():  # newer Starlette suggests httpx2 for its TestClient; httpx is what it runs on here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from praison_db import db  # noqa: E402
from praison_db.facade import PraisonDB  # noqa: E402
from praison_db.ui import create_app  # noqa: E402
from tests import servers  # noqa: E402
from tests.backends import Backend  # noqa: E402
from praison_db.testing.plugin import server_url  # noqa: E402

XSS = "<script>alert(1)</script>"
BASE = "http://127.0.0.1"


@pytest.fixture
def store(conv_backend: Backend, make_url: Any, tmp_path: Path) -> Iterator[PraisonDB]:
    with db(make_url(conv_backend), session_dir=tmp_path / "home", **conv_backend.options) as opened:
        yield opened


def client(store: PraisonDB, **options: Any) -> TestClient:
    return TestClient(create_app(store, **options), base_url=BASE, follow_redirects=False)


def seed_tool_session(store: PraisonDB, session_id: str = "chat-1") -> None:
    conv = store.conversations
    conv.create_session(session_id, user_id="alice", agent_id="weather-bot", name="Weather")
    conv.add_messages(
        session_id,
        [
            {"role": "user", "content": XSS},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}],
            },
            {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"},
            {"role": "assistant", "content": "It is sunny in Paris. " + "x" * 2000, "metadata": {"model": "demo"}},
        ],
    )


def text_of(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", " ", html))


def session_ids(html: str) -> list[str]:
    return [unescape(s) for s in re.findall(r'<a class="sid" href="[^"]*">([^<]*)</a>', html)]


def test_sessions_page_newest_activity_first_with_filters_and_counts(store: PraisonDB) -> None:
    conv = store.conversations
    conv.create_session("s-old", user_id="alice", agent_id="a1")
    conv.create_session("s-team", user_id="bob", agent_id="a2", session_type="team")
    conv.create_session("s-new", user_id="alice", agent_id="a2", name="Newest")
    conv.add_messages("s-new", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    with client(store) as c:
        page = c.get("/")
        assert page.status_code == 200
        ids = session_ids(page.text)
        assert ids[0] == "s-new" and set(ids) == {"s-old", "s-team", "s-new"}
        row = re.search(r'<tr>\s*<td><a class="sid"[^>]*>s-new</a>.*?</tr>', page.text, re.S)
        assert row is not None and '<td class="num">2</td>' in row.group(0)
        assert f'datetime="{conv.get_session("s-new").updated_at.isoformat().replace("+00:00", "Z")}"' in row.group(0)
        assert set(session_ids(c.get("/", params={"user": "alice"}).text)) == {"s-old", "s-new"}
        assert session_ids(c.get("/", params={"agent": "a2", "user": "alice"}).text) == ["s-new"]
        assert session_ids(c.get("/", params={"type": "team"}).text) == ["s-team"]
        assert session_ids(c.get("/", params={"name": "newe"}).text) == ["s-new"]  # name: within the page


def test_find_by_id_opens_the_session_or_says_it_is_missing(store: PraisonDB) -> None:
    store.conversations.create_session("a/b c?d", user_id="u")
    with client(store) as c:
        found = c.get("/", params={"id": "a/b c?d"})
        assert found.status_code == 303
        opened = c.get(found.headers["location"])
        assert opened.status_code == 200 and "a/b c?d" in text_of(opened.text)
        missing = c.get("/", params={"id": "nope"})
        assert missing.status_code == 404 and "No session with id 'nope'" in text_of(missing.text)


def test_session_page_escapes_content_and_pairs_tool_calls_with_results(store: PraisonDB) -> None:
    seed_tool_session(store)
    with client(store) as c:
        page = c.get("/session", params={"id": "chat-1"})
    assert page.status_code == 200
    html = page.text
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.replace('<script src="/static/ui.js" defer></script>', "")
    call = re.search(r'<li class="call" id="call-call_1">(.*?)</li>\s*</ul>', html, re.S)
    assert call is not None, "the tool call is rendered with its id"
    assert "get_weather" in call.group(1) and '"city": "Paris"' in unescape(call.group(1))
    assert 'href="#msg-3"' in call.group(1) and "sunny, 21 C" in call.group(1)  # its result, paired by tool_call_id
    result = re.search(r'<li class="msg role-tool" id="msg-3".*?</li>', html, re.S)
    assert result is not None and 'href="#call-call_1"' in result.group(0)
    assert re.search(r'<li class="msg role-user" id="msg-1"', html) and re.search(r'<li class="msg role-assistant" id="msg-2"', html)
    assert "<details class=\"long\">" in html  # the 2,000-character reply starts folded
    assert "Raw JSON" in html and "&#34;model&#34;: &#34;demo&#34;" in html  # metadata on demand
    assert [int(s) for s in re.findall(r'id="msg-(\d+)"', html)] == [1, 2, 3, 4]


def test_session_pages_through_older_messages(store: PraisonDB) -> None:
    conv = store.conversations
    conv.create_session("long")
    conv.add_messages("long", [{"role": "user" if i % 2 else "assistant", "content": f"turn {i}"} for i in range(1, 121)])
    seen: list[int] = []
    with client(store) as c:
        url = "/session?id=long"
        for _ in range(5):  # 120 messages, 50 a page: three pages
            html = c.get(url).text
            seqs = [int(s) for s in re.findall(r'id="msg-(\d+)"', html)]
            assert seqs == sorted(seqs)
            seen = seqs + seen
            older = re.search(r'<a href="([^"]+)" id="load-older"', html)
            if older is None:
                break
            url = unescape(older.group(1))
    assert seen == list(range(1, 121))


def test_export_is_json_lines_of_the_session_then_every_message_in_seq_order(store: PraisonDB) -> None:
    seed_tool_session(store)
    with client(store) as c:
        answer = c.get("/session/export", params={"id": "chat-1"})
        assert c.get("/session/export", params={"id": "nope"}).status_code == 404
    assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
    lines = [json.loads(line) for line in answer.text.splitlines()]
    assert lines[0]["session"]["session_id"] == "chat-1" and lines[0]["session"]["message_count"] == 4
    stored = store.conversations.get_messages("chat-1")
    assert [line["message"] for line in lines[1:]] == [m.model_dump(mode="json") for m in stored]


def test_delete_needs_the_confirmation_form_from_this_origin(store: PraisonDB) -> None:
    seed_tool_session(store)
    conv = store.conversations
    with client(store) as c:
        confirm = c.get("/session/delete", params={"id": "chat-1"})
        assert confirm.status_code == 200 and "4 messages" in text_of(confirm.text)
        token = re.search(r'name="token" value="([0-9a-f]+)"', confirm.text).group(1)
        assert c.post("/session/delete", data={"id": "chat-1"}).status_code == 403
        assert c.post("/session/delete", data={"id": "chat-1", "token": "0" * 64}).status_code == 403
        foreign = c.post("/session/delete", data={"id": "chat-1", "token": token}, headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403 and conv.get_session("chat-1") is not None
        done = c.post("/session/delete", data={"id": "chat-1", "token": token}, headers={"origin": BASE})
        assert done.status_code == 303 and conv.get_session("chat-1") is None and conv.count_messages("chat-1") == 0
        assert "Deleted session" in text_of(c.get(done.headers["location"]).text)


def test_read_only_hides_and_refuses_delete(store: PraisonDB) -> None:
    seed_tool_session(store)
    with client(store, read_only=True) as c:
        page = c.get("/session", params={"id": "chat-1"})
        assert page.status_code == 200 and "/session/delete" not in page.text
        assert c.get("/session/delete", params={"id": "chat-1"}).status_code == 403
        assert c.post("/session/delete", data={"id": "chat-1", "token": "x"}).status_code == 403
        assert c.get("/overview").status_code == 200
    assert store.conversations.get_session("chat-1") is not None


def test_state_tab_lists_keys_by_scope_with_values_and_ttl(store: PraisonDB) -> None:
    state = store.state
    scoped = state.scope("session", "chat-1")
    scoped.set("plan", {"steps": [XSS]}, ttl=3600)
    scoped.set("mood", "calm")
    for i in range(55):
        state.set(f"bulk:{i:03d}", i)
    with client(store) as c:
        page = c.get("/state", params={"scope": "session:chat-1"})
        assert page.status_code == 200 and XSS not in page.text
        body = text_of(page.text)
        assert "session:chat-1:plan" in body and "session:chat-1:mood" in body and "bulk:" not in body
        assert re.search(r"(59\.\d|60\.0) min", body) and "no expiry" in body
        assert "&lt;script&gt;" in page.text
        first = c.get("/state", params={"prefix": "bulk:"})
        keys = re.findall(r'<code class="key">([^<]+)</code>', first.text)
        nxt = re.search(r'<a href="([^"]+)" rel="next" id="next-keys">', first.text)
        assert len(keys) == 50 and nxt is not None
        rest = re.findall(r'<code class="key">([^<]+)</code>', c.get(unescape(nxt.group(1))).text)
    assert sorted(keys + rest) == [f"bulk:{i:03d}" for i in range(55)]


def test_overview_reports_what_doctor_knows(store: PraisonDB) -> None:
    store.conversations.create_session("one")
    with client(store) as c:
        page = c.get("/overview")
    assert page.status_code == 200
    body = text_of(page.text)
    assert type(store.conversations).__name__ in body and "ok" in body
    assert re.search(r'id="count-sessions">1<', page.text)
    assert "Round trip" in body and "FAILED" not in body


def test_live_refresh_versions_change_when_an_agent_writes(store: PraisonDB) -> None:
    conv = store.conversations
    conv.create_session("live")
    with client(store) as c:
        listing, one = c.get("/api/sessions").json()["version"], c.get("/api/session", params={"id": "live"}).json()["version"]
        page = c.get("/session", params={"id": "live"}).text
        assert f'data-version="{one}"' in page
        conv.add_message("live", "user", "new turn")
        assert c.get("/api/session", params={"id": "live"}).json()["version"] != one
        assert c.get("/api/sessions").json()["version"] != listing
        assert "new turn" in c.get("/session", params={"id": "live"}).text


def test_errors_are_one_line_pages_with_the_right_status(store: PraisonDB) -> None:
    with client(store) as c:
        missing = c.get("/session", params={"id": "nope"})
        assert missing.status_code == 404 and "no session 'nope'" in text_of(missing.text)
        assert c.get("/session").status_code == 400
        bad = c.get("/session", params={"id": "x", "before_seq": "abc"})
        assert bad.status_code == 400 and "before_seq must be a whole number" in text_of(bad.text)
        assert c.get("/", params={"cursor": "garbage"}).status_code == 400
        assert c.get("/api/session", params={"id": ""}).status_code == 400
        assert c.get("/no/such/page").status_code == 404
        for answer in (missing, bad):
            message = re.search(r'<p class="error" role="alert" id="error-message">(.*?)</p>', answer.text, re.S).group(1)
            assert "\n" not in message.strip() and "Traceback" not in answer.text


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[PraisonDB]:
    with db(f"sqlite:///{tmp_path}/ui.db") as opened:
        yield opened


def test_pages_are_self_contained_and_refuse_foreign_hosts(sqlite_store: PraisonDB) -> None:
    with client(sqlite_store) as c:
        page = c.get("/")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert not re.search(r'(src|href)="(https?:)?//', page.text)  # no CDN
        assert c.get("/static/ui.css").status_code == 200 and c.get("/static/ui.js").status_code == 200
        assert c.get("/", headers={"host": "rebound.example"}).status_code == 400
        # Accessible markup: landmarks, labelled inputs.
        assert "<main" in page.text and 'aria-label="Main"' in page.text
        for input_id in re.findall(r'<(?:input|select) id="([^"]+)"', page.text):
            assert f'for="{input_id}"' in page.text


def test_a_huge_message_is_shown_in_part_and_exported_whole(sqlite_store: PraisonDB) -> None:
    conv = sqlite_store.conversations
    conv.create_session("big")
    conv.add_message("big", "tool", "y" * 2_000_000, tool_call_id="call_big")
    with client(sqlite_store) as c:
        page = c.get("/session", params={"id": "big"})
        export = c.get("/session/export", params={"id": "big"})
    assert page.status_code == 200 and len(page.text) < 400_000
    assert "1,900,000 more characters not shown" in page.text
    assert json.loads(export.text.splitlines()[1])["message"]["content"] == "y" * 2_000_000


def test_sessions_page_follows_the_cursor(sqlite_store: PraisonDB) -> None:
    conv = sqlite_store.conversations
    for i in range(75):
        conv.create_session(f"s{i:03d}")
    with client(sqlite_store) as c:
        first = c.get("/").text
        nxt = re.search(r'<a href="([^"]+)" id="next-page"', first)
        assert nxt is not None
        second = c.get(unescape(nxt.group(1))).text
        assert 'id="next-page"' not in second
    ids = session_ids(first) + session_ids(second)
    assert len(ids) == 75 and set(ids) == {f"s{i:03d}" for i in range(75)}


def test_no_password_on_any_page(tmp_path: Path) -> None:
    from tests.backends import BACKENDS

    backend = next(b for b in BACKENDS if b.name == "postgresql")
    base = server_url(backend)
    secret = "s3cr%40t-pw"
    url = base.replace("postgresql://postgres@", f"postgresql://postgres:{secret}@") + "?table_prefix=tpw_"
    assert secret in url, "the test server URL has the expected form"
    # The local PostgreSQL trusts loopback connections, so a password in the URL still connects.
    with db(url, session_dir=tmp_path) as opened:
        opened.conversations.create_session("p")
        with client(opened) as c:
            for path in ("/", "/overview", "/state", "/session?id=p", "/session?id=missing"):
                assert "s3cr" not in c.get(path).text, path
            assert "postgres:***@" in c.get("/overview").text


ROOT = Path(__file__).resolve().parent.parent


def _cli_env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PRAISON_HOME": str(home)}


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "praison_db.cli", *args], env=_cli_env(home), capture_output=True, text=True, timeout=60)


def test_cli_serves_the_store_read_only_on_loopback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"
    with db(url) as opened:
        opened.conversations.create_session("from-cli", user_id="erin")
    proc = subprocess.Popen(
        [sys.executable, "-m", "praison_db.cli", "ui", "-d", url, "--port", "0", "--read-only"],
        env=_cli_env(tmp_path), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        first = proc.stderr.readline()  # printed once the socket listens
        found = re.search(r"at (http://127\.0\.0\.1:\d+/) \(read-only\)", first)
        assert found, first
        with urllib.request.urlopen(found.group(1) + "session?id=from-cli", timeout=10) as answer:
            html = answer.read().decode()
        assert "erin" in html and "/session/delete" not in html
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.read()


def test_cli_refuses_a_remote_host_without_the_flag_and_a_busy_port(tmp_path: Path) -> None:
    remote = _cli("ui", "--host", "0.0.0.0", home=tmp_path)
    assert remote.returncode == 2 and "--allow-remote" in remote.stderr and "Traceback" not in remote.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _cli("ui", "--port", str(port), home=tmp_path)
    assert taken.returncode == 2 and "--port" in taken.stderr and len(taken.stderr.strip().splitlines()) == 1



def test_a_store_that_goes_away_shows_a_one_line_503_without_the_password(tmp_path: Path) -> None:
    """A private Redis (with a password) on a free port, stopped by its pid while the viewer is open."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        servers.unavailable("redis-server (for a private Redis)", "not installed; run scripts/services as root")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", "hunter2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        for _ in range(200):  # bounded: redis-server logs a few dozen lines before it is ready
            line = proc.stdout.readline()
            if not line or "Ready to accept connections" in line:
                break
        with db(f"redis://:hunter2@127.0.0.1:{port}/0", session_dir=tmp_path / "home") as opened:
            opened.conversations.create_session("doomed")
            with client(opened) as c:
                assert c.get("/").status_code == 200
                proc.terminate()
                proc.wait(timeout=15)
                for path in ("/", "/session?id=doomed", "/state", "/api/sessions"):
                    answer = c.get(path)
                    assert answer.status_code == 503, (path, answer.status_code)
                    assert "hunter2" not in answer.text and "Traceback" not in answer.text
                page = c.get("/").text
                message = re.search(r'id="error-message">(.*?)</p>', page, re.S).group(1)
                assert "\n" not in message.strip() and "unavailable" in message.lower()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=15)


def test_cli_without_the_ui_extra_says_what_to_install(tmp_path: Path) -> None:
    # Make the web stack unimportable in a child process, as on an install without the [ui] extra.
    code = "import sys; sys.modules.update(uvicorn=None, starlette=None); from praison_db.cli import main; main(['ui'])"
    proc = subprocess.run([sys.executable, "-c", code], env=_cli_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: praison-db ui needs Starlette, uvicorn and Jinja2: pip install 'praison-db[ui]'"
