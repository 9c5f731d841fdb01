// The page on a narrow screen (a phone): the conversation first, the threads list and the run's
// timeline each behind a toggle button (`aria-expanded`, `aria-controls`). On a wide screen the
// toggles are not shown (style.css) and both panels always are.
//
// A panel is open when it has the class `open`; Escape inside an open panel closes it and
// gives the focus back to its toggle.

export function panelToggles(toggles) {
  const pairs = toggles.map((toggle) => [toggle, document.getElementById(toggle.getAttribute("aria-controls"))]);

  function set(toggle, panel, open) {
    panel.classList.toggle("open", open);
    toggle.setAttribute("aria-expanded", String(open));
  }

  for (const [toggle, panel] of pairs) {
    set(toggle, panel, false);
    toggle.addEventListener("click", () => set(toggle, panel, !panel.classList.contains("open")));
    panel.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || !panel.classList.contains("open") || !narrow(toggle)) return;
      set(toggle, panel, false);
      toggle.focus();
    });
  }

  /** Close the panel that holds `node` (a thread was chosen in it: the conversation is next). */
  function closeAround(node) {
    for (const [toggle, panel] of pairs) if (panel.contains(node)) set(toggle, panel, false);
  }

  return { closeAround };
}

/** Whether the page is laid out narrow: its toggles are shown. */
function narrow(toggle) {
  return toggle.offsetParent !== null;
}
