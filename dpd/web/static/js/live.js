// The page's side of the live stream: subscribe to daemon events and to the connection state.
//
// Prefers the SharedWorker (one connection per browser); falls back to a stream of its own
// where SharedWorker does not exist (some mobile browsers). Rendering code never talks to
// EventSource directly.
import { createLiveSource } from "./live-source.js";
import { useEffect, useState } from "./html.js";

const eventListeners = new Set();
const stateListeners = new Set();
let current = { kind: "state", connected: false, since: Date.now(), lastEventAt: null };
let control = null;

function dispatch(message) {
  if (message.kind === "state") {
    current = message;
    stateListeners.forEach((l) => l(message));
  } else if (message.kind === "event") {
    eventListeners.forEach((l) => l(message.type, message.event));
  }
}

export function startLive() {
  if (control) return;
  if (typeof SharedWorker === "function") {
    try {
      const worker = new SharedWorker("/assets/js/live-worker.js", { type: "module", name: "dpd-live" });
      worker.port.onmessage = (m) => dispatch(m.data);
      worker.port.start();
      addEventListener("pagehide", () => worker.port.postMessage("bye"));
      control = { restart: () => worker.port.postMessage("restart"), mode: "shared-worker" };
      document.documentElement.dataset.live = control.mode;
      return;
    } catch {
      // fall through to a stream of this tab's own
    }
  }
  const source = createLiveSource(dispatch);
  source.start();
  control = { restart: () => source.restart(), mode: "tab" };
  document.documentElement.dataset.live = control.mode;
}

export function restartLive() { if (control) control.restart(); }
export function liveMode() { return control?.mode ?? null; }

/** Calls listener(type, event) for each daemon event; returns the unsubscribe function. */
export function onEvent(listener) {
  eventListeners.add(listener);
  return () => eventListeners.delete(listener);
}

export function useLiveEvents(listener, deps) {
  useEffect(() => onEvent(listener), deps);
}

export function useLiveState() {
  const [state, setState] = useState(current);
  useEffect(() => {
    stateListeners.add(setState);
    setState(current);
    return () => stateListeners.delete(setState);
  }, []);
  return state;
}
