"""Test-only crash points (FLEET.md §13.3 FL6): ``DPD_TEST_CRASH_AT=<point>`` makes the daemon
kill itself with SIGKILL when it reaches that point, so that a test can restart it and check
that what it had acknowledged survives. Read once at start-up; unset, every call is a no-op.

The points, each between two durable writes that a power cut may separate:
``commit_unlink`` (a spool file's record created, the file not yet removed), ``t2_t3``
(claimed, nothing materialised), ``t3_state`` (fenced, state.json not yet ``starting``),
``t3_spawn`` (state.json ``starting``, not yet launched), ``spawn_t5`` (the trainer spawned,
the record not yet ``running``), ``terminal_kv`` (the run ended locally, the record not yet
terminal).
"""

from __future__ import annotations

import os
import signal
from typing import Final

POINTS: Final = frozenset(
    {"commit_unlink", "t2_t3", "t3_state", "t3_spawn", "spawn_t5", "terminal_kv"}
)
_ARMED: Final = os.environ.get("DPD_TEST_CRASH_AT", "")


def crash_point(name: str) -> None:
    """SIGKILL this process if the test armed ``name``; otherwise nothing."""
    assert name in POINTS, name
    if name == _ARMED:
        os.write(2, f"dpd: crash point {name}: SIGKILL\n".encode())  # the test's witness
        os.kill(os.getpid(), signal.SIGKILL)
