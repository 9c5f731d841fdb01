// isochat's chat page: plain JavaScript modules, no build step, nothing from a CDN.
//
// The page is a client of the public API like any other: a bearer token (kept in this
// browser's storage, never in a URL), the REST endpoints, and one WebSocket opened with a
// single-use ticket. Runs are started with `on_disconnect: "continue"`, so a reload or a lost
// connection never ends them: the page finds a thread's running run (`active_run_id`),
// replays its stored events and follows it live. Every event is applied once, in seq order:
// one that arrives twice (replay and live) is dropped, one that arrives early waits for the
// ones before it, and a gap is filled from `GET /api/runs/{id}/events?after=N` (the server
// fills what its live stream missed; a reload replays what the page never saw). A run that
// waits for a person's approval is followed the same way (approvals.js). A message sent while
// a run of its thread is going waits its turn behind it (queue.js): it is sent with
// `multitask: "enqueue"`, shown under the run in progress until its own run starts, and can be
// cancelled while it waits.

import { WAITING, approvalCards, decided, trackApproval } from "./approvals.js";
import { enqueued, leftQueue, queueItems, queuedRuns, withdrawn } from "./queue.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "isochat.token";
const FINAL = new Set(["run_completed", "run_failed", "run_cancelled"]);
const BUSY = new Set(["running", WAITING]); // the thread is busy: a new message waits, cancel offered
const ENDED = new Set(["completed", "failed", "cancelled"]);
const STATUS_TEXT = { [WAITING]: "waiting for your approval" };
const MAX_BACKOFF_MS = 10000;
const RECENT_OPEN_QUESTIONS = 10; // unanswered questions whose runs are read when a thread opens
const PLACEHOLDER = "Ask something, e.g. what is (12 + 3) * 4?";
const PLACEHOLDER_QUEUED = "Ask something: it waits for the run in progress";

const state = {
  token: localStorage.getItem(TOKEN_KEY),
  threads: new Map(), // id -> Thread
  order: [], // thread ids, newest first
  threadsCursor: null,
  current: null, // the thread shown
  messages: [], // its stored messages, oldest first
  runs: new Map(), // run id -> Run as this page follows it (see runOf)
  shownRun: null, // the run in the timeline
  socket: null,
  backoffMs: 500,
  connections: 0, // sockets opened so far
  sent: new Map(), // request id -> {threadId, content}: chat frames not yet answered
  queueing: Promise.resolve(), // messages to queue go one after another, in the order sent
};

class ApiFailure extends Error {
  constructor(status, error, requestId) {
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.details = error;
    this.requestId = requestId;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = data.error || { code: "internal_error", message: response.statusText };
    throw new ApiFailure(response.status, error, response.headers.get("X-Request-ID"));
  }
  return data;
}

function describe(failure) {
  if (failure instanceof ApiFailure) {
    const request = failure.requestId ? ` (request ${failure.requestId})` : "";
    return `${failure.code}: ${failure.message}${request}`;
  }
  return String(failure.message || failure);
}

function showError(where, failure) {
  $(where).textContent = failure ? describe(failure) : "";
}

// --- signing in -----------------------------------------------------------------------------

function userOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub;
  } catch {
    return "?";
  }
}

async function useToken(token) {
  state.token = token;
  try {
    await loadThreads();
  } catch (failure) {
    state.token = null;
    throw failure;
  }
  localStorage.setItem(TOKEN_KEY, token);
  $("who").textContent = `signed in as ${userOf(token)}`;
  $("sign-in").hidden = true;
  $("chat").hidden = false;
  $("sign-out").hidden = false;
  connect();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = state.threads.has(wanted) ? wanted : state.order[0];
  if (first) await selectThread(first);
}

function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  state.token = null;
  if (state.socket) state.socket.close(1000);
  location.hash = "";
  location.reload();
}

$("dev-login").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("sign-in-error", null);
  try {
    const response = await fetch("/api/auth/dev-login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user_id: $("user-id").value.trim() }),
    });
    const data = await response.json().catch(() => ({}));
    if (response.status === 404) throw new Error("dev-login is off on this server: paste a token");
    if (!response.ok) throw new ApiFailure(response.status, data.error, response.headers.get("X-Request-ID"));
    await useToken(data.token);
  } catch (failure) {
    showError("sign-in-error", failure);
  }
});

$("token-login").addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("sign-in-error", null);
  try {
    await useToken($("token").value.trim());
    $("token").value = "";
  } catch (failure) {
    showError("sign-in-error", failure);
  }
});

$("sign-out").addEventListener("click", signOut);

// --- threads --------------------------------------------------------------------------------

/** Keep a Thread as the server gave it, less what events have told since it was read: a run
 * that has ended is no longer active, one that has started or been cancelled no longer waits. */
function adopt(thread) {
  const active = state.runs.get(thread.active_run_id);
  if (active && ENDED.has(active.status)) thread.active_run_id = null;
  thread.queued_run_ids = queuedRuns(thread).filter((id) => !state.runs.get(id)?.events.length);
  state.threads.set(thread.id, thread);
  return thread;
}

/** Whether a message sent to the thread now would wait its turn. */
function busy(thread) {
  if (!thread) return false;
  const shown = state.runs.get(state.shownRun);
  const following = Boolean(shown && BUSY.has(shown.status) && shown.threadId === thread.id);
  return Boolean(thread.active_run_id) || following || queuedRuns(thread).length > 0;
}

async function loadThreads(more = false) {
  const query = more && state.threadsCursor ? `?cursor=${encodeURIComponent(state.threadsCursor)}` : "";
  const page = await api("GET", `/api/threads${query}`);
  if (!more) {
    state.threads.clear();
    state.order = [];
  }
  for (const thread of page.threads) {
    adopt(thread);
    state.order.push(thread.id);
  }
  state.threadsCursor = page.next_cursor;
  renderThreads();
  // A run that is busy elsewhere (perhaps waiting for this person) is followed too.
  for (const thread of page.threads) {
    if (thread.active_run_id && !state.runs.has(thread.active_run_id)) {
      replay(runOf(thread.active_run_id, thread.id));
    }
  }
}

function renderThreads() {
  const list = $("thread-list");
  list.replaceChildren(
    ...state.order.map((id) => {
      const thread = state.threads.get(id);
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = thread.title;
      button.dataset.threadId = id;
      if (id === state.current) button.setAttribute("aria-current", "true");
      const queued = queuedRuns(thread).length;
      if (thread.active_run_id || queued) {
        const waiting = state.runs.get(thread.active_run_id)?.status === WAITING;
        const mark = document.createElement("span");
        mark.className = waiting ? "busy waiting" : "busy";
        mark.textContent = waiting ? " \u25cf needs your approval" : " \u25cf";
        mark.title = waiting ? "a run waits for your approval" : "a run is in progress";
        if (queued) mark.title += `, ${queued} queued`;
        button.append(mark);
      }
      button.addEventListener("click", () => selectThread(id));
      item.append(button);
      return item;
    }),
  );
  $("more-threads").hidden = !state.threadsCursor;
}

$("more-threads").addEventListener("click", () => loadThreads(true).catch((f) => showError("chat-error", f)));

$("new-thread").addEventListener("click", async () => {
  try {
    const thread = adopt(await api("POST", "/api/threads", {}));
    state.order.unshift(thread.id);
    await selectThread(thread.id);
    $("content").focus();
  } catch (failure) {
    showError("chat-error", failure);
  }
});

$("rename-thread").addEventListener("click", async () => {
  const thread = state.threads.get(state.current);
  const title = window.prompt("New title", thread.title);
  if (title === null || !title.trim()) return;
  try {
    adopt(await api("PATCH", `/api/threads/${thread.id}`, { title }));
    renderThreads();
    renderHeader();
  } catch (failure) {
    showError("chat-error", failure);
  }
});

$("delete-thread").addEventListener("click", async () => {
  const thread = state.threads.get(state.current);
  if (!window.confirm(`Delete "${thread.title}" with all its messages and runs?`)) return;
  try {
    await api("DELETE", `/api/threads/${thread.id}`);
    state.threads.delete(thread.id);
    state.order = state.order.filter((id) => id !== thread.id);
    state.current = null;
    state.messages = [];
    state.shownRun = null;
    location.hash = "";
    if (state.order[0]) await selectThread(state.order[0]);
    else render();
  } catch (failure) {
    showError("chat-error", failure);
  }
});

async function selectThread(id) {
  state.current = id;
  location.hash = id;
  showError("chat-error", null);
  try {
    const thread = adopt(await api("GET", `/api/threads/${id}`));
    await loadMessages();
    // A question left without an answer (its run failed, or was cancelled, perhaps while it
    // waited its turn and so never asked) is shown as its run ended: its events say how.
    const waiting = new Set(queuedRuns(thread));
    const answered = new Set(state.messages.filter((m) => m.role === "assistant").map((m) => m.run_id));
    // The newest ones only: a long thread's old failures are not read again at every visit
    // (each is a request, and requests are rate-limited).
    const open = state.messages
      .filter(
        (m) => m.role === "user" && m.run_id && !answered.has(m.run_id) && !waiting.has(m.run_id) && m.run_id !== thread.active_run_id,
      )
      .slice(-RECENT_OPEN_QUESTIONS);
    await Promise.all(open.map((m) => replay(runOf(m.run_id, id))));
    if (id !== state.current) return;
    const last = conversation(thread).at(-1);
    const runId = thread.active_run_id || (last && last.run_id);
    state.shownRun = runId || null;
    render();
    if (runId) await replay(runOf(runId, id));
  } catch (failure) {
    showError("chat-error", failure);
  }
}

async function loadMessages() {
  const id = state.current;
  const messages = [];
  let cursor = null;
  do {
    const query = cursor ? `?cursor=${encodeURIComponent(cursor)}` : "";
    const page = await api("GET", `/api/threads/${id}/messages${query}`);
    messages.push(...page.messages);
    cursor = page.next_cursor;
  } while (cursor);
  if (id !== state.current) return;
  // Answers heard of while the pages were read are kept (the pages may have been read first);
  // a run rolled back by a newer message left nothing.
  for (const run of state.runs.values()) {
    if (run.threadId === id && run.answer && !messages.some((m) => m.id === run.answer.id)) messages.push(run.answer);
  }
  state.messages = messages.filter((m) => !state.runs.get(m.run_id)?.rolledBack);
}

// --- runs: every event applied once, in seq order --------------------------------------------

function runOf(runId, threadId) {
  let run = state.runs.get(runId);
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
    state.runs.set(runId, run);
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
      .catch((failure) => showError("chat-error", failure))
      .finally(() => {
        run.replaying = null;
      });
  }
  return run.replaying;
}

function apply(run, event) {
  run.events.push(event);
  trackApproval(run, event, FINAL.has(event.type));
  const thread = state.threads.get(run.threadId);
  if (thread && (event.type === "run_started" || FINAL.has(event.type))) leftQueue(thread, run.id);
  switch (event.type) {
    case "run_started":
      run.requestId = event.data.request_id;
      state.sent.delete(run.requestId);
      if (thread && thread.active_run_id !== run.id) {
        // A run replayed from the store may have ended long ago: its end gives the thread
        // back the run that was active before it, if that one goes on.
        run.displaced = thread.active_run_id;
        thread.active_run_id = run.id;
      }
      if (run.threadId === state.current) {
        state.shownRun = run.id;
        // Its user message is stored before this event: show it (also when another tab sent it).
        if (!state.messages.some((m) => m.run_id === run.id)) loadMessages().then(render);
      } else if (!thread) {
        loadThreads().catch(() => {});
      }
      break;
    case "agent_thinking":
      run.text += event.data.text;
      break;
    case "run_completed":
      run.status = "completed";
      run.text = event.data.message.content;
      answered(run, event.data.message);
      break;
    case "run_failed":
      run.status = "failed";
      run.error = event.data.error;
      break;
    case "run_cancelled":
      run.status = "cancelled";
      // Interrupted by a newer message: what it had answered is kept, marked so.
      if (event.data.message) answered(run, event.data.message);
      if (event.data.rolled_back) {
        // Rolled back by a newer message: gone, with its question, as if it had never been.
        run.rolledBack = true;
        if (run.threadId === state.current) state.messages = state.messages.filter((m) => m.run_id !== run.id);
      }
      break;
  }
  if (FINAL.has(event.type) && thread && thread.active_run_id === run.id) {
    const before = run.displaced && state.runs.get(run.displaced);
    thread.active_run_id = run.displaced && !(before && ENDED.has(before.status)) ? run.displaced : null;
  }
  if (run.threadId === state.current) render();
  else if (event.type === "run_started" || event.type.startsWith("approval_") || FINAL.has(event.type)) {
    renderThreads();
  }
}

function answered(run, message) {
  run.answer = message;
  if (run.threadId === state.current && !state.messages.some((m) => m.id === message.id)) state.messages.push(message);
}

// --- the socket -----------------------------------------------------------------------------

async function connect() {
  if (!state.token) return;
  let ticket;
  try {
    ticket = (await api("POST", "/api/auth/ws-ticket")).ticket;
  } catch (failure) {
    if (failure.status === 401) return signOut();
    return reconnectLater();
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
  state.socket = socket;
  const reconnected = state.connections++ > 0;
  socket.addEventListener("open", () => {
    state.backoffMs = 500;
    // Whatever happened while the page was not listening is stored: catch up.
    for (const run of state.runs.values()) if (BUSY.has(run.status)) replay(run);
    if (state.current && reconnected) resync(state.current);
    renderComposer();
  });
  socket.addEventListener("message", (message) => {
    const frame = JSON.parse(message.data);
    if (frame.type === "error") return onErrorFrame(frame);
    if (frame.type === "pong") return;
    if (typeof frame.seq === "number") receive(frame);
  });
  socket.addEventListener("close", (closed) => {
    if (state.socket === socket) state.socket = null;
    renderComposer();
    if (closed.code === 4401) return signOut();
    if (state.token) reconnectLater();
  });
}

/** After a reconnection: a queued run may have started (or been cancelled) meanwhile. */
async function resync(id) {
  try {
    const thread = adopt(await api("GET", `/api/threads/${id}`));
    if (thread.active_run_id) replay(runOf(thread.active_run_id, id));
    if (id === state.current) {
      await loadMessages();
      render();
    }
  } catch {
    // the next reconnection tries again
  }
}

function reconnectLater() {
  setTimeout(connect, state.backoffMs);
  state.backoffMs = Math.min(state.backoffMs * 2, MAX_BACKOFF_MS);
}

function onErrorFrame(frame) {
  const sent = frame.request_id && state.sent.get(frame.request_id);
  if (sent) state.sent.delete(frame.request_id);
  if (sent && frame.error.code === "run_in_progress") {
    // The thread became busy before this page heard of it (another tab): the message waits.
    queueUp(sent.threadId, sent.content, false);
    return;
  }
  const request = frame.request_id ? ` (request ${frame.request_id})` : "";
  $("chat-error").textContent = `${frame.error.code}: ${frame.error.message}${request}`;
  if (frame.error.code === "run_in_progress" && frame.error.run_id && state.current) {
    state.shownRun = frame.error.run_id;
    replay(runOf(frame.error.run_id, state.current));
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const content = $("content").value;
  if (!content.trim() || !state.current) return;
  if (busy(state.threads.get(state.current))) {
    showError("chat-error", null);
    queueUp(state.current, content, true);
    return;
  }
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    $("chat-error").textContent = "not connected yet: try again in a moment";
    return;
  }
  showError("chat-error", null);
  const requestId = crypto.randomUUID();
  state.sent.set(requestId, { threadId: state.current, content });
  state.socket.send(
    JSON.stringify({
      type: "chat",
      thread_id: state.current,
      content,
      request_id: requestId,
      on_disconnect: "continue", // a reload or a lost connection does not end the run
      // Busy after all (another tab's run, not heard of yet): refused, whatever the server's
      // default, and then queued over HTTP (onErrorFrame), so that it shows with its Cancel.
      multitask: "reject",
    }),
  );
  $("content").value = "";
});

/**
 * Send a message that waits its turn behind the thread's busy run: over HTTP, which answers
 * with its run at once (`queued`, or `running` if the thread has become idle meanwhile), so that
 * the page shows it with its Cancel button straight away. One after another, in the order sent.
 */
function queueUp(threadId, content, fromComposer) {
  if (fromComposer) $("content").value = "";
  state.queueing = state.queueing.then(async () => {
    try {
      const { run } = await api("POST", `/api/threads/${threadId}/runs`, { content, multitask: "enqueue" });
      const thread = state.threads.get(threadId);
      // Its events may have come first (it started at once, or was cancelled in another tab).
      if (thread && run.status === "queued" && !state.runs.get(run.id)?.events.length) enqueued(thread, run.id);
      if (threadId === state.current) await loadMessages();
    } catch (failure) {
      showError("chat-error", failure);
      // Nothing was stored: the text goes back where it was typed, unless something else is there.
      if (fromComposer && threadId === state.current && !$("content").value) $("content").value = content;
    }
    if (threadId === state.current) render();
    else renderThreads();
  });
}

$("content").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("cancel").addEventListener("click", async () => {
  const run = state.runs.get(state.shownRun);
  if (!run || !BUSY.has(run.status)) return;
  try {
    await api("POST", `/api/runs/${run.id}/cancel`);
  } catch (failure) {
    if (failure.code !== "conflict") showError("chat-error", failure);
  }
});

// --- rendering ------------------------------------------------------------------------------

const approvals = approvalCards({ api, describe, caughtUp: replay });
const queue = queueItems({ api, describe, caughtUp: (threadId, runId) => replay(runOf(runId, threadId)) });

function render() {
  renderThreads();
  renderHeader();
  renderMessages();
  renderTimeline();
  renderComposer();
}

function renderHeader() {
  const thread = state.threads.get(state.current);
  $("thread-title").textContent = thread ? thread.title : "No thread";
  $("rename-thread").disabled = $("delete-thread").disabled = !thread;
}

function bubble(role, text, extraClass = "") {
  const item = document.createElement("li");
  item.className = `${role} ${extraClass}`.trim();
  item.textContent = text;
  return item;
}

function messageBubble(message) {
  if (!message.interrupted) return bubble(message.role, message.content);
  // An answer cut short by a newer message: what it had said, marked so.
  const item = bubble(message.role, message.content, "interrupted");
  const mark = document.createElement("span");
  mark.className = "badge mark";
  mark.textContent = "interrupted";
  mark.title = "cut short by a newer message";
  item.append(mark);
  return item;
}

/**
 * The thread's conversation: its stored messages in the order they were asked and answered,
 * less the questions that wait their turn (shown under it) and those that were withdrawn while
 * they waited. A queued question takes its place when its run starts (the server moves it
 * there too, so a reload reads the same).
 */
function conversation(thread) {
  const waiting = new Set(queuedRuns(thread));
  const shown = state.messages.filter((message) => {
    if (message.role !== "user") return true;
    const run = state.runs.get(message.run_id);
    if (waiting.has(message.run_id) || withdrawn(run)) return false;
    // A run being read from the store for the first time: shown once it is known how it went.
    return !run || run.events.length > 0 || run.id === thread.active_run_id;
  });
  const placed = shown.map((message, index) => [placeOf(message), index, message]);
  placed.sort(([a, i], [b, j]) => (a < b ? -1 : a > b ? 1 : i - j));
  return placed.map(([, , message]) => message);
}

function placeOf(message) {
  // Timestamps are ISO 8601 in UTC, all of one width: compared as strings, to the microsecond.
  const run = message.role === "user" ? state.runs.get(message.run_id) : null;
  const started = run && run.events.find((event) => event.type === "run_started");
  return started && started.ts > message.created_at ? started.ts : message.created_at;
}

function questionOf(runId) {
  return state.messages.find((message) => message.role === "user" && message.run_id === runId);
}

function renderMessages() {
  const thread = state.threads.get(state.current);
  const items = [];
  if (thread) {
    const answered = new Set(state.messages.filter((m) => m.role === "assistant").map((m) => m.run_id));
    for (const message of conversation(thread)) {
      items.push(messageBubble(message));
      const run = message.role === "user" ? state.runs.get(message.run_id) : null;
      if (run && !answered.has(run.id)) items.push(runBubble(run), ...approvals.cardsFor(run));
    }
    items.push(...queue.itemsFor(thread, questionOf));
  }
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const focused = list.contains(document.activeElement) ? document.activeElement : null;
  const selection = focused && "selectionStart" in focused ? [focused.selectionStart, focused.selectionEnd] : null;
  const queuedAt = focused ? [...list.querySelectorAll("li.queued")].indexOf(focused.closest("li.queued")) : -1;
  list.replaceChildren(...items);
  if (atBottom) list.scrollTop = list.scrollHeight;
  if (focused && focused.isConnected) {
    // Kept across the re-render (an approval card being filled in): so is the focus.
    focused.focus({ preventScroll: true });
    if (selection && selection[0] !== null) focused.setSelectionRange(...selection);
  } else if (focused && queuedAt >= 0) {
    // Its queued message went (cancelled, or started): on to the one that took its place.
    const cancels = list.querySelectorAll("li.queued button.cancel-queued");
    (cancels[Math.min(queuedAt, cancels.length - 1)] || $("content")).focus();
  } else if (focused) {
    // Its card went (the call was decided): on to the next waiting call, or the composer.
    (list.querySelector("li.approval button") || $("content")).focus();
  }
}

function runBubble(run) {
  if (run.status === "running") return bubble("assistant", run.text || "\u2026", "streaming");
  if (run.status === WAITING) return bubble("assistant", run.text || "Waiting for your approval\u2026", "streaming");
  if (run.status === "failed") {
    const request = run.requestId ? ` (request ${run.requestId})` : "";
    return bubble("assistant", `${run.text}${run.text ? "\n" : ""}The run failed: ${run.error.code}: ${run.error.message}${request}`, "failed");
  }
  if (run.status === "cancelled") return bubble("assistant", `${run.text}${run.text ? "\n" : ""}(cancelled)`, "failed");
  return bubble("assistant", run.text);
}

function renderComposer() {
  const thread = state.threads.get(state.current);
  const run = state.runs.get(state.shownRun);
  const running = Boolean(thread && thread.active_run_id) || Boolean(run && BUSY.has(run.status) && run.threadId === state.current);
  // While the thread is busy, a message waits its turn: Queue instead of Send.
  const waits = busy(thread);
  $("content").disabled = !thread;
  $("content").placeholder = waits ? PLACEHOLDER_QUEUED : PLACEHOLDER;
  $("send").disabled = !thread || !state.socket || waits;
  $("send").hidden = waits;
  $("queue").hidden = !waits;
  $("cancel").hidden = !running;
}

function renderTimeline() {
  const run = state.runs.get(state.shownRun);
  const list = $("timeline");
  const status = $("run-state");
  if (!run || run.threadId !== state.current) {
    status.textContent = "No run yet";
    status.className = "state";
    list.replaceChildren();
    return;
  }
  const started = run.events.length ? Date.parse(run.events[0].ts) : 0;
  const executing = new Map();
  const tools = new Map(); // call id -> tool, for approval_resolved (which names only the call)
  const entries = [];
  for (const event of run.events) {
    const at = Date.parse(event.ts) - started;
    const data = event.data;
    switch (event.type) {
      case "run_started":
        entries.push(entry(at, "run started", "", `request ${data.request_id}`));
        break;
      case "agent_started":
        entries.push(entry(at, `${event.agent} started`));
        break;
      case "agent_completed":
        if (event.agent === "triage") {
          const fallback = data.fallback ? ` (fallback: ${data.fallback})` : "";
          entries.push(entry(at, `route: ${data.result}${fallback}`));
        } else {
          entries.push(entry(at, `${event.agent} done`));
        }
        break;
      case "tool_executing":
        executing.set(data.call_id, at);
        entries.push(entry(at, `${data.tool} called`, "tool", data.input));
        break;
      case "tool_completed": {
        const took = executing.has(data.call_id) ? ` in ${at - executing.get(data.call_id)} ms` : "";
        entries.push(entry(at, `${data.tool} ${data.ok === false ? "failed" : "answered"}${took}`, data.ok === false ? "tool failed" : "tool", data.output));
        break;
      }
      case "approval_requested":
        tools.set(data.call_id, data.tool);
        entries.push(entry(at, `${data.tool} waits for approval`, "approval", JSON.stringify(data.input)));
        break;
      case "approval_resolved":
        entries.push(entry(at, `${tools.get(data.call_id) || data.call_id} ${decided(data.decision)}`, "approval"));
        break;
      case "run_completed": {
        const usage = data.usage ? `, ${data.usage.prompt_tokens} + ${data.usage.completion_tokens} tokens` : "";
        entries.push(entry(at, `completed in ${at} ms${usage}`, "completed"));
        break;
      }
      case "run_failed":
        entries.push(entry(at, `failed in ${at} ms`, "failed", `${data.error.code}: ${data.error.message}\nrequest ${run.requestId}`));
        break;
      case "run_cancelled":
        entries.push(entry(at, `cancelled after ${at} ms`, "failed"));
        break;
    }
  }
  list.replaceChildren(...entries);
  status.textContent = STATUS_TEXT[run.status] || run.status;
  status.className = `state ${run.status}`;
}

function entry(at, text, kind = "", detail = "") {
  const item = document.createElement("li");
  item.className = kind;
  const when = document.createElement("span");
  when.className = "at";
  when.textContent = `+${at} ms`;
  item.append(when, document.createTextNode(text));
  if (detail) {
    const pre = document.createElement("pre");
    pre.textContent = detail;
    item.append(pre);
  }
  return item;
}

// --- start ----------------------------------------------------------------------------------

if (state.token) {
  useToken(state.token).catch(() => {
    localStorage.removeItem(TOKEN_KEY);
    $("sign-in").hidden = false;
  });
} else {
  $("sign-in").hidden = false;
}
