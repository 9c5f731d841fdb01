"""The protocols of clients that already exist, each a thin translation at the web edge over
the same use cases (``src/services/chat.py``, ``threads.py``, ``approvals.py``) and the one
follower (``src/runs/follower.py``, through ``src/web/sse.py``'s ``Wire``):

- ``openai``: the OpenAI-compatible ``/v1`` (the ``openai`` SDKs, Open WebUI);
- ``agent_protocol``: the Agent Protocol as LangGraph's server speaks it (``langgraph_sdk``,
  agent-chat-ui), at the root paths;
- ``ai_sdk``: the Vercel AI SDK's UI message stream (``useChat``) at ``/api/chat``.

No adapter has run logic, storage or limits of its own: ownership, rate limits, multitask and
approvals hold through every one of them as through isochat's own API.
"""
