// Overview: the GPUs with an hour of history, the queue, running jobs, recent outcomes.
import { html, useCallback, useEffect, useMemo, useState } from "../html.js";
import { get, post, seg } from "../api.js";
import { useLiveEvents } from "../live.js";
import { jobLink } from "../router.js";
import { lastSmoothed } from "../pure/smoothing.js";
import { pageTitle } from "../pure/title.js";
import { duration, mib, number, oneLine, percent, when } from "../pure/format.js";
import { ErrorText, ProgressBar, Sparkline, StatusPill } from "../ui/widgets.js";
import { Alerts, useAlerts } from "../ui/alerts.js";
import { Hosts, useFleetNodes } from "../ui/hosts.js";
import { throttled } from "../throttle.js";

const SMOOTHING = 0.6;
const HISTORY_SECONDS = 3600;
const ACTIVE = new Set(["running", "stopping"]);
const ENDED = new Set(["completed", "failed", "stopped"]);

function useOverviewData() {
  const [gpus, setGpus] = useState([]);
  const [history, setHistory] = useState({});
  const [jobs, setJobs] = useState([]);
  const [losses, setLosses] = useState({});
  const [errors, setErrors] = useState({});
  const [error, setError] = useState(null);

  const loadJobs = useCallback(async () => {
    try {
      const data = await get("/training/list?limit=200");
      setJobs(data.tasks);
      setError(null);
      for (const job of data.tasks.filter((j) => ACTIVE.has(j.status))) {
        get(`/training/${seg(job.task_id)}`).then((d) => {
          setLosses((l) => ({ ...l, [job.task_id]: d.metrics?.step_losses ?? [] }));
        }, () => {});
      }
      const failed = data.tasks.filter((j) => j.status === "failed").slice(0, 5);
      for (const job of failed) {
        get(`/training/${seg(job.task_id)}`).then((d) => {
          setErrors((e) => ({ ...e, [job.task_id]: d.error }));
        }, () => {});
      }
    } catch (err) {
      setError(err);
    }
  }, []);

  const loadGpus = useCallback(async () => {
    try {
      setGpus((await get("/gpu/status")).gpus);
    } catch (err) {
      setError(err);
    }
    try {
      const h = await get(`/gpu/history?seconds=${HISTORY_SECONDS}`);
      const byId = {};
      for (const g of h.gpus ?? []) byId[g.gpu_id] = g.samples ?? [];
      setHistory(byId);
    } catch {
      setHistory({}); // a daemon without history still shows the cards
    }
  }, []);

  // After events that the list cannot be patched from: a refetch, at most every 5 s.
  const jobsLater = useMemo(() => throttled(loadJobs), []);
  const gpusLater = useMemo(() => throttled(loadGpus), []);
  useEffect(() => {
    jobsLater();
    gpusLater();
    return () => { jobsLater.cancel(); gpusLater.cancel(); };
  }, []);
  const reloadSoon = jobsLater;

  useLiveEvents((type, event) => {
    const id = event?.task_id;
    const data = event?.data ?? {};
    if (type === "resync") { jobsLater(); gpusLater(); return; }
    if (type === "status") {
      setJobs((list) => {
        if (!list.some((j) => j.task_id === id)) {
          reloadSoon();
          return [{ task_id: id, status: data.status, priority: 0, progress: {} }, ...list];
        }
        return list.map((j) => (j.task_id === id ? { ...j, status: data.status } : j));
      });
      if (data.status === "failed" || data.status === "running") reloadSoon();
      if (["running", "completed", "failed", "stopped"].includes(data.status)) gpusLater();
    } else if (type === "progress") {
      setJobs((list) => list.map((j) => (j.task_id === id ? { ...j, progress: { ...j.progress, ...data } } : j)));
    } else if (type === "metrics" && data.metric === "loss" && data.type === "step") {
      setLosses((l) => ({ ...l, [id]: [...(l[id] ?? []).slice(-499), data.value] }));
    } else if (type === "gpu") {
      applyGpuEvent(data, setGpus, setHistory, gpusLater);
    } else if (type === "priority") {
      setJobs((list) => list.map((j) => (j.task_id === id ? { ...j, priority: data.priority } : j)));
    }
  }, []);

  return { gpus, history, jobs, losses, errors, error, reload: loadJobs };
}

const pids = (processes) => (processes ?? []).map((p) => p.pid).sort().join(",");

/** A monitor snapshot from the stream: its readings replace the card's; its processes carry
 * no attribution (which job, foreign or not), so a change of them asks /gpu/status again. */
function applyGpuEvent(data, setGpus, setHistory, refetchStatus) {
  const list = Array.isArray(data.gpus) ? data.gpus : [];
  if (!list.length) return;
  setGpus((gpus) => gpus.map((g) => {
    const seen = list.find((x) => x.gpu_id === g.gpu_id);
    if (!seen) return g;
    const { processes, ...readings } = seen;
    if (pids(processes) !== pids(g.processes)) refetchStatus();
    return { ...g, ...readings };
  }));
  const t = Date.now() / 1000;
  setHistory((h) => {
    const next = { ...h };
    for (const g of list) {
      const sample = [t, g.utilization_gpu, g.memory_used, g.temperature, g.power_usage];
      next[g.gpu_id] = [...(next[g.gpu_id] ?? []), sample].filter((s) => s[0] >= t - HISTORY_SECONDS);
    }
    return next;
  });
}

function GpuCard({ gpu, samples, jobs }) {
  const col = (i) => samples.map((s) => s[i]);
  const job = jobs.find((j) => j.task_id === gpu.current_task);
  const procs = gpu.processes ?? [];
  const foreign = procs.filter((p) => p.foreign);
  return html`<article class="card gpu" data-gpu=${gpu.gpu_id}>
    <header><h3>GPU ${gpu.gpu_id}</h3><span class="muted">${gpu.name}</span>
      <${StatusPill} status=${gpu.status} /></header>
    <dl class="stats">
      <div><dt>Util</dt><dd>${percent(gpu.utilization_gpu)}</dd>
        <${Sparkline} values=${col(1)} min=${0} max=${100} label="utilisation, last hour" /></div>
      <div><dt>Memory</dt><dd>${mib(gpu.memory_used)} / ${mib(gpu.memory_total)}</dd>
        <${Sparkline} values=${col(2)} min=${0} max=${gpu.memory_total} label="memory, last hour" /></div>
      <div><dt>Temp</dt><dd>${gpu.temperature === null || gpu.temperature === undefined ? "–" : `${gpu.temperature} °C`}</dd>
        <${Sparkline} values=${col(3)} label="temperature, last hour" /></div>
      <div><dt>Power</dt><dd>${gpu.power_usage === null || gpu.power_usage === undefined ? "–" : `${Math.round(gpu.power_usage)} W`}</dd>
        <${Sparkline} values=${col(4)} min=${0} max=${gpu.power_limit ?? undefined} label="power, last hour" /></div>
    </dl>
    ${job ? html`<p class="on-gpu">Running <a href=${jobLink(job.task_id)}>${job.task_id}</a>
        ${" "}${percent(job.progress?.overall_progress)}</p>`
      : gpu.current_task ? html`<p class="on-gpu">Task <a href=${jobLink(gpu.current_task)}>${gpu.current_task}</a></p>` : null}
    ${procs.length > 0 && html`<ul class="procs">
      ${procs.map((p) => html`<li class=${p.foreign ? "foreign" : ""}>
        <span>${p.task_id ? html`<a href=${jobLink(p.task_id)}>${p.task_id}</a>` : "process"} · pid ${p.pid}</span>
        <span>${mib(p.used_memory_mb)}${p.foreign ? " · not dpd's" : ""}</span></li>`)}
    </ul>`}
    ${foreign.length > 0 && html`<p class="warn">${foreign.length} process(es) not started by dpd use this GPU</p>`}
  </article>`;
}

function QueueTable({ queued, onChanged }) {
  const [error, setError] = useState(null);
  const act = async (fn) => {
    setError(null);
    try { await fn(); onChanged(); } catch (err) { setError(err); }
  };
  const setPriority = (job, delta) => act(() => post(`/training/${seg(job.task_id)}/priority`,
    { priority: (job.priority ?? 0) + delta }));
  const cancel = (job) => {
    if (confirm(`Cancel queued job ${job.task_id}?`)) act(() => post(`/training/stop/${seg(job.task_id)}`, { force: false }));
  };
  if (!queued.length) return html`<p class="muted">The queue is empty.</p>`;
  return html`<${ErrorText} error=${error} /><ol class="rows queue">
    ${queued.map((job) => html`<li data-task=${job.task_id}>
      <a href=${jobLink(job.task_id)} class="name">${job.task_id}</a>
      <span class="muted">${job.model_type ?? ""}</span>
      <span>priority ${job.priority ?? 0}</span>
      <span class="actions">
        <button class="small" title="Raise priority" aria-label="Raise priority" onClick=${() => setPriority(job, 1)}>▲</button>
        <button class="small" title="Lower priority" aria-label="Lower priority" onClick=${() => setPriority(job, -1)}>▼</button>
        <button class="small danger" onClick=${() => cancel(job)}>Cancel</button>
      </span></li>`)}
  </ol>`;
}

function RunningRow({ job, losses }) {
  const p = job.progress ?? {};
  const smoothed = lastSmoothed(losses ?? [], SMOOTHING);
  return html`<li data-task=${job.task_id}>
    <div class="row-head"><a href=${jobLink(job.task_id)} class="name">${job.task_id}</a>
      <${StatusPill} status=${job.status} />
      <span class="muted">GPU ${(job.gpu_ids ?? [job.gpu_id]).join(", ")}</span></div>
    <${ProgressBar} value=${p.overall_progress} />
    <div class="facts"><span>${percent(p.overall_progress)}</span>
      <span>epoch ${p.current_epoch ?? "–"}/${p.total_epochs ?? "–"}</span>
      <span>step ${p.current_step ?? "–"}${p.total_steps ? `/${p.total_steps}` : ""}</span>
      <span>ETA ${duration(p.eta_seconds)}</span>
      <span>loss ≈ ${number(smoothed ?? job.metrics?.current_loss)}</span></div>
  </li>`;
}

export function OverviewPage() {
  const { gpus, history, jobs, losses, errors, error, reload } = useOverviewData();
  const [alerts] = useAlerts(null);
  const fleet = useFleetNodes();
  const queued = useMemo(() => jobs.filter((j) => j.status === "queued")
    .sort((a, b) => (b.priority ?? 0) - (a.priority ?? 0) || String(a.created_at).localeCompare(String(b.created_at))), [jobs]);
  const running = jobs.filter((j) => ACTIVE.has(j.status));
  const recent = jobs.filter((j) => ENDED.has(j.status)).slice(0, 10);
  useEffect(() => {
    const only = running.length === 1 ? running[0] : null;
    document.title = only ? pageTitle(only.task_id, only.progress?.overall_progress) : pageTitle(null);
  }, [running]);
  return html`<div class="overview">
    <${ErrorText} error=${error} />
    <${Alerts} alerts=${alerts} />
    <section><h2>GPUs</h2><div class="grid gpus">
      ${gpus.map((g) => html`<${GpuCard} key=${g.gpu_id} gpu=${g} samples=${history[g.gpu_id] ?? []} jobs=${jobs} />`)}
      ${gpus.length === 0 && html`<p class="muted">No GPU reported.</p>`}
    </div></section>
    <${Hosts} fleet=${fleet} localJobs=${jobs} />
    <section><h2>Running</h2>
      ${running.length ? html`<ul class="rows running">${running.map((j) => html`<${RunningRow} key=${j.task_id} job=${j} losses=${losses[j.task_id]} />`)}</ul>`
        : html`<p class="muted">Nothing is training.</p>`}</section>
    <section><h2>Queue</h2><${QueueTable} queued=${queued} onChanged=${reload} /></section>
    <section><h2>Recent</h2>
      ${recent.length ? html`<ul class="rows recent">${recent.map((j) => html`<li data-task=${j.task_id}>
        <a href=${jobLink(j.task_id)} class="name">${j.task_id}</a> <${StatusPill} status=${j.status} />
        <span class="muted">${when(j.updated_at)}</span>
        ${j.status === "failed" && html`<span class="error-line" title=${oneLine(errors[j.task_id], 2000)}>${oneLine(errors[j.task_id]) || "failed"}</span>`}
      </li>`)}</ul>` : html`<p class="muted">No finished jobs yet.</p>`}</section>
  </div>`;
}
