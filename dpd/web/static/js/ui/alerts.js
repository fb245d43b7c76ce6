// Health alerts (NaN loss, loss explosion, stalled run) as the daemon raises them.
import { html, useState } from "../html.js";
import { useLiveEvents } from "../live.js";
import { jobLink } from "../router.js";

const KEEP = 20;

/** Alerts arriving while the page is open; for one task (taskId) or all (null). */
export function useAlerts(taskId, initial = []) {
  const [alerts, setAlerts] = useState(initial);
  useLiveEvents((type, event) => {
    if (type !== "alert" || (taskId && event.task_id !== taskId)) return;
    setAlerts((list) => [{ task_id: event.task_id, timestamp: event.timestamp, ...event.data }, ...list].slice(0, KEEP));
  }, [taskId]);
  return [alerts, setAlerts];
}

export function Alerts({ alerts, showTask = true }) {
  const list = alerts ?? [];
  if (!list.length) return null;
  return html`<ul class="alerts" role="alert">
    ${list.map((a) => html`<li class=${`alert a-${a.kind}`}>
      <strong>${a.kind?.replace("_", " ")}</strong>
      ${showTask ? html` <a href=${jobLink(a.task_id)}>${a.task_id}</a>` : null}: ${a.message}</li>`)}
  </ul>`;
}
