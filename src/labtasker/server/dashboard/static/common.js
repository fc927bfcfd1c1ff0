// Shared helpers of the dashboard pages: JSON calls with the CSRF token, times in the
// browser's zone (UTC on hover), the live event stream with a polling fallback, and the
// confirmation dialog. Our own code; nothing is loaded from another site.

export const csrfToken = document.querySelector('meta[name="csrf-token"]')?.content || "";

export class ApiError extends Error {
  constructor(status, detail) {
    const message = typeof detail === "string" ? detail : (detail?.message || JSON.stringify(detail));
    super(message);
    this.status = status;
    this.field = typeof detail === "object" && detail ? detail.field : undefined;
  }
}

export async function api(path, {method = "GET", body} = {}) {
  const headers = {"Accept": "application/json"};
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = csrfToken;
  }
  const response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                      credentials: "same-origin"});
  if (response.status === 401) {
    window.location.assign("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new ApiError(401, "logged out");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = data.detail;
    if (Array.isArray(detail)) {  // request validation errors: name the field and the limit
      throw new ApiError(response.status, detail.map(d => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; "));
    }
    throw new ApiError(response.status, detail ?? response.statusText);
  }
  return data;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Plain text of any value, control characters shown as escapes.
export function plain(value) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return text.replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g, c => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
}

const pad = n => String(n).padStart(2, "0");

export function localTime(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  const today = new Date();
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

export function utcTitle(iso) {
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC").replace(/Z$/, " UTC");
}

// A <time> element: local time shown, UTC on hover.
export function timeEl(iso) {
  if (!iso) return document.createTextNode("–");
  return el("time", {datetime: iso, title: utcTitle(iso)}, localTime(iso));
}

// Server-rendered <time> elements: rewrite to the browser's zone.
export function localiseTimes(root = document) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const iso = t.getAttribute("datetime");
    t.textContent = localTime(iso);
    t.title = utcTitle(iso);
  }
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  seconds = Math.max(0, Math.round(seconds));
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
  if (h) return `${h}h ${pad(m)}m`;
  if (m) return `${m}m ${pad(s)}s`;
  return `${s}s`;
}

// Call fn at most once per `wait` ms, and once more after the last call.
export function throttle(fn, wait) {
  let timer = null, pending = false, last = 0;
  return function run() {
    const now = Date.now();
    if (timer) { pending = true; return; }
    const delay = Math.max(0, last + wait - now);
    timer = setTimeout(() => {
      timer = null; last = Date.now();
      fn();
      if (pending) { pending = false; run(); }
    }, delay);
  };
}

// Follow the queue's event stream; `onEvent(payload)` per event, `onReset()` when the
// stream (re)connects (the page should re-read what it shows). Falls back to polling
// (`onReset` every `pollMs`) while the stream is down.
export function live(onEvent, onReset, pollMs = 5000) {
  const badge = document.getElementById("live");
  let poller = null;
  const setState = (text, cls) => { if (badge) { badge.textContent = text; badge.className = "live " + cls; } };
  const startPolling = () => {
    if (poller) return;
    setState("polling", "polling");
    poller = setInterval(onReset, pollMs);
  };
  const stopPolling = () => { if (poller) { clearInterval(poller); poller = null; } };
  if (!("EventSource" in window)) { startPolling(); return; }
  const source = new EventSource("/ui/api/events");
  let connected = false;
  source.addEventListener("connection", () => {
    stopPolling();
    setState("live", "on");
    if (connected) onReset();  // reconnected: we may have missed events before Last-Event-ID
    connected = true;
  });
  source.addEventListener("event", (message) => {
    try { onEvent(JSON.parse(message.data)); } catch (err) { console.error(err); }
  });
  // events were pruned before this page saw them: re-read what it shows
  source.addEventListener("lost", () => onReset());
  // the queue's password changed or the queue was deleted: this session is over
  source.addEventListener("closed", () => { source.close(); window.location.reload(); });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) startPolling();
    else setState("reconnecting…", "off");
    setTimeout(() => { if (source.readyState !== EventSource.OPEN) startPolling(); }, 3000);
  };
  window.addEventListener("beforeunload", () => source.close());
  return source;
}

// The confirmation dialog; resolves true when confirmed.
export function confirmDialog(text, confirmLabel = "Confirm") {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-yes").textContent = confirmLabel;
  return new Promise(resolve => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.returnValue = "";
    dialog.showModal();
    document.getElementById("confirm-no").focus();
  });
}

localiseTimes();
