// The SharedWorker every dashboard tab of this browser connects to: one SSE connection for all.
import { createLiveSource } from "./live-source.js";

const ports = new Set();
const live = createLiveSource((message) => {
  for (const port of ports) port.postMessage(message);
});

self.onconnect = (connection) => {
  const port = connection.ports[0];
  ports.add(port);
  port.onmessage = (m) => {
    if (m.data === "bye") {
      ports.delete(port);
      if (ports.size === 0) live.stop();
    } else if (m.data === "restart") {
      live.restart();
    }
  };
  port.start();
  port.postMessage(live.state());
  live.start();
};
