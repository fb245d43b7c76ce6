// Which configuration keys differ between jobs (pure), for the compare page.

/** Flatten nested objects to dotted keys: {a:{b:1}} -> {"a.b": 1}; arrays stay values. */
export function flatten(value, prefix = "", out = {}) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 0 && prefix) out[prefix] = {};
    for (const key of keys) flatten(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else if (prefix) {
    out[prefix] = value;
  }
  return out;
}

/**
 * Keys whose values differ between the configs (missing counts as a value), sorted.
 * @param {object[]} configs
 * @param {(key:string)=>boolean} [ignore] keys every job has different by nature (ids, paths)
 * @returns {{key:string, values:any[]}[]}
 */
export function configDiff(configs, ignore = () => false) {
  const flat = configs.map((c) => flatten(c ?? {}));
  const keys = new Set(flat.flatMap((f) => Object.keys(f)));
  const rows = [];
  for (const key of [...keys].sort()) {
    if (ignore(key)) continue;
    const values = flat.map((f) => (key in f ? f[key] : undefined));
    const shown = values.map((v) => JSON.stringify(v));
    if (shown.some((s) => s !== shown[0])) rows.push({ key, values });
  }
  return rows;
}
