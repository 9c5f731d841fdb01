// Answers as Markdown: rendered to HTML by marked, then made safe by DOMPurify before any of it
// reaches the page. A model's answer is untrusted text: whatever it writes (raw HTML, scripts,
// event handlers, `javascript:` links, remote images, frames, forms, styles) must come out
// inert, and nothing in it may make the browser load anything from elsewhere.
//
// - HTML written in the answer is shown as the text it is, never parsed as markup (the page's
//   policy would refuse its inline handlers and styles anyway, with an error for each).
// - Only the elements Markdown makes are kept, with only the attributes it needs: no `style`,
//   no `on*`, no `class` but a code block's `language-*`, no `id` (which could shadow the page's).
// - Links keep an `http:`, `https:` or `mailto:` target, and open in a new tab without the
//   page as their opener or referrer; any other target (`javascript:`, `data:`, relative) is
//   dropped, leaving the link's text.
// - Images are kept only from this page's own origin; any other (remote, `data:`) becomes a
//   link to it, which the browser does not follow unless it is clicked.
// - Each code block gets a Copy button (copyCode).
//
// DOMPurify parses the HTML into a document of its own, where nothing loads or runs; the
// fragment it returns is finished there and only then put into the page.

import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import { button, element } from "./dom.js";

const TAGS = [
  "a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "img",
  "li", "ol", "p", "pre", "s", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th",
  "thead", "tr", "ul",
];
const ATTRIBUTES = ["align", "alt", "class", "href", "src", "start", "title"];
const POLICY = {
  ALLOWED_TAGS: TAGS,
  ALLOWED_ATTR: ATTRIBUTES,
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  ALLOW_ARIA_ATTR: false,
  ALLOW_DATA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const LINK_SCHEMES = new Set(["http:", "https:", "mailto:"]);
const LANGUAGE = /^language-[\w+#.-]{1,40}$/;
const COPIED_MS = 2000;

marked.use({
  renderer: {
    html({ text, block }) {
      const shown = text.replace(/[&<>"']/g, (character) => ESCAPES[character]);
      return block ? `<p>${shown.trim().replace(/\n/g, "<br>")}</p>\n` : shown;
    },
  },
});

/** `text` as Markdown: a fragment of safe elements, to append to the page. */
export function renderMarkdown(text) {
  const html = marked.parse(text, { async: false, gfm: true, breaks: true });
  const fragment = DOMPurify.sanitize(html, POLICY);
  finish(fragment);
  return fragment;
}

function finish(fragment) {
  for (const node of fragment.querySelectorAll("[class]")) {
    if (!(node.localName === "code" && LANGUAGE.test(node.className))) node.removeAttribute("class");
  }
  for (const link of fragment.querySelectorAll("a")) {
    const target = link.getAttribute("href");
    if (target === null || !LINK_SCHEMES.has(schemeOf(target))) {
      link.removeAttribute("href");
      continue;
    }
    link.rel = "noopener noreferrer";
    link.target = "_blank";
  }
  for (const image of fragment.querySelectorAll("img")) {
    const source = image.getAttribute("src");
    if (source !== null && sameOrigin(source)) continue;
    image.replaceWith(imageLink(image, source));
  }
  for (const pre of fragment.querySelectorAll("pre")) {
    const block = element("div", "code-block");
    pre.replaceWith(block);
    block.append(pre, copyButton());
  }
}

function schemeOf(url) {
  try {
    return new URL(url).protocol;
  } catch {
    return ""; // relative, or not a URL: not a link target the page keeps
  }
}

function sameOrigin(url) {
  try {
    const parsed = new URL(url, location.href);
    return parsed.origin === location.origin && (parsed.protocol === "http:" || parsed.protocol === "https:");
  } catch {
    return false;
  }
}

function imageLink(image, source) {
  const words = `image: ${image.getAttribute("alt") || "untitled"}`;
  if (source === null || !LINK_SCHEMES.has(schemeOf(source))) return element("span", "", `[${words}]`);
  const link = element("a", "", `[${words}]`);
  link.href = source;
  link.rel = "noopener noreferrer";
  link.target = "_blank";
  return link;
}

function copyButton() {
  const copy = button("Copy", "copy-code");
  copy.setAttribute("aria-label", "Copy code");
  return copy;
}

/** Copy the code of the block whose Copy button was pressed, and say so on the button. */
export async function copyCode(copy) {
  const code = copy.closest(".code-block")?.querySelector("pre");
  if (!code) return;
  let said = "Copied";
  try {
    await navigator.clipboard.writeText(code.textContent);
  } catch {
    said = "Copy failed"; // no clipboard (an insecure origin) or no permission
  }
  copy.textContent = said;
  copy.setAttribute("aria-label", said);
  setTimeout(() => {
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy code");
  }, COPIED_MS);
}
