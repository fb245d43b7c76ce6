// The tab title (pure): progress first, so a pinned tab says how far the job is.

/** `[42%] cats-lora · dpd`; without a percentage `cats-lora · dpd`; without a name `dpd`. */
export function pageTitle(name, percent) {
  if (!name) return "dpd";
  if (percent === null || percent === undefined || !Number.isFinite(percent)) {
    return `${name} · dpd`;
  }
  const shown = Math.max(0, Math.min(100, Math.floor(percent)));
  return `[${shown}%] ${name} · dpd`;
}
