"""The drill's plan, checks and figures, on frames made up here: who its users are, what a
cross-user frame is, what a seq gap is, and which options it refuses."""

from __future__ import annotations

import argparse
from typing import Any, cast

import pytest
from websockets.asyncio.client import ClientConnection

from src.drill.checks import count_cross_user, sequence_problems
from src.drill.cli import add_arguments, options_from
from src.drill.client import Socket, UserClient
from src.drill.plan import HEALTHY, make_users, owner_of, question
from src.drill.report import cross_user_frames, percentile, seq_problems


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
    assert options.kinds == ("agent", "tool", "llm", "db", "hang", "disconnect", "cancel")
