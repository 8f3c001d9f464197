"""A SQL database written before message ids were unique (schema version 1) opens, upgrades and keeps working."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import MetaData, String, insert

from praison_db.backends import sql_schema
from praison_db.backends.sql import _open_unprepared, schema_version
from praison_db.facade import open_store
from tests.backends import BACKENDS

SQL = [b for b in BACKENDS if b.name in ("sqlite", "postgresql", "mysql")]


def write_version_1(url: str) -> None:
    """The tables as version 1 made them: ids of at most 64 characters, no unique index on (session_id, id)."""
    database = _open_unprepared(url, {})
    try:
        current = database.tables
        md = MetaData()
        sessions, state, version = (t.to_metadata(md) for t in (current.sessions, current.state, current.version))
        messages = current.messages.to_metadata(md)
        messages.indexes = {i for i in messages.indexes if not i.unique}
        messages.c.id.type = String(64)
        now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        with database.engine.begin() as conn:
            md.create_all(conn)
            conn.execute(insert(version).values(version=1, applied_at=now))
            conn.execute(
                insert(sessions).values(
                    session_id="old", session_type="agent", metadata={}, created_at=now, updated_at=now, message_count=3
                )
            )
            row = {"session_id": "old", "role": "user", "metadata": {}, "created_at": now}
            conn.execute(
                insert(messages),
                [
                    {**row, "seq": 1, "id": "a" * 32, "content": "one"},
                    {**row, "seq": 2, "id": "twice", "content": "two"},
                    {**row, "seq": 3, "id": "twice", "content": "three"},  # an old import could do this
                ],
            )
    finally:
        database.release()


@pytest.mark.parametrize("backend", SQL, ids=[b.name for b in SQL])
def test_version_1_database_upgrades_and_keeps_working(backend, make_url):
    url = make_url(backend)
    write_version_1(url)
    assert schema_version(url) == (1, len(sql_schema.MIGRATIONS))
    with open_store(url, "conversations") as conv:
        assert schema_version(url) == (len(sql_schema.MIGRATIONS), len(sql_schema.MIGRATIONS))
        old = conv.get_messages("old")
        assert [(m.seq, m.id, m.content) for m in old] == [(1, "a" * 32, "one"), (2, "twice", "two"), (3, "twice:3", "three")]
        assert conv.add_message("old", "user", "retry", id="a" * 32) == old[0]
        assert conv.add_message("old", "user", "retry", id="twice") == old[1]
        assert conv.count_messages("old") == 3
        long_id = "L" * 255
        assert conv.add_message("old", "user", "four", id=long_id).seq == 4
        # Ids are exact: case and trailing spaces make different ids on every dialect.
        assert [conv.add_message("old", "user", x, id=x).seq for x in ("Case", "case", "case ")] == [5, 6, 7]
        assert conv.add_message("old", "user", "again", id="case").content == "case"
        assert [m.id for m in conv.get_messages("old", limit=4)] == [long_id, "Case", "case", "case "]
    with open_store(url, "conversations") as conv:  # opening again is a no-op
        assert conv.count_messages("old") == 7
