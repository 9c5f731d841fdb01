"""The agent loop: a specialist answers by letting the model call its tools.

    ask the model (the tools' schemas, the conversation so far)
      -> it answers: that is the answer (streamed live as ``agent_thinking``)
      -> it calls tools: each call runs (``tool_executing`` / ``tool_completed``), calls of one
         turn side by side where the tools allow it, and the results go back as ``tool``
         messages; ask again

A tool that fails (refuses its input, raises, is given arguments that do not fit its schema,
or does not exist) gives the model an error result, and the model may correct itself. The run
fails with ``tool_error`` when the model cannot get past the failure: it answers nothing after
it, repeats the very call that failed, or its tools have failed ``MAX_FAILING_TURNS`` turns in
a row. A model that is still calling tools after ``MAX_STEPS`` calls fails the run with
``step_limit``. Everything here runs in the run's task, so the run's deadline and a cancel
reach every model call and every tool (the answer's events go out from a task of the answer's
own, which the run's task waits for or cancels: ``src/agents/thinking.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from src.agents.approval import (
    ApprovalPolicy,
    AwaitingApproval,
    DoneCall,
    LoopState,
    PausedTurn,
)
from src.agents.base import MAX_EVENT_TEXT_CHARS, Agent, AgentError, AgentTracker, RunEvents
from src.agents.mcp import mcp_tools
from src.agents.thinking import AnswerFull, AnswerStream
from src.agents.tool import MAX_TOOL_OUTPUT_CHARS, Tool, ToolError, truncate
from src.agents.tools import ConversationHistory
from src.logs import log_failure
from src.runs.approvals import DEFAULT_REFUSAL
from src.runs.domain import Decision, Message, RunFailure
from src.runs.usage import RunUsage
from src.services.llm import LLM, ChatMessage, ToolCall
from src.services.mcp.run import RunMcp

log = logging.getLogger(__name__)

MAX_STEPS = 8
MAX_FAILING_TURNS = 3
# Each earlier message the model is given as context is cut to this.
CONTEXT_MESSAGE_CHARS = 2_000


class StepLimitReached(RunFailure):
    """The model kept calling tools past ``MAX_STEPS``: ``step_limit``."""

    code = "step_limit"


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call: ToolCall
    output: str
    error: str | None = None  # why the call failed, told to the model
    refusal: str | None = None  # a person declined the call: what the model is told

    def as_message(self) -> ChatMessage:
        if self.refusal is not None:
            content = json.dumps({"refused": self.refusal}, ensure_ascii=False)
        elif self.error is not None:
            content = json.dumps({"error": self.error}, ensure_ascii=False)
        else:
            content = self.output
        return ChatMessage("tool", content, tool_call_id=self.call.id)


class ToolAgent(Agent):
    """A specialist: instructions, tools, and the loop above. isochat's own specialists are
    this class with other instructions and tools (``src/agents/specialists.py``); a team's can
    be too, declared in its own container, without a class of its own."""

    # What the specialist is for: what triage is told about its route.
    description: str = ""
    instructions: str = "You are isochat, a helpful assistant."
    # How many of the thread's earlier messages the model is given (0: none, no read).
    context_messages: int = 0

    def __init__(
        self,
        *,
        events: RunEvents,
        tracker: AgentTracker,
        llm: LLM,
        usage: RunUsage,
        tools: Sequence[Tool[Any]] = (),
        history: ConversationHistory | None = None,
        approvals: ApprovalPolicy | None = None,
        mcp: RunMcp | None = None,
        name: str | None = None,
        instructions: str | None = None,
        context_messages: int | None = None,
        max_steps: int = MAX_STEPS,
    ) -> None:
        super().__init__(events=events, tracker=tracker)
        if name is not None:
            self.name = name
        if instructions is not None:
            self.instructions = instructions
        if context_messages is not None:
            self.context_messages = context_messages
        self._llm = llm
        self._usage = usage
        self._tools = {tool.name: tool for tool in tools}
        self._history = history
        self._approvals = approvals  # None: only the tools' own say which calls wait
        self._mcp = mcp  # the run's MCP sessions: the tools of the servers serving this route
        self._max_steps = max_steps

    async def answer(self, content: str) -> str:
        await self._add_mcp_tools()
        messages = [ChatMessage("system", self.instructions)]
        messages += await self._context()
        messages.append(ChatMessage("user", content))
        return await self._go_on(
            LoopState(messages), AnswerStream(events=self._events, agent=self.name)
        )

    async def resume_answer(self, turn: PausedTurn, decisions: Mapping[str, Decision]) -> str:
        """Go on from a turn paused for approval, once every waiting call is decided:
        approved and edited calls run (edited ones with the arguments given instead), rejected
        ones give the model the refusal, and the loop goes on as if the turn had not paused."""
        self._usage.carry(turn.usage)
        await self._add_mcp_tools()
        answer = AnswerStream(
            events=self._events, agent=self.name, text=turn.answer, sent=turn.answer_sent
        )
        to_run, refused = [], []
        for call in turn.pending:
            decision = decisions[call.id]
            if decision.decision == "reject":
                message = decision.message or DEFAULT_REFUSAL
                refused.append(ToolOutcome(call, "", refusal=message))
            elif decision.decision == "edit" and decision.arguments is not None:
                to_run.append(ToolCall(call.id, call.name, decision.arguments))
            else:
                to_run.append(call)
        # The model's turn as it now stands: an edited call with the arguments that ran.
        edited = {call.id: call for call in to_run}
        asked = turn.loop.messages[-1]
        turn.loop.messages[-1] = replace(
            asked, tool_calls=tuple(edited.get(c.id, c) for c in asked.tool_calls)
        )
        ran = [ToolOutcome(d.call, d.output, d.error) for d in turn.done]
        ran += await self._call_tools(to_run)
        by_id = {outcome.call.id: outcome for outcome in [*ran, *refused]}
        self._after_turn(turn.loop, [by_id[call.id] for call in turn.calls])
        return await self._go_on(turn.loop, answer)

    async def _go_on(self, state: LoopState, answer: AnswerStream) -> str:
        """Ask the model, run the tools it calls, and again, until it answers."""
        try:
            return await self._turns(state, answer)
        finally:
            await answer.close()  # on a way out without the flush: no event after the run

    async def _turns(self, state: LoopState, answer: AnswerStream) -> str:
        specs = [tool.spec() for tool in self._tools.values()]
        while state.steps < self._max_steps:
            state.steps += 1
            answer.new_turn()
            try:
                reply = await self._llm.reply(state.messages, tools=specs, on_text=answer.add)
            except AnswerFull:
                return answer.text
            self._usage.add(reply.usage)
            if not reply.tool_calls:
                await answer.flush()
                if answer.text.strip():
                    return answer.text
                if state.last_failure is not None:
                    raise ToolError(state.last_failure)  # nothing to say after the failure
                raise AgentError("the model gave an empty answer")
            calls = reply.tool_calls
            repeated = [c for c in calls if (c.name, c.arguments) in state.failed_calls]
            if repeated and state.last_failure is not None:
                raise ToolError(state.last_failure)  # the same failing call again: no way past
            await answer.flush()
            state.messages.append(ChatMessage("assistant", reply.text, tool_calls=calls))
            waiting = tuple(c for c in calls if self._needs_approval(c))
            if waiting:
                # The turn's other calls run first; then the run pauses until a person decides.
                done = await self._call_tools([c for c in calls if c not in waiting])
                raise AwaitingApproval(
                    PausedTurn(
                        agent=self.name,
                        loop=state,
                        calls=calls,
                        done=tuple(DoneCall(o.call, o.output, o.error) for o in done),
                        pending=waiting,
                        answer=answer.text,
                        answer_sent=answer.sent,
                        usage=self._usage.total,
                    )
                )
            self._after_turn(state, await self._call_tools(calls))
        raise StepLimitReached(
            f"the {self.name} agent was still calling tools after {self._max_steps} model calls"
        )

    def _after_turn(self, state: LoopState, outcomes: Sequence[ToolOutcome]) -> None:
        """The turn's results go to the model; a failure the model cannot get past ends the
        run (a refusal is an answer, not a failure)."""
        state.messages += [outcome.as_message() for outcome in outcomes]
        failures = [o for o in outcomes if o.error is not None]
        state.failed_calls |= {(o.call.name, o.call.arguments) for o in failures}
        state.failing_turns = state.failing_turns + 1 if failures else 0
        state.last_failure = failures[-1].error if failures else None
        if state.last_failure is not None and state.failing_turns >= MAX_FAILING_TURNS:
            raise ToolError(state.last_failure)

    def _needs_approval(self, call: ToolCall) -> bool:
        """Whether ``call`` waits for a person: only a call that would run (a known tool, with
        arguments that fit it) can."""
        tool = self._tools.get(call.name)
        if tool is None:
            return False
        try:
            params = tool.parse(call.arguments)
        except ToolError:
            return False
        if self._approvals is None:
            return tool.needs_approval(params)
        return self._approvals.needs(tool, params)

    async def tool(self, name: str) -> Tool[Any] | None:
        """The tool of that name, if this agent has one."""
        await self._add_mcp_tools()
        return self._tools.get(name)

    async def _add_mcp_tools(self) -> None:
        """The tools of the MCP servers that serve this specialist's route (its name), beside
        its own (which keep their names), asked once per agent."""
        mcp, self._mcp = self._mcp, None
        if mcp is not None:
            for tool in await mcp_tools(mcp, self.name):
                self._tools.setdefault(tool.name, tool)

    async def _context(self) -> list[ChatMessage]:
        if self._history is None or self.context_messages <= 0:
            return []
        earlier = (await self._history.earlier())[-self.context_messages :]
        return [_as_chat(m) for m in earlier]

    async def _call_tools(self, calls: Sequence[ToolCall]) -> list[ToolOutcome]:
        """Run one turn's calls, each reported as it starts and as it ends; side by side when
        every tool called allows it. Outcomes are in the order of the calls."""
        for call in calls:
            await self._events.emit(
                "tool_executing",
                agent=self.name,
                data={
                    "tool": call.name,
                    "input": truncate(call.arguments, MAX_EVENT_TEXT_CHARS),
                    "call_id": call.id,
                },
            )
        concurrent = len(calls) > 1 and all(
            self._tools[c.name].concurrent for c in calls if c.name in self._tools
        )
        if not concurrent:
            return [await self._completed(await self._call(call)) for call in calls]
        outcomes: dict[int, ToolOutcome] = {}
        finished: asyncio.Queue[tuple[int, ToolOutcome]] = asyncio.Queue()

        async def call_into_queue(index: int, call: ToolCall) -> None:
            finished.put_nowait((index, await self._call(call)))

        # A cancel or the deadline cancels every call still running with the run.
        async with asyncio.TaskGroup() as group:
            for index, call in enumerate(calls):
                group.create_task(call_into_queue(index, call))
            for _ in calls:  # reported in the order they end
                index, outcome = await finished.get()
                outcomes[index] = await self._completed(outcome)
        return [outcomes[index] for index in range(len(calls))]

    async def _call(self, call: ToolCall) -> ToolOutcome:
        tool = self._tools.get(call.name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return ToolOutcome(call, "", f"there is no tool named {call.name!r} (tools: {known})")
        try:
            output = await tool.run(tool.parse(call.arguments))
        except ToolError as exc:
            return ToolOutcome(call, "", str(exc) or f"the {tool.name} tool refused the call")
        except Exception as exc:
            # A bug in the tool: the details go to the log, not to the model or the user.
            log_failure(log, "tool %s raised", tool.name, exc=exc)
            return ToolOutcome(call, "", f"the {tool.name} tool failed")
        return ToolOutcome(call, truncate(output, MAX_TOOL_OUTPUT_CHARS))

    async def _completed(self, outcome: ToolOutcome) -> ToolOutcome:
        shown = outcome.output if outcome.error is None else f"error: {outcome.error}"
        await self._events.emit(
            "tool_completed",
            agent=self.name,
            data={
                "tool": outcome.call.name,
                "output": truncate(shown, MAX_EVENT_TEXT_CHARS),
                "call_id": outcome.call.id,
                "ok": outcome.error is None,
            },
        )
        return outcome


def _as_chat(message: Message) -> ChatMessage:
    return ChatMessage(
        "assistant" if message.role == "assistant" else "user",
        truncate(message.content, CONTEXT_MESSAGE_CHARS),
    )
