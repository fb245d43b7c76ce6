"""Log routes (api.md §5.1, §5.3): the last lines of train.log and a keyword search.

Both read the file in a worker thread and never load it whole (``dpd.logs``), with the
supervisor's ``LineCounter``: what its followers counted, and each log's line index. Reading
needs any valid key; each call counts against the ``logs`` rate class.

``tail`` defaults to 100 lines (at most 10,000); ``since`` keeps lines at or after a time;
``level`` is a minimum severity. A search returns the first ``limit`` matches in file order
(default 100, at most 10,000) and counts them all; ``ignore_case=true`` folds ASCII case.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from dpd.errors import BadRequest
from dpd.http.common import envelope_response, query_bool, query_choice, query_int
from dpd.http.routing import Route, add_routes
from dpd.logs.entries import LEVELS, TYPES, make_filter, parse_time
from dpd.logs.reader import read_tail
from dpd.logs.search import SearchPage, SearchQuery, search_log
from dpd.services import SERVICES, Services
from dpd.spool import layout as names

PREFIX = "/api/v1/training"
DEFAULT_LINES: Final = 100
MAX_LINES: Final = 10_000


def setup(app: web.Application) -> None:
    add_routes(app, ROUTES)


def _log_file(request: web.Request) -> tuple[Services, str, Path]:
    """404 for an unknown task (a task without output yet has an empty log)."""
    services = request.app[SERVICES]
    task_id = request.match_info["task_id"]
    services.store.get(task_id)
    return services, task_id, services.layout.job_dir(task_id) / names.TRAIN_LOG


async def get_logs(request: web.Request) -> web.Response:
    keep = make_filter(query_choice(request, "level", LEVELS), query_choice(request, "type", TYPES))
    tail = query_int(request, "tail", DEFAULT_LINES, minimum=1, maximum=MAX_LINES)
    since = parse_time("since", request.query.get("since"))
    services, task_id, path = _log_file(request)
    # taken before the file is read: every line of events up to last_seq is in the tail's
    # file, so a client that streams from last_seq misses nothing (it may see a line twice)
    last_seq = services.store.last_event_seq(task_id)
    page = await asyncio.to_thread(
        read_tail, path, tail or DEFAULT_LINES, keep, since, services.supervisor.line_counts
    )
    return envelope_response(
        {
            "task_id": task_id,
            "log_file": str(path),
            "total_lines": page.total_lines,
            "returned_lines": len(page.entries),
            "last_seq": last_seq,
            "logs": page.entries,
        }
    )


async def search_logs(request: web.Request) -> web.Response:
    query, echoed = search_query(request)
    services, task_id, path = _log_file(request)
    page = await asyncio.to_thread(search_log, path, query, services.supervisor.line_counts)
    return envelope_response(search_data(task_id, query, echoed, page))


def search_query(request: web.Request) -> tuple[SearchQuery, dict[str, str]]:
    """``/logs/search``'s query (400 for a bad one) and the parameters it echoes."""
    level = query_choice(request, "level", LEVELS)
    type_ = query_choice(request, "type", TYPES)
    limit = query_int(request, "limit", DEFAULT_LINES, minimum=1, maximum=MAX_LINES)
    ignore_case = query_bool(request, "ignore_case", False)
    start = parse_time("start_time", request.query.get("start_time"))
    end = parse_time("end_time", request.query.get("end_time"))
    keyword = request.query.get("keyword", "")
    if keyword == "":
        raise BadRequest("query parameter 'keyword' is required")
    if "\n" in keyword or "\r" in keyword:
        raise BadRequest("query parameter 'keyword' must be on one line")
    query = SearchQuery(
        keyword, make_filter(level, type_), start, end, limit or DEFAULT_LINES, ignore_case
    )
    echoed = {
        name: request.query[name]
        for name in ("keyword", "type", "level", "start_time", "end_time")
        if request.query.get(name)
    }
    return query, echoed


def search_data(
    task_id: str, query: SearchQuery, echoed: dict[str, str], page: SearchPage
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "query": {**echoed, "limit": query.limit, "ignore_case": query.ignore_case},
        "total_matches": page.total_matches,
        "results": page.results,
    }


ROUTES = (
    Route("GET", f"{PREFIX}/{{task_id}}/logs", get_logs, rate="logs"),
    Route("GET", f"{PREFIX}/{{task_id}}/logs/search", search_logs, rate="logs"),
)
