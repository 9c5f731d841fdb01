"""The drill's plan, checks and figures, on frames made up here: who its users are, what a
cross-user frame is, what a seq gap is, and which options it refuses."""

from __future__ import annotations

import argparse
from typing import Any, cast

import httpx
import pytest
from rich.console import Console
from websockets.asyncio.client import ClientConnection

from src.drill.checks import count_cross_user, sequence_problems
from src.drill.cli import add_arguments, options_from
from src.drill.client import RunRecord, Socket, UserClient
from src.drill.plan import HEALTHY, expected_outcome, make_users, owner_of, question
from src.drill.progress import DrillProgress
from src.drill.report import cross_user_frames, kind_figures, percentile, seq_problems
from src.drill.steps import Drill, DrillTokens, Options


def event(seq: int, type_: str = "agent_started", **data: Any) -> dict[str, Any]:
    return {"type": type_, "run_id": "run-a", "seq": seq, "data": data}


@pytest.mark.parametrize(
    ("seqs_and_types", "problems"),
    [
        ([(1, "run_started"), (2, "agent_started"), (3, "run_completed")], 0),
        ([(1, "run_started"), (3, "run_completed")], 1),  # seq 2 missing
        ([(1, "run_started"), (2, "run_started"), (2, "run_completed")], 1),  # 2 twice
        ([(1, "run_started"), (2, "agent_started")], 1),  # no final event
        ([(1, "run_started"), (2, "run_failed"), (3, "run_completed")], 2),  # two, one not last
        ([(1, "run_started"), (2, "run_completed"), (3, "agent_started")], 1),  # after the end
        # paused for approval, then cancelled: the pause is no end
        ([(1, "run_started"), (2, "approval_requested"), (3, "run_cancelled")], 0),
        ([(1, "run_started"), (2, "approval_requested")], 1),  # paused, never ended
    ],
)
def test_seq_problems_count_every_way_a_run_is_not_told_once_in_order(
    seqs_and_types: list[tuple[int, str]], problems: int
) -> None:
    assert sequence_problems([event(s, t) for s, t in seqs_and_types]) == problems


def test_a_frame_of_a_run_not_the_users_own_is_cross_user_whatever_its_text() -> None:
    """Without a test of texts (the bench's users name no unique numbers), a run id decides."""
    own = [event(1, "run_started"), event(2, "run_completed", message={"content": "42"})]
    theirs = {**event(3), "run_id": "run-b"}
    assert count_cross_user(own, own_runs={"run-a"}) == 0
    assert count_cross_user([*own, theirs], own_runs={"run-a"}) == 1
    assert count_cross_user([theirs], own_runs=set()) == 1


GAP = {"type": "gap", "message": "live events may have been missed; replay each run you follow"}


def test_a_gap_notice_is_neither_a_cross_user_frame_nor_a_seq_problem() -> None:
    """Checked the same whether or not the server tells a socket of a gap: only seqs count."""
    frames = [event(1, "run_started"), GAP, event(2, "agent_started"), event(3, "run_completed")]
    assert count_cross_user(frames, own_runs={"run-a"}) == 0
    assert sequence_problems([f for f in frames if f.get("run_id") == "run-a"]) == 0
    assert cross_user_frames(client_with(frames)) == 0
    assert seq_problems(client_with(frames)) == 0


def client_with(frames: list[dict[str, Any]]) -> UserClient:
    (user, _) = make_users(["http://a"], users=2, faulty_share=0.5)
    client = UserClient(user, {})
    record = client.new_record(HEALTHY, "drill")
    client._see(
        {"type": "run_started", "run_id": "run-a", "data": {"request_id": record.request_id}}
    )
    client.sockets.append(
        Socket(cast(ClientConnection, None), main=True, opened_at=0.0, frames=frames)
    )
    return client


def test_a_cross_user_frame_is_another_runs_or_names_another_users_number() -> None:
    users = make_users(["http://a"], users=2, faulty_share=0.5)
    mine, theirs = users[0].next_operand(), users[1].next_operand()
    assert (owner_of(mine), owner_of(theirs)) == (0, 1)
    own = [
        event(1, "run_started", request_id="r"),
        event(2, "tool_executing", tool="calculator", input=f'{{"expression": "{mine} * 2"}}'),
        # Ids and timestamps are not texts: a UUID may hold nine digits starting with 7.
        event(3, "run_completed", message={"id": "a7123456789b", "content": str(mine * 2)}),
    ]
    assert cross_user_frames(client_with(own)) == 0
    foreign_run = {**event(1), "run_id": "run-b"}
    foreign_text = event(4, "tool_completed", output=f"{theirs} * 2 = {theirs * 2}")
    assert cross_user_frames(client_with([*own, foreign_run, foreign_text])) == 2


def test_a_paused_run_seen_on_the_socket_is_one_sequence_with_its_cancel() -> None:
    """The pause (`approval_requested`) is told, then the cancel's `run_cancelled`: the
    client sees the pause, and the run's frames are seq 1..n with one final event, last."""
    frames = [
        event(1, "run_started"),
        event(2, "agent_started"),
        event(3, "approval_requested", tool="calculator", call_id="call-1"),
        event(4, "run_cancelled"),
    ]
    client = client_with(frames[:3])
    [record] = client.records
    for frame in frames:
        client._see(frame)
    assert record.pausing.is_set() and record.ended.is_set()
    assert (record.status, record.code) == ("cancelled", None)
    assert seq_problems(client_with(frames)) == 0


def approval_run(status: str | None, code: str | None = None, *, paused: bool = True) -> RunRecord:
    (_, user) = make_users(["http://a"], users=2, faulty_share=0.5)
    record = UserClient(user, {}).new_record("approval", "drill")
    record.paused = paused
    record.end(status=status, code=code)
    return record


def test_an_approval_run_must_pause_then_end_cancelled_or_expired() -> None:
    """Cancelled after its pause is as expected, and so is an expiry (a deployment whose
    approval timeout is shorter than the drill's wait); a run that never paused, that
    completed, or that was left paused is not."""
    assert expected_outcome("approval") == "cancelled or failed approval_expired"
    assert expected_outcome("cancel") == "cancelled"
    good = [approval_run("cancelled"), approval_run("failed", "approval_expired")]
    bad = [
        approval_run("cancelled", paused=False),
        approval_run("completed"),
        approval_run("failed", "timeout"),
        approval_run("awaiting_approval"),
        approval_run(None),
    ]
    assert all(r.as_expected for r in good)
    assert not any(r.as_expected for r in bad)
    figures = kind_figures("approval", [*good, *bad])
    assert (figures["runs"], figures["as_expected"]) == (7, 2)
    assert figures["expected"] == "cancelled or failed approval_expired"
    assert [u["got"] for u in figures["unexpected"]] == [
        "cancelled", "completed", "failed timeout", "awaiting_approval", "no end seen"
    ]  # fmt: skip
    # An expiry is no way for another kind's run to end.
    (_, user) = make_users(["http://a"], users=2, faulty_share=0.5)
    cancel = UserClient(user, {}).new_record("cancel", "drill")
    cancel.end(status="failed", code="approval_expired")
    assert not cancel.as_expected


async def test_the_drills_tidying_up_cancels_every_run_left_paused() -> None:
    """A run seen paused and not seen to end (the drill stopped early, or its cancel did not
    take) is cancelled before the threads are deleted; ended and never-paused runs are not."""
    asked: list[str] = []

    def deployment(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}")
        if request.method == "GET":
            return httpx.Response(200, json={"threads": []})
        return httpx.Response(202 if request.url.path.endswith("/cancel") else 204)

    drill = Drill(
        Options(urls=["http://a"], metrics_urls=["http://a/metrics"], users=2, faulty=0.5),
        cast(DrillTokens, None),
        progress=DrillProgress(Console(), wanted=False),
    )
    drill._http["http://a"] = httpx.AsyncClient(
        transport=httpx.MockTransport(deployment), base_url="http://a"
    )
    client = drill._clients[1]
    client.user.thread_id = "thread-f"
    left, ended, running = (client.new_record("approval", "drill") for _ in range(3))
    for record, run_id in ((left, "run-left"), (ended, "run-ended"), (running, "run-running")):
        record.run_id = run_id
    left.pausing.set()
    ended.pausing.set()
    ended.end(status="cancelled", code=None)
    try:
        assert await drill._delete_threads() == 0
    finally:
        await drill._http["http://a"].aclose()
    assert asked.index("POST /api/runs/run-left/cancel") < asked.index(
        "DELETE /api/threads/thread-f"
    )
    assert [a for a in asked if a.startswith("POST")] == ["POST /api/runs/run-left/cancel"]


def test_users_are_spread_over_hosts_and_faulty_ones_sign_their_faults() -> None:
    users = make_users(["http://a", "http://b"], users=10, faulty_share=0.2)
    assert [u.faulty for u in users].count(True) == 2
    assert {u.host for u in users} == {"http://a", "http://b"}
    assert all(u.other_host != u.host for u in users)
    prefix = users[0].user_id.rsplit("-", 1)[0]
    assert all(u.user_id.startswith(prefix + "-") for u in users)
    assert len({u.user_id for u in users}) == 10
    # At least one of each kind, whatever the share.
    assert [u.faulty for u in make_users(["http://a"], users=2, faulty_share=0.01)] == [
        False,
        True,
    ]
    assert question(700000001, HEALTHY) == "what is 700000001 * 2?"
    assert question(700000001, "db") == "[drill:db] what is 700000001 * 2?"
    assert question(700000001, "cancel") == "[drill:hang] what is 700000001 * 2?"
    assert question(700000001, "approval") == "[drill:approval] what is 700000001 * 2?"


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--url", "127.0.0.1:8000"], "http(s)://host:port"),
        (["--url", "http://h", "--kinds", "agent,fire"], "--kinds"),
        (["--url", "http://h", "--faulty", "1"], "--faulty"),
        (["--url", "http://h", "--users", "1"], "--users"),
        (["--url", "http://h", "--duration", "0"], "--duration"),
        (["--url", "http://h", "--run-timeout", "-1"], "--run-timeout"),
    ],
)
def test_bad_options_are_refused_by_name(argv: list[str], says: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        options_from(parser.parse_args(argv))


def test_metrics_default_to_each_url() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = options_from(parser.parse_args(["--url", "http://a/", "--url", "http://b"]))
    assert options.metrics_urls == ["http://a/metrics", "http://b/metrics"]
    assert options.kinds == (
        "agent", "tool", "llm", "db", "hang", "approval", "disconnect", "cancel"
    )  # fmt: skip
    approval = options_from(parser.parse_args(["--url", "http://a", "--kinds", "approval"]))
    assert approval.kinds == ("approval",)
