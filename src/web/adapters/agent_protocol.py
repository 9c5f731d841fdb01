"""The Agent Protocol as LangGraph's server speaks it, at the root paths, for
``langgraph_sdk``, its JavaScript twin, ``useStream`` and agent-chat-ui: one assistant and
graph, ``isochat``; threads; runs on a thread (in the background, to the end, streamed in the
``values``, ``updates``, ``messages-tuple`` and ``custom`` modes), joined, resumed after an
event id, cancelled. docs/api.md ("Agent Protocol as the LangGraph SDK speaks it") says what
isochat decided where the protocol and the contract are silent.

- ``agent_protocol_shapes``: isochat's objects in LangGraph's shapes;
- ``agent_protocol_bodies``: the request bodies;
- ``agent_protocol_wire``: a run's events as LangGraph's stream;
- ``agent_protocol_threads`` / ``agent_protocol_runs``: the handlers.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from src.web.adapters import agent_protocol_runs as runs
from src.web.adapters import agent_protocol_threads as threads

RUN = "/threads/{thread_id}/runs/{run_id}"

ROUTES: list[BaseRoute] = [
    Route("/info", threads.langgraph_info, methods=["GET"]),
    Route("/assistants/search", threads.langgraph_search_assistants, methods=["POST"]),
    Route("/assistants/{assistant_id}", threads.langgraph_get_assistant, methods=["GET"]),
    Route("/threads", threads.langgraph_create_thread, methods=["POST"]),
    Route("/threads/search", threads.langgraph_search_threads, methods=["POST"]),
    Route("/threads/{thread_id}", threads.langgraph_get_thread, methods=["GET"]),
    Route("/threads/{thread_id}", threads.langgraph_patch_thread, methods=["PATCH"]),
    Route("/threads/{thread_id}", threads.langgraph_delete_thread, methods=["DELETE"]),
    Route("/threads/{thread_id}/state", threads.langgraph_get_state, methods=["GET"]),
    Route("/threads/{thread_id}/history", threads.langgraph_get_history, methods=["GET"]),
    Route("/threads/{thread_id}/history", threads.langgraph_post_history, methods=["POST"]),
    Route("/threads/{thread_id}/runs", runs.langgraph_create_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs/wait", runs.langgraph_wait_run, methods=["POST"]),
    Route("/threads/{thread_id}/runs/stream", runs.langgraph_stream_run, methods=["POST"]),
    Route(RUN, runs.langgraph_get_run, methods=["GET"]),
    Route(f"{RUN}/join", runs.langgraph_join_run, methods=["GET"]),
    Route(f"{RUN}/stream", runs.langgraph_join_stream, methods=["GET"]),
    Route(f"{RUN}/cancel", runs.langgraph_cancel_run, methods=["POST"]),
]
