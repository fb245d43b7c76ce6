// The job's log: the tail, refreshed when the job reports something (never more often than
// every 5 s), a level filter, keyword search through the logs search API, jump to the first
// error, and download.
import { html, useEffect, useMemo, useRef, useState } from "../html.js";
import { get, seg } from "../api.js";
import { useLiveEvents } from "../live.js";
import { throttled } from "../throttle.js";
import { ErrorText } from "./widgets.js";

const TAIL = 500;
const MAX_LINES = 10000;
const LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
const RANK = Object.fromEntries(LEVELS.map((l, i) => [l, i]));
const ERRORISH = /Traceback|\bError\b|Exception/;

function isError(line) {
  return RANK[line.level] >= RANK.ERROR || ERRORISH.test(line.message ?? "");
}

function useLogTail(id, active) {
  const [lines, setLines] = useState([]);
  const [error, setError] = useState(null);
  const load = async () => {
    try {
      const data = await get(`/training/${seg(id)}/logs?tail=${TAIL}`);
      setLines(data.logs ?? []);
      setError(null);
    } catch (err) { setError(err); }
  };
  const loadSoon = useMemo(() => throttled(load), [id]);
  const wasActive = useRef(active);
  useEffect(() => { loadSoon(); return () => loadSoon.cancel(); }, [id]);
  useEffect(() => { // the last lines of a run that just ended
    if (wasActive.current && !active) loadSoon();
    wasActive.current = active;
  }, [active]);
  useLiveEvents((type, event) => {
    if (event?.task_id === id && type !== "alert") loadSoon();
  }, [id]);
  return { lines, error };
}

async function download(id) {
  const data = await get(`/training/${seg(id)}/logs?tail=${MAX_LINES}`);
  const text = (data.logs ?? []).map((l) => l.message).join("\n") + "\n";
  const url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = `${id}.train.log`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function LogView({ id, status }) {
  const { lines, error } = useLogTail(id, status === "running" || status === "stopping");
  const [level, setLevel] = useState("DEBUG");
  const [keyword, setKeyword] = useState("");
  const [results, setResults] = useState(null);
  const [searchError, setSearchError] = useState(null);
  const [focus, setFocus] = useState(null);
  const pane = useRef(null);
  const follow = useRef(true);

  const shown = (results ?? lines).filter((l) => (RANK[l.level] ?? 1) >= RANK[level]);

  useEffect(() => {
    const el = pane.current;
    if (el && follow.current && results === null && focus === null) el.scrollTop = el.scrollHeight;
  }, [lines, results]);
  useEffect(() => {
    if (focus === null) return;
    const el = pane.current?.querySelector(`[data-line="${focus}"]`);
    if (el) el.scrollIntoView({ block: "center" });
  }, [focus, results]);

  const search = async (e) => {
    e.preventDefault();
    setSearchError(null);
    if (!keyword.trim()) { setResults(null); return; }
    try {
      const q = new URLSearchParams({ keyword: keyword.trim(), ignore_case: "true", limit: "1000" });
      const data = await get(`/training/${seg(id)}/logs/search?${q}`);
      setResults(data.results ?? []);
      setFocus(null);
    } catch (err) { setSearchError(err); }
  };
  const firstError = async () => {
    setSearchError(null);
    const here = lines.find(isError);
    if (here) { setResults(null); setFocus(here.line_number); return; }
    try {
      const q = new URLSearchParams({ keyword: "error", ignore_case: "true", limit: "1000" });
      const data = await get(`/training/${seg(id)}/logs/search?${q}`);
      const found = (data.results ?? []).filter(isError);
      setResults(found);
      setFocus(found.length ? found[0].line_number : null);
      if (!found.length) setSearchError("No error in the log.");
    } catch (err) { setSearchError(err); }
  };
  const onScroll = () => {
    const el = pane.current;
    follow.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  };

  return html`<section class="card log">
    <h2>Log</h2>
    <div class="log-tools">
      <label>Level <select value=${level} onChange=${(e) => setLevel(e.target.value)} aria-label="minimum level">
        ${LEVELS.map((l) => html`<option value=${l}>${l === "DEBUG" ? "all" : `${l}+`}</option>`)}</select></label>
      <form class="search" onSubmit=${search} role="search">
        <input type="search" placeholder="Search the whole log" value=${keyword} aria-label="search the log"
          onInput=${(e) => setKeyword(e.target.value)} />
        <button type="submit">Search</button>
        ${results !== null && html`<button type="button" class="secondary" onClick=${() => { setResults(null); setKeyword(""); setFocus(null); }}>Back to tail</button>`}
      </form>
      <button type="button" class="secondary" onClick=${firstError}>First error</button>
      <button type="button" class="secondary" onClick=${() => download(id).catch(setSearchError)}>Download</button>
    </div>
    <${ErrorText} error=${error || searchError} />
    ${results !== null && html`<p class="muted" data-role="search-count">${results.length} matching line(s)</p>`}
    <div class="log-lines" ref=${pane} onScroll=${onScroll} tabindex="0">
      ${shown.map((l) => html`<div class=${`ln lv-${l.level ?? "INFO"}${focus === l.line_number ? " focus" : ""}`}
        data-line=${l.line_number}><span class="no">${l.line_number ?? ""}</span><span class="msg">${l.message}</span></div>`)}
    </div>
  </section>`;
}
