// The submit page's dataset picker: browse the folders under the daemon's data roots
// (GET /folders, with image, video and caption counts) or take a preprocessed dataset.
import { html, useEffect, useState } from "../html.js";
import { get } from "../api.js";
import { ErrorText } from "./widgets.js";

function plural(n, word) { return `${n} ${word}${n === 1 ? "" : "s"}`; }

/** "4 images · 4 captions", "2 videos+ · 1 folder" (+: more were left uncounted), or "empty". */
export function countsText(c) {
  const more = c.capped ? "+" : "";
  const parts = [];
  if (c.images) parts.push(plural(c.images, "image") + more);
  if (c.videos) parts.push(plural(c.videos, "video") + more);
  if (c.captions) parts.push(plural(c.captions, "caption") + more);
  if (c.subfolders) parts.push(plural(c.subfolders, "folder") + more);
  return parts.length ? parts.join(" · ") : c.capped ? "many other files" : "empty";
}

function Roots({ onPick }) {
  const [listing, setListing] = useState(null);
  const [error, setError] = useState(null);
  const open = (path) => {
    setError(null);
    get(path ? `/folders?path=${encodeURIComponent(path)}` : "/folders").then(setListing, setError);
  };
  useEffect(() => open(null), []);
  if (!listing) return html`<${ErrorText} error=${error} />${!error && html`<p class="muted">Loading…</p>`}`;
  const up = listing.parent ?? null;
  return html`<section data-role="roots">
    <div class="picker-path">
      <button type="button" class="secondary small" disabled=${listing.path === null}
        onClick=${() => open(up)} aria-label="Up one folder">↑ Up</button>
      <code>${listing.path ?? "Data roots"}</code>
      ${listing.path && html`<button type="button" class="small" data-role="use-here"
        onClick=${() => onPick(listing.path)}>Use this folder</button>`}
    </div>
    <${ErrorText} error=${error} />
    <ul class="picker-list">
      ${listing.folders.map((f) => html`<li key=${f.path} data-folder=${f.name}>
        <button type="button" class="link" onClick=${() => open(f.path)} title=${f.path}>${f.name}/</button>
        <span class="muted">${countsText(f.counts)}</span>
        <button type="button" class="secondary small" onClick=${() => onPick(f.path)}>Use</button>
      </li>`)}
      ${!listing.folders.length && html`<li class="muted">No folders here.</li>`}
    </ul>
    ${listing.truncated && html`<p class="hint">Only the first ${listing.max_folders} folders are shown.</p>`}
  </section>`;
}

function Preprocessed({ datasets, onPick }) {
  return html`<section data-role="preprocessed">
    <h3>Preprocessed datasets</h3>
    <ul class="picker-list">
      ${datasets.map((d) => html`<li key=${d.path ?? d.name} data-dataset=${d.name}>
        <span class="name">${d.name}</span>
        <span class="muted">${countsText({ images: d.images ?? 0, videos: d.clips ?? 0 })}</span>
        <button type="button" class="secondary small" onClick=${() => onPick(d.path)}>Use</button>
      </li>`)}
      ${!datasets.length && html`<li class="muted">None yet: upload clips on the Data page.</li>`}
    </ul>
  </section>`;
}

export function FolderPicker({ datasets, onPick, onClose }) {
  return html`<div class="folder-picker card" role="dialog" aria-label="Choose a dataset folder">
    <div class="picker-head"><h3>Choose a dataset folder</h3>
      <button type="button" class="secondary small" onClick=${onClose}>Close</button></div>
    <${Roots} onPick=${onPick} />
    <${Preprocessed} datasets=${datasets} onPick=${onPick} />
  </div>`;
}
