// Tasks table: server-side paging (keyset cursor), sort by any column, filter box (both
// syntaxes; the server's message and caret shown inline), selectable columns, CSV export,
// actions with confirmation. Follows the event stream: the shown page is re-read on change.
import {api, el, live, plain, throttle, duration, timeEl, confirmDialog} from "./common.js";

const BASE = [
  {key: "task_id", label: "id", sort: "task_id"},
  {key: "task_name", label: "name", sort: "task_name"},
  {key: "status", label: "status", sort: "status"},
  {key: "retries", label: "tries", sort: "retries"},
  {key: "priority", label: "priority", sort: "priority"},
  {key: "worker_id", label: "worker", sort: "worker_id"},
  {key: "duration", label: "duration", sort: null},
  {key: "start_time", label: "start", sort: "start_time"},
  {key: "end", label: "end", sort: "last_modified"},
];
const DEFAULT_HIDDEN = new Set(["priority"]);
const storageKey = "labtasker.columns." + document.getElementById("queue-name").textContent;

const params = new URLSearchParams(location.search);
const state = {
  filter: params.get("filter") || "",
  sort: parseSort(params.get("sort") || ""),
  limit: Number(params.get("limit")) || 50,
  pages: [{cursor: null, offset: 0}],
  page: 0,
  argKeys: [], summaryKeys: [],
  hidden: loadHidden(),
  selected: new Set(),
  rows: [],
  total: 0,
  counted: "",     // the filter the total was counted for
  countedAt: 0,
};
const RECOUNT_MS = 3000;  // live updates recount the matches at most this often
let recountTimer = null;

function parseSort(text) {
  const out = [];
  for (const part of text.split(",")) {
    const i = part.lastIndexOf(":");
    if (i > 0) out.push([part.slice(0, i), Number(part.slice(i + 1)) === -1 ? -1 : 1]);
  }
  return out.length ? out : [["last_modified", -1]];
}
const sortText = () => state.sort.map(([f, d]) => `${f}:${d}`).join(",");

function loadHidden() {
  try {
    const saved = JSON.parse(localStorage.getItem(storageKey) || "null");
    if (Array.isArray(saved)) return new Set(saved);
  } catch (err) { /* ignore */ }
  return null;  // default: decided when the keys are known
}

function columns() {
  const cols = BASE.map(c => ({...c}));
  for (const k of state.argKeys) cols.push({key: "args." + k, label: "args." + k, sort: "args." + k});
  for (const k of state.summaryKeys) cols.push({key: "summary." + k, label: "summary." + k, sort: "summary." + k});
  if (state.hidden === null) {
    state.hidden = new Set(DEFAULT_HIDDEN);
    // many keys: show the first few of each kind, the others can be picked
    state.argKeys.slice(8).forEach(k => state.hidden.add("args." + k));
    state.summaryKeys.filter(k => k.startsWith("labtasker_")).forEach(k => state.hidden.add("summary." + k));
    state.summaryKeys.filter(k => !k.startsWith("labtasker_")).slice(8).forEach(k => state.hidden.add("summary." + k));
  }
  return cols;
}
const visible = () => columns().filter(c => !state.hidden.has(c.key));

function query(extra = {}) {
  const q = new URLSearchParams({filter: state.filter, sort: sortText(), ...extra});
  return q.toString();
}

function syncUrl() {
  const q = new URLSearchParams();
  if (state.filter) q.set("filter", state.filter);
  if (sortText() !== "last_modified:-1") q.set("sort", sortText());
  if (state.limit !== 50) q.set("limit", state.limit);
  history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
  document.getElementById("export").href = "/ui/api/tasks.csv?" + query({columns: visible().map(c => c.key).join(",")});
}

function showError(message) {
  const box = document.getElementById("filter-error");
  const input = document.getElementById("filter");
  if (message) {
    box.textContent = message;
    box.hidden = false;
    input.setAttribute("aria-invalid", "true");
  } else {
    box.hidden = true;
    box.textContent = "";
    input.removeAttribute("aria-invalid");
  }
}

let loadSeq = 0;  // answers of superseded requests are dropped (a slow page load must not
                  // overwrite the rows of the filter applied after it)
async function load() {
  const mine = ++loadSeq;
  const where = state.pages[state.page];
  const extra = {limit: state.limit};
  const needCount = state.counted !== state.filter || Date.now() - state.countedAt >= RECOUNT_MS;
  if (!needCount) {
    extra.count = "false";
    // count again once the interval has passed, so the total catches up with the rows
    if (!recountTimer) {
      recountTimer = setTimeout(() => { recountTimer = null; load(); },
                                RECOUNT_MS - (Date.now() - state.countedAt));
    }
  }
  if (where.cursor) extra.cursor = where.cursor;
  if (where.offset) extra.offset = where.offset;
  let data;
  try {
    data = await api("/ui/api/tasks?" + query(extra));
  } catch (err) {
    if (mine !== loadSeq) return;
    if (err.status === 400) {
      showError(err.message);
      document.getElementById("match-count").textContent = "";
      renderRows([]);
      return;
    }
    throw err;
  }
  if (mine !== loadSeq) return;
  showError("");
  if (data.arg_keys) state.argKeys = data.arg_keys;
  if (data.summary_keys) state.summaryKeys = data.summary_keys;
  state.rows = data.rows;
  if (data.total !== null) {
    state.total = data.total;
    state.counted = state.filter;
    state.countedAt = Date.now();
  }
  const next = data.next_cursor || data.next_offset ? {cursor: data.next_cursor, offset: data.next_offset || 0} : null;
  state.pages.length = state.page + 1;
  if (next) state.pages.push(next);
  renderColumnChoice();
  renderHead();
  renderRows(data.rows);
  const first = state.page * state.limit;
  document.getElementById("match-count").textContent = `${state.total.toLocaleString()} task${state.total === 1 ? "" : "s"} match` +
    (data.rows.length ? ` · showing ${first + 1}–${first + data.rows.length}` : "");
  document.getElementById("page-no").textContent = `page ${state.page + 1}`;
  document.getElementById("prev-page").disabled = state.page === 0;
  document.getElementById("first-page").disabled = state.page === 0;
  document.getElementById("next-page").disabled = !next;
  syncUrl();
}

function renderColumnChoice() {
  const box = document.getElementById("column-choice");
  const want = columns().map(c => c.key).join("|");
  if (box.dataset.keys === want) return;
  box.dataset.keys = want;
  box.replaceChildren(el("legend", {class: "sr-only"}, "Columns to show"));
  for (const c of columns()) {
    const id = "col-" + c.key.replace(/[^a-zA-Z0-9_-]/g, "_");
    const input = el("input", {type: "checkbox", id, checked: !state.hidden.has(c.key), "data-key": c.key});
    input.addEventListener("change", () => {
      if (input.checked) state.hidden.delete(c.key); else state.hidden.add(c.key);
      localStorage.setItem(storageKey, JSON.stringify([...state.hidden]));
      renderHead(); renderRows(state.rows); syncUrl();
    });
    box.append(el("label", {for: id}, input, " " + c.label));
  }
}

function renderHead() {
  const tr = document.querySelector("#tasks thead tr");
  tr.replaceChildren();
  const all = el("input", {type: "checkbox", "aria-label": "Select every task of this page", id: "select-page"});
  all.addEventListener("change", () => {
    for (const row of state.rows) { if (all.checked) state.selected.add(row.task_id); else state.selected.delete(row.task_id); }
    renderRows(state.rows);
  });
  tr.append(el("th", {scope: "col", class: "select"}, all));
  const [sortField, sortDir] = state.sort[0];
  for (const c of visible()) {
    const th = el("th", {scope: "col", "data-key": c.key});
    if (c.sort) {
      const active = sortField === c.sort;
      th.setAttribute("aria-sort", active ? (sortDir === 1 ? "ascending" : "descending") : "none");
      const button = el("button", {type: "button", class: "sort", "data-sort": c.sort,
                                   title: `Sort by ${c.label}`}, c.label, active ? (sortDir === 1 ? " ▲" : " ▼") : "");
      button.addEventListener("click", () => {
        state.sort = [[c.sort, active && sortDir === 1 ? -1 : 1]];
        state.pages = [{cursor: null, offset: 0}];
        state.page = 0;
        load();
      });
      th.append(button);
    } else {
      th.append(c.label);
    }
    tr.append(th);
  }
}

function cell(c, row) {
  const v = row[c.key];
  switch (c.key) {
    case "task_id":
      return el("td", {class: "id"}, el("a", {href: "/ui/tasks/" + encodeURIComponent(v), title: v}, v.slice(0, 8)));
    case "status":
      return el("td", {}, el("span", {class: "status " + v}, v));
    case "retries":
      return el("td", {class: "num"}, `${row.retries} / ${row.max_retries}`);
    case "duration":
      return el("td", {class: "num"}, duration(v));
    case "start_time": case "end":
      return el("td", {}, timeEl(v));
    case "worker_id": {
      // the current worker, else the worker of the task's last run
      const w = v || row.run_worker_id;
      const title = v ? v : (w ? `${w} (last run)` : "");
      return el("td", {class: "id", title}, w ? w.slice(0, 8) : "–");
    }
    default:
      return el("td", {class: typeof v === "number" ? "num" : ""}, v === undefined ? "" : plain(v));
  }
}

function renderRows(rows) {
  const body = document.querySelector("#tasks tbody");
  body.replaceChildren();
  const cols = visible();
  if (!rows.length) {
    body.append(el("tr", {}, el("td", {colspan: cols.length + 1, class: "empty"}, "No tasks match.")));
  }
  for (const row of rows) {
    const box = el("input", {type: "checkbox", checked: state.selected.has(row.task_id),
                             "aria-label": `Select task ${row.task_name || row.task_id}`});
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(row.task_id); else state.selected.delete(row.task_id);
      document.getElementById("selected-count").textContent = state.selected.size;
    });
    const tr = el("tr", {"data-task-id": row.task_id, "data-status": row.status}, el("td", {class: "select"}, box));
    for (const c of cols) tr.append(cell(c, row));
    body.append(tr);
  }
  document.getElementById("selected-count").textContent = state.selected.size;
}

const VERBS = {cancel: "Cancel", requeue: "Requeue", priority: "Set the priority of", delete: "Delete"};
const DONE = {cancel: "cancelled", requeue: "requeued", priority: "reprioritised", delete: "deleted"};
const NOTE = {
  cancel: " Running jobs are stopped; tasks that already ended are left as they are.",
  requeue: " They go back to pending with their retries reset; running jobs are stopped.",
  priority: "",
  delete: " This cannot be undone; running jobs are stopped.",
};

async function act(action, scope) {
  const result = document.getElementById("action-result");
  const body = {action};
  if (action === "priority") body.priority = Number(document.getElementById("priority").value);
  let n;
  if (scope === "selected") {
    body.task_ids = [...state.selected];
    n = body.task_ids.length;
    if (!n) { result.textContent = "Select tasks first (the boxes in the first column)."; return; }
  } else {
    body.filter = state.filter;
    try {
      n = (await api("/ui/api/actions", {method: "POST", body: {...body, dry_run: true}})).matched;
    } catch (err) { result.textContent = err.message; return; }
  }
  const what = scope === "selected" ? `${n} selected task${n === 1 ? "" : "s"}`
    : `all ${n} task${n === 1 ? "" : "s"} matching ${state.filter ? "the filter " + state.filter : "no filter (every task of the queue)"}`;
  const to = action === "priority" ? ` to ${body.priority}` : "";
  if (!n) { result.textContent = "No task matches."; return; }
  if (!await confirmDialog(`${VERBS[action]} ${what}${to}?${NOTE[action]}`, `${VERBS[action].split(" ")[0]} ${n}`)) return;
  try {
    const r = await api("/ui/api/actions", {method: "POST", body});
    result.textContent = `${r.changed} task${r.changed === 1 ? "" : "s"} ${DONE[action]}` + (r.skipped ? `, ${r.skipped} left unchanged` : "") + ".";
    if (action === "delete") state.selected.clear();
  } catch (err) {
    result.textContent = err.message;
  }
  load();
}

document.getElementById("filter").value = state.filter;
document.getElementById("page-size").value = String(state.limit);
document.getElementById("filter-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.filter = document.getElementById("filter").value.trim();
  state.pages = [{cursor: null, offset: 0}];
  state.page = 0;
  state.selected.clear();
  load();
});
document.getElementById("filter-clear").addEventListener("click", () => {
  document.getElementById("filter").value = "";
  document.getElementById("filter-form").requestSubmit();
});
document.getElementById("page-size").addEventListener("change", (e) => {
  state.limit = Number(e.target.value);
  state.pages = [{cursor: null, offset: 0}];
  state.page = 0;
  load();
});
document.getElementById("next-page").addEventListener("click", () => { if (state.pages[state.page + 1]) { state.page += 1; load(); } });
document.getElementById("prev-page").addEventListener("click", () => { if (state.page > 0) { state.page -= 1; load(); } });
document.getElementById("first-page").addEventListener("click", () => { state.page = 0; load(); });
for (const button of document.querySelectorAll("#actions button[data-action]")) {
  button.addEventListener("click", () => act(button.dataset.action, button.dataset.scope));
}

const soon = throttle(load, 700);
live((payload) => { if (payload.event.entity_type === "task") soon(); }, load);
load();
