"""A response body received straight into the partial file's buffers.

aiohttp hands a body out as new bytes objects (each socket read of up to 256 KiB is a new
object, its parser copies the body out of it, ``readany`` joins the pieces), which the
partial file then copies into its own buffers: several copies and Python rounds per 256
KiB, on a core that the hash, the disk and the sender need too. For a body of known
length, ``receive_body`` takes the connection over once aiohttp has parsed the headers:
the transport then reads (``recv_into``) into ``PartialFile.buffer()`` directly, megabytes
at a time. The connection is not reused; the caller closes the response as before.

Only public interfaces are used: ``ClientResponse.connection``, the bytes aiohttp already
buffered (``read_nowait``), and asyncio's ``Transport.set_protocol``, ``pause_reading``
and ``resume_reading``, which TLS transports honour too. aiohttp's protocol is told when
the connection is lost, so its own bookkeeping ends as usual.

Failures are aiohttp's exception types, translated by ``hub.py`` with the others: the peer
closing early is a ``ClientPayloadError``, a reset a ``ClientOSError``, ``timeout`` seconds
without a byte while reading (not while waiting for free buffers) a ``SocketTimeoutError``;
a failure of the partial file's threads is raised as it is.
"""

from __future__ import annotations

import asyncio

import aiohttp

from dpd.models.partial import PartialFile


async def receive_body(
    response: aiohttp.ClientResponse, sink: PartialFile, timeout: float | None
) -> bool:
    """Receive the rest of ``response``'s body into ``sink``; False (nothing read) when the
    body's length is not known or the connection is gone, for the caller to read it."""
    connection = response.connection
    transport = connection.transport if connection is not None else None
    length = response.content_length
    if transport is None or length is None or "Transfer-Encoding" in response.headers:
        return False
    assert connection is not None
    sink.check_room(length)
    buffered = response.content.read_nowait()  # arrived with the headers
    transport.pause_reading()  # until those bytes are in the file: the order holds
    receiver = _Receiver(sink, length - len(buffered), timeout, connection.protocol)
    transport.set_protocol(receiver)
    await sink.feed(buffered)
    await receiver.run(transport)
    return True


class _Receiver(asyncio.BufferedProtocol):
    """Reads into the partial file's free buffer; pauses the transport while none is free."""

    def __init__(
        self,
        sink: PartialFile,
        remaining: int,
        timeout: float | None,
        previous: asyncio.BaseProtocol | None,
    ) -> None:
        self._sink = sink
        self._remaining = remaining
        self._timeout = timeout
        self._previous = previous
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._last_byte = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None

    async def run(self, transport: asyncio.Transport) -> None:
        """Until the body is complete; raises the connection's or the partial file's
        failure."""
        self._transport = transport
        self._watch()
        try:
            while self._remaining and self._error is None:
                await self._sink.space()
                self._last_byte = self._loop.time()  # the peer was not asked while paused
                transport.resume_reading()
                self._waiter = self._loop.create_future()
                await self._waiter
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------- asyncio's side

    def get_buffer(self, sizehint: int) -> memoryview:
        buffer = self._sink.buffer()
        assert buffer is not None and self._remaining  # else reading is paused
        return buffer[: self._remaining]

    def buffer_updated(self, nbytes: int) -> None:
        self._remaining -= nbytes
        self._sink.received(nbytes)
        self._last_byte = self._loop.time()
        if self._sink.failure is not None:
            self._end(self._sink.failure)
        elif not self._remaining or not self._sink.has_room:
            self._end(None)

    def eof_received(self) -> bool | None:
        if self._remaining:
            self._end(aiohttp.ClientPayloadError(f"the body ended {self._remaining} bytes early"))
        return None  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        if self._remaining:
            error = aiohttp.ServerDisconnectedError() if exc is None else exc
            if isinstance(error, OSError):
                error = aiohttp.ClientOSError(*error.args)
            self._end(error)
        if self._previous is not None:
            self._previous.connection_lost(exc)

    # ------------------------------------------------------------- internal

    def _end(self, error: BaseException | None) -> None:
        """Stop reading (for now, when ``error`` is None) and wake ``run``."""
        if self._error is None:
            self._error = error
        if self._transport is not None and self._transport.is_reading():
            self._transport.pause_reading()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _watch(self) -> None:
        """A stall ends the transfer; waiting for free buffers is not one."""
        if self._timeout is None:
            return
        assert self._transport is not None
        idle = self._loop.time() - self._last_byte
        if self._transport.is_reading() and idle >= self._timeout:
            self._end(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
            return
        delay = self._timeout - idle if self._transport.is_reading() else self._timeout
        self._watchdog = self._loop.call_later(max(delay, 0.01), self._watch)
