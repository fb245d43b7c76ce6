"""Dashboard figures: shipped JS+CSS size (target <= 100 KB gzipped), the job page's first
chart with 100,000 step-loss points in headless Chromium (target <= 300 ms) and what the
job page's reads of job files cost, each beside a baseline measured in the same run:
  - assets: every .js/.mjs/.css under dpd/web/static gzipped (-9) one by one, against the
    vendored libraries alone (Preact, hooks, htm, uPlot and its CSS);
  - chart: a real ``dpd serve`` with the stand-in trainer makes a job of N steps (one
    step-loss point each); the job page is opened in a fresh headless Chromium page, N times
    --repeat, and the page's own performance marks give (a) navigation start -> step-loss
    chart drawn, (b) series in hand -> chart drawn (the render alone: thinning, smoothing,
    uPlot). Baseline: raw uPlot drawing the same N points (fetched unthinned from /series) in
    a page of the same origin, same browser, from ``new uPlot`` to its first draw hook.
Both chart figures stop at uPlot's draw hook (canvas commands issued), not at rasterisation.
  - job files: ``GET /series`` (step loss, 2,000 points), ``/markers`` and ``/alerts`` timed
    over HTTP on the first request after the daemon starts (the job cache is built) and on
    later ones (median), against the plain scan of the files each request made before the
    cache (``metric_records`` + ``thin``, ``scanned_markers``, ``scanned_alerts``), run in
    this process on the same files, beside building the cache there. The job page is then
    opened on a daemon started afresh: the first open builds the cache, the later ones find it.

Usage: python3 bench/bench_dashboard.py [--points N] [--repeat N] [--quick]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpd.http.jobcache import JobCache
from dpd.http.routes.job_dashboard import metric_records, scanned_alerts, scanned_markers
from dpd.jobs import series
from tests.jobfiles import job_document
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, start_daemon, submit_job, wait_status

STATIC = Path(__file__).resolve().parent.parent / "dpd" / "web" / "static"
ASSETS_TARGET_KB = 100.0
CHART_TARGET_MS = 300.0
VENDOR_CODE = ("preact.mjs", "hooks.mjs", "htm.mjs", "uPlot.iife.min.js", "uPlot.min.css")


def gz_kb(path: Path) -> float:
    return len(gzip.compress(path.read_bytes(), 9)) / 1024


def asset_figures() -> None:
    shipped = [p for p in STATIC.rglob("*") if p.suffix in (".js", ".mjs", ".css")]
    total = sum(gz_kb(p) for p in shipped)
    raw = sum(p.stat().st_size for p in shipped) / 1024
    vendor = sum(gz_kb(STATIC / "vendor" / name) for name in VENDOR_CODE)
    print(
        f"assets: {len(shipped)} JS/CSS files, {raw:.1f} KB raw, {total:.1f} KB gzipped "
        f"(target <= {ASSETS_TARGET_KB:.0f} KB)"
    )
    print(
        f"  baseline: vendored libraries alone {vendor:.1f} KB gzipped; "
        f"dashboard's own code {total - vendor:.1f} KB"
    )


PAGE_TIMES = """() => {
  const drawn = performance.getEntriesByName('dpd:chart-drawn:step_loss')[0];
  const loaded = performance.getEntriesByName('dpd:series-loaded')[0];
  if (!drawn || !loaded) return null;
  return {total: drawn.startTime, render: drawn.startTime - loaded.startTime,
          points: drawn.detail.points};
}"""

RAW_UPLOT = """async (url) => {
  const answer = await (await fetch(url)).json();
  const points = answer.data.points;
  const x = points.map((p) => p.step), y = points.map((p) => p.value);
  const box = document.createElement('div');
  document.body.append(box);
  return await new Promise((resolve) => {
    const t0 = performance.now();
    let done = false;
    new uPlot({width: 1200, height: 180, scales: {x: {time: false}},
      series: [{}, {stroke: '#58a6ff', width: 1}],
      hooks: {draw: [() => {
        if (!done) { done = true; resolve({ms: performance.now() - t0, points: x.length}); }
      }]}},
      [x, y], box);
  });
}"""


def page_figure(browser: Any, url: str) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url)
    deadline = time.monotonic() + 60
    while (found := page.evaluate(PAGE_TIMES)) is None:
        if time.monotonic() > deadline:
            raise SystemExit("the job page drew no step-loss chart within 60 s")
        page.wait_for_timeout(20)
    context.close()
    return found  # type: ignore[no-any-return]


def raw_figure(browser: Any, base: str, task_id: str, points: int) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/assets/app.css")  # a page of the same origin, no app code in it
    page.add_script_tag(url=f"{base}/assets/vendor/uPlot.iife.min.js")
    series = f"/api/v1/training/{task_id}/series?kind=step_loss&max_points={points}"
    found = page.evaluate(RAW_UPLOT, series)
    context.close()
    return found  # type: ignore[no-any-return]


def timed_ms(action: Any) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def http_ms(url: str) -> float:
    def get() -> None:
        with urllib.request.urlopen(url, timeout=60) as answer:
            answer.read()

    return timed_ms(get)


def file_read_figures(daemon: Any, repeat: int) -> None:
    """The job page's reads of job files over HTTP, cache cold then warm, beside the plain
    scans they replaced."""
    job_dir = daemon.spool / "jobs" / "bench"
    base = f"{daemon.url}/api/v1/training/bench"
    reads = {
        "/series": (
            "/series?kind=step_loss&max_points=2000",
            lambda: series.thin(metric_records(job_dir, "step_loss"), 2000),
            lambda cache: cache.series(job_dir, "step_loss", 2000),
        ),
        "/markers": (
            "/markers",
            lambda: scanned_markers(job_dir),
            lambda cache: cache.marker_facts(job_dir),
        ),
        "/alerts": (  # after /markers, which read events.jsonl
            "/alerts",
            lambda: scanned_alerts(job_dir),
            lambda cache: cache.alert_events(job_dir),
        ),
    }
    sizes = ", ".join(
        f"{name} {(job_dir / name).stat().st_size / 2**20:.1f} MiB"
        for name in ("metrics.jsonl", "events.jsonl")
    )
    print(f"job files ({sizes}):")
    for name, (path, scan, cached) in reads.items():
        cold = http_ms(base + path)
        warm = statistics.median(http_ms(base + path) for _ in range(max(3, repeat)))
        baseline = statistics.median(timed_ms(scan) for _ in range(repeat))
        building = statistics.median(
            timed_ms(lambda build=cached: build(JobCache())) for _ in range(repeat)
        )
        print(
            f"  GET {name}: first request {cold:.0f} ms (builds the cache), later ones "
            f"{warm:.1f} ms (median)"
        )
        print(
            f"    in process, no HTTP (median of {repeat}): the plain scan it replaced "
            f"{baseline:.0f} ms; building the cache {building:.0f} ms"
        )


def chart_figures(points: int, repeat: int) -> None:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="dpd-bench-dashboard-"))
    daemon = start_daemon(root, auth=False, step_seconds="0", DPD_SIM_STEPS_PER_EPOCH=str(points))
    try:
        started = time.monotonic()
        submit_job(daemon, "bench", config={**job_document(daemon.data)["config"], "epochs": 1})
        wait_status(daemon, "bench", "completed", timeout=1800)
        print(
            f"chart: a job of {points} steps made by the stand-in trainer in "
            f"{time.monotonic() - started:.1f} s"
        )
        daemon.stop()
        daemon.start()  # the job cache starts empty
        file_read_figures(daemon, repeat)
        daemon.stop()
        daemon.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            url = f"{daemon.url}/#/job/bench"
            page_runs = [page_figure(browser, url) for _ in range(repeat + 1)]
            raw_runs = [raw_figure(browser, daemon.url, "bench", points) for _ in range(repeat)]
            browser.close()
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    first, page_runs = page_runs[0], page_runs[1:]
    total = statistics.median(r["total"] for r in page_runs)
    render = statistics.median(r["render"] for r in page_runs)
    raw = statistics.median(r["ms"] for r in raw_runs)
    drawn = int(page_runs[0]["points"])
    print(
        f"  job page, navigation -> step-loss chart drawn: first open {first['total']:.0f} ms "
        f"(the daemon's job cache is built), later opens {total:.0f} ms (median of {repeat}; "
        "includes loading the page, the API calls and the server's thinning)"
    )
    print(
        f"  job page, series in hand -> chart drawn: {render:.1f} ms "
        f"({points} points thinned to {drawn} buckets with a min/max band; "
        f"target <= {CHART_TARGET_MS:.0f} ms)"
    )
    print(
        f"  baseline: raw uPlot drawing all {int(raw_runs[0]['points'])} points: {raw:.1f} ms "
        f"(median of {repeat}, same browser)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5,000 points, one run each")
    args = parser.parse_args()
    if args.quick:
        args.points, args.repeat = 5_000, 1
    asset_figures()
    if not Path(CHROMIUM).exists():
        print(f"chart: skipped, no Chromium at {CHROMIUM}")
        return
    chart_figures(args.points, args.repeat)


if __name__ == "__main__":
    main()
