// Browser notifications when a job finishes or fails (only after the user allowed them).
import { html, useState } from "../html.js";
import { onEvent } from "../live.js";
import { errorText } from "../pure/format.js";

const ENDED = { completed: "finished", failed: "failed", stopped: "was stopped" };
let started = false;

export function startNotifications() {
  if (started || typeof Notification === "undefined") return;
  started = true;
  onEvent((type, event) => {
    if (type !== "status" || Notification.permission !== "granted") return;
    const verb = ENDED[event?.data?.status];
    if (!verb) return;
    // One notification per job and outcome, however many tabs are open: same tag, replaced.
    const note = new Notification(`dpd: ${event.task_id} ${verb}`, {
      tag: `dpd-${event.task_id}-${event.data.status}`,
      body: errorText(event.data.error),
    });
    note.onclick = () => { focus(); location.hash = `#/job/${encodeURIComponent(event.task_id)}`; };
  });
}

export function NotifyButton() {
  const supported = typeof Notification !== "undefined";
  const [permission, setPermission] = useState(supported ? Notification.permission : "denied");
  if (!supported || permission !== "default") return null;
  const ask = async () => setPermission(await Notification.requestPermission());
  return html`<button class="link" onClick=${ask} title="Notify me when a job finishes or fails">
    Notify me</button>`;
}
