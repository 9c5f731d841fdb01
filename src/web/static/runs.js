// Runs as the page follows them: every event applied once, in seq order. One that arrives twice
// (replay and live) is dropped, one that arrives early waits for the ones before it, and a gap
// is filled from `GET /api/runs/{id}/events?after=N` (the server fills what its live stream
// missed; a reload replays what the page never saw). Applying an event keeps the run's own
// state (its status, the answer as it streams, its error, the calls that wait for approval);
// what the event means for the rest of the page is `applied(run, event)`'s to say.

import { trackApproval } from "./approvals.js";

export const FINAL = new Set(["run_completed", "run_failed", "run_cancelled"]);

/**
 * `runs` is the page's map of run ids to runs; `api` its way to the HTTP API; `applied(run,
 * event)` is called after each event is applied, `failed(failure)` when a replay fails.
 */
export function runTracker({ runs, api, applied, failed }) {
  function runOf(runId, threadId) {
    let run = runs.get(runId);
    if (!run) {
      run = {
        id: runId,
        threadId,
        lastSeq: 0,
        pending: new Map(), // events that arrived before the ones they follow
        events: [],
        text: "", // the answer as it streams: the agent_thinking texts joined
        status: "running",
        approvals: new Map(), // call id -> its approval_requested event, while it waits
        error: null,
        requestId: null,
        replaying: null,
        answer: null, // its stored answer (completed, or interrupted by a newer message)
        rolledBack: false, // removed by a newer message, with its question
        displaced: null, // the thread's active run when this one's start was applied
      };
      runs.set(runId, run);
    }
    return run;
  }

  function receive(event) {
    const run = runOf(event.run_id, event.thread_id);
    if (event.seq <= run.lastSeq || run.pending.has(event.seq)) return; // seen: never twice
    run.pending.set(event.seq, event);
    while (run.pending.has(run.lastSeq + 1)) {
      const next = run.pending.get(run.lastSeq + 1);
      run.pending.delete(next.seq);
      run.lastSeq = next.seq;
      apply(run, next);
    }
    if (run.pending.size) replay(run); // a gap: what is missing is stored
  }

  function replay(run) {
    // One replay at a time per run; what it brings goes through receive() like live events.
    if (!run.replaying) {
      run.replaying = api("GET", `/api/runs/${run.id}/events?after=${run.lastSeq}`)
        .then((page) => page.events.forEach(receive))
        .catch(failed)
        .finally(() => {
          run.replaying = null;
        });
    }
    return run.replaying;
  }

  function apply(run, event) {
    run.events.push(event);
    trackApproval(run, event, FINAL.has(event.type));
    switch (event.type) {
      case "run_started":
        run.requestId = event.data.request_id;
        break;
      case "agent_thinking":
        run.text += event.data.text;
        break;
      case "run_completed":
        run.status = "completed";
        run.text = event.data.message.content;
        run.answer = event.data.message;
        break;
      case "run_failed":
        run.status = "failed";
        run.error = event.data.error;
        break;
      case "run_cancelled":
        run.status = "cancelled";
        // Interrupted by a newer message: what it had answered is kept, marked so.
        if (event.data.message) run.answer = event.data.message;
        // Rolled back by a newer message: gone, with its question, as if it had never been.
        if (event.data.rolled_back) run.rolledBack = true;
        break;
    }
    applied(run, event);
  }

  return { runOf, receive, replay };
}
