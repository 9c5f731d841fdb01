// Tool calls that wait for a person's approval, on the chat page.
//
// A run that pauses stores one `approval_requested` event per waiting call and becomes
// `awaiting_approval`; each decision stores an `approval_resolved`. The page follows those
// events like any other (live over the socket, replayed from the store after a reload), so a
// call is pending exactly while its request has been applied and its resolution has not: every
// tab of the user shows it, and once it is decided in one tab it disappears in all of them.
// Decisions go over HTTP (`POST /api/runs/{id}/approvals`), one call at a time, so that a
// refusal (a validation_error on an edited input, a conflict) is answered to the card that sent
// it.

import { button, element } from "./dom.js";

export const WAITING = "awaiting_approval";
const DONE = { approve: "approved", reject: "rejected", edit: "approved with an edited input" };

/** Applies an approval event (or a final one) to `run.approvals` (call id -> request event). */
export function trackApproval(run, event, final) {
  if (event.type === "approval_requested") {
    run.approvals.set(event.data.call_id, event);
    run.status = WAITING;
  } else if (event.type === "approval_resolved") {
    run.approvals.delete(event.data.call_id);
    // The turn's last decision resumes the run; its next events follow.
    if (!run.approvals.size && run.status === WAITING) run.status = "running";
  } else if (final) {
    run.approvals.clear(); // cancelled or expired while waiting: nothing left to decide
  }
}

/** The words for a resolved call in the timeline ("approved", "rejected", ...). */
export function decided(decision) {
  return DONE[decision] || decision;
}

/**
 * The cards of pending calls. Each card is built once and kept while its call is pending, so
 * that a re-render of the conversation keeps what the person typed in it.
 * `api(method, path, body)` and `describe(failure)` are the page's; `caughtUp(run)` is called
 * after each attempt to decide (the page fetches the run's stored events it has not seen).
 */
export function approvalCards({ api, describe, caughtUp }) {
  const cards = new Map(); // "<run id>/<request seq>" -> card

  function cardsFor(run) {
    for (const [key, card] of cards) {
      if (card.run.approvals.get(card.callId) !== card.requested) cards.delete(key);
    }
    return [...run.approvals.values()].map((requested) => {
      const key = `${run.id}/${requested.seq}`;
      if (!cards.has(key)) cards.set(key, build(run, requested));
      return cards.get(key).item;
    });
  }

  function build(run, requested) {
    const { call_id: callId, tool, input, expires_at: expiresAt } = requested.data;
    const id = `approval-${run.id}-${requested.seq}`;
    const card = { run, requested, callId, busy: false };
    const item = element("li", "approval");
    const section = element("section");
    const title = element("h3", "", `${tool} waits for your approval`);
    title.id = `${id}-title`;
    section.setAttribute("aria-labelledby", title.id);
    const who = requested.agent ? `The ${requested.agent} agent` : "The agent";
    const intro = element("p", "", `${who} asks to run ${tool} with this input:`);
    const shown = element("pre", "approval-input", JSON.stringify(input, null, 2));
    const expires = element("p", "approval-expires", `Waits until ${new Date(expiresAt).toLocaleString()}.`);

    const approve = button("Approve", "approve");
    const reject = button("Reject", "reject");
    const edit = button("Edit input", "edit");
    const actions = element("div", "approval-actions");
    actions.append(approve, reject, edit);

    const rejectForm = element("form", "approval-form");
    rejectForm.id = `${id}-reject`;
    rejectForm.hidden = true;
    const reason = element("input");
    reason.id = `${id}-reason`;
    reason.maxLength = 2000;
    reason.autocomplete = "off";
    const reasonLabel = element("label", "", "Why? (optional; the model is told)");
    reasonLabel.htmlFor = reason.id;
    rejectForm.append(reasonLabel, reason, button("Confirm rejection", "", "submit"));

    const editForm = element("form", "approval-form");
    editForm.id = `${id}-edit`;
    editForm.hidden = true;
    const json = element("textarea");
    json.id = `${id}-json`;
    json.rows = 4;
    json.spellcheck = false;
    json.value = JSON.stringify(input, null, 2);
    const jsonLabel = element("label", "", `Input for ${tool} (JSON)`);
    jsonLabel.htmlFor = json.id;
    editForm.append(jsonLabel, json, button("Run with this input", "", "submit"));

    const progress = element("p", "approval-progress");
    progress.setAttribute("aria-live", "polite");
    const error = element("p", "error");
    error.setAttribute("role", "alert");

    section.append(title, intro, shown, expires, actions, rejectForm, editForm, progress, error);
    item.append(section);
    Object.assign(card, { item, progress, error, buttons: item.getElementsByTagName("button") });

    // Reject and Edit open their form (one at a time); pressing them again closes it.
    const toggles = [
      [reject, rejectForm, reason],
      [edit, editForm, json],
    ];
    for (const [toggle, form] of toggles) {
      toggle.setAttribute("aria-controls", form.id);
      toggle.setAttribute("aria-expanded", "false");
    }
    for (const [toggle, form, field] of toggles) {
      toggle.addEventListener("click", () => {
        if (card.busy) return;
        const open = form.hidden;
        error.textContent = "";
        for (const [otherToggle, otherForm] of toggles) {
          otherForm.hidden = true;
          otherToggle.setAttribute("aria-expanded", "false");
        }
        form.hidden = !open;
        toggle.setAttribute("aria-expanded", String(open));
        if (open) field.focus();
      });
    }

    approve.addEventListener("click", () => decide(card, { decision: "approve" }));
    rejectForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const message = reason.value.trim();
      decide(card, message ? { decision: "reject", message } : { decision: "reject" });
    });
    editForm.addEventListener("submit", (event) => {
      event.preventDefault();
      let edited;
      try {
        edited = JSON.parse(json.value);
      } catch (failure) {
        error.textContent = `Not valid JSON: ${failure.message}. Nothing was sent.`;
        json.focus();
        return;
      }
      if (edited === null || typeof edited !== "object" || Array.isArray(edited)) {
        error.textContent = "The input must be a JSON object ({...}). Nothing was sent.";
        json.focus();
        return;
      }
      decide(card, { decision: "edit", input: edited }, json);
    });
    return card;
  }

  async function decide(card, decision, refocus = null) {
    if (card.busy) return;
    setBusy(card, true, "Sending your decision\u2026");
    card.error.textContent = "";
    try {
      await api("POST", `/api/runs/${card.run.id}/approvals`, {
        decisions: [{ call_id: card.callId, ...decision }],
      });
      // The card goes when the call's approval_resolved event arrives (in every tab).
      card.progress.textContent = "Decided; the run goes on\u2026";
    } catch (failure) {
      setBusy(card, false, "");
      card.error.textContent = describe(failure);
      if (refocus) refocus.focus();
    }
    caughtUp(card.run); // decided elsewhere, cancelled, resumed: the stored events say
  }

  function setBusy(card, busy, text) {
    card.busy = busy;
    card.progress.textContent = text;
    // aria-disabled rather than disabled: a disabled button would drop the keyboard focus.
    for (const node of card.buttons) node.setAttribute("aria-disabled", String(busy));
  }

  return { cardsFor };
}
