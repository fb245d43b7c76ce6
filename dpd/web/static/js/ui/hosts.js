// The fleet's hosts on the Overview (fleet mode): GET /fleet/nodes, asked again every 15 s.
// Without fleet mode that route does not exist (404): the panel is not shown, never asked again.
import { html, useEffect, useState } from "../html.js";
import { get } from "../api.js";
import { jobLink } from "../router.js";
import { StatusPill } from "./widgets.js";

export const HOSTS_REFRESH_MS = 15000;

/** The /fleet/nodes answer, or null (not known yet, or fleet mode off). */
export function useFleetNodes() {
  const [fleet, setFleet] = useState(null);
  useEffect(() => {
    let timer = null;
    let stopped = false;
    const load = async () => {
      try {
        setFleet(await get("/fleet/nodes"));
      } catch (err) {
        if (err.status === 404) { setFleet(null); return; } // not a fleet host
      }
      if (!stopped) timer = setTimeout(load, HOSTS_REFRESH_MS);
    };
    load();
    return () => { stopped = true; clearTimeout(timer); };
  }, []);
  return fleet;
}

/** One word for a host's state: down (marked by an operator), lost (no heartbeat), draining, alive. */
export function hostState(node) {
  if (node.down) return "down";
  if (!node.alive) return "lost";
  return node.draining ? "draining" : "alive";
}

const gpuCount = (n) => `${n} GPU${n === 1 ? "" : "s"}`;

export function Hosts({ fleet, localJobs }) {
  if (!fleet) return null;
  const local = new Set((localJobs ?? []).map((j) => j.task_id));
  const nodes = fleet.nodes ?? [];
  return html`<section class="hosts"><h2>Hosts</h2>
    ${!fleet.ready && html`<p class="muted">The fleet agent is not connected yet: this list may be old.</p>`}
    ${nodes.length === 0 ? html`<p class="muted">No host has registered.</p>` : html`<ul class="rows hosts-list">
      ${nodes.map((n) => html`<li data-node=${n.node}>
        <span class="name">${n.node}</span>${n.node === fleet.node && html`<span class="muted">this host</span>`}
        <${StatusPill} status=${hostState(n)} />
        <span data-field="gpus">${hostState(n) === "alive" || hostState(n) === "draining"
          ? `${(n.free_gpus ?? []).length} of ${gpuCount(n.gpus)} free` : gpuCount(n.gpus)}</span>
        ${(n.running ?? []).length === 0 ? html`<span class="muted">idle</span>` : html`<span class="muted">runs</span>`}
        <span class="running" data-field="running">${(n.running ?? []).map((id) => local.has(id)
          ? html`<a href=${jobLink(id)}>${id}</a> ` : html`<span>${id}</span> `)}</span>
      </li>`)}</ul>`}
  </section>`;
}
