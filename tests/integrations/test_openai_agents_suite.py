"""The OpenAI Agents SDK's own session tests, run against PraisonSession.

The SDK's source distribution ships its tests. For the installed version, this test downloads it (once, into
pytest's cache folder), and runs its session tests in a pytest subprocess with
tests/integrations/openai_agents_sdk_conftest.py as their conftest: that binds ``SQLiteSession`` and
``AsyncSQLiteSession`` (what the SDK's tests build their sessions with) to classes that make a PraisonSession on a
praison URL instead: a SQLite file beside the test's own ``db_path``, and once more memory://.

Which tests run:

- three files whole, every test in them being about a session: ``tests/memory/test_session.py`` (SQLiteSession
  directly and under ``Runner.run`` / ``run_sync`` / ``run_streamed``), ``tests/memory/test_session_limit.py``,
  ``tests/extensions/memory/test_async_sqlite_session.py``;
- from the other files below, the tests that build a session: ``EncryptedSession`` and
  ``OpenAIResponsesCompactionSession`` wrapping one, and runner tests (tool failures, max turns, soft cancel,
  resuming, handoffs) that check what a session holds afterwards;
- minus DESELECTED: tests of SQLiteSession's own implementation, which no other session can pass.

The conftest records which tests built a PraisonSession: a parametrised test can take another session for some of its
cases (the SDK's in-memory list, the real AsyncSQLiteSession), and only the others count as run on PraisonSession.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from praison_db.testing import in_ci

HERE = Path(__file__).resolve().parent
WHOLE_FILES = (
    "tests/memory/test_session.py",
    "tests/memory/test_session_limit.py",
    "tests/extensions/memory/test_async_sqlite_session.py",
)
PICKED_FILES = (
    "tests/extensions/memory/test_encrypt_session.py",
    "tests/memory/test_compaction_suffix.py",
    "tests/memory/test_compaction_model_visibility.py",
    "tests/memory/test_openai_responses_compaction_session.py",
    "tests/test_agent_runner.py",
    "tests/test_agent_runner_streamed.py",
    "tests/test_max_turns.py",
    "tests/test_soft_cancel.py",
    "tests/test_tool_batch_failure_history.py",
    "tests/test_native_tool_failure_history.py",
    "tests/test_programmatic_tool_calling.py",
    "tests/test_run_impl_resume_paths.py",
    "tests/test_tool_failure_boundaries.py",
)

_SESSION = "tests/memory/test_session.py::"
_ASYNC = "tests/extensions/memory/test_async_sqlite_session.py::"
_ENCRYPT = "tests/extensions/memory/test_encrypt_session.py::"
_SUFFIX = "tests/memory/test_compaction_suffix.py::"
_VISIBILITY = "tests/memory/test_compaction_model_visibility.py::"
_COMPACTION = "tests/memory/test_openai_responses_compaction_session.py::TestOpenAIResponsesCompactionSession::"

# Tests of SQLiteSession's (and AsyncSQLiteSession's) own implementation, left out with the reason. A name without
# parameters leaves out every case of that test.
DESELECTED = [
    # SQLite connection handling: worker-thread connections and their reaping, the process-wide file lock, WAL
    # set-up retries, connections quarantined after a failed rollback or close. They read or replace the session's
    # private attributes (_connections, _connections_lock, _get_connection, _file_locks).
    _SESSION + "test_sqlite_session_close_closes_worker_thread_connections",
    _SESSION + "test_sqlite_session_reaps_connections_from_exited_worker_threads",
    _SESSION + "test_sqlite_session_closes_retired_connections_before_the_next_allocation",
    _SESSION + "test_sqlite_session_keeps_connections_of_live_worker_threads",
    _SESSION + "test_sqlite_session_file_lock_is_shared_across_instances",
    _SESSION + "test_sqlite_session_rollback_failure_evicts_connection",
    _SESSION + "test_sqlite_session_close_retries_quarantined_connection",
    _ASYNC + "test_failed_initialization_closes_candidate_connection",
    _ASYNC + "test_initialization_retries_transient_wal_lock",
    _ASYNC + "test_initialization_does_not_retry_unrecoverable_wal_errors",
    _ASYNC + "test_cancelled_wal_retry_closes_startup_connection",
    _ASYNC + "test_rollback_failure_closes_and_evicts_connection",
    _ASYNC + "test_close_retries_connection_quarantined_after_rollback_failure",
    _ASYNC + "test_close_retries_quarantined_failed_initialization_candidate",
    _ASYNC + "test_cancelled_initialization_finishes_candidate_close",
    _ASYNC + "test_initialization_failure_then_cancellation_during_candidate_close",
    _ASYNC + "test_cancelled_connect_closes_eventually_acquired_connection",
    _ASYNC + "test_cancelled_close_finishes_cleanup_and_propagates_cancellation",
    _COMPACTION + "test_settled_pop_failure_invalidates_response_chain",
    _COMPACTION + "test_settled_clear_failure_invalidates_response_chain",
    # Rows the test writes into SQLiteSession's tables with sqlite3: corrupt JSON the session must skip, created_at
    # values rewritten to tie. A praison store's rows are written by praison_db only.
    _SESSION + "test_sqlite_session_pop_item_skips_corrupt_most_recent",
    _SESSION + "test_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows",
    _SESSION + "test_sqlite_session_get_items_limit_skips_corrupt_newest_rows",
    _SESSION + "test_sqlite_session_get_items_session_settings_limit_skips_corrupt_rows",
    _ASYNC + "test_async_sqlite_session_pop_item_skips_corrupt_most_recent",
    _ASYNC + "test_async_sqlite_session_pop_item_returns_none_after_dropping_only_corrupt_rows",
    _ASYNC + "test_async_sqlite_session_get_items_limit_skips_corrupt_newest_rows",
    _ASYNC + "test_async_sqlite_session_get_items_same_timestamp_consistent_order",
    _ASYNC + "test_async_sqlite_session_pop_item_same_timestamp_returns_latest",
    # Rollback of sqlite3 transactions: the test drops a table under the session, or puts a connection whose commit
    # or rollback it controls in place of the session's own, then probes SQLite's write lock (or expects sqlite3's
    # errors: OperationalError, the TypeError of json.dumps).
    _SESSION + "test_sqlite_session_failed_add_items_releases_write_lock",
    _SESSION + "test_sqlite_session_failed_clear_session_rolls_back",
    _SESSION + "test_sqlite_session_failed_pop_item_releases_write_lock",
    _SESSION + "test_sqlite_session_post_commit_cancellation_propagates_after_known_outcome",
    _ASYNC + "test_failed_add_items_rolls_back_and_reuses_connection",
    _ASYNC + "test_failed_clear_session_rolls_back",
    _ASYNC + "test_failed_pop_item_releases_write_lock",
    _ASYNC + "test_cancelled_add_items_rolls_back_write_transaction",
    _ASYNC + "test_operation_failure_then_cancellation_during_rollback",
    _ASYNC + "test_post_commit_cancellation_propagates_after_known_mutation_outcome",
    "tests/test_run_impl_resume_paths.py::test_handoff_resume_after_cancelled_compaction_commits",  # _insert_items
    # Partial compaction over SQLiteSession's private _get_compaction_snapshot: a bounded read plus a compare-and-
    # replace of the newest rows in one SQLite transaction. OpenAIResponsesCompactionSession uses it where the
    # underlying session has one and otherwise compacts only a complete history, as it does over RedisSession; these
    # tests expect the partial compactions.
    _SUFFIX + "test_expired_prefix_does_not_block_full_live_window",
    _SUFFIX + "test_suffix_transaction_rolls_back_failed_insert",
    _SUFFIX + "test_new_backend_write_invalidates_snapshot",
    _SUFFIX + "test_cancelled_suffix_transaction_settles_before_newer_append",
    _SUFFIX + "test_failed_encrypted_suffix_transaction_preserves_original_tokens",
    _SUFFIX + "test_repeated_ttl_bursts_do_not_accumulate_expired_rows",
    _SUFFIX + "test_prefix_cleanup_stops_before_retained_history",
    _SUFFIX + "test_partial_compaction_does_not_split_tool_call_and_output",
    _SUFFIX + "test_unverifiable_rows_inside_snapshot_are_retained",
    _SUFFIX + "test_partial_compaction_preserves_reasoning_and_its_follower",
    _VISIBILITY + "test_backend_read_limit_cannot_hide_retained_history_from_compaction",
    _VISIBILITY + "test_automatic_compaction_does_not_reload_unbounded_hidden_history",
    _VISIBILITY + "test_expired_read_overhead_does_not_authorize_hidden_history",
    _COMPACTION + "test_automatic_compaction_rollback_budget",  # its case over SQLiteSession expects the snapshot
    _ENCRYPT + "test_encrypted_compaction_skips_unencrypted_stored_history",
    # EncryptedSession's authenticated pop: over a real SQLiteSession (an isinstance check) it decrypts inside the
    # session's private _pop_item_with_validation transaction and rolls the delete back when the key is wrong; over
    # any other session it pops, then skips what it cannot decrypt. These tests expect the SQLite transaction.
    _ENCRYPT + "test_encrypted_pop_wrong_key_preserves_recoverable_history",
    _ENCRYPT + "test_encrypted_pop_rechecks_authentication_after_expired_tail",
    _ENCRYPT + "test_encrypted_pop_wrong_key_preserves_row_identity",
    _ENCRYPT + "test_encrypted_pop_authentication_is_atomic_with_concurrent_mutations",
    _ENCRYPT + "test_encrypted_pop_cancellation_waits_for_authentication_rollback",
]

# What the run must report, on every backend (the SDK's openai-agents 0.24.0 tests).
EXPECTED_PASSED = 341  # every selected test
EXPECTED_ON_PRAISON = 325  # of them, those that built a PraisonSession
EXPECTED_DESELECTED = 117  # the cases of the 60 tests DESELECTED names

URLS = {
    "sqlite": "sqlite:///{path}",
    "memory": "memory://oa{key}",
}


def _cannot(what: str, done: subprocess.CompletedProcess[str]) -> None:
    message = f"{what} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(f"SKIPPED: {message} (no network?)")


def _members(archive: tarfile.TarFile, top: str) -> list[tarfile.TarInfo]:
    """The SDK's tests and its pyproject.toml (their pytest settings), refusing anything that would land outside."""
    members = []
    for member in archive.getmembers():
        if not (member.name.startswith(f"{top}/tests/") or member.name == f"{top}/pyproject.toml"):
            continue
        if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
            raise AssertionError(f"unexpected member in the openai-agents source distribution: {member.name}")
        members.append(member)
    return members


@pytest.fixture(scope="module")
def sdk_tests(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding the installed SDK version's tests/ and pyproject.toml."""
    version = metadata.version("openai-agents")
    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("openai-agents-sdist")) if cache is not None else tmp_path_factory.mktemp("openai-agents-sdist")
    top = f"openai_agents-{version}"
    root, ready = base / top, base / f"{top}.ready"
    if not ready.exists():
        archive_path = base / f"{top}.tar.gz"
        if not archive_path.exists():
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                 f"openai-agents=={version}", "-d", str(base)],
                capture_output=True, text=True, timeout=900,
            )
            if done.returncode != 0:
                _cannot(f"pip download openai-agents=={version}", done)
        shutil.rmtree(root, ignore_errors=True)
        with tarfile.open(archive_path) as archive:
            archive.extractall(base, members=_members(archive, top))  # noqa: S202 - members checked above
        ready.write_text(version)
    shutil.copyfile(HERE / "openai_agents_sdk_conftest.py", root / "conftest.py")
    return root


def _environ(**extra: str) -> dict[str, str]:
    # No key of a real model account, and no database choice of this run leaking into the child.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PRAISON_")) and k != "DATABASE_URL"}
    return {**env, **extra}


@pytest.mark.parametrize("backend", list(URLS))
def test_the_sdks_session_tests_pass_on_praison_session(backend: str, sdk_tests: Path, tmp_path: Path) -> None:
    report, deselect = tmp_path / "report.json", tmp_path / "deselect.txt"
    deselect.write_text("\n".join(DESELECTED) + "\n")
    files = tmp_path / "files"
    files.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--timeout=120",
         "-o", "addopts=", *WHOLE_FILES, *PICKED_FILES],
        cwd=sdk_tests, capture_output=True, text=True, timeout=1200,
        env=_environ(
            PRAISON_OA_URL=URLS[backend],
            PRAISON_OA_TMP=str(files),
            PRAISON_OA_FILES=",".join(WHOLE_FILES),
            PRAISON_OA_DESELECT=str(deselect),
            PRAISON_OA_REPORT=str(report),
        ),
    )
    assert report.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    results: dict[str, Any] = json.loads(report.read_text())
    tests = results["tests"]
    failed = sorted(name for name, t in tests.items() if t["outcome"] == "failed")
    assert failed == [], done.stdout[-8000:]
    assert [name for name, t in tests.items() if t["outcome"] == "skipped"] == []
    passed = [name for name, t in tests.items() if t["outcome"] == "passed"]
    on_praison = [name for name in passed if tests[name]["praison"]]
    # Every name in DESELECTED matched a collected test: none went stale with a change of the SDK's tests.
    assert sorted(set(DESELECTED) - set(results["deselect_matched"])) == []
    print(f"{backend}: {len(passed)} passed ({len(on_praison)} on PraisonSession), {results['deselected_listed']} deselected "
          f"as SQLite internals, {results['deselected_unrelated']} tests of those files that build no session")
    assert (len(passed), len(on_praison), results["deselected_listed"]) == (
        EXPECTED_PASSED, EXPECTED_ON_PRAISON, EXPECTED_DESELECTED
    )
