// "Reconnecting… data N s old": shown whenever the live stream is down, so a page never
// looks current when it is not.
import { html, useEffect, useState } from "../html.js";
import { useLiveState } from "../live.js";

export function LiveBanner() {
  const state = useLiveState();
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    if (state.connected) return undefined;
    const timer = setInterval(() => setNow(Date.now()), 1000);
    return () => clearInterval(timer);
  }, [state.connected]);
  if (state.connected) return null;
  const since = state.lastEventAt && state.lastEventAt < state.since ? state.lastEventAt : state.since;
  const age = Math.max(0, Math.round((now - since) / 1000));
  return html`<div class="banner" role="status" data-live="down">
    Reconnecting to the daemon… data ${age} s old</div>`;
}
