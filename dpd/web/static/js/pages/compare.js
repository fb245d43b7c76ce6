// Compare: several jobs' step loss on one step axis, and the configuration keys that differ.
import { html, useEffect, useRef, useState } from "../html.js";
import { get, seg } from "../api.js";
import { go, jobLink } from "../router.js";
import { SERIES, fetchSeries } from "../series.js";
import { configDiff } from "../pure/configdiff.js";
import { debiasedEma } from "../pure/smoothing.js";
import { thin } from "../pure/thinning.js";
import { STEP_INCREMENTS, stepRange } from "../ui/charts.js";
import { ErrorText } from "../ui/widgets.js";

const COLOURS = ["#58a6ff", "#ff7b72", "#3fb950", "#d2a8ff", "#e3b341", "#39c5cf", "#f778ba", "#a5d6ff"];
const STEP_LOSS = SERIES.find((s) => s.key === "step_loss");
// Keys every job has different by nature: they say nothing about how the runs differ.
const IGNORED = /^(task_id|created_at|config\.output_dir|config\.dataset)$/;

function Overlay({ runs, smoothing }) {
  const box = useRef(null);
  useEffect(() => {
    if (!runs.length || !window.uPlot) return undefined;
    const aligned = window.uPlot.join(runs.map((r) => {
      const t = thin(r.series, 4000);
      return [t.x, debiasedEma(t.y, smoothing)];
    }));
    const muted = getComputedStyle(document.documentElement).getPropertyValue("--muted").trim() || "#888";
    const axis = { stroke: muted, grid: { stroke: "rgba(128,128,128,0.2)" }, ticks: { stroke: "rgba(128,128,128,0.2)" } };
    const plot = new window.uPlot({
      width: Math.max(200, box.current.clientWidth), height: 300,
      scales: { x: { time: false, range: stepRange } },
      axes: [{ ...axis, label: "step", incrs: STEP_INCREMENTS }, { ...axis, size: 60 }],
      series: [{ label: "step" }, ...runs.map((r, i) => ({ label: r.id, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true }))],
    }, aligned, box.current);
    const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(200, box.current.clientWidth), height: 300 }));
    resize.observe(box.current);
    return () => { resize.disconnect(); plot.destroy(); };
  }, [runs, smoothing]);
  return html`<figure class="chart" data-series="compare" data-runs=${runs.length}><div ref=${box} class="plot"></div></figure>`;
}

function Picker({ selected }) {
  const [jobs, setJobs] = useState([]);
  useEffect(() => { get("/training/list?limit=200").then((d) => setJobs(d.tasks), () => {}); }, []);
  const toggle = (id) => {
    const next = selected.includes(id) ? selected.filter((x) => x !== id) : [...selected, id];
    go(`#/compare?ids=${next.map(encodeURIComponent).join(",")}`);
  };
  return html`<details class="picker" open=${selected.length < 2}><summary>Choose jobs (${selected.length} chosen)</summary>
    <ul class="rows">${jobs.map((j) => html`<li><label><input type="checkbox" checked=${selected.includes(j.task_id)}
      onChange=${() => toggle(j.task_id)} data-task=${j.task_id} /> ${j.task_id}</label>
      <span class="muted">${j.status} · ${j.model_type ?? ""}</span></li>`)}</ul></details>`;
}

export function ComparePage({ ids }) {
  const selected = ids.split(",").map((s) => decodeURIComponent(s.trim())).filter(Boolean);
  const [runs, setRuns] = useState([]);
  const [configs, setConfigs] = useState([]);
  const [error, setError] = useState(null);
  const [smoothing, setSmoothing] = useState(0.6);
  useEffect(() => {
    document.title = "Compare · dpd";
    let live = true;
    setError(null);
    Promise.all(selected.map(async (id) => ({
      id,
      series: await fetchSeries(id, STEP_LOSS),
      config: await get(`/training/${seg(id)}/config`).then((c) => c.job ?? c, () => ({})),
    }))).then((loaded) => {
      if (!live) return;
      setRuns(loaded.map(({ id, series }) => ({ id, series })));
      setConfigs(loaded.map(({ config }) => config));
    }, (err) => live && setError(err));
    return () => { live = false; };
  }, [ids]);
  const diff = configDiff(configs, (key) => IGNORED.test(key));
  const show = (v) => (v === undefined ? "—" : typeof v === "string" ? v : JSON.stringify(v));
  return html`<div class="compare">
    <h1>Compare</h1>
    <${Picker} selected=${selected} />
    <${ErrorText} error=${error} />
    ${runs.length > 0 && html`<section class="card">
      <label>Smoothing <input type="range" min="0" max="0.99" step="0.01" value=${smoothing}
        onInput=${(e) => setSmoothing(Number(e.target.value))} /> ${smoothing.toFixed(2)}</label>
      <${Overlay} runs=${runs} smoothing=${smoothing} />
    </section>
    <section class="card"><h2>Configuration differences</h2>
      ${diff.length === 0 ? html`<p class="muted">The configurations do not differ.</p>` : html`
      <div class="table-wrap"><table class="diff">
        <thead><tr><th>key</th>${runs.map((r) => html`<th><a href=${jobLink(r.id)}>${r.id}</a></th>`)}</tr></thead>
        <tbody>${diff.map((row) => html`<tr data-key=${row.key}><td><code>${row.key}</code></td>
          ${row.values.map((v) => html`<td>${show(v)}</td>`)}</tr>`)}</tbody>
      </table></div>`}
    </section>`}
  </div>`;
}
