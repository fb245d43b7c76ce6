// The submit editor's YAML (pure): a job document written as YAML, which format a typed
// document is in, and the line a server field error ("config.optimizer.lr") points at.

// Words YAML reads as booleans or null (YAML 1.1's too): such strings are quoted.
const RESERVED = new Set(["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"]);
// Plain when it starts with a letter, "_" or "/" and holds no ": ", "#", quotes or spaces:
// never a number, never a flow or block indicator.
const PLAIN = /^[A-Za-z_/][A-Za-z0-9_./@+=-]*$/;

function scalar(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "boolean") return value ? "true" : "false";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "null";
  const text = String(value);
  if (PLAIN.test(text) && !RESERVED.has(text.toLowerCase())) return text;
  return JSON.stringify(text); // a JSON string is a valid YAML double-quoted scalar
}

const isCollection = (v) => v !== null && typeof v === "object";
const isEmpty = (v) => (Array.isArray(v) ? v.length === 0 : Object.keys(v).length === 0);
const inline = (v) => (isCollection(v) ? (Array.isArray(v) ? "[]" : "{}") : scalar(v));
const key = (k) => (PLAIN.test(k) && !RESERVED.has(k.toLowerCase()) ? k : JSON.stringify(k));

function block(value, pad) {
  const out = [];
  if (Array.isArray(value)) {
    for (const item of value) {
      if (isCollection(item) && !isEmpty(item)) {
        const inner = block(item, `${pad}  `);
        inner[0] = `${pad}- ${inner[0].slice(pad.length + 2)}`;
        out.push(...inner);
      } else out.push(`${pad}- ${inline(item)}`);
    }
    return out;
  }
  for (const [k, v] of Object.entries(value)) {
    if (isCollection(v) && !isEmpty(v)) out.push(`${pad}${key(k)}:`, ...block(v, `${pad}  `));
    else out.push(`${pad}${key(k)}: ${inline(v)}`);
  }
  return out;
}

/** ``value`` (plain JSON data) as a block-style YAML document that load_yaml reads back equal. */
export function toYaml(value) {
  if (!isCollection(value) || isEmpty(value)) return `${inline(value)}\n`;
  return `${block(value, "").join("\n")}\n`;
}

/** "json" for a document that starts with "{", else "yaml": how the editor sends it. */
export function documentFormat(text) {
  return (text ?? "").trimStart().startsWith("{") ? "json" : "yaml";
}

const escape = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The 1-based line of ``text`` holding the key a field path ends in, its parents looked up
 * in order first; the deepest key found when the rest is absent; null when none is. */
export function fieldLine(text, field) {
  const keys = (field ?? "").replace(/\[\d+\]/g, "").split(".").filter(Boolean);
  const lines = (text ?? "").split("\n");
  let at = -1;
  let from = 0;
  for (const k of keys) {
    const pattern = new RegExp(`^\\s*(?:-\\s+)?["']?${escape(k)}["']?\\s*:`);
    const found = lines.findIndex((line, i) => i >= from && pattern.test(line));
    if (found < 0) break;
    at = found;
    from = found + 1;
  }
  return at < 0 ? null : at + 1;
}

/** The character offsets [start, end) of 1-based ``line`` in ``text``, to select it. */
export function lineRange(text, line) {
  const lines = (text ?? "").split("\n");
  let start = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i += 1) start += lines[i].length + 1;
  return [start, start + (lines[line - 1] ?? "").length];
}
