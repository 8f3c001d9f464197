"""URLs under attack: every malformed URL is a quick one-line ConfigError, and no password ever shows.

"Shows" means anywhere a user or a log collector can see it: repr() and str() of the stores, the message of an
error, the whole exception chain as a traceback prints it (``__cause__``/``__context__``), log lines at DEBUG (with
SQL ``echo``), and the CLI's output. Connection attempts go to loopback only: a closed port, a silent listener, or
the machine's servers.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import praison_db
from praison_db import ConfigError, Error, StoreUnavailable, db
from praison_db.facade import open_store
from praison_db.registry import register
from praison_db.url import mask_url, parse_url, scrub_chain
from tests.backends import BACKENDS

ROOT = Path(praison_db.__file__).resolve().parent.parent
URL_VARS = ("PRAISON_DATABASE_URL", "DATABASE_URL", "PRAISON_STATE_URL", "PRAISON_DEBUG")

# Passwords a user pastes without percent-encoding them, and two that are encoded.
PASSWORDS = ["S3cr3tPW", "S3c/r3tPW", "S3c?r3tPW", "S3c#r3tPW", "S3c@r3tPW", "S3c:r3tPW", "päss wörd€", "S3c@r/3t?P#w:x"]
SCHEMES = [
    "sqlite", "postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "mysql+pymysql", "mariadb",
    "mariadb+pymysql", "clickhouse", "clickhouses", "chdb", "redis", "rediss", "unix", "mongodb", "mongodb+srv", "json",
    "file", "memory",
]  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in URL_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PRAISON_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # json://host/... URLs name folders relative to the working directory


def closed_port() -> int:
    """A loopback port nothing listens on (bound then released: connections to it are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word (a frozen or wrong server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def credential_url(scheme: str, user: str, password: str, port: int, tmp: Path) -> str:
    """A URL of ``scheme`` carrying ``user:password`` (as typed, unencoded) that cannot reach anything but loopback."""
    cred = f"{user}:{password}@"
    if scheme in ("sqlite",):
        return f"sqlite://{cred}/{tmp}/x.db"
    if scheme in ("json", "file"):
        return f"{scheme}://{cred}{tmp}/{scheme}"
    if scheme == "memory":
        return f"memory://{cred}shared"
    if scheme == "unix":
        return f"unix://{cred}{tmp}/missing.sock"
    if scheme == "mongodb+srv":
        return f"mongodb+srv://{cred}127.0.0.1/db"  # an IP is refused before any DNS lookup
    if scheme == "mongodb":
        return f"mongodb://{cred}127.0.0.1:{port},127.0.0.1:{port}/db?serverSelectionTimeoutMS=300"
    if scheme == "chdb":
        return f"chdb://{cred}127.0.0.1/db"  # refused before the engine starts (one chDB folder per process)
    return f"{scheme}://{cred}127.0.0.1:{port}/db"


def shows(secret: str, text: str) -> bool:
    return secret in text or quote(secret, safe="") in text


def exposure(outcome: Any) -> str:
    """Every text a user could see from an opened store or a raised error."""
    if isinstance(outcome, BaseException):
        return str(outcome) + "\n" + repr(outcome) + "\n" + "".join(traceback.format_exception(outcome))
    texts = [repr(outcome), str(outcome), str(outcome.conversations.url), str(outcome.state.url)]
    texts += [str(outcome.database_url), str(outcome.state_url)]
    return "\n".join(texts)


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record of every logger, at DEBUG, formatted with its arguments."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def attempt(url: Any, **kwargs: Any) -> tuple[Any, float]:
    """db(url) -> (the store, closed, or the praison_db error, seconds taken). Anything else fails the test."""
    started = time.monotonic()
    try:
        store = db(url, **kwargs)
    except Error as e:
        return e, time.monotonic() - started
    store.close()
    return store, time.monotonic() - started


# ---- 1. secrets ----


@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_password_shows_for_any_scheme(scheme: str, tmp_path: Path) -> None:
    port = closed_port()
    for password in PASSWORDS:
        url = credential_url(scheme, "agent", password, port, tmp_path)
        with captured_logs() as logs:
            outcome, seconds = attempt(url, session_dir=tmp_path / "sessions")
        assert seconds < 10, f"{mask_url(url)} took {seconds:.1f} s"
        if isinstance(outcome, Error):
            assert "\n" not in str(outcome), str(outcome)
        for text in (exposure(outcome), logs.getvalue()):
            assert not shows(password, text), f"{scheme}: password {password!r} shown in {text[:500]!r}"


@pytest.mark.parametrize(
    "url, password",
    [
        ("redis://:1/S3cr3tPW@localhost:1", "1/S3cr3tPW"),  # parses as a password holding '/'
        ("postgresql://u:S3cr3tPW@bücher.de/db", "S3cr3tPW"),
        ("redis://:S3cr3tPW@localhost:99999/0", "S3cr3tPW"),
        ("mysql://u:S3cr3tPW@localhost:abc/db", "S3cr3tPW"),
        ("mongodb://u:S3cr3tPW@h1:1,,h2:2/db", "S3cr3tPW"),
        ("redis://:S3cr3tPW@[::1/0", "S3cr3tPW"),
        ("postgresql://u:S3cr3tPW@localhost/db#part", "S3cr3tPW"),
        ("postgresql://u:S3cr3tPW@localhost/db?x=%zz", "S3cr3tPW"),
        ("clickhouse://u:S3cr3tPW@" + "a" * 300 + "/db", "S3cr3tPW"),
        ("rediss://u:S3c r3t\nPW@localhost:1/0", "S3c r3t"),
    ],
)
def test_urls_that_do_not_parse_show_no_credential(url: str, password: str) -> None:
    outcome, seconds = attempt(url)
    assert seconds < 10
    text = exposure(outcome)
    assert not shows(password, text) and not shows("S3cr3tPW", text), text
    if isinstance(outcome, ConfigError) and "could not parse" in str(outcome):
        assert f"'{url.split('://')[0]}://***'" in str(outcome)  # only the scheme is shown


@pytest.mark.parametrize(
    "url, masked",
    [
        ("redis://:1/S3cr3t@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://admin:ab12/Cd+ef@db.example.com:5432/app", "postgresql://admin:***@db.example.com:5432/app"),
        ("postgresql://u:p?ss@host/db?application_name=me@work", "postgresql://u:***@host/db?application_name=me@work"),
        ("postgresql://u:123#ss@host/db", "postgresql://u:***@host/db"),
        ("mysql://u:a@b/c?d#e@host:3306/db", "mysql://u:***@host:3306/db"),
        ("mongodb://u:x@y:z@a:1,b:2/db?authSource=admin", "mongodb://u:***@a:1,b:2/db?authSource=admin"),
        ("memory://:1/S3cr3t@name", "memory://:***@name"),
        ("postgresql://u@h/db?password=S3cr3t&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
        ("redis://host:6379/0?client_name=me@work", "redis://host:6379/0?client_name=me@work"),
        ("sqlite:////tmp/a@b:c.db", "sqlite:////tmp/a@b:c.db"),
    ],
)
def test_unencoded_passwords_are_read_and_masked(url: str, masked: str) -> None:
    parsed = parse_url(url)
    assert str(parsed) == masked and repr(parsed) == f"StoreURL({masked!r})" and mask_url(url) == masked
    again = parse_url(parsed.render(hide_password=False))  # what the driver gets: the same URL, encoded
    assert again == parsed and again.password == parsed.password and again.secrets == parsed.secrets


def test_passwords_are_masked_inside_free_text() -> None:
    text = "failed: redis://:pw1@h:1/0, then postgresql://u:pw/2@h/db. and mongodb://u:pw3@a:1,b:2/x (retrying)"
    assert mask_url(text) == (
        "failed: redis://:***@h:1/0, then postgresql://u:***@h/db. and mongodb://u:***@a:1,b:2/x (retrying)"
    )
    assert mask_url("at redis://:pw@h/0#x and more") == "at redis://*** and more"  # unreadable: only the scheme


def test_a_backend_that_leaks_the_url_is_contained(tmp_path: Path) -> None:
    """A third-party backend (or a driver) that puts the raw URL in its exceptions still shows no password."""
    module = tmp_path / "leaky_backend.py"
    module.write_text(
        textwrap.dedent(
            """
            from praison_db.errors import StoreUnavailable

            class DriverError(Exception):
                pass

            class Opaque(Exception):
                def __init__(self, url):
                    self.url = url
                def __str__(self):
                    return f"opaque failure at {self.url}"

            class ValueStore:
                @classmethod
                def from_url(cls, url, **options):
                    raise ValueError(f"cannot use {url.render(hide_password=False)}")

            class ChainedStore:
                @classmethod
                def from_url(cls, url, **options):
                    raw = url.render(hide_password=False)
                    try:
                        try:
                            raise Opaque(raw)
                        except Opaque:
                            raise DriverError(f"connect {raw} failed; password {url.password}")
                    except DriverError as e:
                        raise StoreUnavailable("the server is down") from e
            """
        )
    )
    sys.path.insert(0, str(tmp_path))
    try:
        register("leakyvalue", conversations="leaky_backend:ValueStore", clobber=True)
        register("leakychain", conversations="leaky_backend:ChainedStore", clobber=True)
        password = "-".join(["S3c/r3t", "PW"])  # not a literal: a traceback prints this file's source lines
        for scheme, kind in (("leakyvalue", ConfigError), ("leakychain", StoreUnavailable)):
            with pytest.raises(kind) as info:
                db(f"{scheme}://agent:{password}@127.0.0.1:1/x", state_url="memory://")
            text = "".join(traceback.format_exception(info.value))
            assert not shows(password, text), text
            assert "\n" not in str(info.value)
        assert "connect leakychain://agent:***@127.0.0.1:1/x failed" in text  # redacted, not lost
    finally:
        sys.path.remove(str(tmp_path))


def test_scrub_chain_redacts_args_and_cuts_what_it_cannot_redact() -> None:
    secret = "".join(["hun", "ter2"])  # not a literal: a traceback prints this file's source lines

    class Opaque(Exception):
        def __str__(self) -> str:
            return f"token {secret}"

    try:
        try:
            try:
                raise Opaque()
            except Opaque:
                raise OSError(f"dial redis://:{secret}@h:1 failed")  # noqa: B904 - the implicit context is the point
        except OSError as e:
            raise StoreUnavailable("down") from e
    except StoreUnavailable as e:
        error = e
    scrub_chain(error, [secret])
    text = "".join(traceback.format_exception(error))
    assert secret not in text and "dial redis://:***@h:1 failed" in text and "Opaque" not in text


def test_debug_logs_and_sql_echo_show_no_password(make_url: Any, tmp_path: Path) -> None:
    """PostgreSQL (trust authentication ignores the password) opens with a password; every log line is clean."""
    base = make_url(next(b for b in BACKENDS if b.name == "postgresql"))
    password = "S3c/r3t?PW"
    url = base.replace("://postgres@", f"://postgres:{password}@", 1)
    assert password in url
    with captured_logs() as logs:
        with db(url, echo=True) as store:
            store.conversations.create_session("s1", user_id="u")
            store.conversations.add_message("s1", "user", "hello")
            store.state.set("k", 1)
            assert store.state.get("k") == 1
            text = exposure(store)
    assert "SELECT" in logs.getvalue()  # echo really logged the statements
    assert not shows(password, logs.getvalue()) and not shows(password, text)
    assert "postgres:***@127.0.0.1:5432" in text


def test_servers_that_refuse_the_password_show_none_of_it(make_url: Any) -> None:
    """Redis, MariaDB and MongoDB turn the credentials down: the errors and their chains stay clean."""
    password = "S3c@r3t/PW"
    for name, swap in (("redis", ("redis://", f"redis://agent:{password}@")), ("mysql", ("://root@", f"://root:{password}@"))):
        url = make_url(next(b for b in BACKENDS if b.name == name)).replace(*swap, 1)
        with captured_logs() as logs:
            outcome, _ = attempt(url)
        assert isinstance(outcome, ConfigError) and "credentials" in str(outcome), outcome
        assert not shows(password, exposure(outcome)) and not shows(password, logs.getvalue())
    mongo = make_url(next(b for b in BACKENDS if b.name == "mongodb"))
    url = mongo.replace("mongodb://", f"mongodb://agent:{password}@", 1)
    with captured_logs() as logs:
        outcome, _ = attempt(url)
    assert not shows(password, exposure(outcome)) and not shows(password, logs.getvalue())


# ---- 2. typed, bounded URL handling ----


@pytest.mark.parametrize(
    "url, says",
    [
        ("postgresql://u:pw@bücher.de/db", r"not ASCII; write it in its IDNA form \(xn--bcher-kva\.de\)"),
        ("redis://" + "h" * 300 + ":6379/0", "longer than 253"),
        ("mysql://u:pw@" + "a" * 64 + ".example/db", "labels of at most 63"),
        ("sqlite:///tmp/a\x00b.db", "control character"),
        ("sqlite:///a%00b.db", "NUL"),
        ("a\x00b.db", "control character"),
        ("postgresql://u:pw@localhost:0/db", "port must be a number from 1 to 65535"),
        ("redis://localhost:65536/0", "port must be a number"),
        ("redis://localhost:99999/0", "port must be a number"),
        ("mysql://u@localhost:abc/db", "port must be a number"),
        ("mysql://u@localhost:-1/db", "port must be a number"),
        ("mongodb://localhost:/db", "port must be a number"),
        ("postgresql://u:pw@:5432/db", "host is empty"),
        ("mongodb://a:1,,b:2/db", "host in the comma-separated list is empty"),
        ("redis://local host:6379/0", "host must be a name"),
        ("redis://[::1/0", "IPv6"),
        ("redis://[zz::1]:6379/0", "not a valid address"),
        ("postgresql://u:S3cret%zz@h/db", "'%' in the password is not followed by two hex digits"),
        ("postgresql://u:S3cret%ff@h/db", "not UTF-8"),
        ("sqlite:///x%zz.db", "'%' in the path"),
        ("redis://h/0?prefix=%zz", "'%' in the query string"),
        ("redis://h/0?prefix=%ff", "not UTF-8"),
        ("redis://h/0?=1", "value without a name"),
        ("postgresql://h/db#fragment", "percent-encode it as %23"),
        ("postgresql://h/db?table_prefix=a_&table_prefix=b_", "'table_prefix' is given twice"),
        ("redis://h:6379/0?prefix=a&prefix=b", "'prefix' is given twice"),
        ("mongodb://h:1/db?collection_prefix=a_&collection_prefix=b_", "'collection_prefix' is given twice"),
        ("mysql://u@127.0.0.1:1/db?host=a&host=b", "'host' is given twice"),
        ("postgresql://127.0.0.1:1/db?ttl=5", r"'ttl' for postgresql:// \(ttl is an option of redis:// URLs\); valid options: .*table_prefix"),
        ("mysql://127.0.0.1:1/db?prefix=x", r"'prefix' for mysql:// \(prefix is an option of redis:// URLs\); valid options:"),
        ("mariadb://127.0.0.1:1/db?collection_prefix=x", "collection_prefix is an option of mongodb://"),
        ("postgres://127.0.0.1:1/db?lock_timeout=1", "lock_timeout is an option of json://"),
        ("postgresql://127.0.0.1:1/db?sslmod=require", r"unknown option 'sslmod'.*libpq connection parameter"),
        ("mysql://127.0.0.1:1/db?sslmode=disable", r"unknown option 'sslmode'.*PyMySQL connection argument"),
        ("sqlite://host/x.db", "SQLite URLs name a file, not a host"),
        ("sqlite://u:pw@/x.db", "SQLite URLs name a file"),
        ("redis://a:1,b:2/0", "names one server"),
        ("postgresql://u@a:1,b:2/db", r"names one host \(for several PostgreSQL hosts write \?host="),
        ("clickhouse://a:1,b:2/db", "names one server"),
        ("redis://h:1/0?socket_timeout=abc", "invalid Redis URL or option"),
        ("", "the database URL is empty"),
        ("   \t ", "the database URL is empty"),
        ("not a url", "expected 'scheme://"),
        ("://x", "expected 'scheme://"),
    ],
)
def test_malformed_urls_are_quick_one_line_config_errors(url: str, says: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=says) as info:
        db(url)
    assert time.monotonic() - started < 5
    assert "\n" not in str(info.value)
    assert type(info.value) is ConfigError


@pytest.mark.parametrize("value", [123, 1.5, b"sqlite:///x.db", bytearray(b"memory://"), ["memory://"], object()])
def test_urls_that_are_not_strings(value: Any) -> None:
    with pytest.raises(ConfigError, match="must be a (str|string)"):
        db(value)
    with pytest.raises(ConfigError, match="must be a (str|string)"):
        db("memory://", state_url=value)


def test_whitespace_around_a_url_is_ignored_inside_it_is_not(tmp_path: Path) -> None:
    with db(f"  sqlite:///{tmp_path}/w.db \n") as store:
        assert store.database_url == f"sqlite:///{tmp_path}/w.db"
    with pytest.raises(ConfigError, match="control character"):
        db(f"sqlite:///{tmp_path}/w\n.db")


def test_driver_parameters_still_reach_postgresql(make_url: Any) -> None:
    """libpq parameters in the query string work as with SQLAlchemy (application_name, sslmode, multi-host)."""
    base = make_url(next(b for b in BACKENDS if b.name == "postgresql"))
    head, _, query = base.partition("?")
    with db(f"{head}?{query}&application_name=praison-url-test&sslmode=disable&keepalives=1") as store:
        with store.conversations.db.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW application_name").scalar() == "praison-url-test"
    database = head.rsplit("/", 1)[1]
    # Several hosts, SQLAlchemy's way: repeated ?host= (both the same server here).
    with db(f"postgresql://postgres@/{database}?host=127.0.0.1:5432&host=127.0.0.1:5432&{query}") as store:
        store.conversations.get_or_create_session("multi")
        assert store.conversations.get_session("multi") is not None


def test_driver_parameters_still_reach_mysql(make_url: Any) -> None:
    base = make_url(next(b for b in BACKENDS if b.name == "mysql"))
    with db(f"{base}&init_command=SET%20%40praison_probe%3D42&charset=utf8mb4") as store:
        with store.conversations.db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT @praison_probe").scalar() == 42


def test_connects_that_cannot_succeed_fail_within_seconds(tmp_path: Path) -> None:
    """A silent port (frozen server, or TLS spoken to a plain server), a missing socket, a refused port."""
    with silent_listener() as port:
        for url in (f"redis://127.0.0.1:{port}/0", f"rediss://127.0.0.1:{port}/0"):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                db(url)
            assert time.monotonic() - started < 8, url
    port = closed_port()
    for url in (
        f"unix://{tmp_path}/missing.sock",
        f"redis://127.0.0.1:{port}/0",
        f"rediss://127.0.0.1:{port}/0",
        f"postgresql://127.0.0.1:{port}/db",
        f"mysql://127.0.0.1:{port}/db",
        f"clickhouse://127.0.0.1:{port}/db",
        f"mongodb://127.0.0.1:{port}/db?serverSelectionTimeoutMS=500",
    ):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            db(url)
        assert time.monotonic() - started < 5, url


def test_rediss_to_a_plain_redis_fails_within_seconds(make_url: Any) -> None:
    plain = make_url(next(b for b in BACKENDS if b.name == "redis"))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        db(plain.replace("redis://", "rediss://", 1))  # the TLS handshake meets a server that waits for a command
    assert time.monotonic() - started < 8


def test_a_host_that_resolves_slowly_is_given_up_on(tmp_path: Path) -> None:
    """The system resolver stuck on a name (an unreachable DNS server): db() gives up within seconds.

    There is no DNS server to be slow on this machine, so a child process makes getaddrinfo wait on the one name.
    """
    code = textwrap.dedent(
        """
        import socket, time, json
        real = socket.getaddrinfo
        def slow(host, *args, **kwargs):
            if host == "slow.example":
                time.sleep(120)
            return real(host, *args, **kwargs)
        socket.getaddrinfo = slow
        import praison_db
        out = {}
        for url in ("postgresql://u:S3cr3tPW@slow.example:5432/db", "mysql://slow.example/db",
                    "redis://slow.example:6379/0", "mongodb://127.0.0.1:1,slow.example:2/db"):
            started = time.monotonic()
            try:
                praison_db.db(url)
                out[url] = ["opened", 0]
            except praison_db.Error as e:
                out[url] = [type(e).__name__ + ": " + str(e), time.monotonic() - started]
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for url, (message, seconds) in json.loads(proc.stdout).items():
        assert message.startswith("StoreUnavailable") and "did not resolve within" in message, (url, message)
        assert seconds < 8 and "S3cr3tPW" not in message


# ---- the CLI ----


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    environ.update(PRAISON_HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "praison_db.cli", *args], env=environ, cwd=home.parent, input="", capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_cli_never_prints_a_password(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = closed_port()
    secret = "S3c/r3t@PW"
    cases = [
        (["-d", f"postgresql://u:{secret}@bücher.de/db", "sessions", "list"], {}, 2),
        (["sessions", "list"], {"PRAISON_DATABASE_URL": f"redis://:{secret}@localhost:99999/0"}, 2),
        (["-d", f"redis://:{secret}@127.0.0.1:{port}/0", "sessions", "list"], {}, 2),
        (["--database-url", f"mysql://u:{secret}@127.0.0.1:{port}/db?ttl=1", "sessions", "list"], {}, 2),
        (["sessions", "list", f"postgresql://u:{secret}@127.0.0.1:{port}/db"], {}, 2),  # a misplaced argument
        (["-d", f"postgresql://u:{secret}@127.0.0.1:{port}/db", "sessions", "lst"], {}, 2),
        (["-s", f"redis://:{secret}@127.0.0.1:{port}/0", "doctor"], {}, 1),
        (["-d", f"postgresql://u:{secret}@127.0.0.1:{port}/db", "doctor"], {}, 1),
        (["-d", f"postgresql://u:{secret}@:5432/db", "migrate"], {}, 2),
    ]
    for args, env, code in cases:
        proc = cli(home, *args, **env)
        line = one_error_line(proc, code) if code == 2 else proc.stderr
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        for text in (proc.stdout, proc.stderr):
            assert not shows(secret, text) and "S3c" not in text, (args, text)
        assert line.strip()
    proc = cli(home, "-d", f"postgresql://u:{secret}@127.0.0.1:{port}/db", "doctor", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and not report["ok"] and "S3c" not in proc.stdout + proc.stderr
    assert report["error"] and "postgresql://u:***@127.0.0.1" in report["error"]


def test_cli_with_a_working_password_url_shows_it_masked(make_url: Any, tmp_path: Path) -> None:
    base = make_url(next(b for b in BACKENDS if b.name == "postgresql"))
    secret = "S3c/r3t?PW"
    url = base.replace("://postgres@", f"://postgres:{secret}@", 1)
    with db(url) as store:
        store.conversations.create_session("cli-s", user_id="alice")
    home = tmp_path / "home"
    for args in (["sessions", "list"], ["sessions", "list", "--json"], ["doctor"], ["doctor", "--json"]):
        proc = cli(home, "-d", url, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not shows(secret, proc.stdout + proc.stderr) and "S3c" not in proc.stdout + proc.stderr
    assert "cli-s" in cli(home, "-d", url, "sessions", "list").stdout
    report = json.loads(cli(home, "sessions", "list", "--json", PRAISON_DATABASE_URL=url).stdout)
    assert [s["session_id"] for s in report["sessions"]] == ["cli-s"]
    doctor = json.loads(cli(home, "doctor", "--json", PRAISON_DATABASE_URL=url).stdout)
    assert doctor["ok"] and all("postgres:***@" in s["url"] for s in doctor["stores"])


def test_open_store_is_the_same_gate(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not parse"):
        open_store("redis://:S3cr3t@h:0/0", "state")
    with pytest.raises(ConfigError, match="ttl is an option of redis://"):
        open_store(f"sqlite:///{tmp_path}/o.db?ttl=3", "conversations")


# ---- 3. property: any URL is opened or refused with a typed error, quickly, without showing its password ----

# 200 examples in CI; PRAISON_FUZZ_EXAMPLES=5000 for a longer hunt. A profile of its own, so loading it changes no
# other Hypothesis test.
settings.register_profile(
    "praison-url-fuzz",
    max_examples=int(os.environ.get("PRAISON_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PATH_SCHEMES = {"sqlite", "json", "file", "chdb", "unix", "memory"}
# Loopback hosts, and hosts refused before any lookup: nothing here needs a DNS server.
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]", ""]
BAD_HOSTS = ["bücher.de", "a" * 300, "bad host", "[zz]", "h%zz", "127.0.0.1,", "-h", "a..b"]
BAD_PORTS: list[str | None] = [None, "0", "65536", "99999", "abc", "", "-1", "٣"]
FUZZ_QUERY = [
    ("ttl", "5"), ("prefix", "p"), ("table_prefix", "t_"), ("collection_prefix", "c_"), ("lock_timeout", "1"),
    ("sslmode", "disable"), ("application_name", "me@work"), ("%zz", "1"), ("x", "%ff"), ("echo", "true"),
    ("socket_timeout", "abc"), ("database", "d"), ("fsync", "maybe"),
]  # fmt: skip
PASSWORD_CHARS = st.sampled_from(list("abcXYZ019/?#@:%&=+ ;.~-_") + ["é", "€", "漢", "\u200b", "🔑"])


@st.composite
def fuzz_urls(draw: st.DrawFn, closed: int, work: Path) -> tuple[str, str | None]:
    """(URL text, its password as typed): every scheme, awkward credentials, hosts, ports, paths and queries."""
    scheme = draw(st.sampled_from(SCHEMES))
    user = draw(st.one_of(st.none(), st.text(st.sampled_from(list("agent_.-%é")), max_size=6)))
    password = draw(st.one_of(st.none(), st.text(PASSWORD_CHARS, max_size=14))) if user is not None else None
    host = draw(st.one_of(st.sampled_from(LOOPBACK_HOSTS), st.sampled_from(BAD_HOSTS)))  # half of them valid
    if scheme == "mongodb+srv" and host in ("localhost", ""):
        host = "127.0.0.1"  # an SRV lookup of a name would ask a DNS server
    if scheme == "chdb":
        host = "127.0.0.1"  # refused before the engine starts: one chDB folder per process
    port = draw(st.one_of(st.just(str(closed)), st.sampled_from(BAD_PORTS)))
    if scheme in PATH_SCHEMES:
        path = f"/{work}/{draw(st.sampled_from(['d', 'a b', 'x.db', 'a@b', '%zz', 'é/ü']))}"
    else:
        path = draw(st.sampled_from(["", "/", "/db", "/0", "/a@b", "/x%zz", "/d%C3%A9"]))
    pairs = draw(st.one_of(st.just([]), st.lists(st.sampled_from(FUZZ_QUERY), max_size=3)))
    if scheme.startswith("mongodb"):
        pairs = [("serverSelectionTimeoutMS", "300"), ("connectTimeoutMS", "300"), *pairs]
    userinfo = "" if user is None else f"{user}{'' if password is None else ':' + password}@"
    hostport = host + ("" if port is None else f":{port}")
    query = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{scheme}://{userinfo}{hostport}{path}{'?' + query if query else ''}", password


def test_any_url_opens_or_fails_typed_and_quickly_without_its_password(tmp_path: Path) -> None:
    closed, work = closed_port(), tmp_path / "fuzz"
    work.mkdir()
    stats: dict[str, int] = {}
    slowest = [0.0, ""]

    @settings.get_profile("praison-url-fuzz")
    @given(case=fuzz_urls(closed, work))
    def check(case: tuple[str, str | None]) -> None:
        url, password = case
        with captured_logs() as logs:
            outcome, seconds = attempt(url, session_dir=work / "sessions")  # anything but a praison_db.Error fails
        kind = "opened" if not isinstance(outcome, BaseException) else type(outcome).__name__
        stats[kind] = stats.get(kind, 0) + 1
        if seconds > slowest[0]:
            slowest[:] = [seconds, mask_url(url)]
        assert seconds < 15, f"{mask_url(url)} took {seconds:.1f} s"
        if isinstance(outcome, Error):
            assert "\n" not in str(outcome)
        others = url.replace(f":{password}@", ":@", 1) if password else url
        if password and len(password) >= 4 and password not in others:
            for text in (exposure(outcome), logs.getvalue()):
                assert not shows(password, text), f"password {password!r} of a {url.split(':')[0]} URL shown: {text[:300]!r}"

    check()
    print(f"\nURL fuzz: {sum(stats.values())} examples, outcomes {dict(sorted(stats.items()))}, "
          f"slowest {slowest[0]:.2f} s ({slowest[1]})")  # fmt: skip
    assert sum(stats.values()) > 0
