// Overview: counts per status (one consistent query on the server), progress, recent runs
// and ETA, workers with what each runs. Re-read when the event stream reports a change.
import {api, el, live, plain, throttle, duration} from "./common.js";

const STATUSES = ["pending", "running", "success", "failed", "cancelled"];


function render(data) {

  for (const s of STATUSES) {
    document.querySelector(`.n[data-status="${s}"]`).textContent = data.counts[s].toLocaleString();
  }
  document.getElementById("count-total").textContent = data.total.toLocaleString();
  const bar = document.getElementById("progress");
  bar.replaceChildren();
  const done = data.counts.success + data.counts.failed + data.counts.cancelled;
  for (const s of ["success", "failed", "cancelled", "running", "pending"]) {
    const n = data.counts[s];
    if (!n) continue;
    bar.append(el("span", {class: "seg " + s, style: `width:${(100 * n / data.total).toFixed(3)}%`,
                           title: `${s}: ${n}`}));
  }
  const pct = data.total ? Math.round(100 * done / data.total) : 0;
  bar.setAttribute("aria-label", `${pct}% ended: ${done} of ${data.total} tasks`);
  const minutes = Math.round(data.window_seconds / 60);
  let rate = `${done.toLocaleString()} of ${data.total.toLocaleString()} ended (${pct}%). ` +
             `${data.finished_recently} run${data.finished_recently === 1 ? "" : "s"} finished in the last ${minutes} minutes`;
  if (data.throughput_per_minute) rate += ` (${data.throughput_per_minute.toFixed(1)}/min)`;
  if (data.eta_seconds !== null && data.eta_seconds !== undefined) {
    rate += data.counts.pending + data.counts.running ? `; ETA for the rest: ${duration(data.eta_seconds)}.` : ".";
  } else if (data.counts.pending + data.counts.running) {
    rate += "; no ETA until runs finish.";
  } else {
    rate += ".";
  }
  document.getElementById("rate").textContent = rate;
  renderWorkers(data);
}

function renderWorkers(data) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  const now = Date.parse(data.now);
  const skew = Date.now() - now;  // server clock vs ours: "for" counts from the server's
  const workers = data.workers.filter(w => !w.gone || w.running.length);
  if (!workers.length) {
    // gone workers are hidden; say how many there are (the server's count, not this page of 200)
    const gone = data.worker_counts ? data.worker_counts.gone : data.workers.filter(w => w.gone).length;
    const text = gone ? `No live worker (${gone} gone).` : "No workers yet.";
    body.append(el("tr", {}, el("td", {colspan: 7, class: "empty"}, text)));
    return;
  }
  for (const w of workers) {
    const runs = w.running.length ? w.running : [null];
    runs.forEach((t, i) => {
      const tr = el("tr", {"data-worker-id": w.worker_id});
      if (i === 0) {
        const span = runs.length;
        tr.append(el("th", {scope: "row", rowspan: span, title: w.worker_id}, plain(w.worker_name || w.worker_id.slice(0, 8))),
                  el("td", {rowspan: span}, el("span", {class: "status " + w.status}, w.gone ? "gone" : w.status)),
                  el("td", {rowspan: span, class: w.failures ? "bad num" : "num"}, `${w.failures} / ${w.max_failures}`));
      }
      if (t) {
        const link = el("a", {href: "/ui/tasks/" + encodeURIComponent(t.task_id)}, plain(t.task_name || t.task_id.slice(0, 8)));
        const pr = t.progress;
        const step = pr && pr.total ? el("span", {class: "step"}, ` step ${pr.step} / ${pr.total}`) : (pr && pr.step !== undefined ? el("span", {class: "step"}, ` step ${pr.step}`) : null);
        tr.append(el("td", {}, link, step),
                  el("td", {class: "args"}, Object.entries(t.args).map(([k, v]) => `${k}=${plain(v)}`).join("  ")),
                  el("td", {}, plain(t.device || w.device || "–")),
                  el("td", {class: "num ticking", "data-start": t.start_time, "data-skew": skew}, duration((Date.now() - skew - Date.parse(t.start_time)) / 1000)));
      } else {
        tr.append(el("td", {class: "empty"}, "idle"), el("td", {}, ""), el("td", {}, plain(w.device || "–")), el("td", {}, ""));
      }
      body.append(tr);
    });
  }
}

async function refresh() {
  try {
    render(await api("/ui/api/overview"));
  } catch (err) {
    document.getElementById("rate").textContent = "Could not read the overview: " + err.message;
  }
}

const soon = throttle(refresh, 500);
live(() => soon(), refresh);
refresh();
setInterval(() => {
  for (const cell of document.querySelectorAll("td.ticking")) {
    cell.textContent = duration((Date.now() - Number(cell.dataset.skew) - Date.parse(cell.dataset.start)) / 1000);
  }
}, 1000);
