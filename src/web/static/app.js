// isochat's chat page: plain JavaScript modules, no build step, nothing from a CDN. This one
// holds the page's state and what happens on it; the others each do one job: api.js (the HTTP
// API and the token), socket.js (the WebSocket), runs.js (events applied to their runs),
// threads.js (the threads list), messages.js (the conversation), markdown.js (answers as
// Markdown, made safe), timeline.js (the run's steps), approvals.js (calls that wait for a
// person), queue.js (messages that wait their turn), layout.js (a phone's panels), dom.js.
//
// The page is a client of the public API like any other: a bearer token, the REST endpoints,
// and one WebSocket opened with a single-use ticket. The message box is ready as soon as one is
// signed in: the first message of a new conversation creates its thread (titled from the
// question), then is sent. Runs are started with `on_disconnect: "continue"`, so a reload or a
// lost connection never ends them: the page finds a thread's running run (`active_run_id`),
// replays its stored events and follows it live, each event applied once, in seq order. A run
// that waits for a person's approval is followed the same way. A message sent while a run of
// its thread is going waits its turn behind it: it is sent with `multitask: "enqueue"`, shown
// under the run in progress until its own run starts, and can be cancelled while it waits.
//
// An event touches only what it changes: an answer's text redraws that answer (once per
// frame), a step of the run adds its entry to the timeline, and the events that change the
// conversation's shape (a run's start, its end, an approval) put its items in order again,
// each kept by key and drawn again only if what it shows has changed.

import { api, describe, keepToken, session, userOf, ApiFailure } from "./api.js";
import { WAITING, approvalCards } from "./approvals.js";
import { panelToggles } from "./layout.js";
import { conversation, conversationView } from "./messages.js";
import { enqueued, leftQueue, queueItems, queuedRuns } from "./queue.js";
import { FINAL, runTracker } from "./runs.js";
import { liveSocket } from "./socket.js";
import { threadList, titleFrom } from "./threads.js";
import { timelineView } from "./timeline.js";

const $ = (id) => document.getElementById(id);
const BUSY = new Set(["running", WAITING]); // the thread is busy: a new message waits, cancel offered
const ENDED = new Set(["completed", "failed", "cancelled"]);
// The events after which the conversation's items change; the others touch only the timeline,
// or the streaming answer's text.
const RESHAPE = new Set(["run_started", "approval_requested", "approval_resolved", ...FINAL]);
const RECENT_OPEN_QUESTIONS = 10; // unanswered questions whose runs are read when a thread opens
const MESSAGES_PAGE = 500; // the most the API answers at once
const NEW_CONVERSATION = "New conversation";
const PLACEHOLDER = "Ask something, e.g. what is (12 + 3) * 4?";
const PLACEHOLDER_QUEUED = "Ask something: it waits for the run in progress";

const state = {
  threads: new Map(), // id -> Thread
  order: [], // thread ids, newest first
  threadsCursor: null,
  current: null, // the thread shown; null: a new conversation, not stored until its first message
  messages: [], // its stored messages, oldest first
  messagesTail: null, // the cursor its last page of messages was read with (null: the first page)
  runs: new Map(), // run id -> Run as this page follows it (runs.js)
  shownRun: null, // the run in the timeline
  sent: new Map(), // request id -> {threadId, content}: chat frames not yet answered
  queueing: Promise.resolve(), // messages to queue go one after another, in the order sent
  starting: false, // a new conversation's thread is being created for its first message
};

function showError(where, failure) {
  $(where).textContent = failure ? describe(failure) : "";
}

// --- signing in -----------------------------------------------------------------------------

async function useToken(token) {
  session.token = token;
  try {
    await loadThreads();
  } catch (failure) {
    session.token = null;
    throw failure;
  }
  keepToken(token);
  $("who").textContent = `signed in as ${userOf(token)}`;
  $("sign-in").hidden = true;
  $("chat").hidden = false;
  $("sign-out").hidden = false;
  live.connect();
  render();
  $("content").focus(); // ready to ask at once
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) await selectThread(wanted);
}

function signOut() {
  keepToken(null);
  live.close();
  setHash(null);
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

/** How busy the thread is, for its mark in the list: null, "running" or "waiting" (for you). */
function busyOf(thread) {
  if (!thread.active_run_id) return null;
  return state.runs.get(thread.active_run_id)?.status === WAITING ? "waiting" : "running";
}

async function loadThreads(more = false) {
  const query = more && state.threadsCursor ? `?cursor=${encodeURIComponent(state.threadsCursor)}` : "";
  const page = await api("GET", `/api/threads${query}`);
  const shown = state.threads.get(state.current);
  if (!more) {
    state.threads.clear();
    state.order = [];
  }
  for (const thread of page.threads) {
    adopt(thread);
    state.order.push(thread.id);
  }
  if (shown && !state.threads.has(shown.id)) {
    // The thread shown stays: made here after the list was read, or older than its first page.
    state.threads.set(shown.id, shown);
    const after = state.order.findIndex((id) => state.threads.get(id).created_at < shown.created_at);
    state.order.splice(after < 0 ? state.order.length : after, 0, shown.id);
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

function setHash(id) {
  history.replaceState(null, "", id ? `#${encodeURIComponent(id)}` : location.pathname + location.search);
}

/** Show a new conversation: nothing selected, nothing stored until its first message. */
function newConversation() {
  state.current = null;
  state.messages = [];
  state.messagesTail = null;
  state.shownRun = null;
  chatView.clear();
  setHash(null);
  showError("chat-error", null);
  render();
}

$("more-threads").addEventListener("click", () => loadThreads(true).catch((f) => showError("chat-error", f)));

$("new-thread").addEventListener("click", () => {
  newConversation();
  panels.closeAround($("new-thread"));
  $("content").focus();
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
    if (state.current === thread.id) newConversation();
    else renderThreads();
    $("content").focus();
  } catch (failure) {
    showError("chat-error", failure);
  }
});

async function selectThread(id) {
  if (id !== state.current) {
    state.current = id;
    state.messages = [];
    state.messagesTail = null;
    state.shownRun = null;
    chatView.clear();
  }
  setHash(id);
  showError("chat-error", null);
  render();
  try {
    const thread = adopt(await api("GET", `/api/threads/${id}`));
    await loadMessages();
    if (id !== state.current) return;
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
    const last = conversation(thread, state.messages, state.runs).at(-1);
    const runId = thread.active_run_id || (last && last.run_id);
    state.shownRun = runId || null;
    render();
    if (runId) await replay(runOf(runId, id));
  } catch (failure) {
    if (id !== state.current) return;
    if (failure.status === 404) newConversation(); // deleted, or never one of this user's
    showError("chat-error", failure);
  }
}

/**
 * Read the shown thread's messages the page has not read: all of them the first time, then from
 * the last page read on (one request, however long the thread), each message kept once.
 */
async function loadMessages() {
  const id = state.current;
  if (!id) return;
  const read = [];
  let cursor = state.messagesTail;
  for (;;) {
    const query = new URLSearchParams({ limit: String(MESSAGES_PAGE) });
    if (cursor) query.set("cursor", cursor);
    const page = await api("GET", `/api/threads/${id}/messages?${query}`);
    read.push(...page.messages);
    if (!page.next_cursor) break;
    cursor = page.next_cursor;
  }
  if (id !== state.current) return;
  state.messagesTail = cursor;
  const at = new Map(state.messages.map((message, index) => [message.id, index]));
  for (const message of read) {
    if (at.has(message.id)) state.messages[at.get(message.id)] = message;
    else state.messages.push(message);
  }
  // Answers heard of while the pages were read are kept (the pages may have been read first);
  // a run rolled back by a newer message left nothing.
  const known = new Set(state.messages.map((message) => message.id));
  for (const run of state.runs.values()) {
    if (run.threadId === id && run.answer && !known.has(run.answer.id)) state.messages.push(run.answer);
  }
  state.messages = state.messages.filter((m) => !state.runs.get(m.run_id)?.rolledBack);
}

// --- runs: what each event means for the page (runs.js applies it to its run) ---------------

const { runOf, receive, replay } = runTracker({
  runs: state.runs,
  api,
  applied,
  failed: (failure) => showError("chat-error", failure),
});

function applied(run, event) {
  const thread = state.threads.get(run.threadId);
  if (thread && (event.type === "run_started" || FINAL.has(event.type))) leftQueue(thread, run.id);
  if (event.type === "run_started") {
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
  }
  if (FINAL.has(event.type)) {
    if (run.answer) keepAnswer(run, run.answer);
    if (run.rolledBack && run.threadId === state.current) {
      state.messages = state.messages.filter((m) => m.run_id !== run.id);
    }
    if (thread && thread.active_run_id === run.id) {
      const before = run.displaced && state.runs.get(run.displaced);
      thread.active_run_id = run.displaced && !(before && ENDED.has(before.status)) ? run.displaced : null;
    }
  }
  if (run.threadId === state.current) {
    if (RESHAPE.has(event.type)) render();
    else {
      if (event.type === "agent_thinking") chatView.streamed(run);
      renderTimeline();
    }
    if (FINAL.has(event.type)) backToComposer();
  } else if (event.type === "run_started" || event.type.startsWith("approval_") || FINAL.has(event.type)) {
    renderThreads();
  }
}

/** A run's stored answer, heard of by its last event: part of the thread shown. */
function keepAnswer(run, message) {
  if (run.threadId === state.current && !state.messages.some((m) => m.id === message.id)) state.messages.push(message);
}

/** A run of the thread shown has ended: the focus goes back to the message box, unless it is
 * somewhere the person chose (the threads, the timeline, an answer's link). */
function backToComposer() {
  const active = document.activeElement;
  const lost = !active || active === document.body || !active.isConnected || active.closest("[hidden]");
  if (lost || $("composer").contains(active)) $("content").focus();
}

// --- the socket -----------------------------------------------------------------------------

const live = liveSocket({
  api,
  signedIn: () => Boolean(session.token),
  opened(reconnected) {
    // Whatever happened while the page was not listening is stored: catch up.
    for (const run of state.runs.values()) if (BUSY.has(run.status)) replay(run);
    if (state.current && reconnected) resync(state.current);
    renderComposer();
  },
  received(frame) {
    if (frame.type === "error") onErrorFrame(frame);
    else if (typeof frame.seq === "number") receive(frame);
  },
  closed: () => renderComposer(),
  unauthorized: signOut,
});

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

// --- asking ---------------------------------------------------------------------------------

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const content = $("content").value;
  if (!content.trim() || state.starting) return;
  if (busy(state.threads.get(state.current))) {
    showError("chat-error", null);
    queueUp(state.current, content, true);
    return;
  }
  if (!live.isOpen()) {
    $("chat-error").textContent = "not connected yet: try again in a moment";
    return;
  }
  showError("chat-error", null);
  if (state.current) chat(state.current, content);
  else startConversation(content);
});

/** Send a message over the socket: its run starts at once. */
function chat(threadId, content) {
  const requestId = crypto.randomUUID();
  state.sent.set(requestId, { threadId, content });
  live.send({
    type: "chat",
    thread_id: threadId,
    content,
    request_id: requestId,
    on_disconnect: "continue", // a reload or a lost connection does not end the run
    // Busy after all (another tab's run, not heard of yet): refused, whatever the server's
    // default, and then queued over HTTP (onErrorFrame), so that it shows with its Cancel.
    multitask: "reject",
  });
  $("content").value = "";
  $("content").focus();
}

/** The first message of a new conversation: its thread is created, titled from it, then it is
 * sent. If the thread cannot be made, the message goes back in the box. */
async function startConversation(content) {
  state.starting = true;
  $("content").value = "";
  renderComposer();
  try {
    const thread = adopt(await api("POST", "/api/threads", { title: titleFrom(content) }));
    state.order.unshift(thread.id);
    if (state.current === null) {
      state.current = thread.id;
      setHash(thread.id);
    }
    render();
    if (!live.isOpen()) throw new Error("not connected: the message was not sent; try again in a moment");
    chat(thread.id, content);
  } catch (failure) {
    showError("chat-error", failure);
    if (!$("content").value) $("content").value = content;
  } finally {
    state.starting = false;
    renderComposer();
  }
}

/**
 * Send a message that waits its turn behind the thread's busy run: over HTTP, which answers
 * with its run at once (`queued`, or `running` if the thread has become idle meanwhile), so that
 * the page shows it with its Cancel button straight away. One after another, in the order sent.
 */
function queueUp(threadId, content, fromComposer) {
  if (fromComposer) {
    $("content").value = "";
    $("content").focus();
  }
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
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
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

const panels = panelToggles([$("toggle-threads"), $("toggle-timeline")]);
const approvals = approvalCards({ api, describe, caughtUp: replay });
const queue = queueItems({ api, describe, caughtUp: (threadId, runId) => replay(runOf(runId, threadId)) });
const chatView = conversationView($("messages"), { runs: state.runs, approvals, queue, composer: $("content") });
const timeline = timelineView($("timeline"), $("run-state"));
const threads = threadList($("thread-list"), (id) => {
  panels.closeAround($("thread-list"));
  // On a phone the list has gone with its panel: the focus goes on to the conversation.
  if ($("thread-list").offsetParent === null) $("content").focus();
  selectThread(id);
});

function render() {
  renderThreads();
  renderHeader();
  renderMessages();
  renderTimeline();
  renderComposer();
}

function renderThreads() {
  threads.render(state, busyOf);
  $("more-threads").hidden = !state.threadsCursor;
}

function renderHeader() {
  const thread = state.threads.get(state.current);
  $("thread-title").textContent = thread ? thread.title : NEW_CONVERSATION;
  $("rename-thread").disabled = $("delete-thread").disabled = !thread;
}

function renderMessages() {
  chatView.render(state.threads.get(state.current), state.messages);
}

function renderTimeline() {
  const run = state.runs.get(state.shownRun);
  timeline.show(run && run.threadId === state.current ? run : null);
}

function renderComposer() {
  const thread = state.threads.get(state.current);
  const run = state.runs.get(state.shownRun);
  const running = Boolean(thread && thread.active_run_id) || Boolean(run && BUSY.has(run.status) && run.threadId === state.current);
  // While the thread is busy, a message waits its turn: Queue instead of Send.
  const waits = busy(thread);
  $("content").placeholder = waits ? PLACEHOLDER_QUEUED : PLACEHOLDER;
  $("send").disabled = !live.exists() || waits || state.starting;
  $("send").hidden = waits;
  $("queue").hidden = !waits;
  $("cancel").hidden = !running;
}

// --- start ----------------------------------------------------------------------------------

if (session.token) {
  useToken(session.token).catch(() => {
    keepToken(null);
    $("sign-in").hidden = false;
  });
} else {
  $("sign-in").hidden = false;
}
