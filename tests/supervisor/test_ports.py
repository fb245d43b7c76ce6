"""Master ports: distinct per job, never one another program has bound, exhaustion is clear.
Real sockets on 127.0.0.1; each test works in a range found free at its start."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dpd.errors import InsufficientResources
from dpd.supervisor.ports import NoFreePort, PortAllocator, port_is_free


def free_range(size: int) -> tuple[int, int]:
    """``size`` consecutive ports that can be bound now (searching the ephemeral range)."""
    for low in range(41000, 60000, 97):
        if all(port_is_free(p) for p in range(low, low + size)):
            return low, low + size - 1
    pytest.skip("no run of free ports found")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket that grabs a port the way rank 0's store does."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    yield sock
    sock.close()


def test_two_jobs_get_different_ports_and_the_same_job_keeps_its_own() -> None:
    low, high = free_range(4)
    ports = PortAllocator(low, high)
    a, b = ports.allocate("a"), ports.allocate("b")
    assert a != b and low <= a <= high and low <= b <= high
    assert ports.allocate("a") == a
    assert ports.held == {"a": a, "b": b}


def test_a_port_bound_by_another_socket_is_skipped(listener: socket.socket) -> None:
    low, high = free_range(3)
    listener.bind(("127.0.0.1", low))
    listener.listen()
    ports = PortAllocator(low, high)
    assert ports.allocate("a") == low + 1
    assert not port_is_free(low)


def test_a_port_bound_on_the_wildcard_address_is_skipped(listener: socket.socket) -> None:
    low, high = free_range(2)
    listener.bind(("0.0.0.0", low))
    assert PortAllocator(low, high).allocate("a") == low + 1


def test_allocated_port_can_be_bound_by_the_trainer() -> None:
    low, high = free_range(2)
    port = PortAllocator(low, high).allocate("a")
    with socket.socket() as trainer:
        trainer.bind(("127.0.0.1", port))  # the probe closed its socket
        trainer.listen()


def test_reserve_and_release() -> None:
    low, high = free_range(3)
    ports = PortAllocator(low, high)
    ports.reserve("reattached", low)  # a job found running after a restart
    assert ports.holder(low) == "reattached"
    assert ports.allocate("new") != low
    ports.release("reattached")
    assert ports.holder(low) is None
    ports.release("never-held")  # harmless


def test_released_ports_are_reused_last() -> None:
    low, high = free_range(3)
    ports = PortAllocator(low, high)
    first = ports.allocate("a")
    ports.release("a")
    assert ports.allocate("b") != first


def test_exhaustion_raises_a_clear_507(listener: socket.socket) -> None:
    low, high = free_range(3)
    listener.bind(("127.0.0.1", high))
    listener.listen()
    ports = PortAllocator(low, high)
    ports.allocate("a")
    ports.reserve("b", low + 1)
    with pytest.raises(NoFreePort) as caught:
        ports.allocate("c")
    assert isinstance(caught.value, InsufficientResources) and caught.value.code == 507
    assert f"{low}-{high}" in caught.value.message
    assert "2 held by jobs" in caught.value.message
    assert "1 bound by other programs" in caught.value.message
    ports.release("a")
    assert ports.allocate("c") == low


def test_bad_range_is_refused() -> None:
    with pytest.raises(ValueError):
        PortAllocator(30000, 29999)
