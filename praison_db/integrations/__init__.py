"""Adapters that make praison_db the storage behind agent frameworks' own session protocols.

Each lives in its own module and needs its framework, installed by an extra:

- ``praison_db.integrations.openai_agents`` (``pip install 'praison-db[openai-agents]'``): ``PraisonSession``,
  the OpenAI Agents SDK's ``Session``;
- ``praison_db.integrations.langchain`` (``[langchain]``): ``PraisonChatMessageHistory``, LangChain's
  ``BaseChatMessageHistory``;
- ``praison_db.integrations.langgraph`` (``[langgraph]``): ``PraisonCheckpointSaver``, LangGraph's
  ``BaseCheckpointSaver``.
"""
