"""What only the DynamoDB stores do: the URL, errors, expiry checked on read, the commit protocol without transactions
(concurrent processes, a writer dying between its steps). The contract itself is in tests/conformance, run on
dynalite through tests/backends.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from praison_db import ConfigError, InputError, SchemaError, SessionNotFound, StoreUnavailable
from praison_db.aio import wrap
from praison_db.backends import dynamodb
from praison_db.facade import open_store
from praison_db.testing.workers import run_workers
from praison_db.url import parse_url
from tests import servers
from tests.backends import BACKENDS
from tests.servers import wait_past

DYNAMO = next(b for b in BACKENDS if b.name == "dynamodb")


@pytest.fixture
def url(make_url) -> str:
    return make_url(DYNAMO)


class Raw:
    """boto3 on the store's table, to look at and change items behind the store's back."""

    def __init__(self, url: str) -> None:
        u = parse_url(url)
        self.prefix = u.query.get("prefix", "")
        self.table = u.path.strip("/") + dynamodb.TABLE_SUFFIX
        self.client = boto3.client(
            "dynamodb", region_name=u.host, endpoint_url=u.query["endpoint"], aws_access_key_id="x", aws_secret_access_key="x"
        )

    def items(self, session_id: str) -> list[dict[str, Any]]:
        answer = self.client.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": f"{self.prefix}S#{session_id}"}},
            ConsistentRead=True,
        )
        return answer["Items"]

    def header(self, session_id: str) -> dict[str, Any]:
        return next(i for i in self.items(session_id) if i["sk"]["S"] == dynamodb.HEADER)

    def state_item(self, key: str) -> dict[str, Any] | None:
        key_ = {"pk": {"S": f"{self.prefix}K"}, "sk": {"S": key}}
        return self.client.get_item(TableName=self.table, Key=key_, ConsistentRead=True).get("Item")


@pytest.fixture
def raw(url) -> Iterator[Raw]:
    r = Raw(url)
    yield r
    r.client.close()


def sid() -> str:
    return "s-" + uuid.uuid4().hex[:12]


# ---- the URL ----


def test_url_parts_options_and_the_table(url, raw):
    with open_store(url, "conversations") as conv:
        assert conv.url.startswith("dynamodb://us-east-1/praison_test_")
        conv.create_session("a")
    names = raw.client.list_tables()["TableNames"]
    assert raw.table in names and raw.table.endswith("_praison")
    description = raw.client.describe_table(TableName=raw.table)["Table"]
    assert {i["IndexName"] for i in description["GlobalSecondaryIndexes"]} == {"all", "user", "agent"}
    assert raw.header("a")["n"] == {"N": "0"}


@pytest.mark.parametrize(
    "query, message",
    [
        ("colour=red", "valid options: create_table, endpoint, prefix, ttl"),
        ("endpoint=localhost:8000", "endpoint"),
        ("prefix=no-dashes", "prefix"),
        ("ttl=-1", "ttl"),
        ("create_table=maybe", "create_table"),
    ],
)
def test_bad_options_are_config_errors(url, query, message):
    with pytest.raises(ConfigError, match=message) as info:
        open_store(f"{url}&{query}", "conversations")
    assert "\n" not in str(info.value)


def test_table_prefix_region_and_credentials_in_the_url(url):
    endpoint = parse_url(url).query["endpoint"]
    with pytest.raises(ConfigError, match="table name prefix"):
        open_store(f"dynamodb://us-east-1/bad%20name?endpoint={endpoint}", "conversations")
    with pytest.raises(ConfigError, match="access key and the secret"):
        open_store(f"dynamodb://onlykey@us-east-1/x_?endpoint={endpoint}", "conversations")
    # Credentials in the URL are used (dynalite takes any) and never shown.
    with open_store(f"dynamodb://AKIAEXAMPLE:s3cr%2Ft@us-east-1/cred_?endpoint={endpoint}&prefix=c{uuid.uuid4().hex[:8]}", "state") as s:
        s.set("k", 1)
        assert "s3cr" not in repr(s) and "***" in s.url


def test_an_unreachable_endpoint_is_unavailable_quickly_without_the_secret():
    port = servers.free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store(f"dynamodb://AKIAEXAMPLE:hunter2@us-east-1/?endpoint=http://127.0.0.1:{port}", "conversations")
    assert time.monotonic() - started < 20
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


def test_a_missing_table_without_create_table_and_a_foreign_table(url, raw):
    endpoint = parse_url(url).query["endpoint"]
    name = f"nope{uuid.uuid4().hex[:8]}_"
    with pytest.raises(ConfigError, match="does not exist"):
        open_store(f"dynamodb://us-east-1/{name}?endpoint={endpoint}&create_table=false", "state")
    foreign = f"foreign{uuid.uuid4().hex[:8]}_"
    raw.client.create_table(
        TableName=foreign + dynamodb.TABLE_SUFFIX,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(SchemaError, match="not made by praison-db"):
        open_store(f"dynamodb://us-east-1/{foreign}?endpoint={endpoint}", "conversations")


def test_what_dynamodb_cannot_hold_is_an_input_error_and_stores_nothing(url):
    with open_store(url, "state") as state:
        state.set("k", "kept")
        with pytest.raises(InputError, match="1024"):
            state.set("€" * 342, 1)  # 342 characters are a fine key, 1026 bytes are not a sort key
        with pytest.raises(InputError, match="400 KB"):
            state.set_many({"fine": 1, "big": "x" * 500_000})
        assert state.get("fine") is None and state.get("k") == "kept"
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        with pytest.raises(InputError):
            conv.update_session("s", metadata={"m": "y" * 500_000})  # the header is one item
        assert conv.get_session("s").metadata == {}


def test_the_async_api_runs_the_store_in_worker_threads(url):
    with open_store(url, "conversations") as conv:
        assert wrap(conv)._native is False
    assert dynamodb.DynamoConversationStore.from_url_async is None


# ---- expiry, checked on every read ----


def test_session_ttl_is_refreshed_by_activity_and_checked_on_read(url, raw):
    with open_store(f"{url}&ttl=1", "conversations") as conv:
        conv.create_session("s", user_id="alice", agent_id="bot")
        conv.add_message("s", "user", "hello")
        header = raw.header("s")
        assert abs(int(header["exp"]["N"]) - time.time()) < 3  # the native TTL attribute, for AWS to sweep
        wait_past(time.time() + 0.6)
        conv.add_message("s", "assistant", "hi")  # activity: another full second from now
        wait_past(time.time() + 0.6)
        assert conv.get_session("s").message_count == 2
        wait_past(float(raw.header("s")["x"]["N"]))
        # dynalite (like DynamoDB Local) never sweeps: the items are still there, yet every read says gone.
        assert raw.items("s")
        assert conv.get_session("s") is None and conv.get_messages("s") == [] and conv.get_messages("s", limit=5) == []
        assert conv.count_messages("s") == 0 and conv.pop_message("s") is None
        assert list(conv.list_sessions()) == [] and list(conv.list_sessions(user_id="alice")) == []
        with pytest.raises(Exception, match="does not exist"):
            conv.add_message("s", "user", "too late")
        # The id is free again: a new session replaces the expired one, whose items go with it.
        conv.create_session("s")
        assert conv.get_messages("s") == [] and conv.add_message("s", "user", "new life").seq == 1
        assert len([i for i in raw.items("s") if i["sk"]["S"].startswith("M#")]) == 1


def test_state_expiry_is_checked_on_read_and_the_ttl_option_is_the_default(url, raw):
    with open_store(f"{url}&ttl=60", "state") as state:
        state.set("default", 1)
        state.set("brief", {"x": 1}, ttl=0.3)
        assert 55 < state.ttl("default") <= 60
        item = raw.state_item("brief")
        assert int(item["exp"]["N"]) >= float(item["x"]["N"])  # native TTL attribute: whole seconds, not earlier
        wait_past(float(item["x"]["N"]))
        assert raw.state_item("brief") is not None  # not swept
        assert state.get("brief") is None and not state.exists("brief") and "brief" not in list(state.keys())
        assert state.incr("brief") == 1 and state.ttl("brief") is None


def test_numbers_beyond_64_bits_are_json_text_and_incr_stays_in_range(url, raw):
    with open_store(url, "state") as state:
        state.set("big", 2**64)
        state.set("small", 2**63 - 1)
        assert "j" in raw.state_item("big") and raw.state_item("small")["i"] == {"N": str(2**63 - 1)}
        with pytest.raises(InputError, match="64-bit"):
            state.incr("small")
        with pytest.raises(InputError, match="64-bit"):
            state.incr("big")
        assert state.get("small") == 2**63 - 1 and state.get("big") == 2**64


# ---- the layout ----


def test_items_of_a_session_and_exact_json(url, raw):
    with open_store(url, "conversations") as conv:
        conv.create_session("s", user_id="u")
        conv.add_messages("s", [{"role": "user", "content": {"z": -0.0, "n": 10**30}, "id": "a"}, {"type": "reasoning", "id": "b"}])
    keys = sorted(i["sk"]["S"] for i in raw.items("s"))
    assert keys[-1] == dynamodb.HEADER and sum(k.startswith("M#") for k in keys) == 2 and sum(k.startswith("I") for k in keys) == 2
    header = raw.header("s")
    # The commit's entry stays in the header until this store's next commit removes it; the items are there already.
    assert header["n"] == {"N": "2"} and len(header["pend"]["M"]) == 1
    message = next(i for i in raw.items("s") if i["sk"]["S"].startswith("M#00000000000000000001#"))
    assert '"z":-0.0' in message["b"]["S"] and str(10**30) in message["b"]["S"]


def test_a_message_larger_than_an_item_is_kept_in_parts(url, raw):
    big = "🙂" * 400_000  # 1.6 MB of UTF-8
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        conv.add_message("s", "user", big)
        conv.add_message("s", "user", "small")
        assert conv.get_messages("s", limit=2)[0].content == big
        parts = [i for i in raw.items("s") if i["sk"]["S"].startswith("B#")]
        assert len(parts) == 5 and all(len(p["b"]["S"]) <= 90_000 for p in parts)
        assert conv.pop_message("s").content == "small" and conv.pop_message("s").content == big


# ---- the commit protocol: a writer dying between its steps ----


class Crash(BaseException):
    """Stands for the process dying at this point: nothing after it runs, no cleanup either."""


def crash(*args: Any, **kwargs: Any) -> None:
    raise Crash


def test_a_writer_dying_after_its_commit_loses_nothing(url, raw, monkeypatch):
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        conv.add_message("s", "user", "first", id="m1")
        monkeypatch.setattr(dynamodb.DynamoConversationStore, "_copy", crash)
        with pytest.raises(Crash):
            conv.add_messages("s", [{"role": "user", "content": "second", "id": "m2"}, {"role": "user", "content": "third"}])
        monkeypatch.undo()
        # Committed: the header holds the messages until someone copies them; every read sees them already.
        dead = set(raw.header("s")["pend"]["M"])
        assert len(dead) == 1 and sum(i["sk"]["S"].startswith("M#") for i in raw.items("s")) == 1
        assert [m.content for m in conv.get_messages("s")] == ["first", "second", "third"]
        assert [m.seq for m in conv.get_messages("s", limit=2)] == [2, 3] and conv.count_messages("s") == 3
        again = conv.add_message("s", "user", "retried", id="m2")  # the id is known from the commit itself
        assert (again.seq, again.content) == (2, "second")
        assert conv.add_message("s", "user", "fourth").seq == 4
        # A later writer copies what the dead one left, once it is old enough to be surely abandoned.
        monkeypatch.setattr(dynamodb, "_HELP_AFTER", 0.0)
        conv.add_message("s", "user", "fifth")
        assert not dead & set(raw.header("s")["pend"]["M"])
        assert sum(i["sk"]["S"].startswith("M#") for i in raw.items("s")) == 5
        assert [m.content for m in conv.get_messages("s")] == ["first", "second", "third", "fourth", "fifth"]
        assert conv.add_message("s", "user", "dup", id="m2").seq == 2


def test_a_writer_dying_before_its_commit_leaves_no_seq_taken(url, raw, monkeypatch):
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        monkeypatch.setattr(dynamodb.DynamoConversationStore, "_cas", crash)
        with pytest.raises(Crash):
            conv.add_message("s", "user", "x" * 500_000)  # its parts are written before the commit
        monkeypatch.undo()
        assert any(i["sk"]["S"].startswith("B#") for i in raw.items("s"))  # orphaned parts, invisible
        assert conv.count_messages("s") == 0 and conv.get_messages("s") == []
        assert conv.add_message("s", "user", "next").seq == 1
        assert conv.delete_session("s") and raw.items("s") == []  # the orphans go with the session


def test_a_pop_dying_before_its_cleanup_leaves_the_seq_to_the_next_append(url, raw, monkeypatch):
    with open_store(url, "conversations") as conv:
        conv.create_session("s")
        conv.add_messages("s", [{"role": "user", "content": str(i), "id": f"m{i}"} for i in range(1, 4)])
        monkeypatch.setattr(dynamodb.DynamoConversationStore, "_forget", crash)
        with pytest.raises(Crash):
            conv.pop_message("s")
        with pytest.raises(Crash):
            conv.truncate("s", 1)
        monkeypatch.undo()
        # The removals hold; their items are still there (older versions at seqs above n) and are never read.
        assert sum(i["sk"]["S"].startswith("M#") for i in raw.items("s")) == 3
        assert [m.content for m in conv.get_messages("s")] == ["1"] and conv.count_messages("s") == 1
        assert conv.add_message("s", "user", "again", id="m3").seq == 2  # the popped id is free again
        assert conv.add_message("s", "user", "and", id="m2").seq == 3
        assert [m.content for m in conv.get_messages("s")] == ["1", "again", "and"]
        assert [m.content for m in conv.get_messages("s", limit=2)] == ["again", "and"]
        assert conv.add_message("s", "user", "?", id="m3").content == "again"
        assert conv.pop_message("s").content == "and" and conv.pop_message("s").content == "again"


# ---- the commit protocol: several processes at once ----


def mixed_writer(barrier: Any, url: str, session_id: str, worker: int, rounds: int) -> list[tuple[str, str, int]]:
    """Appends (single, batched, with ids another worker also uses) and pops; returns what each call answered."""
    with open_store(url, "conversations") as store:
        store.get_session(session_id)
        barrier.wait()
        log: list[tuple[str, str, int]] = []
        for r in range(rounds):
            m = store.add_message(session_id, "user", f"w{worker}-{r}")
            log.append(("add", m.id, m.seq))
            shared = store.add_messages(session_id, [{"role": "user", "content": f"shared-{r}", "id": f"shared-{r}"}, {"role": "user", "content": "b"}])
            log += [("add", x.id, x.seq) for x in shared]
            if r % 3 == 2:
                popped = store.pop_message(session_id)
                if popped is not None:
                    log.append(("pop", popped.id, popped.seq))
        return log


def test_processes_appending_and_popping_keep_seqs_gap_free_and_ids_unique(url):
    with open_store(url, "conversations") as conv:
        conv.create_session("mixed")
        logs = run_workers(mixed_writer, [(url, "mixed", w, 9) for w in range(3)])
        stored = conv.get_messages("mixed")
        assert [m.seq for m in stored] == list(range(1, len(stored) + 1)) == [m.seq for m in conv.get_messages("mixed", limit=len(stored) or 1)]
        assert conv.count_messages("mixed") == len(stored) == conv.get_session("mixed").message_count
        ids = [m.id for m in stored]
        assert len(ids) == len(set(ids))
        popped = [(i, seq) for log in logs for kind, i, seq in log if kind == "pop"]
        assert len(popped) == len(set(popped))  # no message was popped twice
        added = {i for log in logs for kind, i, _ in log if kind == "add"}
        # Every id answered by an append is stored, unless a pop took it (and then it was not re-added).
        assert added - set(ids) <= {i for i, _ in popped}


def test_a_store_whose_last_commit_is_stale_commits_on_what_is_there_now(url):
    with open_store(url, "conversations") as a, open_store(url, "conversations") as b:
        a.create_session("s")
        assert [a.add_message("s", "user", "1").seq, b.add_message("s", "user", "2").seq, a.add_message("s", "user", "3").seq] == [1, 2, 3]
        b.delete_session("s")
        with pytest.raises(SessionNotFound):
            a.add_message("s", "user", "to a deleted session")
        b.create_session("s", name="again")
        assert a.add_message("s", "user", "new").seq == 1
        assert [m.content for m in b.get_messages("s")] == ["new"] and a.get_session("s").name == "again"


def test_export_and_import_keep_a_message_larger_than_an_item(url):
    big = {"text": "€" * 200_000, "n": 10**30}  # 600 KB of JSON content
    with open_store(url, "conversations") as conv:
        conv.create_session("s", user_id="u")
        conv.add_messages("s", [{"role": "user", "content": big, "id": "big"}, {"role": "assistant", "content": "ok"}])
        data = conv.export_session("s")
        before = conv.get_messages("s")
        conv.delete_session("s")
        conv.import_session(data)
        assert conv.get_messages("s") == before and conv.get_messages("s", limit=2)[0].content == big
        assert conv.add_message("s", "user", "again", id="big").seq == 1 and conv.add_message("s", "user", "next").seq == 3
