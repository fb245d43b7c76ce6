// The dashboard's only way to the daemon: the public REST API under /api/v1.
//
// Answers are the envelope {code, message, data, timestamp}; a non-2xx answer becomes an
// ApiError carrying the envelope's message and data (field errors live in data.errors).
// Mutations made with the session cookie carry the CSRF token the session handed out.

export const BASE = "/api/v1";

let csrfToken = null;
const unauthorizedListeners = new Set();

export function setCsrfToken(token) { csrfToken = token || null; }
export function onUnauthorized(listener) {
  unauthorizedListeners.add(listener);
  return () => unauthorizedListeners.delete(listener);
}

export class ApiError extends Error {
  constructor(status, message, data) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.data = data ?? null;
  }
  /** Field errors of a 422: {"config.epochs": "must be >= 1", ...} */
  get fields() {
    const out = {};
    for (const e of this.data?.errors ?? []) out[e.field ?? ""] = e.message;
    return out;
  }
}

function headersFor(method, body, contentType) {
  const headers = { Accept: "application/json" };
  if (body !== undefined && !(body instanceof FormData)) headers["Content-Type"] = contentType;
  if (method !== "GET" && method !== "HEAD" && csrfToken) headers["X-CSRF-Token"] = csrfToken;
  return headers;
}

export async function api(method, path, body, { contentType = "application/json", quiet401 = false } = {}) {
  const payload = body === undefined || body instanceof FormData || typeof body === "string"
    ? body : JSON.stringify(body);
  const response = await fetch(BASE + path, {
    method, body: payload, credentials: "same-origin", headers: headersFor(method, body, contentType),
  });
  let envelope = null;
  try { envelope = await response.json(); } catch { envelope = null; }
  if (!response.ok) {
    if (response.status === 401 && !quiet401) unauthorizedListeners.forEach((l) => l());
    throw new ApiError(response.status, envelope?.message ?? response.statusText, envelope?.data);
  }
  return envelope ? envelope.data : null;
}

export const get = (path, opts) => api("GET", path, undefined, opts);
export const post = (path, body, opts) => api("POST", path, body ?? {}, opts);
export const del = (path, opts) => api("DELETE", path, undefined, opts);

/** A path segment, escaped (task ids are user-chosen). */
export const seg = (s) => encodeURIComponent(s);

/** Multipart upload with progress (fetch cannot report upload progress; XHR can). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", BASE + path);
    if (csrfToken) xhr.setRequestHeader("X-CSRF-Token", csrfToken);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let envelope = null;
      try { envelope = JSON.parse(xhr.responseText); } catch { envelope = null; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(envelope?.data ?? null);
      else reject(new ApiError(xhr.status, envelope?.message ?? xhr.statusText, envelope?.data));
    };
    xhr.onerror = () => reject(new ApiError(0, "network error during upload"));
    xhr.send(form);
  });
}
