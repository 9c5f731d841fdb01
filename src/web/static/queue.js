// Messages that wait their turn, on the chat page.
//
// A message sent while a run of its thread is going is stored at once, with a run `queued`
// behind the busy one (`multitask: "enqueue"`). The thread lists those runs in
// `queued_run_ids`, in the order they will start; each starts when the run before it ends (its
// first event is `run_started`, and its question then takes its place in the conversation). A
// queued run that is cancelled gets one event, `run_cancelled`, and never starts: its question
// is withdrawn, never answered, and not shown. The page keeps each thread's list as the server
// last gave it, less the runs whose events have since said they left the queue, so that a
// reload shows what the page showed.

/** The thread's queued runs, in the order they will start. */
import { element } from "./dom.js";

export function queuedRuns(thread) {
  return (thread && thread.queued_run_ids) || [];
}

/** A run of the thread that has just been queued (by this page). */
export function enqueued(thread, runId) {
  const queued = queuedRuns(thread);
  if (!queued.includes(runId)) thread.queued_run_ids = [...queued, runId];
}

/** A run that has left the thread's queue: started, or cancelled while it waited. */
export function leftQueue(thread, runId) {
  if (thread && queuedRuns(thread).includes(runId)) {
    thread.queued_run_ids = queuedRuns(thread).filter((id) => id !== runId);
  }
}

/** Whether the run was cancelled before it started: its question was withdrawn. */
export function withdrawn(run) {
  return Boolean(run) && run.events.length > 0 && run.events[0].type === "run_cancelled";
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/**
 * The items of the queued messages, shown under the run in progress, each with its Cancel
 * button. Each item is built once and kept while its run waits, so that a re-render of the
 * conversation keeps the keyboard focus on it. `api(method, path, body)` and
 * `describe(failure)` are the page's; `caughtUp(threadId, runId)` is called after each attempt
 * to cancel (the page fetches the run's stored events: `run_cancelled`, or, had it just
 * started, its start and its end).
 */
export function queueItems({ api, describe, caughtUp }) {
  const items = new Map(); // run id -> item

  /** The items of the thread's queue, in order; `questionOf(runId)` is its stored message. */
  function itemsFor(thread, questionOf) {
    const queued = queuedRuns(thread);
    for (const runId of items.keys()) if (!queued.includes(runId)) items.delete(runId);
    return queued.map((runId, index) => {
      if (!items.has(runId)) items.set(runId, build(thread.id, runId));
      const item = items.get(runId);
      const question = questionOf(runId);
      // Only what changed is written: a live region would announce a text written again.
      setText(item.text, question ? question.content : "\u2026");
      setText(item.place, index === 0 ? "next in line" : `#${index + 1} in line`);
      return item.node;
    });
  }

  function build(threadId, runId) {
    const id = `queued-${runId}`;
    const node = element("li", "queued");
    node.dataset.runId = runId;
    const status = element("span", "queued-status");
    const badge = element("span", "badge", "Queued");
    const place = element("span", "queued-place");
    status.append(badge, " ", place);
    const text = element("p", "queued-text");
    text.id = `${id}-text`;
    const cancel = element("button", "cancel-queued", "Cancel");
    cancel.type = "button";
    cancel.setAttribute("aria-label", "Cancel queued message");
    cancel.setAttribute("aria-describedby", text.id);
    const progress = element("span", "queued-progress");
    progress.setAttribute("aria-live", "polite");
    const actions = element("span", "queued-actions");
    actions.append(progress, cancel);
    const head = element("div", "queued-head");
    head.append(status, actions);
    const error = element("p", "error");
    error.setAttribute("role", "alert");
    node.append(head, text, error);
    const item = { threadId, runId, node, text, place, cancel, progress, error, busy: false };
    cancel.addEventListener("click", () => cancelQueued(item));
    return item;
  }

  async function cancelQueued(item) {
    if (item.busy) return;
    setBusy(item, true, "Cancelling\u2026");
    item.error.textContent = "";
    try {
      await api("POST", `/api/runs/${item.runId}/cancel`);
      // The item goes once the run's run_cancelled event is applied (in every tab).
    } catch (failure) {
      // conflict: it has ended already (it started meanwhile): its events say how.
      if (failure.code !== "conflict") {
        setBusy(item, false, "");
        item.error.textContent = describe(failure);
      }
    }
    caughtUp(item.threadId, item.runId);
  }

  function setBusy(item, busy, text) {
    item.busy = busy;
    item.progress.textContent = text;
    // aria-disabled rather than disabled: a disabled button would drop the keyboard focus.
    item.cancel.setAttribute("aria-disabled", String(busy));
  }

  return { itemsFor };
}
