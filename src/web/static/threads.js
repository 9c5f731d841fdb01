// The threads list, and the title a new thread gets from its first question.
//
// The list keeps one item per thread, updated in place (its title, whether it is the one shown,
// whether a run of it is busy or waits for approval) and moved only when the order changes.

import { button, element, placeChildren } from "./dom.js";
import { queuedRuns } from "./queue.js";

const TITLE_CHARS = 60;

/**
 * A thread's title from its first question: the first line that says something, white space
 * folded, cut at a word boundary to about 60 characters with an ellipsis.
 */
export function titleFrom(question) {
  // Control characters (which a title may not hold) count as white space.
  const line = question.split("\n").map((text) => text.replace(/[\s\u0000-\u001f\u007f]+/g, " ").trim()).find(Boolean) || "";
  if (line.length <= TITLE_CHARS) return line;
  const cut = line.slice(0, TITLE_CHARS - 1);
  const space = cut.lastIndexOf(" ");
  return `${(space >= TITLE_CHARS / 2 ? cut.slice(0, space) : cut).trimEnd()}\u2026`;
}

/**
 * The list in `list`; `select(id)` is called when a thread is chosen. `render(state, busyOf)`
 * shows `state.order`'s threads, `busyOf(thread)` telling how busy each one is: null, "running"
 * or "waiting" (for the person's approval).
 */
export function threadList(list, select) {
  const items = new Map(); // thread id -> {item, button, title, mark}

  function render(state, busyOf) {
    const nodes = [];
    for (const id of state.order) {
      const thread = state.threads.get(id);
      if (!thread) continue;
      let shown = items.get(id);
      if (!shown) {
        shown = build(id);
        items.set(id, shown);
      }
      update(shown, thread, id === state.current, busyOf(thread));
      nodes.push(shown.item);
    }
    for (const id of items.keys()) if (!state.threads.has(id)) items.delete(id);
    placeChildren(list, nodes);
  }

  function build(id) {
    const item = element("li");
    const choose = button("", "thread");
    choose.dataset.threadId = id;
    const title = element("span", "thread-title");
    const mark = element("span", "busy");
    mark.hidden = true;
    choose.append(title, mark);
    choose.addEventListener("click", () => select(id));
    item.append(choose);
    return { item, button: choose, title, mark, key: "" };
  }

  function update(shown, thread, current, busy) {
    const queued = queuedRuns(thread).length;
    const key = `${thread.title}\u0000${current}\u0000${busy}\u0000${queued}`;
    if (key === shown.key) return;
    shown.key = key;
    shown.title.textContent = thread.title;
    if (current) shown.button.setAttribute("aria-current", "true");
    else shown.button.removeAttribute("aria-current");
    shown.mark.hidden = !busy && !queued;
    if (shown.mark.hidden) {
      shown.mark.replaceChildren();
      return;
    }
    const waiting = busy === "waiting";
    shown.mark.className = waiting ? "busy waiting" : "busy";
    // The dot is for the eye; a screen reader hears the words.
    const dot = element("span", "", " \u25cf");
    dot.setAttribute("aria-hidden", "true");
    const words = waiting ? element("span", "", " needs your approval") : element("span", "visually-hidden", ", in progress");
    shown.mark.replaceChildren(dot, words);
    if (queued) shown.mark.append(element("span", "visually-hidden", `, ${queued} queued`));
    let title = waiting ? "a run waits for your approval" : "a run is in progress";
    if (queued) title += `, ${queued} queued`;
    shown.mark.title = title;
  }

  return { render };
}
