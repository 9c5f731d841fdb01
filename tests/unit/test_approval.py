"""Which calls wait for a person, and the agent loop's paused turn kept as text."""

from __future__ import annotations

from pydantic import BaseModel

from src.agents.approval import ApprovalPolicy, DoneCall, LoopState, PausedTurn
from src.agents.tool import FunctionTool, Tool
from src.agents.tools import Calculator, CalculatorInput
from src.runs.domain import Usage
from src.services.llm import ChatMessage, ToolCall


class Amount(BaseModel):
    amount: float


class Refund(Tool[Amount]):
    name = "refund"
    description = "Refund."

    async def run(self, params: Amount) -> str:
        return "refunded"

    def needs_approval(self, params: Amount) -> bool:
        return params.amount > 100


async def send_mail(to: str) -> str:
    """Send mail."""
    return "sent"


def test_the_setting_names_tools_or_all_and_a_tool_may_decide_itself() -> None:
    """`calculator` makes every calculator call wait, `*` every call of every tool; a tool's
    own declaration (from its input, or always) holds whatever the setting says."""
    calc, sum_ = Calculator(), CalculatorInput(expression="1+1")
    assert ApprovalPolicy.from_setting("calculator").needs(calc, sum_)
    assert not ApprovalPolicy.from_setting("other").needs(calc, sum_)
    assert not ApprovalPolicy.from_setting("").needs(calc, sum_)
    assert ApprovalPolicy.from_setting(" * ").needs(calc, sum_)
    refund = Refund()
    assert ApprovalPolicy().needs(refund, Amount(amount=500))
    assert not ApprovalPolicy().needs(refund, Amount(amount=20))
    always = FunctionTool(send_mail, approval=True)
    assert ApprovalPolicy().needs(always, always.parse('{"to": "a@b"}'))
    decided = FunctionTool(send_mail, approval=lambda to: to.endswith(".gov"))
    assert ApprovalPolicy().needs(decided, decided.parse('{"to": "x@y.gov"}'))
    assert not ApprovalPolicy().needs(decided, decided.parse('{"to": "x@y.org"}'))


def test_a_paused_turn_reads_back_as_it_was_written() -> None:
    """Everything the loop needs to go on survives its text form: the conversation (tool
    calls and results), the turn's calls in order, what ran, what waits, the answer so far."""
    first, second = ToolCall("c1", "calculator", '{"expression": "1+1"}'), ToolCall("c2", "x", "{}")
    turn = PausedTurn(
        agent="math",
        loop=LoopState(
            messages=[
                ChatMessage("system", "be brief"),
                ChatMessage("user", "hi \u00e9"),
                ChatMessage("assistant", "", tool_calls=(first, second)),
            ],
            steps=2,
            failed_calls={("x", "{}")},
            failing_turns=1,
            last_failure="no",
        ),
        calls=(first, second),
        done=(DoneCall(second, "", "no"),),
        pending=(first,),
        answer="So far. ",
        answer_sent=4,
        usage=Usage(10, 3),
    )
    assert PausedTurn.from_json(turn.to_json()) == turn
    assert [c.call_id for c in turn.pending_calls()] == ["c1"]
