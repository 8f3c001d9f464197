"""An Agent whose memory survives a restart: run it twice with the same URL.

Run: python examples/agent_restart.py [URL]   (default: the zero-config JSON store under ~/.praison)
The first run introduces Alice; every later run asks for her name and gets it from the restored history.
"""

from __future__ import annotations

import sys

from praison_db import Agent, db


def main(url: str | None) -> None:
    store = db(database_url=url) if url else db()
    with store:
        agent = Agent(name="Assistant", instructions="You are helpful.", db=store, session_id="user-123")
        known = store.conversations.count_messages("user-123") > 0
        question = "What's my name?" if known else "My name is Alice"
        print("you:      ", question)
        print("assistant:", agent.chat(question))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
