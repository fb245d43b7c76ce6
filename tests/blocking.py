"""A test fails when dpd makes a blocking call on the event loop (STYLE.md, Tests).

``blockbuster`` (the detector aiohttp's own test suite uses) patches blocking functions —
``time.sleep``, file reads and writes, ``os.stat``/``listdir``/``rename``/``unlink``, blocking
sockets, ``input`` — and raises ``BlockingError`` when one is called from the thread that is
running an event loop. Calls from worker threads (``asyncio.to_thread``) are fine. It is
deterministic: it does not depend on how long a call took, so a busy CI machine cannot make
it fire or miss.

Only calls made through dpd's own code count (``scanned_modules``): a test that writes a
fixture file from its async body is not what this guards. What dpd may still do on the loop
is listed in ``ALLOWED``, each with its reason.

Every detected call is also recorded, and the test fails at its end if there was one: dpd
catches broad errors in places (the error middleware answers 500, the scheduler logs and
tries again), and a BlockingError swallowed there must fail the test all the same.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import blockbuster.blockbuster as blockbuster_module
from blockbuster import BlockBuster, BlockingError

__all__ = ["ALLOWED", "UNGUARDED", "BlockingError", "Detected", "blocking_calls_fail"]

# (function blockbuster patches, file of the caller, caller's function names, why it may block)
ALLOWED: tuple[tuple[str, str, frozenset[str], str], ...] = (
    (
        "*",
        "dpd/daemon.py",
        frozenset({"__init__"}),
        "dpd serve builds the Daemon before its loop starts; tests build it inside theirs",
    ),
    (
        "*",
        "tests/spool/test_intake.py",
        frozenset({"announce"}),
        "the test's announcer reads state.json to see the job is durable before announced",
    ),
    (
        "*",
        "tests/http/conftest.py",
        frozenset({"key"}),
        "test set-up writes keys.json directly, before the requests that use the key",
    ),
    (
        "*",
        "logging/__init__.py",
        frozenset({"emit"}),
        "log records go to stderr (journald's pipe) as they happen, as in any asyncio program",
    ),
    (
        "*",
        "dpd/notify.py",
        frozenset({"__init__"}),
        "the Daemon builds its Notifier before the loop starts; connecting a Unix datagram "
        "socket never waits for a peer",
    ),
    (
        "*",
        "dpd/preprocess/tasks.py",
        frozenset({"discard_staged"}),
        "metadata only (stat, rename, unlink of a small file) so that refusal and cancellation "
        "paths need not await; a big file's delete goes to a thread",
    ),
    (
        "*",
        "tests/events/harness.py",
        frozenset({"make_store", "create_job", "new_job", "disk_events"}),
        "test set-up and checks: a fresh store, its jobs and what it wrote, in tmp_path",
    ),
    (
        "*",
        "tests/jobfiles.py",
        frozenset({"new_store", "add_job", "make_data_root"}),
        "test set-up: a fresh store, its jobs and data in tmp_path, before the code under test",
    ),
    (
        "*",
        "tests/fakes/fake_launcher.py",
        frozenset({"print"}),
        "the fake launcher writes train.log as the trainer, another process in production, would",
    ),
    (
        "os.stat",
        "dpd/http/auth.py",
        frozenset({"_changed"}),
        "one stat of keys.json per authenticated request (StoreChecker): about a microsecond, "
        "and what makes a revocation count from the next request; the re-read is in a thread",
    ),
)

# Test folders not guarded yet, with why (none today).
UNGUARDED: dict[str, str] = {}

# The stand-in trainer: its own program, never on the daemon's loop (tests call its helpers).
EXCLUDED = ["dpd.simulation"]

# Held only for in-memory bookkeeping; blockbuster reports a lock only when it happens to be
# held by another thread at that instant, which is timing, not a property of the code.
NOT_CHECKED = ("threading.Lock.acquire", "threading.Lock.acquire_lock")


class Detected:
    """The blocking calls detected so far (``BlockingError`` messages), across threads."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def error_class(self) -> type[BlockingError]:
        detected = self

        class RecordedBlockingError(BlockingError):
            def __init__(self, func: str) -> None:
                super().__init__(func)
                with detected._lock:
                    detected.calls.append(str(self))

        return RecordedBlockingError


@contextmanager
def blocking_calls_fail(scanned: str = "dpd") -> Iterator[Detected]:
    """Within: a blocking call that dpd's code makes on a running loop raises BlockingError
    and is recorded in the ``Detected`` it yields."""
    detected = Detected()
    buster = BlockBuster(scanned_modules=[scanned], excluded_modules=EXCLUDED)
    for name in NOT_CHECKED:
        del buster.functions[name]
    for function, filename, callers, _why in ALLOWED:
        names = buster.functions if function == "*" else [function]
        for name in names:
            buster.functions[name].can_block_in(filename, callers)
    original = blockbuster_module.BlockingError
    blockbuster_module.BlockingError = detected.error_class()  # type: ignore[misc]
    buster.activate()
    try:
        yield detected
    finally:
        buster.deactivate()
        blockbuster_module.BlockingError = original  # type: ignore[misc]
