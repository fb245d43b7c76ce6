// The dashboard's shell: session, navigation, the live-stream banner, and the pages.
import { html, render, useEffect, useState } from "./html.js";
import { ApiError, del, get, onUnauthorized, setCsrfToken } from "./api.js";
import { restartLive, startLive } from "./live.js";
import { useRoute } from "./router.js";
import { LiveBanner } from "./ui/banner.js";
import { NotifyButton, startNotifications } from "./ui/notify.js";
import { LoginPage } from "./pages/login.js";
import { OverviewPage } from "./pages/overview.js";
import { JobPage } from "./pages/job.js";
import { ComparePage } from "./pages/compare.js";
import { SubmitPage } from "./pages/submit.js";
import { DataPage, ModelsPage } from "./pages/data.js";
import { KeysPage } from "./pages/keys.js";

const NAV = [
  ["overview", "#/", "Overview"],
  ["submit", "#/submit", "Submit"],
  ["compare", "#/compare", "Compare"],
  ["data", "#/data", "Data"],
  ["models", "#/models", "Models"],
  ["keys", "#/keys", "Keys", "admin"],
];

async function loadSession() {
  try {
    return await get("/auth/session", { quiet401: true });
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return null;
    throw err;
  }
}

function Page({ route, session }) {
  const [name, args, query] = [route.name, route.args, route.query];
  if (name === "job" && args[0]) return html`<${JobPage} id=${args[0]} session=${session} />`;
  if (name === "compare") return html`<${ComparePage} ids=${query.get("ids") || ""} />`;
  if (name === "submit") return html`<${SubmitPage} from=${query.get("from")} />`;
  if (name === "data") return html`<${DataPage} />`;
  if (name === "models") return html`<${ModelsPage} />`;
  if (name === "keys") return html`<${KeysPage} session=${session} />`;
  return html`<${OverviewPage} session=${session} />`;
}

function Shell({ session, onLogout }) {
  const route = useRoute();
  const admin = session.permissions?.includes("admin");
  return html`
    <header class="top">
      <a class="brand" href="#/">dpd</a>
      <nav>
        ${NAV.filter((n) => !n[3] || admin).map(([key, href, label]) => html`
          <a href=${href} class=${route.name === key ? "on" : ""}>${label}</a>`)}
      </nav>
      <div class="who">
        <${NotifyButton} />
        ${session.auth_enabled !== false && html`
          <span class="user">${session.user ?? ""}</span>
          <button class="link" onClick=${onLogout}>Log out</button>`}
      </div>
    </header>
    <${LiveBanner} />
    <main><${Page} route=${route} session=${session} /></main>`;
}

function App() {
  const [session, setSession] = useState(undefined);
  const [error, setError] = useState(null);
  const adopt = (s) => {
    setCsrfToken(s?.csrf_token);
    setSession(s);
    if (s) { startLive(); startNotifications(); }
  };
  useEffect(() => {
    loadSession().then(adopt, (e) => setError(e.message));
    return onUnauthorized(() => { setCsrfToken(null); setSession(null); });
  }, []);
  if (error) return html`<p class="error">The daemon did not answer: ${error}</p>`;
  if (session === undefined) return html`<p class="boot">Connecting…</p>`;
  if (session === null) {
    return html`<${LoginPage} onLogin=${(s) => { adopt(s); restartLive(); }} />`;
  }
  const logout = async () => {
    try { await del("/auth/session"); } catch { /* the session is gone either way */ }
    adopt(null);
    restartLive();
  };
  return html`<${Shell} session=${session} onLogout=${logout} />`;
}

render(html`<${App} />`, document.getElementById("app"));
