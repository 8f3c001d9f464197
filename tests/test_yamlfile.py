"""What is specific to the YAML file stores: the readable layout, record boundaries that no value can fake, values
back exactly, torn writes, a process dying in the middle of an append. Everything else (the whole contract, sync and
async) runs on them as backend ``yaml`` in tests/conformance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from praison_db import ConfigError, IntegrityError, Message, db
from praison_db.backends import yamlfile
from praison_db.backends.yamlfile import YamlConversationStore, YamlDocuments, YamlStateStore
from praison_db.files import session_file_stem
from praison_db.models import MESSAGE_FIELDS
from praison_db.testing.suite.test_numbers import same

ROOT = Path(__file__).resolve().parents[1]
CODEC = YamlDocuments()
END = b"\n...\n"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
def store(directory: Path) -> Iterator[YamlConversationStore]:
    with YamlConversationStore(directory) as s:
        yield s


def messages_file(store: YamlConversationStore, session_id: str) -> Path:
    return store.directory / f"{session_file_stem(session_id)}.yaml"


def documents(path: Path) -> list[Any]:
    """The file read by PyYAML on its own, as a stream of documents: what a person or another tool sees."""
    return list(yaml.safe_load_all(path.read_bytes()))


# ---- the layout ----


def test_the_files_are_yaml_documents_a_person_can_read(store):
    store.create_session("user-123", user_id="alice", name="Support chat", metadata={"plan": "pro"})
    store.add_message("user-123", "user", "My name is Alice.\nAnd yours?", id="m1")
    store.add_message("user-123", "assistant", {"answer": ["Bob", 42]}, id="m2", metadata={"model": "x"})
    store.add_messages("user-123", [{"type": "function_call", "call_id": "c1", "arguments": "{}"}])
    stem = session_file_stem("user-123")
    assert sorted(p.name for p in store.directory.iterdir()) == [".locks", f"{stem}.session.yaml", f"{stem}.yaml"]
    assert [p.name for p in (store.directory / ".locks").iterdir()] == [f"{stem}.lock"]

    header = yaml.safe_load((store.directory / f"{stem}.session.yaml").read_text())
    assert (header["session_id"], header["user_id"], header["name"], header["metadata"]) == (
        "user-123", "alice", "Support chat", {"plan": "pro"}
    )
    text = messages_file(store, "user-123").read_text()
    first = text[: text.index("\n...\n") + 5]
    assert first.startswith("---\nid: m1\nsession_id: user-123\nseq: 1\nrole: user\ncontent: |-\n")
    assert "  My name is Alice.\n  And yours?\ncreated_at: '" in first and first.endswith("'\n...\n")
    docs = documents(messages_file(store, "user-123"))
    assert [d["seq"] for d in docs] == [1, 2, 3]
    assert docs[1]["content"] == {"answer": ["Bob", 42]} and docs[1]["metadata"] == {"model": "x"}
    # Fields that are None (name, tool_calls, ...) and an empty metadata or extra are left out, and read as such.
    assert "name" not in docs[0] and "extra" not in docs[0] and "role" not in docs[2]
    assert docs[2]["type"] == "function_call" and docs[2]["extra"] == {"call_id": "c1", "arguments": "{}"}
    call = store.get_messages("user-123", limit=1)[0]
    assert (call.role, call.name, call.tool_calls, call.metadata, call.extra["call_id"]) == (None, None, None, {}, "c1")


def test_the_state_file_is_yaml(directory):
    with YamlStateStore(directory / "state.yaml") as state:
        state.set("plan", {"tier": "pro", "seats": 3})
        state.incr("visits", 2)
    assert list(yaml.safe_load_all((directory / "state.yaml").read_text())) == [
        {"format": "praison_db.state/v2", "items": {"plan": [{"tier": "pro", "seats": 3}, None]}},
        {"set": {"visits": [2, None]}},
    ]


def test_urls_name_the_folder_and_both_roles(tmp_path, monkeypatch):
    with db(f"yaml://{tmp_path}/abs", state_url=f"yaml://{tmp_path}/abs") as store:
        assert isinstance(store.conversations, YamlConversationStore) and isinstance(store.state, YamlStateStore)
        assert store.conversations.directory == tmp_path / "abs" and store.state.path == tmp_path / "abs" / "state.yaml"
        assert store.conversations.url == f"yaml://{tmp_path}/abs"
    monkeypatch.chdir(tmp_path)
    with db("yaml://rel/dir?lock_timeout=5") as store:
        store.conversations.create_session("s")
        assert store.conversations.directory == Path("rel/dir") and (tmp_path / "rel" / "dir").is_dir()
        assert isinstance(store.state, YamlStateStore)  # state beside the conversations, as YAML too
    for relative in ("./here", "data.d/x", "my:dir/x", "a%20b/c"):  # a folder name, not a host: as json:// reads it
        with db(f"yaml://{relative}") as store:
            assert store.conversations.directory == Path(relative.replace("%20", " "))
    with pytest.raises(ConfigError, match="needs a directory"):
        db("yaml://")
    with pytest.raises(ConfigError, match="no user or password"):
        db("yaml://me:secret@host/dir")
    with pytest.raises(ConfigError, match="lock_timeout"):
        db(f"yaml://{tmp_path}/x?lock_timeout=-1")


def test_files_are_private_whatever_the_umask(store):
    old = os.umask(0)
    try:
        store.create_session("s")
        store.add_message("s", "user", "hi")
        with YamlStateStore(store.directory / "state.yaml") as state:
            state.set("k", 1)
    finally:
        os.umask(old)
    for path in [store.directory, *store.directory.rglob("*")]:
        assert (path.stat().st_mode & 0o777) == (0o700 if path.is_dir() else 0o600), path


# ---- record boundaries: no value can fake one ----

# Pieces that mean something to YAML or to the boundary search, put together in any order with any other text.
TRICKY = [
    "\n---\n", "\n...\n", "---", "...", "--- ", "... ", "\n", "#", "# x", "\t", "\r", "\r\n", "\x85", "\u2028", "\u2029",
    "\ufeff", " ", "  ", "- ", "-", "? ", ": ", ":", "|", ">", "|-", "'", '"', "\\", "~", "null", "yes", "no", "on", "off",
    "true", "1e3", "1_000", "0x1F", "0o17", "+1", ".5", "-.inf", ".nan", "2024-01-01", "12:30:45", "<<", "=", "&a",
    "*a", "!tag", "!!str", "%YAML 1.1", "@", "`", "{", "}", "[", "]", ",", "é", "🙂", "\x07", "\x1b", "\u00a0",
]
tricky_text = st.lists(
    st.one_of(st.sampled_from(TRICKY), st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)), max_size=8
).map("".join)
numbers = st.one_of(
    st.integers(), st.integers(min_value=-(10**200), max_value=10**200), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e17, 1e-7, 5e-324, 1.7976931348623157e308, 10**4000]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, tricky_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(tricky_text, inner, max_size=4)),
    max_leaves=12,
)
# Keys a message document writes at column 0: the model's field names.
FIELD_LINES = tuple(f"{name}:".encode() for name in Message.model_fields)


@st.composite
def messages(draw: Any) -> Message:
    extra_keys = tricky_text.filter(lambda k: k not in MESSAGE_FIELDS)
    return Message(
        id=draw(tricky_text.filter(bool)), session_id=draw(tricky_text.filter(bool)), seq=draw(st.integers(1, 10**6)),
        role=draw(st.one_of(st.none(), tricky_text.filter(lambda r: 0 < len(r) <= 64))),
        content=draw(json_values), type=draw(st.one_of(st.none(), tricky_text.filter(lambda t: 0 < len(t) <= 64))),
        name=draw(st.one_of(st.none(), tricky_text)),
        tool_calls=draw(st.one_of(st.none(), st.lists(st.dictionaries(tricky_text, json_values, max_size=3), max_size=2))),
        tool_call_id=draw(st.one_of(st.none(), tricky_text)),
        metadata=draw(st.dictionaries(tricky_text, json_values, max_size=3)),
        extra=draw(st.dictionaries(extra_keys, json_values, max_size=3)),
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
    )


def boundary_problem(record: bytes) -> str | None:
    """Why ``record`` (a document as written) could be mistaken for more or less than one record, or None."""
    if not record.startswith(b"---\n") or not record.endswith(END):
        return "not one '---' ... '...' document"
    if record.count(END) != 1:
        return "the end marker line stands inside the document"
    for line in record[4 : -len(END)].split(b"\n"):
        # Column 0 holds only a field name, an item of a sequence under one, or nothing; the rest is indented.
        if line and not line.startswith((b" ", b"- ", *FIELD_LINES)):
            return f"a value starts a line at column 0: {line[:40]!r}"
    return None


def decoded(record: bytes) -> Message:
    from praison_db.backends.filestore import _message

    fields = CODEC.decode(record[: -len(END)])
    assert fields is not None
    return _message(fields)


@settings(max_examples=400, deadline=None, database=None)
@given(messages())
def test_no_value_can_end_or_start_a_document(message):
    record = CODEC.encode_message(message)
    assert boundary_problem(record) is None, record.decode()
    assert CODEC.looks_like_message(record[: -len(END)]) and CODEC.message_id(record[: -len(END)]) == message.id
    assert same(decoded(record).model_dump(mode="json"), message.model_dump(mode="json"))


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(messages(), min_size=1, max_size=6), st.integers(0, 6))
def test_stored_messages_with_any_values_read_back_exactly_on_every_path(tmp_path_factory, batch, popped):
    folder = tmp_path_factory.mktemp("hypothesis")
    # As items a framework adds: every field but the id (the store gives one), and a role where there is no type.
    items = [{**m.to_item(), "role": m.role or ("user" if m.type is None else None)} for m in batch]
    items = [{k: v for k, v in item.items() if k != "id" and v is not None or k == "content"} for item in items]
    with YamlConversationStore(folder) as store:
        store.create_session("s", metadata=batch[0].metadata, name=batch[0].name)
        stored = store.add_messages("s", items)
        want = [m.to_item() for m in stored]
        with YamlConversationStore(folder) as fresh:  # nothing cached: read from the file
            assert same([m.to_item() for m in fresh.get_messages("s")], want)
            assert same([m.to_item() for m in fresh.get_messages("s", limit=3)], want[-3:])
            assert same([m.to_item() for m in fresh.iter_messages("s", batch_size=2)], want)
            session = fresh.get_session("s")
            assert same((session.metadata, session.name, session.message_count), (batch[0].metadata, batch[0].name, len(batch)))
            for _ in range(min(popped, len(want))):
                assert same(fresh.pop_message("s").to_item(), want.pop())
        assert same([m.to_item() for m in store.get_messages("s")], want) and store.damaged_files() == []
    assert [d["seq"] for d in documents(messages_file(store, "s"))] == list(range(1, len(want) + 1))


# ---- exact values ----

AWKWARD_STRINGS = [
    "yes", "no", "on", "off", "y", "n", "true", "False", "null", "~", "", " ", "1e3", "1.5", "1_000", "0x1F", "0o17",
    "0b101", "+1", ".5", "1.", "-0", "1:20", "190:20:30", "2024-01-01", "2024-01-01T00:00:00Z", "<<", "=", "!x", "&a",
    "*a", "- x", "? x", ": x", "#x", "%x", "@x", "`x", " lead", "trail ", "a\n", "\n", "\n\n", "\r\n", "a\rb", "\t",
    "a\tb\n", "\x85", "\u2028", "\u2029", "\ufeff", "é", "🙂", "---", "...", "\n---\n", "\n...\n", "x" * 300,
]
AWKWARD_NUMBERS = [0, -1, 2**64, -(2**63), 10**4000, -0.0, 0.0, 0.1, 1e-7, 1e16, 1e300, 5e-324, 1.7976931348623157e308, True, False, None]


def test_awkward_values_come_back_exactly_everywhere(directory):
    values: dict[str, Any] = {s: s for s in AWKWARD_STRINGS}
    values.update({f"n{i}": v for i, v in enumerate(AWKWARD_NUMBERS)})
    listed = [*AWKWARD_STRINGS, *AWKWARD_NUMBERS, [], {}]
    with YamlConversationStore(directory) as store, YamlStateStore(directory / "state.yaml") as state:
        store.create_session("s", metadata=values, name="\n...\n")
        store.add_message("s", "user", "2024-01-01", metadata=values)
        store.add_messages("s", [{"role": "~", "content": listed, "name": "yes", "tool_call_id": "1e3", **values}])
        store.add_message("s", "assistant", values)
        for i, value in enumerate(listed):
            state.set(f"k{i}", value)
        state.set_many({f"key {k}": v for k, v in values.items()})
    with YamlConversationStore(directory) as store, YamlStateStore(directory / "state.yaml") as state:
        first, second, third = store.get_messages("s")
        assert same((first.content, first.metadata), ("2024-01-01", values))
        assert same((second.role, second.content, second.name, second.tool_call_id), ("~", listed, "yes", "1e3"))
        assert same(second.extra, values) and same(third.content, values)
        session = store.get_session("s")
        assert same((session.metadata, session.name), (values, "\n...\n"))
        assert same([state.get(f"k{i}") for i in range(len(listed))], listed)
        assert same(state.get_many([f"key {k}" for k in values]), {f"key {k}": v for k, v in values.items()})


# ---- torn writes and crashes ----


def test_a_torn_document_is_never_read_and_the_next_append_cuts_it_off(store):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(1, 4)])
    path = messages_file(store, "s")
    intact = path.read_bytes()
    whole = CODEC.encode_message(store.get_messages("s", limit=1)[0].model_copy(update={"seq": 4, "id": "torn"}))
    # Cut anywhere, even one byte short of the end marker or right after the last field: not a record yet.
    for cut in (1, 4, len(whole) // 2, len(whole) - 5, len(whole) - 4, len(whole) - 2, len(whole) - 1):
        path.write_bytes(intact + whole[:cut])
        assert [m.content for m in store.get_messages("s")] == ["m1", "m2", "m3"]
        assert [m.seq for m in store.get_messages("s", limit=2)] == [2, 3]
        assert [m.seq for m in store.iter_messages("s")] == [1, 2, 3]
        assert store.count_messages("s") == 3 and store.get_session("s").message_count == 3
        assert store.damaged_files() == []  # a torn tail is repaired by the next write, not damage
    m = store.add_message("s", "user", "after the crash", id="torn")
    assert (m.seq, m.content) == (4, "after the crash")
    assert path.read_bytes().startswith(intact) and path.read_bytes().endswith(END)
    assert [d["content"] for d in documents(path)] == ["m1", "m2", "m3", "after the crash"]


CRASH_MID_APPEND = """
import os, sys
from praison_db.backends import filestore
from praison_db.backends.yamlfile import YamlConversationStore

directory, where = sys.argv[1], sys.argv[2]
real_open = filestore.open_private


class Torn:
    # The messages file, until the append's write: the process dies with only part of the new records written.
    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def write(self, data):
        ends = [i + 5 for i in range(len(data)) if data.startswith(b"\\n...\\n", i)]
        keep = {
            "first-record-half": ends[0] // 2,
            "first-record-whole": ends[0],
            "second-record-half": (ends[0] + ends[1]) // 2,
            "end-marker-torn": ends[0] - 1,
        }[where]
        self._f.write(data[:keep])
        self._f.flush()
        os.fsync(self._f.fileno())
        os._exit(3)


def opened(path, mode, **kwargs):
    f = real_open(path, mode, **kwargs)
    return Torn(f) if mode == "r+b" and path.suffix == ".yaml" else f


store = YamlConversationStore(directory)
filestore.open_private = opened
store.add_messages("s", [{"role": "user", "content": f"new {i}\\n...\\n---"} for i in range(3)])
os._exit(0)
"""


@pytest.mark.parametrize(
    "where, survivors",
    [("first-record-half", 0), ("first-record-whole", 1), ("second-record-half", 1), ("end-marker-torn", 0)],
)
def test_a_process_dying_mid_append_loses_only_what_it_had_not_written(directory, where, survivors):
    with YamlConversationStore(directory) as store:
        store.create_session("s")
        store.add_messages("s", [{"role": "user", "content": f"old {i}", "id": f"o{i}"} for i in range(1, 4)])
        path = messages_file(store, "s")
        before = path.read_bytes()
        proc = subprocess.run(
            [sys.executable, "-c", CRASH_MID_APPEND, str(directory), where],
            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60,
        )
        assert proc.returncode == 3, proc.stderr.decode()
        assert path.read_bytes().startswith(before) and len(path.read_bytes()) > len(before)
        want = ["old 1", "old 2", "old 3", *["new 0\n...\n---"][:survivors]]
        for reader in (store, YamlConversationStore(directory)):
            assert [m.content for m in reader.get_messages("s")] == want
            assert [m.content for m in reader.get_messages("s", limit=2)] == want[-2:]
            assert [m.content for m in reader.iter_messages("s")] == want
            assert reader.count_messages("s") == len(want) and reader.damaged_files() == []
        m = store.add_message("s", "assistant", "after the crash")
        assert m.seq == len(want) + 1
        assert [d["content"] for d in documents(path)] == [*want, "after the crash"]


def test_a_new_store_reads_the_ids_of_a_long_session_without_parsing_its_documents(directory, monkeypatch):
    with YamlConversationStore(directory) as writer:
        writer.create_session("big")
        ids = [f"id-{i}" for i in range(1995)] + ["123", "true", "a b", "1.5", "x" * 200]  # the last five: parsed
        writer.add_messages("big", [{"role": "user", "content": f"m{i}", "id": id_} for i, id_ in enumerate(ids)])
    parsed: list[bytes] = []
    real = CODEC.decode
    monkeypatch.setattr(YamlConversationStore.codec, "decode", lambda raw: parsed.append(raw) or real(raw))
    with YamlConversationStore(directory) as store:
        again = store.add_message("big", "user", "retry", id="id-1500")  # the first append reads every id
        assert (again.seq, again.content) == (1501, "m1500") and len(parsed) <= 10
        assert [store.add_message("big", "user", "retry", id=id_).seq for id_ in ids[-5:]] == [1996, 1997, 1998, 1999, 2000]
        assert store.add_message("big", "user", "new", id="id-new").seq == 2001


# ---- removals cut the file in place ----


def test_removals_cut_the_documents_off_the_end_in_place(store, monkeypatch):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}\n..."} for i in range(1, 1001)])
    path = messages_file(store, "s")
    before, inode = path.read_bytes(), path.stat().st_ino
    store.add_message("s", "assistant", {"answer": "...\n---"}, id="last")
    parsed: list[bytes] = []
    real = store.codec.decode
    monkeypatch.setattr(store.codec, "decode", lambda raw: parsed.append(raw) or real(raw))
    assert store.pop_message("s").content == {"answer": "...\n---"} and len(parsed) <= 3
    assert path.read_bytes() == before and path.stat().st_ino == inode  # no removed document, no marker left
    parsed.clear()
    assert [m.seq for m in store.get_messages("s", limit=20)] == list(range(981, 1001)) and len(parsed) == 20
    assert store.truncate("s", 990) == 10
    assert path.read_bytes() == before[: before.index(b"seq: 991\n")].rsplit(b"---\n", 1)[0]
    assert store.clear_messages("s") == 990 and path.read_bytes() == b""
    assert store.add_message("s", "user", "fresh").seq == 1


def test_a_crash_after_the_cut_record_leaves_the_new_state(store):
    store.create_session("s")
    store.add_messages("s", [{"role": "user", "content": f"m{i}"} for i in range(1, 6)])
    path = messages_file(store, "s")
    docs = path.read_bytes().split(END)
    kept = END.join(docs[:2]) + END
    cut = CODEC.encode({"seq": 2, "created_at": datetime.now(timezone.utc).isoformat(), "cut": len(kept)})
    with open(path, "ab") as f:  # what a removal leaves when its process dies right after the commit point
        f.write(cut)
    assert documents(path)[-1]["cut"] == len(kept)
    assert [m.seq for m in store.get_messages("s")] == [1, 2]
    assert [m.seq for m in store.get_messages("s", limit=5)] == [1, 2] and store.count_messages("s") == 2
    assert store.add_message("s", "user", "m3 again").seq == 3
    assert path.read_bytes().startswith(kept) and [d["content"] for d in documents(path)] == ["m1", "m2", "m3 again"]


# ---- damage ----


def test_damage_is_reported_naming_the_file_and_the_document(store, directory):
    store.create_session("bad-header")
    header = directory / f"{session_file_stem('bad-header')}.session.yaml"
    header.write_text("session_id: [unclosed\n")
    with pytest.raises(IntegrityError, match=r"not YAML: .*line"):
        store.get_session("bad-header")
    store.create_session("bad-docs")
    store.add_messages("bad-docs", [{"role": "user", "content": f"m{i}"} for i in range(1, 4)])
    path = messages_file(store, "bad-docs")
    docs = path.read_bytes().split(END)
    path.write_bytes(docs[0] + END + b"---\njust: a note" + END + END.join(docs[1:]))
    problems = {d["file"]: d["problem"] for d in store.damaged_files()}
    assert problems[header.name].startswith("not YAML: ")
    assert problems[path.name] == "document 2 is not a message"
    assert [m.seq for m in store.get_messages("bad-docs")] == [1, 2, 3]  # never read as a message
    with YamlStateStore(directory / "state.yaml") as state:
        (directory / "state.yaml").write_text("items: {a: [1, null]\n")
        with pytest.raises(IntegrityError, match=r"state\.yaml is damaged \(not YAML"):
            state.get("a")
        assert state.damaged_files()[0]["problem"].startswith("not YAML: ")
    assert store.delete_session("bad-header") is True  # a damaged session can still be deleted


def test_a_link_planted_at_a_messages_file_is_never_followed(store, tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_bytes(b"secret\n")
    store.create_session("s")
    path = messages_file(store, "s")
    path.unlink()
    path.symlink_to(outside)
    with pytest.raises(IntegrityError, match="symbolic link"):
        store.add_message("s", "user", "hi")
    assert outside.read_bytes() == b"secret\n"


# ---- without libyaml ----

PURE_PYTHON = """
import json, sys, warnings
sys.modules["yaml._yaml"] = None  # PyYAML as built without libyaml
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from praison_db.backends import yamlfile
from praison_db.backends.yamlfile import YamlConversationStore

assert yamlfile._Loader.__name__ == "SafeLoader", yamlfile._Loader
with YamlConversationStore(sys.argv[1]) as store:
    read = [m.model_dump(mode="json") for m in store.get_messages("c")]
    store.create_session("py")
    written = store.add_message("py", "user", json.loads(sys.argv[2]))
record = store.codec.encode_message(written).decode()
print(json.dumps({"warnings": [str(w.message) for w in caught], "read": read, "record": record}))
"""


def test_without_libyaml_the_pure_python_loader_and_dumper_serve_with_a_warning(directory):
    value = {"s": AWKWARD_STRINGS, "n": AWKWARD_NUMBERS[:-3], "k": {s: 1 for s in AWKWARD_STRINGS}}
    with YamlConversationStore(directory) as store:
        store.create_session("c")
        written = store.add_message("c", "user", value)
    proc = subprocess.run(
        [sys.executable, "-c", PURE_PYTHON, str(directory), json.dumps(value)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=60, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert any("libyaml" in w for w in out["warnings"])
    assert out["read"] == [written.model_dump(mode="json")]  # what the C dumper wrote, read by the Python loader
    record = out["record"].encode()  # what the Python dumper writes: the same boundaries, read by the C loader
    assert boundary_problem(record) is None and same(decoded(record).content, value)
    with YamlConversationStore(directory) as store:  # and the other way round
        assert same(store.get_messages("py")[0].content, value)
    assert yamlfile._Loader is yaml.CSafeLoader  # this process has libyaml: the C loader is the one used
