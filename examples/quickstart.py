"""The first five minutes with praison-db: a store from a URL, a session, messages, state.

Run: python examples/quickstart.py [URL]   (default: sqlite:///conversations.db in the current folder)
"""

from __future__ import annotations

import sys
from datetime import timedelta

from praison_db import db


def main(url: str) -> None:
    with db(database_url=url) as store:
        print(store)
        chat = store.conversations
        session = chat.get_or_create_session("quickstart", user_id="alice", name="Quickstart")
        chat.add_message(session.session_id, "user", "What's the weather in Paris?")
        chat.add_message(
            session.session_id,
            "assistant",
            None,
            tool_calls=[{"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}],
        )
        chat.add_message(session.session_id, "tool", '{"temp_c": 21}', tool_call_id="call_1")
        chat.add_message(session.session_id, "assistant", "It is 21°C in Paris.")

        for message in chat.get_messages(session.session_id, limit=3):  # the newest three, oldest first
            print(f"  #{message.seq} {message.role:9} {message.content or message.tool_calls}")
        print("sessions of alice:", [s.session_id for s in chat.list_sessions(user_id="alice")])
        print("pruned idle sessions:", chat.prune(older_than=timedelta(days=365)))

        state = store.state.scope("session", session.session_id)
        state.set("turns", 0, ttl=3600)
        print("turns:", state.incr("turns"), "ttl ~", round(state.ttl("turns") or 0), "s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///conversations.db")
