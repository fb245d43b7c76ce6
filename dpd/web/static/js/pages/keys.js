// Keys (admin): list, create (the secret is shown once), revoke.
import { html, useEffect, useState } from "../html.js";
import { del, get, post, seg } from "../api.js";
import { when } from "../pure/format.js";
import { ErrorText } from "../ui/widgets.js";

const PERMISSIONS = ["training", "preprocessing", "model_download", "admin"];

export function KeysPage({ session }) {
  const [keys, setKeys] = useState(null);
  const [error, setError] = useState(null);
  const [created, setCreated] = useState(null);
  const [user, setUser] = useState("");
  const [perms, setPerms] = useState(["training"]);
  const load = () => get("/auth/keys").then((d) => setKeys(Array.isArray(d) ? d : (d.keys ?? [])), setError);
  const admin = session.permissions?.includes("admin");
  useEffect(() => { document.title = "Keys · dpd"; if (admin) load(); }, [admin]);
  if (!admin) return html`<p class="error">Keys are for admins only.</p>`;
  const create = async (e) => {
    e.preventDefault();
    setError(null);
    try {
      setCreated(await post("/auth/generate-key", { user_id: user, permissions: perms }));
      setUser("");
      load();
    } catch (err) { setError(err); }
  };
  const revoke = async (key) => {
    if (!confirm(`Revoke key ${key.key_id ?? key.id} of ${key.user ?? key.user_id}? Its sessions end at once.`)) return;
    try { await del(`/auth/keys/${seg(key.key_id ?? key.id)}`); load(); } catch (err) { setError(err); }
  };
  const toggle = (p) => setPerms(perms.includes(p) ? perms.filter((x) => x !== p) : [...perms, p]);
  return html`<div class="keys">
    <h1>API keys</h1>
    <${ErrorText} error=${error} />
    ${created && html`<div class="card created" data-role="new-key">
      <p>The new key for <strong>${created.user_id}</strong>. It is shown <strong>only now</strong>: copy it.</p>
      <pre class="code secret">${created.api_key}</pre>
      <button class="secondary" onClick=${() => setCreated(null)}>I have copied it</button></div>`}
    <form class="card form" onSubmit=${create}>
      <h2>Create a key</h2>
      <div class="field"><label for="k-user">User</label><input id="k-user" value=${user} onInput=${(e) => setUser(e.target.value)} required /></div>
      <fieldset><legend>Permissions</legend>${PERMISSIONS.map((p) => html`<label class="inline">
        <input type="checkbox" checked=${perms.includes(p)} onChange=${() => toggle(p)} /> ${p}</label>`)}</fieldset>
      <div class="controls"><button type="submit">Create key</button></div>
    </form>
    <section class="card"><h2>Keys</h2>
      ${keys && html`<div class="table-wrap"><table class="stacked"><thead><tr><th>id</th><th>user</th><th>permissions</th><th>created</th><th>expires</th><th></th></tr></thead>
        <tbody>${keys.map((k) => html`<tr data-key=${k.key_id ?? k.id}><td data-label="id"><code>${k.key_id ?? k.id}</code></td><td data-label="user">${k.user ?? k.user_id}</td>
          <td data-label="permissions">${(k.permissions ?? []).join(", ")}</td><td data-label="created">${when(k.created_at)}</td><td data-label="expires">${when(k.expires_at)}</td>
          <td>${k.revoked ? html`<span class="pill s-failed">revoked</span>`
            : html`<button class="small danger" onClick=${() => revoke(k)}>Revoke</button>`}</td></tr>`)}</tbody></table></div>`}
    </section>
  </div>`;
}
