"""A TCP proxy between one dpd host and one nats-server that can lose replies (FL14).

Client to server, bytes pass unchanged. Server to client, the NATS protocol is read op by
op (``MSG``/``HMSG`` with their payloads, every other op one line), and while ``drop`` is
armed the next message whose payload matches is swallowed: the write it acknowledges is
stored on the server, the client never hears so (a lost PubAck, as in a leader change or
a cut connection). Everything else arrives as sent.

Runs its own event loop in a thread; ``with NatsProxy(port) as proxy:`` then
``proxy.url`` as the host's ``[nats] url`` (one server only: the client learns the others
from INFO and would use them after a reconnect, so ``no_advertise`` matters less than that
the test never forces one).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Final

from tests.fleet.natscluster import free_port

Matcher = Callable[[bytes], bool]
READ_SIZE: Final = 65536


class NatsProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.dropped: list[bytes] = []  # payloads swallowed so far
        self._armed: list[Matcher] = []  # one matcher per reply still to lose
        self._muted: tuple[bytes, ...] = ()  # subject prefixes whose messages are lost
        self.muted_count = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def drop(self, matcher: Matcher) -> None:
        """Lose the next server message whose payload ``matcher`` accepts."""
        with self._lock:
            self._armed.append(matcher)

    def mute(self, *prefixes: str) -> None:
        """Lose every server message whose subject starts with one of ``prefixes`` until
        ``mute()`` with none (a watcher cut off while its connection stays up)."""
        with self._lock:
            self._muted = tuple(p.encode() for p in prefixes)

    def armed(self) -> int:
        with self._lock:
            return len(self._armed)

    def __enter__(self) -> NatsProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        up = asyncio.create_task(self._pipe(client_r, server_w))
        down = asyncio.create_task(self._replies(server_r, client_w))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            for writer in (client_w, server_w):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()

    async def _replies(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            op = line.split(b" ", 1)[0].upper()
            payload = b""
            if op in (b"MSG", b"HMSG"):
                size = int(line.split()[-1])
                payload = await reader.readexactly(size + 2)  # the payload and its CRLF
                if self._silenced(line) or self._swallow(payload):
                    continue
            writer.write(line + payload)
            await writer.drain()

    def _silenced(self, line: bytes) -> bool:
        parts = line.split(b" ", 2)
        with self._lock:
            if len(parts) > 1 and self._muted and parts[1].startswith(self._muted):
                self.muted_count += 1
                return True
        return False

    def _swallow(self, payload: bytes) -> bool:
        with self._lock:
            for index, matcher in enumerate(self._armed):
                if matcher(payload):
                    del self._armed[index]
                    self.dropped.append(payload)
                    return True
        return False


def puback_of(stream: str) -> Matcher:
    """A JetStream PubAck from ``stream`` (``{"stream":"KV_dpd_jobs","seq":…}``), not the
    answer to a write sent again (``"duplicate":true``): each write loses one reply."""
    start = f'{{"stream":"{stream}",'.encode()

    def matcher(payload: bytes) -> bool:
        return payload.startswith(start) and b'"seq":' in payload and b'"duplicate"' not in payload

    return matcher
