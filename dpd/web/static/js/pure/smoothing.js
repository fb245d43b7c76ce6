// TensorBoard-compatible smoothing (pure; no DOM).
//
// The debiased exponential moving average TensorBoard's scalar dashboard draws for its
// "Smoothing" slider: last = last*w + (1-w)*v, shown as last / (1 - w^n) where n counts the
// finite values seen so far. Non-finite values pass through unchanged and do not advance the
// average; a series whose values are all equal is left as it is. Same inputs, same numbers
// as TensorBoard.

/** @param {ArrayLike<number|null>} values @param {number} weight in [0, 1) */
export function debiasedEma(values, weight) {
  const out = new Array(values.length);
  if (!(weight > 0)) {
    for (let i = 0; i < values.length; i++) out[i] = values[i];
    return out;
  }
  let constant = true;
  for (let i = 1; i < values.length; i++) {
    if (values[i] !== values[0]) { constant = false; break; }
  }
  let last = 0;
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (constant || value === null || !Number.isFinite(value)) {
      out[i] = value;
      continue;
    }
    last = last * weight + (1 - weight) * value;
    count += 1;
    const debias = weight === 1 ? 1 : 1 - Math.pow(weight, count);
    out[i] = last / debias;
  }
  return out;
}

/** The smoothed value of the last finite point, or null (the overview's "loss ≈"). */
export function lastSmoothed(values, weight) {
  const smoothed = debiasedEma(values, weight);
  for (let i = smoothed.length - 1; i >= 0; i--) {
    if (smoothed[i] !== null && Number.isFinite(smoothed[i])) return smoothed[i];
  }
  return null;
}
