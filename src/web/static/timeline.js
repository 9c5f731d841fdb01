// The run's timeline beside the conversation: one entry per step of the run shown (the route
// triage chose, each agent's start and end, each tool call with its input and output and how
// long it took, approvals, the end with its duration and tokens, a failure in words).
//
// Entries are added as the run's events are applied, never rebuilt: `show(run)` appends the
// entries of the events it has not shown yet (all of them when another run is shown).

import { decided, WAITING } from "./approvals.js";
import { element } from "./dom.js";

const STATUS_TEXT = { [WAITING]: "waiting for your approval" };

export function timelineView(list, status) {
  let run = null; // the run shown
  let shown = 0; // how many of its events are
  let steps = null; // what its later entries need of its earlier events

  /** Show `run` (or none), up to its latest applied event. */
  function show(next) {
    if (next !== run) {
      run = next;
      shown = 0;
      steps = { started: 0, executing: new Map(), tools: new Map() };
      list.replaceChildren();
    }
    if (!run) {
      setStatus("No run yet", "state");
      return;
    }
    const entries = [];
    for (; shown < run.events.length; shown++) {
      const made = entryOf(run, run.events[shown], steps);
      if (made) entries.push(made);
    }
    if (entries.length) list.append(...entries);
    setStatus(STATUS_TEXT[run.status] || run.status, `state ${run.status}`);
  }

  function setStatus(text, className) {
    if (status.textContent !== text) status.textContent = text;
    if (status.className !== className) status.className = className;
  }

  return { show };
}

function entryOf(run, event, steps) {
  if (!steps.started) steps.started = Date.parse(event.ts);
  const at = Date.parse(event.ts) - steps.started;
  const data = event.data;
  switch (event.type) {
    case "run_started":
      return entry(at, "run started", "", `request ${data.request_id}`);
    case "agent_started":
      return entry(at, `${event.agent} started`);
    case "agent_completed":
      if (event.agent === "triage") {
        const fallback = data.fallback ? ` (fallback: ${data.fallback})` : "";
        return entry(at, `route: ${data.result}${fallback}`);
      }
      return entry(at, `${event.agent} done`);
    case "tool_executing":
      steps.executing.set(data.call_id, at);
      return entry(at, `${data.tool} called`, "tool", data.input);
    case "tool_completed": {
      const took = steps.executing.has(data.call_id) ? ` in ${at - steps.executing.get(data.call_id)} ms` : "";
      const failed = data.ok === false;
      return entry(at, `${data.tool} ${failed ? "failed" : "answered"}${took}`, failed ? "tool failed" : "tool", data.output);
    }
    case "approval_requested":
      steps.tools.set(data.call_id, data.tool); // approval_resolved names only the call
      return entry(at, `${data.tool} waits for approval`, "approval", JSON.stringify(data.input));
    case "approval_resolved":
      return entry(at, `${steps.tools.get(data.call_id) || data.call_id} ${decided(data.decision)}`, "approval");
    case "run_completed": {
      const usage = data.usage ? `, ${data.usage.prompt_tokens} + ${data.usage.completion_tokens} tokens` : "";
      return entry(at, `completed in ${at} ms${usage}`, "completed");
    }
    case "run_failed":
      return entry(at, `failed in ${at} ms`, "failed", `${data.error.code}: ${data.error.message}\nrequest ${run.requestId}`);
    case "run_cancelled":
      return entry(at, `cancelled after ${at} ms`, "failed");
    default:
      return null; // agent_thinking: the answer itself, in the conversation
  }
}

function entry(at, text, kind = "", detail = "") {
  const item = element("li", kind);
  item.append(element("span", "at", `+${at} ms`), document.createTextNode(text));
  if (detail) item.append(element("pre", "", detail));
  return item;
}
