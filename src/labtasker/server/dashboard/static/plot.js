// Results plot: a metric (summary.*) against an argument (args.*), optionally coloured by a
// second argument; one mark per finished task, or mean ± std over the other arguments.
// Drawn as SVG by this file. The server sends only the columns of the chosen picture (task
// id, name, x, metric, colour); changing the metric or an argument asks it again. New finished
// tasks from the event stream are added live; hover fetches the task's other arguments.
import {api, live, plain, throttle} from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const params = new URLSearchParams(location.search);
// points: task_id -> {id, name, x, y, c} for the picture of state.shown (its metric, x, colour)
const state = {points: new Map(), truncated: false, maxPoints: 0, filter: params.get("filter") || "",
               argKeys: [], metricKeys: [], shown: {metric: "", x: "", color: ""}};
const hoverArgs = new Map();  // task_id -> its flattened args (fetched on first hover)
const $ = id => document.getElementById(id);

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const isNum = v => typeof v === "number" && isFinite(v);

function fillSelect(select, options, value, blank) {
  select.replaceChildren();
  if (blank) select.append(new Option("none", ""));
  for (const o of options) select.append(new Option(o, o));
  if ([...select.options].some(o => o.value === value)) select.value = value;
}

let scaleChosen = false;
function refreshControls() {
  fillSelect($("metric"), state.metricKeys, state.shown.metric);
  fillSelect($("xarg"), state.argKeys, state.shown.x);
  fillSelect($("carg"), state.argKeys, state.shown.color, true);
  if (!scaleChosen && state.shown.x && state.points.size) {
    // a grid over decades (1e-3 ... 1e2) reads best on a log axis
    const xs = [...state.points.values()].map(p => p.x);
    if (xs.every(v => isNum(v) && v > 0) && Math.max(...xs) / Math.min(...xs) >= 100) $("xscale").value = "log";
    scaleChosen = true;
  }
}

function niceTicks(lo, hi, n = 6) {
  if (lo === hi) { lo -= 1; hi += 1; }
  const step0 = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(step0)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= step0) || 10 * mag;
  const ticks = [];
  const first = Math.ceil(lo / step);
  for (let i = 0; i <= 4 * n && (first + i) * step <= hi + step * 1e-9; i++) ticks.push(Number(((first + i) * step).toPrecision(12)));
  return ticks;
}
function logTicks(lo, hi) {
  const ticks = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)) && ticks.length < 40; e++) ticks.push(Math.pow(10, e));
  return ticks.filter(t => t >= lo / 1.0001 && t <= hi * 1.0001);
}
const fmt = v => typeof v !== "number" ? String(v) : (Math.abs(v) >= 1e4 || (v && Math.abs(v) < 1e-3)) ? v.toExponential(1) : String(Number(v.toPrecision(4)));

function scale(values, kind, from, to) {
  // -> {map(v), ticks: [[v, label]], categorical}
  if (!values.every(isNum)) {
    const cats = [...new Set(values.map(v => plain(v)))].sort();
    const band = (to - from) / cats.length;
    return {categorical: true, map: v => from + band * (cats.indexOf(plain(v)) + 0.5), ticks: cats.map(c => [c, c])};
  }
  const log = kind === "log";
  const usable = log ? values.filter(v => v > 0) : values;
  let lo = Math.min(...usable), hi = Math.max(...usable);
  if (log) {
    if (!usable.length) { lo = 1; hi = 10; }
    if (hi / lo < 1 + 1e-9) { lo /= 10; hi *= 10; }
    const a = Math.log10(lo), b = Math.log10(hi), pad = (b - a) * 0.05;
    const map = v => v > 0 ? from + (to - from) * (Math.log10(v) - (a - pad)) / ((b + pad) - (a - pad)) : NaN;
    return {map, ticks: logTicks(Math.pow(10, a - pad), Math.pow(10, b + pad)).map(t => [t, fmt(t)]), log: true};
  }
  if (hi - lo <= 1e-9 * Math.max(Math.abs(lo), Math.abs(hi), 1e-300)) {  // one value (or rounding noise)
    const mid = (lo + hi) / 2;
    lo = mid - (Math.abs(mid) * 0.1 || 1); hi = mid + (Math.abs(mid) * 0.1 || 1);
  }
  const pad = (hi - lo) * 0.05;
  lo -= pad; hi += pad;
  const map = v => from + (to - from) * (v - lo) / (hi - lo);
  return {map, ticks: niceTicks(lo, hi).filter(t => t >= lo && t <= hi).map(t => [t, fmt(t)])};
}

function mean(xs) { return xs.reduce((a, b) => a + b, 0) / xs.length; }
function std(xs) { if (xs.length < 2) return 0; const m = mean(xs); return Math.sqrt(xs.reduce((a, b) => a + (b - m) * (b - m), 0) / (xs.length - 1)); }

function draw() {
  const plot = $("plot");
  plot.replaceChildren();
  const {metric, x: xarg, color: carg} = state.shown;
  const mode = $("mode").value;
  const status = $("plot-status");
  if (!metric || !xarg) {
    status.textContent = state.points.size ? "No numeric summary value or no argument to plot yet." : "No finished task yet: the plot fills in as tasks succeed.";
    $("plot-caption").textContent = "";
    return;
  }
  const W = Math.max(480, plot.clientWidth || 900), H = 460;
  const M = {l: 70, r: carg ? 170 : 20, t: 20, b: 60};
  plot.setAttribute("viewBox", `0 0 ${W} ${H}`);
  plot.setAttribute("width", W);
  plot.setAttribute("height", H);
  let pts = [...state.points.values()];
  if (!pts.length) {
    status.textContent = `No finished task with a numeric summary.${metric} yet: the plot fills in as tasks succeed.`;
    $("plot-caption").textContent = "";
    return;
  }
  if ($("yscale").value === "log") pts = pts.filter(p => p.y > 0);
  if ($("xscale").value === "log" && pts.every(p => isNum(p.x))) pts = pts.filter(p => p.x > 0);
  let marks = pts;
  if (mode === "mean") {
    const groups = new Map();
    for (const p of pts) {
      const k = JSON.stringify([p.x, p.c]);
      if (!groups.has(k)) groups.set(k, {x: p.x, c: p.c, ys: [], ids: []});
      groups.get(k).ys.push(p.y); groups.get(k).ids.push(p.id);
    }
    marks = [...groups.values()].map(g => ({x: g.x, c: g.c, y: mean(g.ys), sd: std(g.ys), n: g.ys.length, ids: g.ids}));
  }
  const ys = marks.flatMap(m => m.sd ? [m.y - m.sd, m.y + m.sd] : [m.y]).filter(v => $("yscale").value !== "log" || v > 0);
  const xs = scale(marks.map(m => m.x), $("xscale").value, M.l, W - M.r);
  const yv = scale(ys.length ? ys : [0, 1], $("yscale").value, H - M.b, M.t);
  const cats = carg ? [...new Set(marks.map(m => plain(m.c)))].sort((a, b) => (Number(a) - Number(b)) || a.localeCompare(b)) : [];
  const colour = c => carg ? COLOURS[cats.indexOf(plain(c)) % COLOURS.length] : COLOURS[0];

  // axes
  const axes = svg("g", {class: "axes"});
  axes.append(svg("line", {x1: M.l, y1: H - M.b, x2: W - M.r, y2: H - M.b}), svg("line", {x1: M.l, y1: M.t, x2: M.l, y2: H - M.b}));
  for (const [v, label] of xs.ticks) {
    const x = xs.map(v);
    axes.append(svg("line", {x1: x, y1: H - M.b, x2: x, y2: H - M.b + 5}), svg("text", {x, y: H - M.b + 18, "text-anchor": "middle"}, label));
  }
  for (const [v, label] of yv.ticks) {
    const y = yv.map(v);
    axes.append(svg("line", {class: "grid", x1: M.l, y1: y, x2: W - M.r, y2: y}), svg("text", {x: M.l - 8, y: y + 4, "text-anchor": "end"}, label));
  }
  axes.append(svg("text", {x: (M.l + W - M.r) / 2, y: H - 14, "text-anchor": "middle", class: "label"}, "args." + xarg + (xs.log ? " (log)" : "")));
  axes.append(svg("text", {x: 16, y: (M.t + H - M.b) / 2, "text-anchor": "middle", class: "label", transform: `rotate(-90 16 ${(M.t + H - M.b) / 2})`}, "summary." + metric + (yv.log ? " (log)" : "")));
  plot.append(axes);

  // marks; small deterministic jitter on categorical x so points of one category do not hide each other
  const g = svg("g", {class: "marks"});
  marks.forEach((m, i) => {
    let x = xs.map(m.x);
    if (xs.categorical && mode === "points") x += ((i * 7919) % 21 - 10) * 0.8;
    const y = yv.map(m.y);
    if (!isFinite(x) || !isFinite(y)) return;
    const fill = colour(m.c);
    if (mode === "mean" && m.sd) {
      g.append(svg("line", {class: "errorbar", x1: x, x2: x, y1: yv.map(m.y - m.sd), y2: yv.map(m.y + m.sd), stroke: fill}));
    }
    const text = mode === "mean"
      ? `args.${xarg} = ${plain(m.x)}${carg ? `, args.${carg} = ${plain(m.c)}` : ""}\nsummary.${metric}: mean ${fmt(m.y)} ± ${fmt(m.sd)} (std, n = ${m.n})`
      : `${m.name || m.id}\nargs.${xarg} = ${plain(m.x)}${carg ? `, args.${carg} = ${plain(m.c)}` : ""}\nsummary.${metric} = ${fmt(m.y)}`;
    const dot = svg("circle", {class: "mark", cx: x, cy: y, r: mode === "mean" ? 5 : 4, fill, tabindex: 0,
                              "data-task-id": m.id || "", "aria-label": text.split("\n").join("; ")});
    const where = mode === "points" ? m.id : null;  // a task's other arguments, once fetched
    dot.addEventListener("mouseenter", (e) => tip(text, e, where));
    dot.addEventListener("focus", () => { const r = dot.getBoundingClientRect(); tip(text, {clientX: r.right, clientY: r.top}, where); });
    dot.addEventListener("mouseleave", () => tip(null));
    dot.addEventListener("blur", () => tip(null));
    if (m.id) dot.addEventListener("click", () => window.open("/ui/tasks/" + encodeURIComponent(m.id), "_self"));
    g.append(dot);
  });
  plot.append(g);

  if (carg) {
    const legend = svg("g", {class: "legend"});
    legend.append(svg("text", {x: W - M.r + 16, y: M.t + 4, class: "label"}, "args." + carg));
    cats.slice(0, 20).forEach((c, i) => {
      legend.append(svg("circle", {cx: W - M.r + 22, cy: M.t + 22 + i * 18, r: 5, fill: COLOURS[i % COLOURS.length]}),
                    svg("text", {x: W - M.r + 34, y: M.t + 26 + i * 18}, c));
    });
    plot.append(legend);
  }
  const nTasks = pts.length;
  status.textContent = `${nTasks} finished task${nTasks === 1 ? "" : "s"} plotted` + (mode === "mean" ? ` as ${marks.length} mean${marks.length === 1 ? "" : "s"} ± std` : "") +
    (state.truncated ? ` (of the first ${state.maxPoints} finished tasks only)` : "") + ".";
  $("plot-caption").textContent = `summary.${metric} against args.${xarg}` + (carg ? `, coloured by args.${carg}` : "") + ".";
  const q = new URLSearchParams({metric, x: xarg});
  if (carg) q.set("color", carg);
  if (state.filter) q.set("filter", state.filter);
  history.replaceState(null, "", location.pathname + "?" + q);
}

const argsText = args => Object.entries(args).map(([k, v]) => `  ${k} = ${plain(v)}`).join("\n");
let tipFor = null;  // the task whose tooltip is shown
function tip(text, e, taskId) {
  const box = $("tooltip");
  tipFor = taskId || null;
  if (!text) { box.hidden = true; return; }
  box.textContent = taskId && hoverArgs.has(taskId) ? text + "\n" + argsText(hoverArgs.get(taskId)) : text;
  if (taskId && !hoverArgs.has(taskId)) {
    api("/ui/api/plot/task/" + encodeURIComponent(taskId)).then(t => {
      hoverArgs.set(taskId, t.args);
      if (tipFor === taskId && !box.hidden) box.textContent = text + "\n" + argsText(t.args);
    }, () => {});
  }
  box.hidden = false;
  box.style.left = Math.min(e.clientX + 12, window.innerWidth - 340) + "px";
  box.style.top = (e.clientY + 12) + "px";
}

let loadSeq = 0;  // only the newest request's answer is drawn
let keysKnown = false;  // arg and metric keys: read once, then kept up to date by the events
async function load() {
  const mine = ++loadSeq;
  const box = $("filter-error");
  const want = {filter: state.filter,
                metric: $("metric").value || params.get("metric") || "",
                x: $("xarg").value || params.get("x") || "",
                color: $("metric").value ? $("carg").value : (params.get("color") || ""),
                keys: keysKnown ? "false" : "true"};  // the key lists: on the first load
  try {
    const data = await api("/ui/api/plot?" + new URLSearchParams(want));
    if (mine !== loadSeq) return;
    box.hidden = true;
    state.shown = {metric: data.metric || "", x: data.x_arg || "", color: data.color_arg || ""};
    if (data.arg_keys) { state.argKeys = data.arg_keys; state.metricKeys = data.metric_keys; keysKnown = true; }
    state.points = new Map(data.task_id.map((id, i) => [id, {id, name: data.task_name[i], x: data.x[i], y: data.y[i], c: data.c ? data.c[i] : null}]));
    state.truncated = data.truncated;
    state.maxPoints = data.max_points;
  } catch (err) {
    if (mine !== loadSeq) return;
    if (err.status !== 400) throw err;
    box.textContent = err.message;
    box.hidden = false;
    state.points = new Map();
  }
  refreshControls();
  draw();
}

function flat(doc, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(doc || {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flat(v, key, out); else out[key] = v;
  }
  return out;
}

const redraw = throttle(() => { refreshControls(); draw(); }, 300);
const reload = throttle(load, 1000);
live((payload) => {
  const e = payload.event;
  if (e.entity_type !== "task") return;
  const t = e.entity_data;
  if (e.new_state === "success" && !state.filter) {  // add the point without a round trip
    const args = flat(t.args), summary = flat(t.summary), {metric, x, color} = state.shown;
    const addKeys = (list, more) => { const all = new Set(list); more.forEach(k => all.add(k)); return [...all].sort(); };
    state.argKeys = addKeys(state.argKeys, Object.keys(args));
    state.metricKeys = addKeys(state.metricKeys, Object.keys(summary).filter(k => isNum(summary[k]) && !k.startsWith("labtasker_")));
    hoverArgs.set(e.entity_id, args);
    if (!metric || !x) { reload(); return; }  // nothing drawn yet: let the server choose
    if (args[x] !== undefined && args[x] !== null && isNum(summary[metric])) {
      state.points.set(e.entity_id, {id: e.entity_id, name: t.task_name, x: args[x], y: summary[metric], c: color ? (args[color] ?? null) : null});
    } else state.points.delete(e.entity_id);
    redraw();
  } else if (state.points.has(e.entity_id) || (e.new_state === "success" && state.filter)) {
    reload();  // a plotted task changed (requeued, deleted...) or the filter decides
  }
}, load);

$("filter").value = state.filter;
$("plot-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const f = $("filter").value.trim();
  if (f !== state.filter) { state.filter = f; load(); } else draw();
});
for (const id of ["metric", "xarg", "carg"]) $(id).addEventListener("change", load);  // new columns
for (const id of ["mode", "xscale", "yscale"]) $(id).addEventListener("change", draw);
$("xscale").addEventListener("change", () => { scaleChosen = true; });
window.addEventListener("resize", throttle(draw, 200));
load();
