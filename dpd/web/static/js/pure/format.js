// Numbers as people read them (pure).

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(r).padStart(2, "0")}s`;
  return `${r}s`;
}

export function bytes(n) {
  if (n === null || n === undefined || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

export function mib(n) {
  return n === null || n === undefined ? "–" : bytes(n * 1024 * 1024);
}

export function number(v, digits = 4) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(digits)));
}

/** Whole percent, but one decimal between 0 and 1 (step 7 of 1600 is not "0%"). */
export function percent(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return v > 0 && v < 1 ? `${v.toFixed(1)}%` : `${Math.round(v)}%`;
}

export function when(iso) {
  if (!iso) return "–";
  const t = typeof iso === "number" ? iso * 1000 : Date.parse(iso);
  if (!Number.isFinite(t)) return "–";
  return new Date(t).toLocaleString();
}

/** First line of an error, cut to fit one row. */
export function oneLine(text, max = 140) {
  if (!text) return "";
  const s = String(typeof text === "object" ? errorText(text) : text);
  const line = s.split("\n").find((l) => l.trim()) ?? "";
  return line.length > max ? line.slice(0, max - 1) + "…" : line;
}

/** A job's error record ({reason, cause, exit_code, …}) as the sentence that explains it. */
export function errorText(error) {
  if (!error) return "";
  if (typeof error !== "object") return String(error);
  return error.reason || error.message || error.cause || JSON.stringify(error);
}
