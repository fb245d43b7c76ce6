// Submit: a form built from the model catalog, checked by the server's dry run before start.
import { html, useEffect, useMemo, useRef, useState } from "../html.js";
import { ApiError, get, post, seg } from "../api.js";
import { go, jobLink } from "../router.js";
import { buildJob, fieldFor, requiredPaths } from "../pure/jobform.js";
import { documentFormat, fieldLine, lineRange, toYaml } from "../pure/jobyaml.js";
import { FolderPicker } from "../ui/folderpicker.js";
import { ErrorText } from "../ui/widgets.js";

const MEDIA_TYPES = { json: "application/json", yaml: "application/yaml" };

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
  const [docErrors, setDocErrors] = useState([]);
  const [picking, setPicking] = useState(false);
  const editor = useRef(null);
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
      setText(toYaml(spec));
      setAdvanced(true);
    }, (err) => setGeneral(err));
  }, [from]);

  const toggleAdvanced = () => {
    if (!advanced) setText(toYaml(buildJob(form, paths)));
    setAdvanced(!advanced);
  };
  const send = async (path) => {
    // The editor's text is sent as typed, as YAML or (starting with "{") JSON: a mistake in
    // it comes back from the daemon as a clear 400.
    if (!advanced) return post(path, buildJob(form, paths));
    return post(path, text, { contentType: MEDIA_TYPES[documentFormat(text)] });
  };
  const showLine = (line) => {
    const area = editor.current;
    if (!area || !line) return;
    const [start, end] = lineRange(area.value, line);
    area.focus();
    area.setSelectionRange(start, end);
  };
  const pick = (path) => { setForm({ ...form, dataset: path }); setPicking(false); };
  const run = async (start) => {
    setBusy(true); setErrors({}); setDocErrors([]); setGeneral(null); setResult(null);
    try {
      const validated = await send("/training/validate");
      setResult(validated);
      if (start) {
        const created = await send("/training/start");
        go(jobLink(created.task_id));
      }
    } catch (err) {
      if (err instanceof ApiError && err.data?.errors) {
        if (advanced) { // each error beside the editor, with the line its field is on
          setDocErrors(err.data.errors.map((e) => ({ ...e, line: fieldLine(text, e.field) })));
          setGeneral(err.message);
          return;
        }
        const byField = {};
        const other = [];
        for (const e of err.data.errors) {
          const id = fieldFor(e.field, paths);
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
          <div class="with-button">
            <input id="f-dataset" name="dataset" value=${form.dataset} onInput=${set("dataset")} list="dl-datasets" placeholder="/data/datasets/cats" />
            <button type="button" class="secondary" onClick=${() => setPicking(!picking)} aria-expanded=${picking}>Browse…</button>
          </div>
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
      ${picking && html`<${FolderPicker} datasets=${datasets} onPick=${pick} onClose=${() => setPicking(false)} />`}
      <details class="advanced" open=${advanced}>
        <summary onClick=${(e) => { e.preventDefault(); toggleAdvanced(); }}>Advanced: edit the whole job as YAML or JSON</summary>
        <textarea name="document" rows="18" spellcheck="false" aria-label="job document" value=${text}
          ref=${editor} class=${docErrors.length ? "invalid" : ""} onInput=${(e) => setText(e.target.value)}></textarea>
        ${docErrors.length > 0 && html`<ul class="doc-errors" role="alert">
          ${docErrors.map((e) => html`<li data-field=${e.field}>
            ${e.line ? html`<button type="button" class="link" onClick=${() => showLine(e.line)}>line ${e.line}</button>` : null}
            <code>${e.field}</code> <span class="field-error">${e.message}</span></li>`)}
        </ul>`}
        <small class="muted">YAML, or JSON starting with "{". While this is open, the document here is what is sent; the form above is ignored.</small>
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
