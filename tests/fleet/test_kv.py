"""dpd.fleet.kv and dpd.fleet.table against a real 3-node JetStream cluster (R3, sync always)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from dpd.fleet.kv import (
    EXPECTED_LAST_SUBJECT_SEQUENCE,
    IN_PROCESS,
    MSG_ID,
    Bucket,
    BucketSpec,
    CasConflict,
    Entry,
    KeyExists,
    NotStored,
    Operation,
    OutcomeUnknown,
    Unavailable,
    alive_spec,
    jobs_spec,
    nodes_spec,
)
from dpd.fleet.table import TableEntry, WatchedTable
from tests.fleet.natscluster import NatsCluster

pytestmark = pytest.mark.fleet


def prefix() -> str:
    return "t" + uuid.uuid4().hex[:8]


def increment(entry: Entry | None) -> bytes:
    return str(int(entry.value) + 1 if entry else 1).encode()


async def wait_until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.05)


async def seen_by(bucket: Bucket, client: NATS) -> Bucket:
    """``bucket`` on another client's connection, once that client's server routes to the
    new stream (right after it is created, a request from another server can find no
    responders for a moment)."""

    async def answers() -> bool:
        try:
            await other.leader_get("never.written")
        except Unavailable:
            return False
        return True

    other = Bucket(client.jetstream(), bucket.spec)
    await wait_until(answers)
    return other


async def test_buckets_are_created_as_specified_and_differences_only_warned(
    clients: list[NATS], caplog: pytest.LogCaptureFixture
) -> None:
    js = clients[0].jetstream()
    p = prefix()
    jobs = await Bucket.ensure(js, jobs_spec(p, 3))
    config = (await js.stream_info(f"KV_{p}_jobs")).config
    assert config.num_replicas == 3 and config.max_msgs_per_subject == 10
    assert config.allow_direct and config.deny_delete and config.allow_rollup_hdrs
    assert config.max_msg_size == 256 * 1024 and config.discard == "new"
    assert config.compression == "s2" and config.subjects == [f"$KV.{p}_jobs.>"]
    alive = await Bucket.ensure(js, alive_spec(p, 3, node_ttl=15))
    assert alive.effective_max_age == 15
    info = (await js.stream_info(f"KV_{p}_alive")).config
    assert info.subject_delete_marker_ttl == 60 and info.duplicate_window == 15
    assert info.allow_msg_ttl and info.max_msgs_per_subject == 1
    await Bucket.ensure(js, nodes_spec(p, 3))
    # another node with other settings: a warning naming the difference, nothing changed
    with caplog.at_level(logging.WARNING, logger="dpd.fleet.kv"):
        other = await Bucket.ensure(clients[1].jetstream(), alive_spec(p, 3, node_ttl=30))
    assert other.effective_max_age == 15
    assert "max_age: 15.0 (wanted 30.0)" in caplog.text
    assert (await js.stream_info(f"KV_{p}_alive")).config.max_age == 15
    await jobs.write("job.x", b"1", 0)  # the bucket is usable


async def test_create_or_reclaim_takes_over_deleted_and_expired_keys(clients: list[NATS]) -> None:
    js = clients[0].jetstream()
    p = prefix()
    bucket = await Bucket.ensure(js, jobs_spec(p, 3))
    first = await bucket.create_or_reclaim("job.a", b"one")
    with pytest.raises(KeyExists) as exists:
        await bucket.create_or_reclaim("job.a", b"two")
    assert exists.value.entry.value == b"one" and exists.value.entry.revision == first
    kv = await js.key_value(f"{p}_jobs")
    await kv.delete("job.a")
    assert (await bucket.leader_get("job.a")).operation is Operation.DELETE  # type: ignore[union-attr]
    again = await bucket.create_or_reclaim("job.a", b"three")
    assert again > first and (await bucket.leader_get("job.a")).value == b"three"  # type: ignore[union-attr]

    # an expired key leaves a MaxAge limit marker; nats-py's create trips over it (§3.4)
    short = await Bucket.ensure(js, BucketSpec(f"{p}_short", 1, 1024, 3, 1.0, 30.0))
    await short.create_or_reclaim("node.b", b"beat")

    async def expired() -> bool:
        entry = await short.leader_get("node.b")
        return entry is not None and entry.operation is Operation.MARKER

    await wait_until(expired)
    short_kv = await js.key_value(f"{p}_short")
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await short_kv.create("node.b", b"beat again")
    revision = await short.create_or_reclaim("node.b", b"beat again")
    entry = await short.leader_get("node.b")
    assert entry is not None and entry.present and entry.revision == revision


async def test_a_lost_reply_is_resolved_by_the_leader_never_guessed(clients: list[NATS]) -> None:
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    r1 = await bucket.write("job.k", b"v1", 0)
    id1 = await msg_id_at(bucket, r1)
    # as if the reply of that write had been lost: the leader shows it stored
    assert await bucket._stored_as("job.k", id1, 0) == r1
    # a write that never reached the stream, against the same expectation: not stored
    with pytest.raises(NotStored):
        await bucket._stored_as("job.k", uuid.uuid4().hex, 0)
    r2 = await bucket.write("job.k", b"v2", r1)
    id2 = await msg_id_at(bucket, r2)
    assert id2 != id1 and await bucket._stored_as("job.k", id2, r1) == r2
    with pytest.raises(NotStored):
        await bucket._stored_as("job.k", uuid.uuid4().hex, r2)  # nothing after r2
    for i in range(12):  # more writes than the history keeps: r1 is trimmed away
        await bucket.write("job.k", f"w{i}".encode(), r2)
        r2 = (await bucket.leader_get("job.k")).revision  # type: ignore[union-attr]
    with pytest.raises(OutcomeUnknown):
        await bucket._stored_as("job.k", id2, r1)


async def msg_id_at(bucket: Bucket, revision: int) -> str:
    msg = await bucket.js.get_msg(bucket.stream, seq=revision, direct=False)
    return str((msg.headers or {})[MSG_ID])


class LosingReplies:
    """Wraps ``js.publish``: the next publish loses its reply — after its message reached
    the stream ("stored"), without it ("lost"), or while it is still on its way and lands
    0.3 s later ("late", as a proposal stuck behind a slow leader)."""

    def __init__(self, bucket: Bucket, message: str) -> None:
        self.real = bucket.js.publish
        self.message, self.calls, self.pending = message, 0, 1
        self.late: list[asyncio.Task[Any]] = []
        bucket.js.publish = self  # type: ignore[method-assign]

    async def __call__(self, subject: str, payload: bytes, **kw: Any) -> Any:
        self.calls += 1
        if not self.pending:
            return await self.real(subject, payload, **kw)
        self.pending = 0
        if self.message == "stored":
            await self.real(subject, payload, **kw)
        elif self.message == "late":
            self.late.append(asyncio.create_task(self._later(subject, payload, **kw)))
        raise nats.errors.TimeoutError

    async def _later(self, subject: str, payload: bytes, **kw: Any) -> Any:
        await asyncio.sleep(0.3)
        try:
            return await self.real(subject, payload, **kw)
        except nats.js.errors.APIError as err:
            return err  # refused: its expected revision is stale


@pytest.mark.parametrize("message", ["stored", "lost", "late"])
async def test_a_lost_reply_is_applied_exactly_once(clients: list[NATS], message: str) -> None:
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    await bucket.write("job.n", b"0", 0)
    losing = LosingReplies(bucket, message)
    result = await bucket.cas_update("job.n", increment)
    await asyncio.gather(*losing.late)
    assert result.written and result.lost_replies == 1 and losing.calls == 2
    assert await bucket._retained(bucket.subject("job.n")) == 2  # "0", then "1" stored once
    now = await bucket.leader_get("job.n")
    assert now is not None and now.value == b"1"
    assert result.entry is not None and result.entry.revision == now.revision


async def test_a_lost_reply_overtaken_by_another_writer_is_not_applied(clients: list[NATS]) -> None:
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    other = await seen_by(bucket, clients[1])
    first = await bucket.write("job.n", b"0", 0)
    real = bucket.js.publish

    async def lost_then_overtaken(subject: str, payload: bytes, **kw: Any) -> Any:
        bucket.js.publish = real  # type: ignore[method-assign]
        await other.write("job.n", b"theirs", first)  # ours never arrived; theirs did
        raise nats.errors.TimeoutError

    bucket.js.publish = lost_then_overtaken  # type: ignore[method-assign]
    with pytest.raises(NotStored):
        await bucket.write("job.n", b"mine", first)
    # cas_update retries such a write on a fresh read: both changes end up applied once
    bucket.js.publish = lost_then_overtaken  # type: ignore[method-assign]
    first = (await bucket.leader_get("job.n")).revision  # type: ignore[union-attr]
    result = await bucket.cas_update("job.n", lambda e: (e.value if e else b"") + b"+mine")
    assert result.lost_replies == 1
    assert (await bucket.leader_get("job.n")).value == b"theirs+mine"  # type: ignore[union-attr]


async def test_a_lost_reply_is_not_taken_for_an_equal_write_of_another_client(
    clients: list[NATS],
) -> None:
    """Two clients increment one key from the same revision: both compute the same next
    value. Ours never reaches the stream, theirs does, so the resend of ours is refused. The
    message after our expected revision then equals ours byte for byte, yet is not ours:
    reported as applied, one increment would count twice (a claim believed held that is
    not). Only the message id tells them apart."""
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    other = await seen_by(bucket, clients[1])
    first = await bucket.write("job.n", b"0", 0)
    real = bucket.js.publish

    async def lost_then_equal(subject: str, payload: bytes, **kw: Any) -> Any:
        bucket.js.publish = real  # type: ignore[method-assign]
        expected = int(kw["headers"][EXPECTED_LAST_SUBJECT_SEQUENCE])
        await other.write("job.n", payload, expected)  # the same value, the same expectation
        raise nats.errors.TimeoutError

    bucket.js.publish = lost_then_equal  # type: ignore[method-assign,assignment]
    with pytest.raises(NotStored):
        await bucket.write("job.n", b"1", first)
    # through cas_update: both increments end up applied, each once
    bucket.js.publish = lost_then_equal  # type: ignore[method-assign,assignment]
    ours = await bucket.cas_update("job.n", increment)
    now = await bucket.leader_get("job.n")
    assert now is not None and now.value == b"3"
    assert ours.written and ours.lost_replies == 1
    assert ours.entry is not None and ours.entry.revision == now.revision


async def test_a_resend_answered_in_process_is_sent_again_not_judged(
    clients: list[NATS],
) -> None:
    """A resend refused because a write of the key is still being replicated (10164) says
    nothing about ours, which may be that very write: judged at once, ours would be found
    missing, reported not applied, and the increment made twice once it lands."""
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    await bucket.write("job.n", b"0", 0)
    real_publish, real_get = bucket.js.publish, bucket.leader_get
    held: list[tuple[str, bytes, dict[str, Any]]] = []
    landed: list[Any] = []

    async def land() -> None:  # our first message, held back, reaches the stream now
        while held:
            subject, payload, kw = held.pop()
            try:
                landed.append(await real_publish(subject, payload, **kw))
            except nats.js.errors.APIError as err:
                landed.append(err)

    async def publish(subject: str, payload: bytes, **kw: Any) -> Any:
        if not held and not landed:  # the first: on its way, its reply lost
            held.append((subject, payload, kw))
            raise nats.errors.TimeoutError
        if held and not any(isinstance(x, str) for x in landed):  # the first resend
            landed.append("in process")
            raise nats.js.errors.APIError(code=400, err_code=IN_PROCESS, description="in process")
        return await real_publish(subject, payload, **kw)

    async def leader_get(key: str) -> Entry | None:  # a retry's read comes after the landing
        await land()
        return await real_get(key)

    bucket.js.publish = publish  # type: ignore[method-assign,assignment]
    bucket.leader_get = leader_get  # type: ignore[method-assign]
    result = await bucket.cas_update("job.n", increment)
    await land()
    assert result.written and result.lost_replies == 1
    now = await real_get("job.n")
    assert now is not None and now.value == b"1"  # one increment, applied once
    assert result.entry is not None and result.entry.revision == now.revision
    assert await bucket._retained(bucket.subject("job.n")) == 2


async def test_concurrent_cas_from_three_clients_never_loses_an_update(
    clients: list[NATS],
) -> None:
    p = prefix()
    await Bucket.ensure(clients[0].jetstream(), jobs_spec(p, 3))
    buckets = [Bucket(nc.jetstream(), jobs_spec(p, 3)) for nc in clients]
    per_client = 25
    revisions: list[int] = []
    conflicts = 0

    async def worker(bucket: Bucket) -> None:
        nonlocal conflicts
        for _ in range(per_client):
            result = await bucket.cas_update("job.counter", increment, max_attempts=1000)
            assert result.written and result.entry is not None
            revisions.append(result.entry.revision)
            conflicts += result.attempts - 1

    await asyncio.gather(*(worker(b) for b in buckets))
    final = await buckets[0].leader_get("job.counter")
    assert final is not None and int(final.value) == 3 * per_client
    assert len(set(revisions)) == 3 * per_client  # every success is its own revision
    print(f"3 clients x {per_client} CAS increments: {conflicts} conflicts retried")


async def test_cas_gives_up_after_bounded_conflicts(clients: list[NATS]) -> None:
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    await bucket.write("job.x", b"0", 0)
    sneaky = await seen_by(bucket, clients[1])

    racers: list[asyncio.Task[Any]] = []

    def racing(entry: Entry | None) -> bytes:
        # someone else writes between our read and our write, every time
        racers.append(asyncio.get_running_loop().create_task(sneaky.cas_update("job.x", increment)))
        return b"mine"

    # the racing writer needs a moment to land before our write: slow our write down
    original = bucket._write

    async def slow_write(key: str, value: bytes, last: int) -> tuple[int, bool]:
        await asyncio.sleep(0.05)
        return await original(key, value, last)

    bucket._write = slow_write  # type: ignore[method-assign]
    with pytest.raises(CasConflict):
        await bucket.cas_update("job.x", racing, max_attempts=3)
    await asyncio.gather(*racers)
    assert len(racers) == 3
    entry = await bucket.leader_get("job.x")
    assert entry is not None and entry.value == b"3"  # only the racers' writes landed
    unchanged = await bucket.cas_update("job.x", lambda e: None)
    assert not unchanged.written and unchanged.entry is not None
    assert unchanged.entry.revision == entry.revision


@pytest.mark.slow
async def test_leader_kill_mid_burst_loses_no_acknowledged_write(
    cluster: NatsCluster, clients: list[NATS]
) -> None:
    """FLEET.md §13.3 FL8 at the KV level: kill -9 the leader of the jobs stream while three
    clients CAS one key and create new keys; every acknowledged write is there afterwards."""
    p = prefix()
    spec = jobs_spec(p, 3)
    await Bucket.ensure(clients[0].jetstream(), spec)
    buckets = [Bucket(nc.jetstream(timeout=2), spec) for nc in clients]
    acked_increments = 0
    unknown_increments = 0
    unknown_creates = 0
    refused: list[str] = []
    created: dict[str, bytes] = {}
    ack_times: list[float] = []
    stop = asyncio.Event()
    killed_at: list[float] = []
    lost_replies = 0

    async def worker(i: int, bucket: Bucket) -> None:
        nonlocal acked_increments, unknown_increments, unknown_creates, lost_replies
        n = 0
        while not stop.is_set():
            try:
                result = await bucket.cas_update("job.counter", increment, max_attempts=500)
            except OutcomeUnknown:
                unknown_increments += 1
                continue
            acked_increments += 1
            lost_replies += result.lost_replies
            ack_times.append(time.monotonic())
            key, value = f"job.c{i}-{n}", f"{i}:{n}".encode()
            n += 1
            try:
                await bucket.create_or_reclaim(key, value)
            except OutcomeUnknown:
                unknown_creates += 1  # not an increment: the counter's bound stays exact
                continue
            except Unavailable:  # answered "not stored" (an election): the caller's to retry
                refused.append(key)
                continue
            created[key] = value
            ack_times.append(time.monotonic())

    tasks = [asyncio.create_task(worker(i, b)) for i, b in enumerate(buckets)]
    try:
        await wait_until(lambda: _at_least(lambda: acked_increments, 30), timeout=30)
        leader = await asyncio.to_thread(cluster.leader_of, spec.stream)
        cluster.kill(leader)
        killed_at.append(time.monotonic())
        before = acked_increments
        await wait_until(lambda: _at_least(lambda: acked_increments, before + 30), timeout=45)
    finally:
        stop.set()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(cluster.start, leader)
    assert not [e for e in ended if e is not None], ended  # no worker gave up midway
    reader = buckets[(leader + 1) % 3]
    final = await reader.leader_get("job.counter")
    assert final is not None
    assert acked_increments <= int(final.value) <= acked_increments + unknown_increments
    for key, value in created.items():
        entry = await reader.leader_get(key)
        assert entry is not None and entry.value == value, key
    for key in refused:  # "not stored" is never a guess either
        assert await reader.leader_get(key) is None, key
    gaps = [b - a for a, b in itertools.pairwise(ack_times) if b > killed_at[0]]
    print(
        f"leader kill: {acked_increments} acked CAS, {len(created)} acked creates, 0 lost; "
        f"{unknown_increments} CAS and {unknown_creates} creates outcome unknown, "
        f"{len(refused)} creates refused as unavailable, "
        f"{lost_replies} lost replies resolved; "
        f"longest write gap after the kill {max(gaps):.2f} s"
    )


async def _at_least(value: Any, n: int) -> bool:
    return bool(value() >= n)


async def test_watched_table_follows_the_bucket_and_rebuilds_from_scratch(
    clients: list[NATS],
) -> None:
    bucket = await Bucket.ensure(clients[0].jetstream(), jobs_spec(prefix(), 3))
    await bucket.write("job.a", b"a1", 0)
    now = [100.0]
    changed: list[str] = []
    table = WatchedTable(bucket, clock=lambda: now[0], on_change=changed.append)
    runner = asyncio.create_task(table.run())
    try:
        await asyncio.wait_for(table.ready.wait(), 10)
        assert table.get("job.a") is not None and table.get("job.a").seen_at == 100.0  # type: ignore[union-attr]
        now[0] = 105.0
        rev_b = await bucket.write("job.b", b"b1", 0)

        async def has_b() -> bool:
            entry = table.get("job.b")
            return entry is not None and entry.entry.revision == rev_b

        await wait_until(has_b)
        assert table.get("job.b").seen_at == 105.0 and "job.b" in changed  # type: ignore[union-attr]
        kv = await clients[0].jetstream().key_value(bucket.spec.bucket)
        await kv.delete("job.a")

        async def a_gone() -> bool:
            return table.get("job.a") is None

        await wait_until(a_gone)
        # a key the watcher missed the expiry of stays until the table is rebuilt
        ghost = Entry("job.ghost", b"x", 1, Operation.PUT)
        table.entries["job.ghost"] = TableEntry(ghost, 1.0)
        now[0] = 200.0
        table.rebuild()

        async def rebuilt() -> bool:
            return table.rebuilds == 1 and table.get("job.ghost") is None

        await wait_until(rebuilt)
        # the unchanged key keeps the time its revision was first seen
        await wait_until(has_b)
        assert table.get("job.b").seen_at == 105.0  # type: ignore[union-attr]
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)


async def test_creates_racing_for_one_key_from_three_clients_end_in_one_create_and_key_exists(
    clients: list[NATS],
) -> None:
    """One job id submitted to three hosts at once: exactly one create wins, every other
    caller learns the key exists (never a bare wrong-last error, which a server >= 2.11
    answers while the winning write is still being replicated)."""
    p = prefix()
    await Bucket.ensure(clients[0].jetstream(), jobs_spec(p, 3))
    buckets = [Bucket(nc.jetstream(), jobs_spec(p, 3)) for nc in clients]
    for round_ in range(20):
        key = f"job.race{round_}"

        async def create(bucket: Bucket, value: bytes, key: str = key) -> str:
            try:
                await bucket.create_or_reclaim(key, value)
                return "created"
            except KeyExists as taken:
                return "exists:" + taken.entry.value.decode()

        outcomes = await asyncio.gather(
            *(create(b, f"v{i}".encode()) for i, b in enumerate(buckets))
        )
        winners = [i for i, o in enumerate(outcomes) if o == "created"]
        assert len(winners) == 1, outcomes
        stored = await buckets[0].leader_get(key)
        assert stored is not None and stored.value == f"v{winners[0]}".encode()
        assert all(o == f"exists:v{winners[0]}" for o in outcomes if o != "created")
