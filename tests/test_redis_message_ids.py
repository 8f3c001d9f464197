"""Redis: sessions written before message ids were indexed, and the id index expiring with its session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from praison_db.facade import open_store
from tests import servers
from tests.backends import BACKENDS

REDIS = next(b for b in BACKENDS if b.name == "redis")


@pytest.fixture
def url(make_url) -> str:
    return make_url(REDIS)


@pytest.fixture
def raw(url) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(servers.REDIS_URL)
    yield client
    client.close()


def test_messages_written_without_an_id_index_are_indexed_on_the_next_append(url, raw):
    prefix = url.rsplit("prefix=", 1)[1]
    with open_store(url, "conversations") as conv:
        conv.create_session("old")
        first = conv.add_message("old", "user", "one", id="m1")
        conv.add_message("old", "user", "two", id="m2")
        raw.delete(f"{prefix}:i:old")  # as the previous version left it: messages, no id index
        assert conv.add_message("old", "user", "retry", id="m1") == first
        assert conv.add_message("old", "user", "three", id="m3").seq == 3
        assert conv.count_messages("old") == 3
        assert raw.hgetall(f"{prefix}:i:old") == {b"m1": b"1", b"m2": b"2", b"m3": b"3"}


def test_the_id_index_expires_and_is_deleted_with_its_session(make_url, raw):
    url = make_url(REDIS) + "&ttl=600"
    prefix = url.split("prefix=", 1)[1].split("&", 1)[0]
    with open_store(url, "conversations") as conv:
        conv.create_session("t")
        conv.add_message("t", "user", "one", id="m1")
        assert 0 < raw.pttl(f"{prefix}:i:t") <= 600_000
        conv.delete_session("t")
        assert raw.exists(f"{prefix}:i:t") == 0
