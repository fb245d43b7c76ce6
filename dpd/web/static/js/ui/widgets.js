// Small shared pieces: status pill, progress bar, sparkline, error line.
import { html } from "../html.js";

export function StatusPill({ status }) {
  return html`<span class=${`pill s-${status}`}>${status}</span>`;
}

export function ProgressBar({ value }) {
  const v = Number.isFinite(value) ? Math.max(0, Math.min(100, value)) : 0;
  return html`<progress class="bar" max="100" value=${v}>${Math.round(v)}%</progress>`;
}

/** An SVG polyline of the values (nulls skipped), scaled to its own min..max or a fixed range. */
export function Sparkline({ values, min, max, label }) {
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  if (finite.length < 2) return html`<svg class="spark" viewBox="0 0 100 24" aria-label=${label}></svg>`;
  const lo = min ?? Math.min(...finite);
  const hi = max ?? Math.max(...finite);
  const span = hi - lo || 1;
  const step = 100 / (values.length - 1);
  const points = [];
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) return;
    points.push(`${(i * step).toFixed(1)},${(23 - ((v - lo) / span) * 22).toFixed(1)}`);
  });
  return html`<svg class="spark" viewBox="0 0 100 24" preserveAspectRatio="none" role="img"
    aria-label=${label}><polyline points=${points.join(" ")} /></svg>`;
}

export function ErrorText({ error }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${typeof error === "string" ? error : error.message}</p>`;
}
