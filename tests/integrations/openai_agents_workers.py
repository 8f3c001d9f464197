"""What the multi-process cases of tests/integrations/test_openai_agents.py run in each child process."""

from __future__ import annotations

import asyncio
from typing import Any

from praison_db.integrations.openai_agents import PraisonSession


def add_items(barrier: Any, url: str, options: dict[str, Any], session_id: str, worker: int, count: int) -> int:
    """Append ``count`` items one call at a time to a session none of the workers has created yet."""
    session = PraisonSession(session_id, url, user_id="racer", **options)
    try:
        asyncio.run(session.get_items(limit=1))  # connected before the start line: the race is on the first appends
        barrier.wait()

        async def append() -> None:
            for i in range(count):
                await session.add_items([{"role": "user", "content": f"w{worker}-{i}"}])

        asyncio.run(append())
        return count
    finally:
        session.close()
