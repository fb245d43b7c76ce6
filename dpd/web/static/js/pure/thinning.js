// Min/max thinning of a series for drawing (pure).
//
// A chart never needs more points than it has pixels; but dropping points (stride, LTTB) hides
// spikes. Each bucket keeps its mean as the drawn value and its min and max, which the chart
// draws as a band, so a spike stays visible however far the series is thinned. Points that
// arrive already thinned (the server's buckets) keep their own min/max.

/**
 * @param {{x:number[], y:(number|null)[], lo?:(number|null)[], hi?:(number|null)[]}} series
 * @param {number} maxPoints
 * @returns {{x:number[], y:(number|null)[], lo:(number|null)[], hi:(number|null)[], thinned:boolean}}
 */
export function thin(series, maxPoints) {
  const n = series.x.length;
  const lo = series.lo || [];
  const hi = series.hi || [];
  if (n <= maxPoints) {
    return { x: series.x.slice(), y: series.y.slice(), lo: fill(lo, n), hi: fill(hi, n),
      thinned: lo.some((v) => v !== null && v !== undefined) };
  }
  const size = Math.ceil(n / maxPoints);
  const out = { x: [], y: [], lo: [], hi: [], thinned: true };
  for (let start = 0; start < n; start += size) {
    const end = Math.min(n, start + size);
    let sum = 0, count = 0, min = Infinity, max = -Infinity;
    for (let i = start; i < end; i++) {
      const v = series.y[i];
      if (v === null || !Number.isFinite(v)) continue;
      sum += v; count += 1;
      const low = lo[i] ?? v, high = hi[i] ?? v;
      if (low < min) min = low;
      if (high > max) max = high;
    }
    out.x.push(series.x[end - 1]);
    out.y.push(count ? sum / count : null);
    out.lo.push(count ? min : null);
    out.hi.push(count ? max : null);
  }
  return out;
}

function fill(values, n) {
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = values[i] ?? null;
  return out;
}
