"""db(), the URL registry and URL parsing: what users type and what they get back when it is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import praison_db
from praison_db import ConfigError, InputError, StoreClosed, db
from praison_db.backends.jsonfile import JsonConversationStore, JsonStateStore
from praison_db.backends.memory import MemoryConversationStore, MemoryStateStore
from praison_db.backends.sql import SqlConversationStore, SqlStateStore
from praison_db.registry import register, resolve
from praison_db.url import mask_url, parse_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("PRAISON_DATABASE_URL", "DATABASE_URL", "PRAISON_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PRAISON_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_zero_config_is_json_under_praison_home(tmp_path):
    with db() as store:
        assert isinstance(store.conversations, JsonConversationStore)
        assert isinstance(store.state, JsonStateStore)
        assert store.session_dir == tmp_path / "home" / "sessions"
        assert store.sessions is store.conversations
        store.conversations.create_session("zero")
        store.state.set("k", 1)
    with db() as again:
        assert again.conversations.get_session("zero") is not None and again.state.get("k") == 1


def test_relative_sqlite_url_creates_the_file_in_the_working_directory(tmp_path):
    with db(database_url="sqlite:///conversations.db") as store:
        assert isinstance(store.conversations, SqlConversationStore) and isinstance(store.state, SqlStateStore)
        store.conversations.create_session("rel")
        store.conversations.add_message("rel", "user", "hi")
        store.state.set("shared", True)
    assert (tmp_path / "conversations.db").is_file()
    with db(database_url=str(tmp_path / "conversations.db")) as bare:  # a bare *.db path means SQLite too
        assert bare.conversations.count_messages("rel") == 1 and bare.state.get("shared") is True


def test_sqlite_url_forms(tmp_path):
    absolute = tmp_path / "abs" / "deep" / "x.sqlite"
    for url in (f"sqlite:///{absolute}", f"sqlite+pysqlite:///{absolute}", "sqlite:///:memory:", "data/nested.db"):
        with db(url) as store:
            store.conversations.get_or_create_session("s")
            assert store.conversations.get_session("s") is not None
            store.state.set("k", "v")  # state shares the database (even :memory:)
            assert store.state.get("k") == "v"
    assert absolute.is_file() and (tmp_path / "data" / "nested.db").is_file()


def test_env_vars_are_read_in_order(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "sqlite:///from_database_url.db")
    with db() as store:
        assert store.database_url == "sqlite:///from_database_url.db"
    monkeypatch.setenv("PRAISON_DATABASE_URL", "sqlite:///from_praison.db")
    monkeypatch.setenv("PRAISON_STATE_URL", "memory://")
    with db() as store:
        assert store.database_url == "sqlite:///from_praison.db"
        assert isinstance(store.state, MemoryStateStore)
    with db("memory://explicit") as store:  # an argument beats the environment
        assert isinstance(store.conversations, MemoryConversationStore)


def test_hybrid_and_mixed_backends(tmp_path):
    with db(database_url=f"sqlite:///{tmp_path}/c.db", state_url=f"json://{tmp_path}/state") as store:
        assert isinstance(store.conversations, SqlConversationStore) and isinstance(store.state, JsonStateStore)
        assert store.state_url == f"json://{tmp_path}/state"
    with db(database_url="memory://") as store:
        assert isinstance(store.state, MemoryStateStore)


def test_options_from_query_and_keywords(tmp_path):
    with db(f"sqlite:///{tmp_path}/o.db?table_prefix=app_") as store:
        assert store.conversations.t.sessions.name == "app_sessions"
    with db(f"sqlite:///{tmp_path}/o.db", table_prefix="kw_") as store:
        assert store.conversations.t.messages.name == "kw_messages"
        assert store.state.t.state.name == "kw_state"


def test_unknown_option_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown option 'tabel_prefix'.*valid options: .*table_prefix"):
        db(f"sqlite:///{tmp_path}/x.db?tabel_prefix=a_")
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        db(f"sqlite:///{tmp_path}/x.db", bogus=1)
    with pytest.raises(ConfigError, match="table_prefix"):
        db(f"sqlite:///{tmp_path}/x.db?table_prefix=bad-prefix;")
    with pytest.raises(ConfigError, match="unknown option"):
        db("memory://?ttl=3")


def test_options_of_the_wrong_kind_are_config_errors(tmp_path):
    """A bool where seconds belong (lock_timeout=True, ttl=True) or a non-bool strict would otherwise be read as
    one second, or as strict/lenient by truthiness."""
    with pytest.raises(ConfigError, match="lock_timeout"):
        db(f"json://{tmp_path}/j", lock_timeout=True)
    for strict in ("no", None, 0):
        with pytest.raises(ConfigError, match="strict"):
            db(session_dir=tmp_path, strict=strict)
    with db(f"json://{tmp_path}/j", lock_timeout="1.5", strict=False) as store:
        assert store.strict is False


def test_unknown_scheme_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown URL scheme 'postgresq'; did you mean postgresql://\?"):
        db("postgresq://u:pw@localhost/db")
    with pytest.raises(ConfigError, match=r"unknown driver 'nosuch' for postgresql://"):
        db("postgresql+nosuch://u:pw@localhost/db")


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "not a url", "::", "postgresql://u:s3cret@host:notaport/db", "redis://:s3cret@host:99999/0"],
)
def test_malformed_urls_are_one_line_config_errors_without_password(bad):
    with pytest.raises(ConfigError) as info:
        db(bad)
    message = str(info.value)
    assert "\n" not in message and "s3cret" not in message


def test_role_a_backend_cannot_play():
    with pytest.raises(ConfigError, match="cannot be a state store; use Redis, MongoDB or a SQL database"):
        resolve("clickhouse", "state")


def test_missing_driver_extra_names_the_pip_command(tmp_path):
    # A real interpreter where importing psycopg fails, as on a machine without the postgres extra.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None
        import praison_db
        try:
            praison_db.db("postgresql://ai:s3cret@localhost:5432/ai")
        except praison_db.ConfigError as e:
            print("ERR", e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'praison-db[postgres]'" in out.stdout and "s3cret" not in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


def test_missing_driver_of_a_lazily_imported_backend(tmp_path, monkeypatch):
    module = tmp_path / "needs_driver.py"
    module.write_text("import praison_fake_driver_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register("fakedb", conversations="needs_driver:FakeStore", extra="fake", clobber=True)
    with pytest.raises(ConfigError, match=r"needs the praison_fake_driver_xyz package for fakedb://: pip install 'praison-db\[fake\]'"):
        db("fakedb://host/x")


def test_third_party_registration(tmp_path):
    class TinyStore(MemoryConversationStore):
        pass

    register("tiny", conversations=TinyStore, clobber=True)
    with db("tiny://shared", state_url="memory://") as store:
        assert isinstance(store.conversations, TinyStore)
    with pytest.raises(ConfigError, match="already registered"):
        register("tiny", conversations=TinyStore)
    with pytest.raises(ConfigError, match="cannot be used as a state store"):
        db("tiny://x", state_url="tiny://y")


@pytest.mark.parametrize(
    "url, masked",
    [
        ("postgresql://ai:s3cret@localhost:5432/ai", "postgresql://ai:***@localhost:5432/ai"),
        ("postgresql://ai:p%40ss@localhost/ai", "postgresql://ai:***@localhost/ai"),
        ("redis://:s3cret@localhost:6379/0?prefix=chat", "redis://:***@localhost:6379/0?prefix=chat"),
        ("mongodb://u:s3cret@a:1,b:2/db?replicaSet=rs", "mongodb://u:***@a:1,b:2/db?replicaSet=rs"),
        ("mysql://root:@localhost/test", "mysql://root:***@localhost/test"),
        ("mysql://root@localhost/test", "mysql://root@localhost/test"),
        ("postgresql://u:pa:ss@w@rd@localhost/db", "postgresql://u:***@localhost/db"),
    ],
)
def test_password_masking(url, masked):
    parsed = parse_url(url)
    assert repr(parsed) == f"StoreURL({masked!r})" and str(parsed) == masked and mask_url(url) == masked
    # The driver gets the same URL, with the credentials percent-encoded where they needed it.
    again = parse_url(parsed.render(hide_password=False))
    assert again == parsed and again.password == parsed.password
    if parsed.password is not None and parsed.password.isalnum():
        assert parsed.render(hide_password=False) == url


def test_awkward_passwords_are_decoded():
    assert parse_url("postgresql://ai:p%40ss@localhost/ai").password == "p@ss"
    assert parse_url("postgresql://ai:@localhost/ai").password == ""
    assert parse_url("postgresql://ai@localhost/ai").password is None
    assert parse_url("mysql://u:p%2Fa%3Ass@h:3307/d").password == "p/a:ss"


def test_repr_of_the_facade_masks_passwords(tmp_path):
    with db(f"sqlite:///{tmp_path}/r.db", state_url="memory://") as store:
        assert "r.db" in repr(store)
    parsed = parse_url("postgresql://u:s3cret@h/d")
    assert "s3cret" not in repr(parsed) and "s3cret" not in str(parsed)


def test_closed_facade_closes_its_stores(tmp_path):
    store = db(f"sqlite:///{tmp_path}/c.db")
    conversations, state = store.conversations, store.state
    store.close()
    store.close()
    assert store.closed and conversations.closed and state.closed
    with pytest.raises(StoreClosed):
        conversations.list_sessions()
    with pytest.raises(StoreClosed):
        state.get("x")


def test_invalid_session_ids_through_the_facade(tmp_path):
    with db(f"sqlite:///{tmp_path}/v.db") as store:
        for bad in ("", None, 5, "x" * 300, "a\x00b"):
            with pytest.raises(InputError):
                store.conversations.get_or_create_session(bad)  # type: ignore[arg-type]


def test_every_error_is_a_praison_db_error():
    for name in ("ConfigError", "InputError", "StoreUnavailable", "StoreClosed", "SessionNotFound", "SessionExists", "IntegrityError", "SchemaError"):
        assert issubclass(getattr(praison_db, name), praison_db.Error)


def test_core_import_pulls_in_no_driver():
    code = "import sys, praison_db; print(sorted(m for m in ('psycopg','pymysql','redis','pymongo','clickhouse_connect','chdb','typer','rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
