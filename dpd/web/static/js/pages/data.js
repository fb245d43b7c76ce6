// Data (video upload → preprocessing, datasets) and Models (catalog, downloads with progress).
import { html, useEffect, useRef, useState } from "../html.js";
import { ApiError, get, post, seg, upload } from "../api.js";
import { useLiveEvents } from "../live.js";
import { bytes, duration, percent } from "../pure/format.js";
import { REFETCH_MS } from "../throttle.js";
import { ErrorText, ProgressBar, StatusPill } from "../ui/widgets.js";

const TRACKED = "dpd.preprocess.ids";
const TERMINAL = new Set(["completed", "failed", "cancelled", "stopped"]);
// Numbers an event carries that the row shows (a download's bytes, speed and ETA too).
const LIVE_FIGURES = ["progress", "bytes_done", "bytes_total", "speed_bps", "eta_seconds"];

/** Records refreshed from their status route when the stream mentions them (at most every 5 s). */
function useTracked(ids, fetchOne) {
  const [records, setRecords] = useState({});
  const last = useRef({});
  const refresh = (id) => fetchOne(id).then((r) => setRecords((all) => ({ ...all, [id]: r })), () => {});
  useEffect(() => { ids.forEach(refresh); }, [ids.join(",")]);
  useLiveEvents((type, event) => {
    const id = event?.task_id;
    if (!ids.includes(id)) return;
    const d = event.data ?? {};
    const figures = Object.fromEntries(LIVE_FIGURES.filter((k) => Number.isFinite(d[k])).map((k) => [k, d[k]]));
    setRecords((all) => ({ ...all, [id]: { ...(all[id] ?? {}), ...(d.status ? { status: d.status } : {}), ...figures } }));
    const now = Date.now();
    if (!last.current[id] || now - last.current[id] >= REFETCH_MS) {
      last.current[id] = now;
      refresh(id);
    }
  }, [ids.join(",")]);
  return records;
}

function UploadForm({ onQueued }) {
  const [progress, setProgress] = useState(null);
  const [errors, setErrors] = useState({});
  const [error, setError] = useState(null);
  const submit = async (e) => {
    e.preventDefault();
    setErrors({}); setError(null); setProgress(0);
    const form = new FormData(e.target);
    try {
      const queued = await upload("/preprocess/upload", form, setProgress);
      setProgress(1);
      onQueued(queued);
      e.target.reset();
    } catch (err) {
      setProgress(null);
      if (err instanceof ApiError && err.data?.errors) setErrors(err.fields); else setError(err);
    }
  };
  const fieldError = (name) => errors[name] && html`<small class="field-error" role="alert">${errors[name]}</small>`;
  return html`<form class="card form upload" onSubmit=${submit}>
    <h2>Upload a video</h2>
    <div class="form-grid">
      <div class="field"><label for="u-video">Video file</label><input id="u-video" type="file" name="video" accept="video/*" required />${fieldError("video")}</div>
      <div class="field"><label for="u-prompt">Prompt (caption)</label><input id="u-prompt" name="prompt" required />${fieldError("prompt")}</div>
      <div class="field"><label for="u-model">Model type</label><input id="u-model" name="model_type" value="wan" required />${fieldError("model_type")}</div>
      <div class="field"><label for="u-dataset">Dataset name</label><input id="u-dataset" name="dataset" placeholder="optional" />${fieldError("dataset")}</div>
      <div class="field"><label for="u-fps">FPS</label><input id="u-fps" name="fps" placeholder="optional" inputmode="numeric" />${fieldError("fps")}</div>
      <div class="field"><label for="u-res">Resolution</label><input id="u-res" name="resolution" placeholder="optional, e.g. 512x512" />${fieldError("resolution")}</div>
    </div>
    ${progress !== null && html`<div class="upload-progress" data-role="upload-progress">
      <${ProgressBar} value=${progress * 100} /><span>${percent(progress * 100)} uploaded</span></div>`}
    <${ErrorText} error=${error} />
    <div class="controls"><button type="submit">Upload</button></div>
  </form>`;
}

function PreprocessTasks({ ids }) {
  const records = useTracked(ids, (id) => get(`/preprocess/status/${seg(id)}`));
  if (!ids.length) return null;
  return html`<section class="card"><h2>Preprocessing</h2><ul class="rows">
    ${ids.map((id) => {
      const r = records[id] ?? {};
      return html`<li data-task=${id}><span class="name">${id}</span><${StatusPill} status=${r.status ?? "…"} />
        <${ProgressBar} value=${r.progress} /><span>${percent(r.progress)}</span>
        ${r.error && html`<span class="error-line">${typeof r.error === "string" ? r.error : r.error.message}</span>`}</li>`;
    })}</ul></section>`;
}

export function DataPage() {
  const [ids, setIds] = useState(() => { try { return JSON.parse(sessionStorage.getItem(TRACKED)) ?? []; } catch { return []; } });
  const [datasets, setDatasets] = useState(null);
  const [error, setError] = useState(null);
  const loadDatasets = () => get("/datasets").then((d) => setDatasets(d.datasets ?? []), setError);
  useEffect(() => { document.title = "Data · dpd"; loadDatasets(); }, []);
  const queued = (task) => {
    const next = [task.task_id, ...ids.filter((i) => i !== task.task_id)].slice(0, 20);
    setIds(next);
    sessionStorage.setItem(TRACKED, JSON.stringify(next));
  };
  return html`<div class="data">
    <h1>Data</h1>
    <${UploadForm} onQueued=${queued} />
    <${PreprocessTasks} ids=${ids} />
    <section class="card"><h2>Datasets</h2><${ErrorText} error=${error} />
      ${datasets === null && !error && html`<p class="muted">Loading…</p>`}
      ${datasets && datasets.length === 0 && html`<p class="muted">No preprocessed dataset yet.</p>`}
      ${datasets && datasets.length > 0 && html`<ul class="rows">${datasets.map((d) => html`<li>
        <span class="name">${d.name}</span><span class="muted">${d.path}</span>
        <span>${d.videos ?? d.items ?? d.total_items ?? ""} ${d.videos !== undefined ? "videos" : ""}</span>
        ${d.total_size !== undefined && html`<span>${bytes(d.total_size)}</span>`}</li>`)}</ul>`}
    </section>
  </div>`;
}

export function ModelsPage() {
  const [models, setModels] = useState(null);
  const [downloads, setDownloads] = useState([]);
  const [error, setError] = useState(null);
  const load = () => {
    get("/models/list").then((d) => setModels(d.models ?? []), setError);
    get("/models/downloads").then((d) => setDownloads(d.downloads ?? []), () => {});
  };
  useEffect(() => { document.title = "Models · dpd"; load(); }, []);
  const ids = downloads.map((d) => d.download_id);
  const live = useTracked(ids, (id) => get(`/models/download/${seg(id)}`));
  // A download that finishes changes the catalog's installed column: list it again.
  const finished = ids.filter((id) => live[id]?.status === "completed").join(",");
  useEffect(() => { if (finished) get("/models/list").then((d) => setModels(d.models ?? []), setError); }, [finished]);
  const start = async (model) => {
    setError(null);
    try { await post("/models/download", { model_id: model.id }); load(); } catch (err) { setError(err); }
  };
  const cancel = async (id) => {
    try { await post(`/models/download/${seg(id)}/cancel`, {}); load(); } catch (err) { setError(err); }
  };
  return html`<div class="models">
    <h1>Models</h1>
    <${ErrorText} error=${error} />
    ${downloads.length > 0 && html`<section class="card"><h2>Downloads</h2><ul class="rows">
      ${downloads.map((d0) => {
        const d = { ...d0, ...(live[d0.download_id] ?? {}) };
        return html`<li data-download=${d.download_id}><span class="name">${d.model_id}</span>
          <${StatusPill} status=${d.status} /><${ProgressBar} value=${d.progress} /><span>${percent(d.progress)}</span>
          ${d.bytes_total ? html`<span class="muted" data-field="bytes">${bytes(d.bytes_done)} / ${bytes(d.bytes_total)}</span>` : null}
          ${d.status === "downloading" && d.speed_bps ? html`<span class="muted">${bytes(d.speed_bps)}/s · ${duration(d.eta_seconds)} left</span>` : null}
          ${!TERMINAL.has(d.status) && html`<button class="small secondary" onClick=${() => cancel(d.download_id)}>Cancel</button>`}
          ${d.error && html`<span class="error-line">${typeof d.error === "string" ? d.error : d.error.message}</span>`}</li>`;
      })}</ul></section>`}
    <section class="card"><h2>Catalog</h2>
      ${models === null ? html`<p class="muted">Loading…</p>` : html`<div class="table-wrap"><table class="catalog">
        <thead><tr><th>model</th><th class="c-type">type</th><th>VRAM</th><th>installed</th></tr></thead>
        <tbody>${models.map((m) => html`<tr data-model=${m.id}>
          <td><strong>${m.name}</strong><br /><code>${m.id}</code></td><td class="c-type">${m.type}</td>
          <td>≥ ${m.min_vram_gb} GB</td>
          <td><span data-field="installed">${m.installed ? "yes" : `${(m.components ?? []).filter((c) => c.installed).length}/${(m.components ?? []).length} parts`}</span>
            ${!m.installed && html` <button class="small" onClick=${() => start(m)}>Download</button>`}</td></tr>`)}</tbody>
      </table></div>`}
    </section>
  </div>`;
}
