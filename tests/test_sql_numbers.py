"""PostgreSQL keeps JSON verbatim (``json``, not the normalising ``jsonb``): a database of the older jsonb schema is
migrated on open and its numbers then round-trip exactly."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql

from praison_db.backends.sql import schema as sql_schema
from praison_db.facade import open_store
from praison_db.testing.suite.test_numbers import NUMBERS, same
from tests.backends import BACKENDS

POSTGRESQL = [b for b in BACKENDS if b.name == "postgresql"]


@pytest.mark.parametrize("backend", POSTGRESQL, ids=[b.name for b in POSTGRESQL])
def test_a_database_of_the_jsonb_schema_opens_migrates_and_reads(backend, make_url, monkeypatch):
    url = make_url(backend)
    latest = sql_schema.MIGRATIONS
    with monkeypatch.context() as old:  # the schema as the previous version of praison_db built it
        old.setattr(sql_schema, "_JSON", sql_schema.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql"))
        old.setattr(sql_schema, "MIGRATIONS", latest[: latest.index(sql_schema._v4_json_verbatim)])
        with open_store(url, "conversations") as store:
            store.create_session("old", metadata={"n": 1, "text": "é"})
            store.add_message("old", "assistant", None, tool_calls=[{"id": "c", "function": {"arguments": {"a": 2}}}], metadata={"k": [1, 2.5]})
            with store.db.read() as conn:
                kinds = {c["name"]: type(c["type"]).__name__ for c in sa_inspect(conn).get_columns(store.t.messages.name)}
            assert kinds["metadata"] == "JSONB"
    with open_store(url, "conversations") as store:
        with store.db.read() as conn:
            kinds = {c["name"]: type(c["type"]).__name__ for c in sa_inspect(conn).get_columns(store.t.messages.name)}
            sessions = {c["name"]: type(c["type"]).__name__ for c in sa_inspect(conn).get_columns(store.t.sessions.name)}
        assert kinds["metadata"] == kinds["tool_calls"] == sessions["metadata"] == "JSON"
        assert store.get_session("old").metadata == {"n": 1, "text": "é"}
        (message,) = store.get_messages("old")
        assert message.tool_calls == [{"id": "c", "function": {"arguments": {"a": 2}}}] and message.metadata == {"k": [1, 2.5]}
        assert same(store.add_message("old", "user", "new", metadata=NUMBERS).metadata, NUMBERS)
        assert same(store.get_messages("old")[-1].metadata, NUMBERS)
