// The conversation: the thread's questions and answers, each answer's run while it goes (its
// text as it streams, a failure in words), the calls that wait for approval, and the messages
// queued behind the run in progress.
//
// Each item is an element of its own, kept by key (`u:<message id>` for a question,
// `a:<run id>` for the answer of a run, which is the same element while the run streams and
// once its answer is stored; approval cards and queued messages by theirs), and drawn again
// only when what it shows has changed. `render` puts the items in order, moving only what is
// out of place, so an event touches only what it changes, and a thread of a thousand messages
// opens once and streams without its old messages being drawn again. An answer's text, as it
// streams, is drawn again at most once per animation frame (`streamed`), and only its element.
//
// Answers are Markdown (markdown.js); questions are shown as the person typed them.

import { WAITING } from "./approvals.js";
import { element, placeChildren } from "./dom.js";
import { copyCode, renderMarkdown } from "./markdown.js";
import { queuedRuns, withdrawn } from "./queue.js";

const NEAR_BOTTOM_PX = 40;
// The answers at the end of the conversation, where it opens, are drawn as Markdown at once;
// the older ones when they come near the view (a long thread opens without drawing them all).
const DRAWN_AT_ONCE = 20;
const NEAR_VIEW = "800px 0px";

/**
 * The thread's conversation: its stored messages in the order they were asked and answered,
 * less the questions that wait their turn (shown under it) and those that were withdrawn while
 * they waited. A queued question takes its place when its run starts (the server moves it
 * there too, so a reload reads the same). `runs` maps run ids to the runs the page follows.
 */
export function conversation(thread, messages, runs) {
  const waiting = new Set(queuedRuns(thread));
  const shown = messages.filter((message) => {
    if (message.role !== "user") return true;
    const run = runs.get(message.run_id);
    if (waiting.has(message.run_id) || withdrawn(run)) return false;
    // A run being read from the store for the first time: shown once it is known how it went.
    return !run || run.events.length > 0 || run.id === thread.active_run_id;
  });
  const placed = shown.map((message, index) => [placeOf(message, runs), index, message]);
  placed.sort(([a, i], [b, j]) => (a < b ? -1 : a > b ? 1 : i - j));
  return placed.map(([, , message]) => message);
}

function placeOf(message, runs) {
  // Timestamps are ISO 8601 in UTC, all of one width: compared as strings, to the microsecond.
  const run = message.role === "user" ? runs.get(message.run_id) : null;
  const started = run && run.events.find((event) => event.type === "run_started");
  return started && started.ts > message.created_at ? started.ts : message.created_at;
}

/**
 * The conversation in `list` (an `ol`). `runs` is the page's map of runs; `approvals` and
 * `queue` build the approval cards and the queued messages (approvals.js, queue.js);
 * `composer` is where the focus goes when the item it was on goes.
 */
export function conversationView(list, { runs, approvals, queue, composer }) {
  const items = new Map(); // key -> {node, drawn}: what it shows, to draw it again only when that changed
  const streaming = new Set(); // runs whose answer grew since it was drawn
  let frame = 0;
  let toBottom = true; // a thread just opened is shown from its end

  const unseen = new Map(); // answer element -> its text, drawn once it comes near the view
  const nearView = new IntersectionObserver(
    (entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting || !unseen.has(entry.target)) continue;
        nearView.unobserve(entry.target);
        entry.target.firstElementChild.replaceWith(answerBody(unseen.get(entry.target)));
        unseen.delete(entry.target);
      }
    },
    { root: list, rootMargin: NEAR_VIEW },
  );

  list.addEventListener("click", (event) => {
    const copy = event.target.closest("button.copy-code");
    if (copy && list.contains(copy)) copyCode(copy);
  });

  /** Another thread (or none): nothing of the one shown before is kept. */
  function clear() {
    items.clear();
    unseen.clear();
    nearView.disconnect();
    streaming.clear();
    list.replaceChildren();
    list.setAttribute("aria-busy", "false");
    toBottom = true;
  }

  /** Show `thread`'s conversation from its stored `messages` and the runs followed. */
  function render(thread, messages) {
    const nodes = [];
    const keys = new Set();
    let answering = false;
    if (thread) {
      const answered = new Set();
      for (const message of messages) if (message.role === "assistant") answered.add(message.run_id);
      const shown = conversation(thread, messages, runs);
      const atOnce = shown.length - DRAWN_AT_ONCE;
      for (const [index, message] of shown.entries()) {
        if (message.role === "user") {
          nodes.push(item(keys, `u:${message.id}`, message.content, drawQuestion, message));
          const run = runs.get(message.run_id);
          if (run && !answered.has(run.id)) {
            nodes.push(item(keys, `a:${run.id}`, runDrawn(run), drawRun, run), ...approvals.cardsFor(run));
            answering ||= run.status === "running";
          }
        } else {
          const drawn = `${message.interrupted ? "i" : "a"}${message.content}`;
          const draw = index >= atOnce ? drawAnswer : drawAnswerLater;
          nodes.push(item(keys, `a:${message.run_id || message.id}`, drawn, draw, message));
        }
      }
      nodes.push(...queue.itemsFor(thread, (runId) => questionOf(messages, runId)));
    }
    for (const [key, kept] of items) {
      if (keys.has(key)) continue;
      items.delete(key);
      forget(kept.node);
    }
    // Polite announcements wait for the answer to be whole: not a word at a time.
    if (list.getAttribute("aria-busy") !== String(answering)) list.setAttribute("aria-busy", String(answering));
    keepingFocusAndScroll(() => placeChildren(list, nodes));
  }

  /** The element of `key`, drawn again with `draw(node, value)` if `drawn` says it changed. */
  function item(keys, key, drawn, draw, value) {
    keys.add(key);
    let kept = items.get(key);
    if (!kept) {
      kept = { node: element("li"), drawn: null };
      items.set(key, kept);
    }
    if (kept.drawn !== drawn) {
      kept.drawn = drawn;
      streaming.delete(value);
      forget(kept.node);
      draw(kept.node, value);
    }
    return kept.node;
  }

  /** An answer out of sight: its text as it is for now, as Markdown once it comes near. */
  function drawAnswerLater(node, message) {
    drawAnswer(node, message, (text) => element("div", "answer plain", text));
    unseen.set(node, message.content);
    nearView.observe(node);
  }

  function forget(node) {
    if (unseen.delete(node)) nearView.unobserve(node);
  }

  /** A run's answer grew: draw it again at the next frame (once, however many pieces came). */
  function streamed(run) {
    streaming.add(run);
    if (!frame) frame = requestAnimationFrame(drawStreams);
  }

  function drawStreams() {
    frame = 0;
    const stick = nearBottom();
    for (const run of streaming) {
      const kept = items.get(`a:${run.id}`);
      if (kept && kept.node.isConnected && run.status === "running") {
        kept.drawn = runDrawn(run);
        drawRun(kept.node, run);
      }
    }
    streaming.clear();
    if (stick) list.scrollTop = list.scrollHeight;
  }

  function nearBottom() {
    return list.scrollHeight - list.scrollTop - list.clientHeight < NEAR_BOTTOM_PX;
  }

  function keepingFocusAndScroll(change) {
    const stick = toBottom || nearBottom();
    toBottom = false;
    const focused = list.contains(document.activeElement) ? document.activeElement : null;
    const selection = focused && "selectionStart" in focused ? [focused.selectionStart, focused.selectionEnd] : null;
    const queuedAt = focused ? [...list.querySelectorAll("li.queued")].indexOf(focused.closest("li.queued")) : -1;
    change();
    if (stick) list.scrollTop = list.scrollHeight;
    if (!focused || document.activeElement === focused) return;
    if (focused.isConnected) {
      // Moved, and kept (an approval card being filled in): so is the focus.
      focused.focus({ preventScroll: true });
      if (selection && selection[0] !== null) focused.setSelectionRange(...selection);
    } else if (queuedAt >= 0) {
      // Its queued message went (cancelled, or started): on to the one that took its place.
      const cancels = list.querySelectorAll("li.queued button.cancel-queued");
      (cancels[Math.min(queuedAt, cancels.length - 1)] || composer).focus();
    } else {
      // Its card went (the call was decided): on to the next waiting call, or the composer.
      (list.querySelector("li.approval button") || composer).focus();
    }
  }

  return { clear, render, streamed };
}

function questionOf(messages, runId) {
  return messages.find((message) => message.role === "user" && message.run_id === runId);
}

function drawQuestion(node, message) {
  node.className = "user";
  node.textContent = message.content;
}

function drawAnswer(node, message, body = answerBody) {
  node.className = message.interrupted ? "assistant interrupted" : "assistant";
  const parts = [body(message.content)];
  if (message.interrupted) {
    // An answer cut short by a newer message: what it had said, marked so.
    const mark = element("span", "badge mark", "interrupted");
    mark.title = "cut short by a newer message";
    parts.push(mark);
  }
  node.replaceChildren(...parts);
}

/** What a run's answer shows, in short: drawn again when this changes. */
function runDrawn(run) {
  return `${run.status}\u0000${run.text.length}\u0000${run.error ? run.error.code : ""}`;
}

function drawRun(node, run) {
  const parts = [];
  if (run.status === "running" || run.status === WAITING) {
    node.className = "assistant streaming";
    const waiting = run.status === WAITING ? "Waiting for your approval\u2026" : "\u2026";
    parts.push(run.text ? answerBody(run.text) : element("p", "", waiting));
  } else if (run.status === "failed" || run.status === "cancelled") {
    node.className = "assistant failed";
    if (run.text) parts.push(answerBody(run.text));
    const request = run.requestId ? ` (request ${run.requestId})` : "";
    const why = run.status === "failed" ? `The run failed: ${run.error.code}: ${run.error.message}${request}` : "(cancelled)";
    parts.push(element("p", "run-end", why));
  } else {
    node.className = "assistant";
    parts.push(answerBody(run.text));
  }
  node.replaceChildren(...parts);
}

function answerBody(text) {
  const body = element("div", "answer");
  body.append(renderMarkdown(text));
  return body;
}
