// DOM helpers. Every string from the network (bodies, names, titles) goes into the page as
// text -- textContent or a Text node -- never as HTML: there is no innerHTML in this client.

/** A new element: `props` are attributes (plus `text` and `class`), children are nodes or strings. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  // append() turns a string into a Text node: it is never parsed as markup.
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export function byId(id) {
  const node = document.getElementById(id);
  if (!node) throw new Error(`#${id} is missing from the page`);
  return node;
}

export function setText(node, value) {
  node.textContent = String(value);
}

/** Show a count in a badge; hidden at zero. */
export function setBadge(node, count, label) {
  node.hidden = !count;
  node.textContent = count ? String(count) : "";
  if (label) node.setAttribute("aria-label", `${count} ${label}`);
}
