// Shared helpers. Every piece of text from a model, a tool, a dataset or a file goes into the page
// through `el` / text nodes (textContent), never through innerHTML: untrusted text can't run.

const KEY_STORAGE = "lmstack.apiKey";

export class AuthError extends Error {}

export function apiKey() { return localStorage.getItem(KEY_STORAGE) || ""; }
export function setApiKey(key) { localStorage.setItem(KEY_STORAGE, key); }

export function authHeaders() {
  const key = apiKey();
  return key ? { authorization: `Bearer ${key}` } : {};
}

// fetch() with the API key; JSON in and out; a 401 shows the key form, other errors carry the server's message.
export async function api(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.body ? { "content-type": "application/json" } : {}), ...options.headers };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    document.getElementById("key-form").hidden = false;
    throw new AuthError("this server needs an API key: enter it at the top right");
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error?.message || `${response.status} ${response.statusText}`);
  return body;
}

// el("td", {class: "x", onclick: f, title: "t"}, "text", child, ...): children are nodes or strings (as text).
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else if (name in node && typeof value !== "string") node[name] = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) { node.replaceChildren(); return node; }

export function errorBox(err) { return el("p", { class: "error" }, String(err.message || err)); }

export const fmt = {
  num(x, digits = 4) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); },
  int(x) { return x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US"); },
  usd(x) { return x ? `$${Number(x).toFixed(6)}` : "$0"; },
  ms(seconds) { return seconds === null || seconds === undefined ? "–" : `${Math.round(seconds * 1000)} ms`; },
  time(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"; },
  ago(t) {
    const s = Math.max(0, Date.now() / 1000 - t);
    return s < 90 ? `${Math.round(s)} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : fmt.time(t);
  },
  json(value) { return typeof value === "string" ? value : JSON.stringify(value, null, 2); },
};

export function statusBadge(status) { return el("span", { class: `badge status-${status}` }, STATUS_LABELS[status] || status); }

const STATUS_LABELS = {
  running: "running", waiting: "waiting for approval", completed: "done", failed: "failed",
  budget_exceeded: "over budget", loop_detected: "loop detected", no_progress: "no progress",
  stopped_by_monitor: "stopped by monitor", finished: "finished",
};

// A "‹ prev · 1–50 of 1000 · next ›" bar; onPage(newOffset) is called on a click.
export function pager(offset, limit, total, onPage) {
  return el("div", { class: "pager" },
    el("button", { disabled: offset <= 0, onclick: () => onPage(Math.max(0, offset - limit)) }, "‹ prev"),
    el("span", { class: "muted" }, total ? `${offset + 1}–${Math.min(offset + limit, total)} of ${total}` : "none"),
    el("button", { disabled: offset + limit >= total, onclick: () => onPage(offset + limit) }, "next ›"));
}
