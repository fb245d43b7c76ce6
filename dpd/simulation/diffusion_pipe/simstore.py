"""The simulated process group: rank 0 binds --master_port, other ranks connect. STDLIB ONLY.

Rank 0 keeps a TCP listening socket on 127.0.0.1:<master_port> for the whole run, as the
c10d TCPStore does, so a second job on the same port fails with EADDRINUSE. The same
sockets carry the few collectives the simulation needs (barrier, broadcast from rank 0),
as newline-delimited JSON. A peer that disappears makes the others block, like NCCL does
until its timeout; the launcher kills them.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, NoReturn

from simoutput import DistNetworkError, eaddrinuse_message

CONNECT_TIMEOUT = 300.0


def block_forever() -> NoReturn:
    while True:
        time.sleep(3600)


class ProcessGroup:
    """world_size == 1 needs no peers, but rank 0 still binds the port."""

    def __init__(self, rank: int, world_size: int, port: int, token: str) -> None:
        self.rank = rank
        self.world_size = world_size
        self.token = token
        self.listener: socket.socket | None = None
        self.peers: dict[int, socket.socket] = {}
        self.readers: dict[int, Any] = {}
        if rank == 0:
            self._bind(port)
        else:
            self._connect(port)

    def _bind(self, port: int) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError:
            listener.close()
            raise DistNetworkError(eaddrinuse_message(port)) from None
        listener.listen(128)
        self.listener = listener

    def _connect(self, port: int) -> None:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise DistNetworkError(
                        f"Timed out after {int(CONNECT_TIMEOUT)} seconds waiting for the "
                        f"TCPStore server at 127.0.0.1:{port}"
                    ) from None
                time.sleep(0.05)
        conn.settimeout(None)
        self.peers[0] = conn
        self.readers[0] = conn.makefile("r", encoding="utf-8")
        self._send(conn, {"rank": self.rank, "token": self.token})

    def _accept_all(self) -> None:
        """Rank 0: wait until every other rank of this job has connected."""
        assert self.listener is not None
        while len(self.peers) < self.world_size - 1:
            conn, _ = self.listener.accept()
            reader = conn.makefile("r", encoding="utf-8")
            hello = self._read(reader)
            rank = int(hello.get("rank", -1))
            if hello.get("token") != self.token or not 0 < rank < self.world_size:
                conn.close()  # another job's rank reached our port
                continue
            self.peers[rank] = conn
            self.readers[rank] = reader

    @staticmethod
    def _send(conn: socket.socket, message: Any) -> None:
        try:
            conn.sendall((json.dumps(message) + "\n").encode())
        except OSError:
            block_forever()

    @staticmethod
    def _read(reader: Any) -> Any:
        line = reader.readline()
        if not line:
            block_forever()  # a peer died: hang like a collective would
        return json.loads(line)

    def broadcast(self, message: Any = None) -> Any:
        """Rank 0 sends `message`; every other rank returns what rank 0 sent."""
        if self.world_size == 1:
            return message
        if self.rank != 0:
            return self._read(self.readers[0])
        self._accept_all()
        for conn in self.peers.values():
            self._send(conn, message)
        return message

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        if self.rank != 0:
            self._send(self.peers[0], "arrived")
            self._read(self.readers[0])
            return
        self._accept_all()
        for rank in self.peers:
            self._read(self.readers[rank])
        for conn in self.peers.values():
            self._send(conn, "go")

    def close(self) -> None:
        for conn in self.peers.values():
            conn.close()
        if self.listener is not None:
            self.listener.close()
