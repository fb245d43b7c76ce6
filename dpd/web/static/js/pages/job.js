// Job page: state and progress, the charts, alerts, the log, configs, files and controls.
import { html, useCallback, useEffect, useRef, useState } from "../html.js";
import { BASE, get, post, seg } from "../api.js";
import { useLiveEvents } from "../live.js";
import { go, jobLink } from "../router.js";
import { SERIES, useJobSeries } from "../series.js";
import { pageTitle } from "../pure/title.js";
import { bytes, duration, number, oneLine, percent, when } from "../pure/format.js";
import { ChartControls, ChartPanel } from "../ui/charts.js";
import { Alerts, useAlerts } from "../ui/alerts.js";
import { LogView } from "../ui/log.js";
import { ErrorText, ProgressBar, StatusPill } from "../ui/widgets.js";

const ACTIVE = new Set(["running", "stopping"]);
const SETTINGS = "dpd.chart";

function useStored(key, initial) {
  const [value, setValue] = useState(() => {
    try { const v = JSON.parse(localStorage.getItem(key)); return v ?? initial; } catch { return initial; }
  });
  const set = (v) => { setValue(v); try { localStorage.setItem(key, JSON.stringify(v)); } catch { /* private mode */ } };
  return [value, set];
}

function useJob(id) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  const load = useCallback(async () => {
    try { setJob(await get(`/training/${seg(id)}`)); setError(null); } catch (err) { setError(err); }
  }, [id]);
  useEffect(() => { setJob(null); load(); }, [id]);
  useLiveEvents((type, event) => {
    if (type === "resync") { load(); return; }
    if (event?.task_id !== id) return;
    if (type === "progress") {
      setJob((j) => j && { ...j, progress: { ...j.progress, ...event.data } });
    } else if (type === "status") {
      setJob((j) => j && { ...j, status: event.data.status });
      load();
    } else if (type === "metrics" && event.data?.type === "step" && event.data?.metric === "loss") {
      const loss = event.data.value;
      setJob((j) => {
        if (!j) return j;
        const best = j.metrics?.best_loss;
        const better = Number.isFinite(loss) && (!Number.isFinite(best) || loss < best);
        return { ...j, metrics: { ...j.metrics, current_loss: loss, ...(better ? { best_loss: loss } : {}) } };
      });
    }
  }, [id]);
  return { job, error, reload: load };
}

/** Resume, save and checkpoint markers: fetched again when the status changes and when a
 * saving phase ends (that is when a save or checkpoint marker appears). */
function useMarkers(id, status, ready) {
  const [markers, setMarkers] = useState([]);
  const phase = useRef(null);
  const load = () => get(`/training/${seg(id)}/markers`).then((m) => setMarkers(m.markers ?? []), () => {});
  useEffect(() => { if (ready) load(); }, [id, status, ready]);
  useLiveEvents((type, event) => {
    if (type !== "progress" || event.task_id !== id) return;
    const next = event.data?.phase ?? null;
    if (phase.current === "saving" && next !== "saving") load();
    phase.current = next;
  }, [id]);
  return markers;
}

function Controls({ job, onDone }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const id = job.task_id;
  const act = async (fn) => {
    setBusy(true); setError(null);
    try { await fn(); onDone(); } catch (err) { setError(err); } finally { setBusy(false); }
  };
  const stop = (force) => {
    const question = force ? `Force stop ${id}? The trainer is killed without saving.` : `Stop ${id}? It saves a checkpoint first.`;
    if (confirm(question)) act(() => post(`/training/stop/${seg(id)}`, { force }));
  };
  const active = ACTIVE.has(job.status) || job.status === "queued";
  const resumable = ["stopped", "failed"].includes(job.status);
  return html`<div class="controls">
    ${active && html`<button onClick=${() => stop(false)} disabled=${busy}>Stop</button>
      <button class="danger" onClick=${() => stop(true)} disabled=${busy}>Force stop</button>`}
    ${resumable && html`<button onClick=${() => act(() => post(`/training/${seg(id)}/resume`, {}))} disabled=${busy}>
      Resume from checkpoint</button>`}
    <button class="secondary" onClick=${() => go(`#/submit?from=${encodeURIComponent(id)}`)}>Duplicate as new job</button>
    <a class="button secondary" href=${`#/compare?ids=${encodeURIComponent(id)}`}>Compare…</a>
    <${ErrorText} error=${error} />
  </div>`;
}

function Summary({ job }) {
  const p = job.progress ?? {};
  const m = job.metrics ?? {};
  return html`<section class="summary card">
    <div class="row-head"><h1 class="job-id">${job.task_id}</h1><${StatusPill} status=${job.status} />
      ${p.phase && (ACTIVE.has(job.status)) && html`<span class="phase">${p.phase}</span>`}</div>
    ${job.description && html`<p class="muted">${job.description}</p>`}
    ${job.status === "queued" && job.waiting_for && html`<p class="muted" data-field="waiting-for">
      Waits for <a href=${jobLink(job.waiting_for.task_id)}>${job.waiting_for.task_id}</a> to finish
      building the dataset cache <code>${job.waiting_for.cache}</code>; it starts once that job trains.</p>`}
    <${ProgressBar} value=${p.overall_progress} />
    <dl class="facts-grid">
      <div><dt>Progress</dt><dd data-field="progress">${percent(p.overall_progress)}</dd></div>
      <div><dt>ETA</dt><dd>${ACTIVE.has(job.status) ? duration(p.eta_seconds) : "–"}</dd></div>
      <div><dt>Epoch</dt><dd>${p.current_epoch ?? "–"} / ${p.total_epochs ?? "–"}</dd></div>
      <div><dt>Step</dt><dd>${p.current_step ?? "–"}${p.total_steps ? ` / ${p.total_steps}` : ""}</dd></div>
      <div><dt>Loss</dt><dd>${number(m.current_loss)}</dd></div>
      <div><dt>Best</dt><dd>${number(m.best_loss)}</dd></div>
      <div><dt>Speed</dt><dd>${p.steps_per_second ? `${number(p.steps_per_second, 3)} step/s` : "–"}</dd></div>
      <div><dt>GPU</dt><dd>${(job.gpu_ids ?? []).join(", ") || "–"} ${job.gpu_name ?? ""}</dd></div>
      <div><dt>Model</dt><dd>${job.model_type ?? "–"}</dd></div>
      <div><dt>Started</dt><dd>${when(job.started_at)}</dd></div>
    </dl>
    ${job.error && html`<p class="error" data-field="error">${oneLine(job.error, 400)}</p>`}
  </section>`;
}

/** The first and last step over all series (x arrays are sorted). */
function stepExtent(list) {
  let lo = Infinity, hi = -Infinity;
  for (const s of list) {
    if (!s.x.length) continue;
    lo = Math.min(lo, s.x[0]);
    hi = Math.max(hi, s.x[s.x.length - 1]);
  }
  return Number.isFinite(lo) ? [lo, hi] : null;
}

function Charts({ id, status, series, version }) {
  const markers = useMarkers(id, status, version > 0);
  const [smoothing, setSmoothing] = useStored(`${SETTINGS}.smoothing`, 0.6);
  const [logY, setLogY] = useStored(`${SETTINGS}.logy`, false);
  const panels = SERIES.filter((def) => def.key === "step_loss" || series[def.key]?.x.length)
    .filter((def) => series[def.key])
    .map((def) => ({ ...def, series: series[def.key], thinned: series[def.key].thinned, version }));
  const xRange = stepExtent(panels.map((p) => p.series));
  return html`<section class="charts card">
    <${ChartControls} smoothing=${smoothing} setSmoothing=${setSmoothing} logY=${logY} setLogY=${setLogY} />
    ${panels.length === 0 && html`<p class="muted">Loading metrics…</p>`}
    ${panels.map((panel) => html`<${ChartPanel} key=${panel.key} panel=${panel} smoothing=${smoothing}
      logY=${logY} syncKey=${`job-${id}`} markers=${markers} xRange=${xRange} />`)}
  </section>`;
}

function Configs({ id }) {
  const [config, setConfig] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { get(`/training/${seg(id)}/config`).then(setConfig, setError); }, [id]);
  return html`<section class="card configs"><h2>Configuration</h2>
    <${ErrorText} error=${error} />
    ${config && html`
      <details open><summary>config.toml</summary><pre class="code" data-file="config.toml">${config.config_toml}</pre></details>
      <details><summary>dataset.toml</summary><pre class="code" data-file="dataset.toml">${config.dataset_toml}</pre></details>`}
  </section>`;
}

function Files({ id, status }) {
  const [files, setFiles] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    get(`/training/${seg(id)}/files`).then((f) => setFiles(f.files ?? []), setError);
  }, [id, status]);
  return html`<section class="card files"><h2>Saved files</h2>
    <${ErrorText} error=${error} />
    ${files && files.length === 0 && html`<p class="muted">Nothing saved yet.</p>`}
    ${files && files.length > 0 && html`<ul class="rows">${files.map((f) => html`<li>
      <a href=${`${BASE}/training/${seg(id)}/files/${f.path.split("/").map(encodeURIComponent).join("/")}`}
        download=${f.path.split("/").pop()}>${f.path}</a>
      <span class="muted">${f.kind ?? ""}</span><span>${bytes(f.size)}</span><span class="muted">${when(f.mtime)}</span></li>`)}</ul>`}
  </section>`;
}

/** Live alerts first, then the recorded ones not already among them. */
function mergeAlerts(live, recorded) {
  const seen = new Set(live.map((a) => `${a.kind}:${a.step}:${a.timestamp}`));
  return [...live, ...recorded.filter((a) => !seen.has(`${a.kind}:${a.step}:${a.timestamp}`))];
}

export function JobPage({ id }) {
  const { job, error, reload } = useJob(id);
  const [alerts] = useAlerts(id);
  const { series, version } = useJobSeries(id);
  // Asked for once the step loss is drawn: on a long run these scans compete with its series.
  const ready = version > 0;
  const [recorded, setRecorded] = useState([]);
  useEffect(() => {
    if (!ready) return;
    get(`/training/${seg(id)}/alerts`).then(
      (a) => setRecorded((a.alerts ?? []).map((e) => ({ task_id: id, timestamp: e.timestamp, ...e.data })).reverse()),
      () => setRecorded([]));
  }, [id, ready]);
  useEffect(() => {
    document.title = pageTitle(id, job && job.status !== "queued" ? job.progress?.overall_progress : null);
  }, [id, job?.progress?.overall_progress, job?.status]);
  if (error && !job) return html`<${ErrorText} error=${error} />`;
  if (!job) return html`<p class="muted">Loading ${id}…</p>`;
  return html`<div class="job">
    <${Summary} job=${job} />
    <${Alerts} alerts=${mergeAlerts(alerts, recorded)} showTask=${false} />
    <${Controls} job=${job} onDone=${reload} />
    <${Charts} id=${id} status=${job.status} series=${series} version=${version} />
    <${LogView} id=${id} status=${job.status} />
    <${Configs} id=${id} />
    <${Files} id=${id} status=${job.status} />
  </div>`;
}
