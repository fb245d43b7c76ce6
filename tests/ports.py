"""Master-port ranges for test daemons.

A trainer binds its master port seconds after dpd probed it free. If the range lies inside
the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 on
Linux), any outgoing connection on the machine (a NATS client, an HTTP request) can take the
port in between and the trainer fails with EADDRINUSE. So every test range lies in
10000-32767, spread by process id and a counter so parallel runs rarely share one.
"""

from __future__ import annotations

import itertools
import os

LOW, HIGH = 10000, 32767
_counter = itertools.count()


def master_port_range(size: int = 20) -> list[int]:
    """``[low, high]``, ``size`` ports, below the ephemeral range."""
    slots = (HIGH - LOW + 1) // size
    slot = (os.getpid() * 7 + next(_counter)) % slots
    low = LOW + slot * size
    return [low, low + size - 1]
