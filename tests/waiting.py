"""Waiting for a condition instead of sleeping (STYLE.md, Tests): the one polling helper.

``wait_for`` blocks (for synchronous tests and subprocess checks); ``wait_until`` awaits (for
tests on an event loop, which a blocking poll would stall; its condition may be a coroutine
function, e.g. one that asks the API). Both look at ``condition`` until it returns something
truthy and return that (``in_thread`` makes a blocking condition, e.g. one that scans /proc,
awaitable without blocking the loop); past ``timeout`` seconds they raise
AssertionError saying what was awaited. A timeout is a bound for a broken system, not a
measured figure: it is generous because a busy machine may be slow, never fast.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")
INTERVAL = 0.02  # seconds between looks

# What was awaited, for the failure message: text, or a function giving it at that moment.
What = str | Callable[[], str]


def wait_for(
    condition: Callable[[], T], timeout: float = 10.0, interval: float = INTERVAL, what: What = ""
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_failure(condition, timeout, what))
        time.sleep(interval)


async def wait_until(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = INTERVAL,
    what: What = "",
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        value = cast(T, value)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_failure(condition, timeout, what))
        await asyncio.sleep(interval)


def _failure(condition: Callable[[], object], timeout: float, what: What) -> str:
    described = what() if callable(what) else what
    return f"not within {timeout} s: {described or getattr(condition, '__qualname__', condition)}"


def in_thread(condition: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """``condition`` as a coroutine function run in a worker thread, for ``wait_until``."""

    def threaded() -> Awaitable[T]:
        return asyncio.to_thread(condition)

    threaded.__qualname__ = getattr(condition, "__qualname__", "condition")  # for the message
    return threaded
