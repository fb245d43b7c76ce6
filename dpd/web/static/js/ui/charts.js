// uPlot panels sharing one cursor: step loss (raw, smoothed, min/max band), epoch loss, eval
// loss, learning rate, grad norm, with resume and checkpoint markers.
//
// uPlot comes from the vendored IIFE (window.uPlot). A panel keeps its uPlot instance and
// feeds it with setData on new points; it is rebuilt only when its options change (log-y).
import { html, useEffect, useRef } from "../html.js";
import { debiasedEma } from "../pure/smoothing.js";
import { thin } from "../pure/thinning.js";
import { number } from "../pure/format.js";

export const MAX_DRAWN = 4000; // points per series drawn; beyond, min/max buckets
const HEIGHT = 180;
// Steps are whole numbers: no tick at step 1.5.
export const STEP_INCREMENTS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4,
  1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7];
const MARKER_COLOURS = { resume: "#e3b341", checkpoint: "#3fb950", save: "#58a6ff" };

function css(name, fallback) {
  const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return value || fallback;
}

function markerPlugin(markersRef) {
  return {
    hooks: {
      draw: [(u) => {
        const markers = markersRef.current || [];
        if (!markers.length) return;
        const { ctx } = u;
        const { left, top, width, height } = u.bbox;
        ctx.save();
        ctx.lineWidth = Math.max(1, devicePixelRatio);
        for (const m of markers) {
          const x = Math.round(u.valToPos(m.step, "x", true));
          if (!(x >= left && x <= left + width)) continue;
          ctx.strokeStyle = MARKER_COLOURS[m.kind] || "#888";
          ctx.setLineDash(m.kind === "resume" ? [] : [4 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, top);
          ctx.lineTo(x, top + height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
}

/** A performance mark when a panel has first drawn its data (read by bench_dashboard.py). */
function firstDrawMark(key) {
  let done = false;
  return {
    hooks: {
      draw: [(u) => {
        if (done || !u.data[0].length) return;
        done = true;
        performance.mark(`dpd:chart-drawn:${key}`, { detail: { points: u.data[0].length } });
      }],
    },
  };
}

/** The arrays one panel draws: x, raw, smoothed, min, max (null where absent). */
export function panelData(series, smoothing, logY) {
  const drawn = thin(series, MAX_DRAWN);
  const positive = (v) => (logY && v !== null && v <= 0 ? null : v);
  const raw = drawn.y.map(positive);
  const smooth = debiasedEma(raw, smoothing);
  return {
    data: [drawn.x, raw, smooth, drawn.lo.map(positive), drawn.hi.map(positive)],
    thinned: drawn.thinned,
  };
}

/** The x range; one point (or none) would give uPlot an empty range it cannot split. */
export function stepRange(u, min, max) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  return min === max ? [min - 1, max + 1] : [min, max];
}

function options(panel, width, logY, syncKey, markersRef, xRangeRef) {
  const fg = css("--muted", "#8b949e");
  const grid = css("--grid", "rgba(128,128,128,0.2)");
  const colour = panel.colour;
  const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
  return {
    width, height: HEIGHT,
    cursor: { sync: { key: syncKey, setSeries: false }, drag: { x: true, y: false } },
    legend: { live: true },
    scales: {
      // every panel spans the same steps, so the synced cursor lines up across them
      x: { time: false, range: (u, min, max) => stepRange(u, xRangeRef.current?.[0] ?? min, xRangeRef.current?.[1] ?? max) },
      y: logY ? { distr: 3, log: 10 } : { auto: true },
    },
    axes: [
      { ...axis, label: "step", labelSize: 18, incrs: STEP_INCREMENTS },
      { ...axis, size: 64, values: (u, splits) => splits.map((v) => number(v, 3)) },
    ],
    series: [
      { label: "step" },
      { label: panel.title, stroke: panel.smooth ? colour + "66" : colour, width: 1, spanGaps: true,
        points: { show: panel.sparse ?? false } },
      { label: "smoothed", stroke: colour, width: 2, show: !!panel.smooth, spanGaps: true, points: { show: false } },
      { label: "min", stroke: "transparent", points: { show: false } },
      { label: "max", stroke: "transparent", points: { show: false } },
    ],
    bands: [{ series: [4, 3], fill: colour + "33" }],
    plugins: [markerPlugin(markersRef), firstDrawMark(panel.key)],
  };
}

export function ChartPanel({ panel, smoothing, logY, syncKey, markers, xRange }) {
  const xRangeRef = useRef(xRange);
  xRangeRef.current = xRange;
  const box = useRef(null);
  const plot = useRef(null);
  const markersRef = useRef(markers);
  markersRef.current = markers;

  useEffect(() => {
    const el = box.current;
    const width = Math.max(200, el.clientWidth);
    const { data } = panelData(panel.series, smoothing, logY);
    plot.current = new window.uPlot(options(panel, width, logY, syncKey, markersRef, xRangeRef), data, el);
    const resize = new ResizeObserver(() => {
      const w = Math.max(200, el.clientWidth);
      if (plot.current && Math.abs(plot.current.width - w) > 2) plot.current.setSize({ width: w, height: HEIGHT });
    });
    resize.observe(el);
    return () => { resize.disconnect(); plot.current.destroy(); plot.current = null; };
  }, [logY, syncKey, panel.key]);

  useEffect(() => {
    if (!plot.current) return;
    const { data } = panelData(panel.series, smoothing, logY);
    plot.current.setData(data, true);
  }, [panel.series, panel.version, smoothing]);

  useEffect(() => { if (plot.current) plot.current.redraw(false, false); }, [markers]);

  const drawnPoints = panel.series.x.length;
  return html`<figure class=${`chart${panel.smooth ? "" : " nosmooth"}`} data-series=${panel.key}
    data-points=${drawnPoints} data-markers=${(markers ?? []).length}>
    <figcaption>${panel.title}${panel.thinned ? html` <span class="muted">(thinned: band = min/max)</span>` : ""}
      ${drawnPoints === 0 ? html` <span class="muted" data-role="no-points">no point logged yet</span>` : ""}</figcaption>
    <div ref=${box} class="plot"></div>
  </figure>`;
}

export function ChartControls({ smoothing, setSmoothing, logY, setLogY }) {
  return html`<div class="chart-controls">
    <label>Smoothing <input type="range" min="0" max="0.999" step="0.001" value=${smoothing}
      onInput=${(e) => setSmoothing(Number(e.target.value))} aria-label="smoothing" />
      <output>${smoothing.toFixed(3)}</output></label>
    <label><input type="checkbox" checked=${logY} onChange=${(e) => setLogY(e.target.checked)} /> log y</label>
    <span class="legend-markers"><i class="mk resume"></i>resume <i class="mk checkpoint"></i>checkpoint <i class="mk save"></i>save</span>
  </div>`;
}
