// Login: an API key becomes an HttpOnly session cookie; the key itself is not kept.
import { html, useState } from "../html.js";
import { post } from "../api.js";

export function LoginPage({ onLogin }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      onLogin(await post("/auth/session", { api_key: key.trim() }, { quiet401: true }));
    } catch (err) {
      setError(err.status === 401 ? "That key is not valid (or has expired or been revoked)." : err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login">
    <form class="card" onSubmit=${submit}>
      <h1>dpd</h1>
      <label for="api-key">API key</label>
      <input id="api-key" name="api_key" type="password" autocomplete="current-password"
        value=${key} onInput=${(e) => setKey(e.target.value)} required autofocus />
      ${error && html`<p class="error field-error" role="alert">${error}</p>`}
      <button type="submit" disabled=${busy}>Log in</button>
      <p class="hint">On the daemon's machine, <code>dpd open</code> logs you in without a key.</p>
    </form>
  </main>`;
}
