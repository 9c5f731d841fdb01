// Small helpers to build the page's elements (every module builds with these).

/** A new element, with its class and text if given. */
export function element(tag, className = "", text = "") {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text) node.textContent = text;
  return node;
}

/** A button (type "button" unless said otherwise). */
export function button(text, className = "", type = "button") {
  const node = element("button", className, text);
  node.type = type;
  return node;
}

/**
 * Make `list`'s children exactly `nodes`, in that order, touching only what is out of place:
 * a node already where it belongs is not moved (a moved node would lose the keyboard focus and
 * be announced again by a live region), one that is not given is removed.
 */
export function placeChildren(list, nodes) {
  const wanted = new Set(nodes);
  for (let child = list.firstElementChild; child; ) {
    const next = child.nextElementSibling;
    if (!wanted.has(child)) child.remove();
    child = next;
  }
  let at = list.firstElementChild;
  for (const node of nodes) {
    if (node === at) at = at.nextElementSibling;
    else list.insertBefore(node, at);
  }
}
