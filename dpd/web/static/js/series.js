// A job's metric series: loaded once from the metrics API, then extended by live events.
//
// Arrays grow in place (a 100k-point series is not copied per event); a version counter
// tells the charts to redraw, at most once per animation frame.
import { useEffect, useRef, useState } from "./html.js";
import { get, seg } from "./api.js";
import { useLiveEvents } from "./live.js";

export const SERIES = [
  { key: "step_loss", metric: "loss", type: "step", title: "Step loss", colour: "#58a6ff", smooth: true },
  { key: "epoch_loss", metric: "loss", type: "epoch", title: "Epoch loss", colour: "#d2a8ff", sparse: true },
  { key: "eval_loss", metric: "loss", type: "eval", title: "Eval loss", colour: "#3fb950", sparse: true },
  { key: "lr", metric: "lr", type: "step", title: "Learning rate", colour: "#e3b341" },
  { key: "grad_norm", metric: "grad_norm", type: "step", title: "Grad norm", colour: "#ff7b72", smooth: true },
];
export const MAX_POINTS = 2000;

const empty = () => ({ x: [], y: [], lo: [], hi: [], thinned: false });

/** Points of the metrics answer, whichever of the API's shapes it has. */
export function toSeries(answer) {
  const out = empty();
  const points = answer?.points ?? [];
  for (const p of points) {
    if (p.step === null || p.step === undefined) continue;
    out.x.push(p.step);
    out.y.push(p.value ?? null);
    out.lo.push(p.min ?? null);
    out.hi.push(p.max ?? null);
  }
  out.thinned = Boolean(answer?.thinned);
  return out;
}

export async function fetchSeries(taskId, def, maxPoints = MAX_POINTS) {
  return toSeries(await get(`/training/${seg(taskId)}/series?kind=${def.key}&max_points=${maxPoints}`));
}

export function useJobSeries(taskId) {
  const store = useRef({});
  const [version, setVersion] = useState(0);
  const frame = useRef(0);
  const bump = () => {
    if (frame.current) return;
    frame.current = requestAnimationFrame(() => { frame.current = 0; setVersion((v) => v + 1); });
  };

  // Step loss first, drawn as soon as it is here; the other series follow together.
  const load = async () => {
    const one = (def) => fetchSeries(taskId, def).catch(() => empty());
    const [first, ...rest] = SERIES;
    const loaded = { [first.key]: await one(first) };
    store.current = loaded;
    performance.mark("dpd:series-loaded");
    bump();
    const others = await Promise.all(rest.map(one));
    rest.forEach((def, i) => { loaded[def.key] = others[i]; });
    store.current = { ...loaded };
    bump();
  };
  useEffect(() => { store.current = {}; load(); return () => cancelAnimationFrame(frame.current); }, [taskId]);

  useLiveEvents((type, event) => {
    if (type === "resync") { load(); return; }
    if (type !== "metrics" || event.task_id !== taskId) return;
    const d = event.data ?? {};
    const def = SERIES.find((s) => s.metric === d.metric && s.type === d.type);
    const series = def && store.current[def.key];
    if (!series || d.step === null || d.step === undefined) return;
    const last = series.x.length ? series.x[series.x.length - 1] : -Infinity;
    if (d.step < last || (d.step === last && def.type !== "eval")) return; // replayed or older
    series.x.push(d.step); series.y.push(d.value ?? null); series.lo.push(null); series.hi.push(null);
    bump();
  }, [taskId]);

  return { series: store.current, version };
}
