"""Per-key rate limits by route class (api.md §11, DESIGN §4, ``[ratelimit]``).

Route classes: ``auth`` (/auth/*), ``training`` (POST /training/start), ``preprocess``
(POST /preprocess/upload), ``logs`` (/training/{id}/logs*), ``gpu`` (/gpu/*). A route declares
its class (``Route(..., rate="<class>")``, ``dpd.http.routing``); a class whose limit is 0 (or
that the configuration does not know) is unlimited and sends no headers. The dashboard's login
(``POST /auth/session``, open: no key yet) counts in the ``auth`` class per client address.

The counting (``WindowCounter``) is pure: fixed windows of ``window`` seconds per (key, class),
the first request opening one. It is what the headers describe exactly: ``Limit`` requests per
window, ``Remaining`` in this one, and ``Reset`` the unix time the window ends. Counts live in
memory: a restart forgives everyone, which is the accepted price of keeping the hot path free
of disk writes.

``RateLimiter`` is the aiohttp side: installed with ``install(app)`` it becomes the app's
``RATE_LIMITER`` and adds the X-RateLimit-* headers to every response of a limited request,
success or error (the error middleware reads ``request[RATE_HEADERS]`` too). Past the limit it
raises ``TooManyRequests`` (429) with ``limit, remaining, reset_time, retry_after`` and a
``Retry-After`` header.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields

from aiohttp import web

from dpd.config import RateLimit, RateLimitConfig
from dpd.errors import TooManyRequests
from dpd.http.common import PRINCIPAL, RATE_HEADERS, RATE_LIMITER, principal
from dpd.http.views import iso_from_unix

ROUTE_CLASSES = tuple(f.name for f in fields(RateLimitConfig))
PRUNE_EVERY = 1024  # checks between sweeps of windows that have ended


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    window: int
    remaining: int
    reset: float  # unix time the current window ends
    retry_after: int  # seconds until a refused caller may try again (0 when allowed)

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class WindowCounter:
    """Fixed-window counts per (key, route class); pure, the clock is passed in."""

    def __init__(self, limits: RateLimitConfig) -> None:
        self.limits = limits
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}  # -> (reset, used)
        self._checks = 0

    def set_limits(self, limits: RateLimitConfig) -> None:
        """New limits apply from each key's next window; running windows keep their count."""
        self.limits = limits

    def limit_for(self, route_class: str) -> RateLimit | None:
        limit = getattr(self.limits, route_class, None)
        if not isinstance(limit, RateLimit) or limit.unlimited:
            return None
        return limit

    def check(self, key_id: str, route_class: str, now: float) -> Decision | None:
        """Count one request; None when the class is unlimited."""
        limit = self.limit_for(route_class)
        if limit is None:
            return None
        self._maybe_prune(now)
        slot = (key_id, route_class)
        reset, used = self._windows.get(slot, (0.0, 0))
        if now >= reset:
            reset, used = now + limit.window, 0
        if used >= limit.count:
            retry = max(1, math.ceil(reset - now))
            return Decision(False, limit.count, limit.window, 0, reset, retry)
        used += 1
        self._windows[slot] = (reset, used)
        return Decision(True, limit.count, limit.window, limit.count - used, reset, 0)

    def _maybe_prune(self, now: float) -> None:
        self._checks += 1
        if self._checks % PRUNE_EVERY == 0:
            self._windows = {k: v for k, v in self._windows.items() if v[0] > now}

    def __len__(self) -> int:
        return len(self._windows)


class RateLimiter:
    """The ``RATE_LIMITER`` of an app: ``await limiter(request, route_class)``."""

    def __init__(self, limits: RateLimitConfig, clock: Callable[[], float] = time.time) -> None:
        self.counter = WindowCounter(limits)
        self.clock = clock

    def set_limits(self, limits: RateLimitConfig) -> None:
        self.counter.set_limits(limits)

    def install(self, app: web.Application) -> None:
        app[RATE_LIMITER] = self  # type: ignore[misc]  # a RateLimitCheck, see common.py
        app.on_response_prepare.append(_add_rate_headers)

    async def __call__(self, request: web.Request, route_class: str) -> None:
        decision = self.counter.check(_counted_as(request), route_class, self.clock())
        if decision is None:
            return
        request[RATE_HEADERS] = decision.headers()
        if not decision.allowed:
            raise TooManyRequests(
                f"rate limit for {route_class} requests exceeded: {decision.limit} per "
                f"{decision.window} s; retry in {decision.retry_after} s",
                {
                    "limit": decision.limit,
                    "remaining": decision.remaining,
                    "reset_time": iso_from_unix(decision.reset),
                    "retry_after": decision.retry_after,
                },
            )


def _counted_as(request: web.Request) -> str:
    """Whose window a request counts in: its key's, or before any key is known (the
    dashboard's login) its client address's, so guessing keys there is limited too."""
    if request.get(PRINCIPAL) is not None:
        return principal(request).key_id
    return f"address:{request.remote or 'unknown'}"


async def _add_rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = request.get(RATE_HEADERS)
    if headers:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
