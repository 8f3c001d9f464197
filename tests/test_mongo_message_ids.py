"""MongoDB: the unique (session_id, incarnation, id) index, and data from before it that holds an id twice."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pymongo
import pytest

from praison_db.facade import open_store
from tests.backends import BACKENDS

MONGO = next(b for b in BACKENDS if b.name == "mongodb")


@pytest.fixture
def url(make_url) -> str:
    return make_url(MONGO)


@pytest.fixture
def raw(url) -> Iterator[pymongo.database.Database]:
    client: pymongo.MongoClient = pymongo.MongoClient(url, tz_aware=True)
    yield client.get_default_database()
    client.close()


def test_message_ids_have_a_unique_index(url, raw):
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        conv.add_message("s", "user", "one", id="m1")
        indexes = {i["name"]: i for i in raw["praison_messages"].list_indexes()}
        index = indexes["session_inc_id"]
        assert index["key"] == {"session_id": 1, "inc": 1, "id": 1} and index["unique"]
        inc = raw["praison_sessions"].find_one({"_id": "s"})["inc"]
        with pytest.raises(pymongo.errors.DuplicateKeyError):  # the server itself refuses a second copy
            raw["praison_messages"].insert_one({"session_id": "s", "inc": inc, "seq": 99, "id": "m1"})


def test_older_data_with_an_id_twice_still_opens_and_works(url, raw, caplog):
    with open_store(url, "conversations") as conv:
        conv.create_session("old")
        first = conv.add_message("old", "user", "one", id="twice")
    messages = raw["praison_messages"]
    messages.drop_index("session_inc_id")  # as an older version left it, with an import that repeated an id
    doc = messages.find_one({"session_id": "old"}, {"_id": 0})
    messages.insert_one({**doc, "seq": 2, "content": "two"})
    raw["praison_sessions"].update_one({"_id": "old"}, {"$set": {"message_count": 2}})
    with caplog.at_level(logging.WARNING, logger="praison_db"), open_store(url, "conversations") as conv:
        assert any("ids are not enforced unique" in r.getMessage() for r in caplog.records)
        assert conv.add_message("old", "user", "retry", id="twice").seq in (1, 2)
        assert conv.add_message("old", "user", "three", id="new").seq == 3
        assert [m.content for m in conv.get_messages("old")] == [first.content, "two", "three"]
