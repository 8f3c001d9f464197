"""Conversation turns through LangChain's RunnableWithMessageHistory over PraisonChatMessageHistory, with a fake chat
model: what tests/integrations/test_langchain.py runs in its own process and, to prove a restart, in a child one.

    python -m tests.integrations.langchain_turns URL SESSION_ID   # the first turn, then exit
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from praison_db.integrations.langchain import PraisonChatMessageHistory

SYSTEM = "You are terse."
QUESTIONS = ("My name is Alice; look up the weather in Paris.", "What is my name?")
# Each turn's answer, with the fields a real model returns: a tool call, token counts, provider metadata, an id.
ANSWERS = (
    AIMessage(
        "Hello Alice.",
        id="ai-turn-1",
        tool_calls=[{"name": "weather", "args": {"city": "Paris", "days": [1, 2]}, "id": "call-1"}],
        usage_metadata={"input_tokens": 12, "output_tokens": 7, "total_tokens": 19},
        response_metadata={"model_name": "fake", "finish_reason": "tool_calls"},
        additional_kwargs={"refusal": None},
    ),
    AIMessage("Your name is Alice.", id="ai-turn-2", response_metadata={"model_name": "fake"}),
)


class SeenByModel(BaseCallbackHandler):
    """Records the messages each chat model call receives."""

    def __init__(self) -> None:
        self.calls: list[list[BaseMessage]] = []

    def on_chat_model_start(self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any) -> None:
        self.calls.append(list(messages[0]))


class Chat:
    """A prompt and a fake model answering turn ``turn`` of ANSWERS, with its history in praison_db at ``url``; it
    remembers the histories it opened, to close them."""

    def __init__(self, url: str, turn: int) -> None:
        self.url = url
        self.histories: list[PraisonChatMessageHistory] = []
        self.seen = SeenByModel()
        prompt = ChatPromptTemplate.from_messages(
            [("system", SYSTEM), MessagesPlaceholder("history"), ("human", "{question}")]
        )
        model = FakeMessagesListChatModel(responses=[ANSWERS[turn]], callbacks=[self.seen])
        self.runnable = RunnableWithMessageHistory(
            prompt | model, self.history, input_messages_key="question", history_messages_key="history"
        )

    def history(self, session_id: str) -> PraisonChatMessageHistory:
        self.histories.append(PraisonChatMessageHistory(session_id, self.url))
        return self.histories[-1]

    def ask(self, session_id: str, question: str) -> BaseMessage:
        try:
            return self.runnable.invoke({"question": question}, {"configurable": {"session_id": session_id}})
        finally:
            for h in self.histories:
                h.close()

    async def aask(self, session_id: str, question: str) -> BaseMessage:
        try:
            return await self.runnable.ainvoke({"question": question}, {"configurable": {"session_id": session_id}})
        finally:
            for h in self.histories:
                await h.aclose()


if __name__ == "__main__":
    url, session_id = sys.argv[1:3]
    Chat(url, 0).ask(session_id, QUESTIONS[0])
