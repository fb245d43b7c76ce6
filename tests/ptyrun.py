"""Run a command on a real pseudo-terminal of a given size and collect what it drew."""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from collections.abc import Mapping, Sequence

ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(
    argv: Sequence[str], env: Mapping[str, str], columns: int = 100, timeout: float = 60.0
) -> tuple[int, str]:
    """The exit status and everything written to the terminal (stdout and stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.Popen(
        list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as err:  # EIO: every writer of the terminal has gone
                if err.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
        else:
            process.kill()
    finally:
        os.close(master)
    return process.wait(timeout=10), b"".join(chunks).decode("utf-8", errors="replace")


def drawn_lines(output: str) -> list[str]:
    """What each write between carriage returns and newlines put on one terminal row."""
    return [part for part in re.split(r"[\r\n]", ESCAPE.sub("", output)) if part]
