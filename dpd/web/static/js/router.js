// Hash routes (`#/job/<id>`, `#/compare?ids=a,b`): the server serves one page for all of them.
import { useEffect, useState } from "./html.js";

export function parseHash(hash) {
  const raw = (hash || "").replace(/^#\/?/, "");
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "overview", args: parts.slice(1), query: new URLSearchParams(search) };
}

export function useRoute() {
  const [route, setRoute] = useState(parseHash(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseHash(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

export function go(hash) { location.hash = hash; }
export const jobLink = (id) => `#/job/${encodeURIComponent(id)}`;
