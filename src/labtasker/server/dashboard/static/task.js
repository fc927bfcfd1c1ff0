// Task detail: re-read the page's content when this task changes (event stream).
import {live, localiseTimes, throttle} from "./common.js";

const detail = document.getElementById("task-detail");
if (detail) {
  const id = detail.dataset.taskId;
  const refresh = throttle(async () => {
    const response = await fetch(location.pathname, {credentials: "same-origin"});
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.getElementById("task-detail");
    if (fresh) { detail.replaceChildren(...fresh.childNodes); localiseTimes(detail); }
  }, 500);
  live((payload) => { if (payload.event.entity_id === id) refresh(); }, refresh);
}
