// Submit: a form built from the model catalog, checked by the server's dry run before start.
import { html, useEffect, useMemo, useState } from "../html.js";
import { ApiError, get, post, seg } from "../api.js";
import { go, jobLink } from "../router.js";
import { buildJob, fieldFor, requiredPaths } from "../pure/jobform.js";
import { ErrorText } from "../ui/widgets.js";

const DEFAULTS = {
  task_id: "", description: "", model_type: "", paths: {}, dataset: "", resolution: 512,
  epochs: 10, lr: 0.0002, rank: 32, batch: 1, save_every: 1, queue: true, priority: 0,
};

function useCatalog() {
  const [models, setModels] = useState([]);
  const [datasets, setDatasets] = useState([]);
  useEffect(() => {
    get("/models/list").then((d) => setModels(d.models ?? []), () => setModels([]));
    get("/datasets").then((d) => setDatasets(d.datasets ?? []), () => setDatasets([]));
  }, []);
  return { models, datasets };
}

function Field({ id, label, error, children, hint }) {
  return html`<div class=${`field${error ? " invalid" : ""}`} data-field=${id}>
    <label for=${`f-${id}`}>${label}</label>${children}
    ${hint && html`<small class="muted">${hint}</small>`}
    ${error && html`<small class="field-error" role="alert">${error}</small>`}</div>`;
}

export function SubmitPage({ from }) {
  const { models, datasets } = useCatalog();
  const [form, setForm] = useState(DEFAULTS);
  const [advanced, setAdvanced] = useState(false);
  const [text, setText] = useState("");
  const [errors, setErrors] = useState({});
  const [general, setGeneral] = useState(null);
  const [result, setResult] = useState(null);
  const [busy, setBusy] = useState(false);
  const model = models.find((m) => m.id === form.model_type);
  const paths = useMemo(() => requiredPaths(model), [model]);
  const set = (key) => (e) => setForm({ ...form, [key]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const setPath = (key) => (e) => setForm({ ...form, paths: { ...form.paths, [key]: e.target.value } });

  useEffect(() => { document.title = "Submit · dpd"; }, []);
  useEffect(() => {
    if (!form.model_type && models.length) setForm((f) => ({ ...f, model_type: models[0].id }));
  }, [models]);
  useEffect(() => { // fill installed models' paths when the type changes
    const filled = {};
    for (const p of paths) filled[p.key] = form.paths[p.key] || (p.installed ? p.path : "");
    setForm((f) => ({ ...f, paths: filled }));
  }, [form.model_type, models]);
  useEffect(() => { // duplicate: start from another job's accepted spec
    if (!from) return;
    get(`/training/${seg(from)}/config`).then((c) => {
      const spec = { ...(c.job ?? c) };
      delete spec.task_id;
      setText(JSON.stringify(spec, null, 2));
      setAdvanced(true);
    }, (err) => setGeneral(err));
  }, [from]);

  const documentText = () => (advanced ? text : JSON.stringify(buildJob(form, paths), null, 2));
  const toggleAdvanced = () => {
    if (!advanced) setText(JSON.stringify(buildJob(form, paths), null, 2));
    setAdvanced(!advanced);
  };
  const send = async (path) => {
    // Sent as typed: a JSON mistake comes back from the daemon as a clear 400.
    return post(path, documentText());
  };
  const run = async (start) => {
    setBusy(true); setErrors({}); setGeneral(null); setResult(null);
    try {
      const validated = await send("/training/validate");
      setResult(validated);
      if (start) {
        const created = await send("/training/start");
        go(jobLink(created.task_id));
      }
    } catch (err) {
      if (err instanceof ApiError && err.data?.errors) {
        const byField = {};
        const other = [];
        for (const e of err.data.errors) {
          const id = advanced ? null : fieldFor(e.field, paths);
          if (id) byField[id] = e.message; else other.push(`${e.field}: ${e.message}`);
        }
        setErrors(byField);
        setGeneral(other.length ? `${err.message}: ${other.join("; ")}` : null);
      } else {
        setGeneral(err);
      }
    } finally { setBusy(false); }
  };

  const input = (id, type = "text", extra = {}) => html`<input id=${`f-${id}`} name=${id} type=${type}
    value=${form[id]} onInput=${set(id)} ...${extra} />`;
  return html`<div class="submit">
    <h1>Submit a training</h1>
    <form class="card form" onSubmit=${(e) => { e.preventDefault(); run(true); }} novalidate>
      <div class="form-grid">
        <${Field} id="task_id" label="Task id" error=${errors.task_id} hint="optional; made up when empty">${input("task_id")}<//>
        <${Field} id="description" label="Description" error=${errors.description}>${input("description")}<//>
        <${Field} id="model_type" label="Model type" error=${errors.model_type}>
          <select id="f-model_type" name="model_type" value=${form.model_type} onChange=${set("model_type")}>
            ${models.map((m) => html`<option value=${m.id}>${m.name ?? m.id}${m.installed ? " (installed)" : ""}</option>`)}
          </select>${model?.min_vram_gb ? html`<small class="muted">needs ≥ ${model.min_vram_gb} GB of GPU memory</small>` : null}<//>
        ${paths.map((p) => html`<${Field} key=${p.key} id=${`path:${p.key}`} label=${`Model path: ${p.key}`} error=${errors[`path:${p.key}`]}
            hint=${p.installed ? "installed" : "not installed: download it on the Models page, or give a path"}>
          <input id=${`f-path:${p.key}`} name=${p.key} value=${form.paths[p.key] ?? ""} onInput=${setPath(p.key)} list=${`dl-${p.key}`} />
          <datalist id=${`dl-${p.key}`}>${p.choices.map((c) => html`<option value=${c} />`)}</datalist><//>`)}
        <${Field} id="dataset" label="Dataset folder" error=${errors.dataset}>
          <input id="f-dataset" name="dataset" value=${form.dataset} onInput=${set("dataset")} list="dl-datasets" placeholder="/data/datasets/cats" />
          <datalist id="dl-datasets">${datasets.map((d) => html`<option value=${d.path ?? d.output_dir ?? d.name}>${d.name ?? ""}</option>`)}</datalist><//>
        <${Field} id="resolution" label="Resolution" error=${errors.resolution}>${input("resolution", "number", { min: 64, step: 64 })}<//>
        <${Field} id="epochs" label="Epochs" error=${errors.epochs}>${input("epochs", "number")}<//>
        <${Field} id="lr" label="Learning rate" error=${errors.lr}>${input("lr", "number", { step: "any" })}<//>
        <${Field} id="rank" label="LoRA rank" error=${errors.rank}>${input("rank", "number")}<//>
        <${Field} id="batch" label="Micro batch per GPU" error=${errors.batch}>${input("batch", "number")}<//>
        <${Field} id="save_every" label="Save every n epochs" error=${errors.save_every}>${input("save_every", "number")}<//>
        <${Field} id="priority" label="Priority" error=${errors.priority}>${input("priority", "number")}<//>
        <div class="field check"><label><input type="checkbox" name="queue" checked=${form.queue} onChange=${set("queue")} /> Queue when no GPU is free</label></div>
      </div>
      <details class="advanced" open=${advanced} onToggle=${(e) => { if (e.target.open !== advanced) toggleAdvanced(); }}>
        <summary>Advanced: edit the whole job as JSON</summary>
        <textarea name="document" rows="18" spellcheck="false" aria-label="job document" value=${text}
          onInput=${(e) => setText(e.target.value)}></textarea>
        <small class="muted">While this is open, the document here is what is sent; the form above is ignored.</small>
      </details>
      <${ErrorText} error=${general} />
      ${result && html`<div class="validated" data-role="validation">
        <p class="ok">The daemon accepts this job${result.required_gpus ? ` (${result.required_gpus} GPU)` : ""}.</p>
        ${(result.warnings ?? []).map((w) => html`<p class="warn" data-role="warning">${typeof w === "string" ? w : w.message}</p>`)}
      </div>`}
      <div class="controls">
        <button type="button" class="secondary" onClick=${() => run(false)} disabled=${busy}>Check</button>
        <button type="submit" disabled=${busy}>Start training</button>
      </div>
    </form>
  </div>`;
}
