// At most one call per interval, the last request never lost: how pages refetch after events
// without ever asking the daemon faster than every 5 s.

export const REFETCH_MS = 5000;

/** fn() now if the last call was long enough ago, else once at the end of the interval. */
export function throttled(fn, ms = REFETCH_MS) {
  let last = -Infinity;
  let timer = null;
  const call = () => { timer = null; last = Date.now(); fn(); };
  const request = () => {
    if (timer) return;
    const wait = last + ms - Date.now();
    if (wait <= 0) call(); else timer = setTimeout(call, wait);
  };
  request.cancel = () => { if (timer) clearTimeout(timer); timer = null; };
  return request;
}
