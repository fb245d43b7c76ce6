// One EventSource on the daemon's multiplexed stream, and what it tells its listeners.
//
// Runs inside the SharedWorker (one per browser, shared by every tab) or, where a browser has
// no SharedWorker, inside the page. EventSource reconnects by itself after a network drop and
// sends Last-Event-ID; when it gives up (an HTTP error answer), we reconnect with the last id
// as `last_event_id`, with a growing delay. Messages to listeners:
//   {kind:"state", connected, since, lastEventAt}   connection changes
//   {kind:"event", type, event}                     one daemon event ({type, task_id, data…})

export const STREAM = "/api/v1/events/stream";
export const EVENT_TYPES = [
  "status", "progress", "metrics", "alert", "gpu", "preprocess", "download", "log", "resync",
  "priority",
];

export function createLiveSource(send) {
  let source = null;
  let lastId = null;
  let retryMs = 1000;
  let timer = null;
  const state = { kind: "state", connected: false, since: Date.now(), lastEventAt: null };

  function setConnected(connected) {
    if (state.connected === connected) return;
    state.connected = connected;
    state.since = Date.now();
    send({ ...state });
  }

  function onMessage(type, message) {
    if (message.lastEventId) lastId = message.lastEventId;
    state.lastEventAt = Date.now();
    let event = null;
    try { event = JSON.parse(message.data); } catch { return; }
    send({ kind: "event", type, event });
  }

  function open() {
    timer = null;
    const url = lastId ? `${STREAM}?last_event_id=${encodeURIComponent(lastId)}` : STREAM;
    source = new EventSource(url, { withCredentials: true });
    source.onopen = () => { retryMs = 1000; setConnected(true); };
    source.onerror = () => {
      setConnected(false);
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        timer = setTimeout(open, retryMs);
        retryMs = Math.min(retryMs * 2, 15000);
      }
    };
    source.onmessage = (m) => onMessage(m.type || "message", m);
    for (const type of EVENT_TYPES) source.addEventListener(type, (m) => onMessage(type, m));
  }

  return {
    start() { if (!source && !timer) open(); },
    state: () => ({ ...state }),
    /** After a login or logout the stream must be opened again with the new cookie. */
    restart() {
      if (source) source.close();
      source = null;
      if (timer) clearTimeout(timer);
      setConnected(false);
      open();
    },
    stop() {
      if (source) source.close();
      if (timer) clearTimeout(timer);
      source = null; timer = null;
    },
  };
}
