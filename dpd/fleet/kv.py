"""NATS KV for the fleet: the buckets of FLEET.md §6.1–§6.3 and the writes every fleet
decision rests on (compare-and-set, marker-aware create, leader reads).

What it guarantees:
- ``cas_update`` applies ``fn`` to the key's current value and writes the result only if
  nobody wrote the key meanwhile (``Nats-Expected-Last-Subject-Sequence``); on a conflict it
  reads again and retries, ``max_attempts`` times at most. A write whose reply was lost
  (timeout, disconnect — expected during a leader change) is sent again unchanged (same
  ``Nats-Msg-Id``, same expected revision) until the stream answers, and a conflict then is
  settled by a read from the stream leader: reported as applied or not applied, never
  guessed; ``OutcomeUnknown`` when no answer comes within ``resolve_timeout``. A reply-less
  write still in flight cannot land after being reported not applied: its expected
  revision is stale by then. Every write carries its own ``Nats-Msg-Id`` and a lost one
  counts as applied only if the message the leader holds carries that id: another
  client's write of the very same bytes against the same revision (two increments from
  one read, two equal claims) is not ours.
- ``create_or_reclaim`` creates a key, or takes over a key whose last message is a delete,
  purge or a server's MaxAge limit marker (nats-py's ``create`` fails on markers, §3.4).
- ``leader_get`` reads through ``$JS.API.STREAM.MSG.GET`` (answered by the stream leader),
  never a direct get: decisions that are not a CAS use it (§3.4).
- ``ensure_bucket`` creates a bucket as §6 specifies, or uses the existing one and logs a
  warning naming every difference (nodes of different versions must not flap configs).

What it does not trust: ``kv.get`` and watches (any replica; a watcher that was cut off may
never learn that a key expired, §3.4). The watched table (``dpd.fleet.table``) is a hint.

Known weakness: resolving a lost write whose key then received ``history`` more writes
before the leader read answered is impossible (our message may be trimmed): that case
raises ``OutcomeUnknown`` rather than guess. Under a leader kill with three clients
writing one key (history 10) it happens about once in a few runs: the others write on
while the resend waits out the election.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js import api as js_api

log = logging.getLogger("dpd.fleet.kv")

KV_OPERATION: Final = "KV-Operation"
EXPECTED_LAST_SUBJECT_SEQUENCE: Final = "Nats-Expected-Last-Subject-Sequence"
MARKER_REASON: Final = "Nats-Marker-Reason"
MSG_ID: Final = "Nats-Msg-Id"
WRONG_LAST: Final = 10071  # the key's last revision is another one
IN_PROCESS: Final = 10164  # another write of the key is still being replicated
WRONG_LAST_SEQUENCE: Final = (WRONG_LAST, IN_PROCESS)
DEFAULT_ATTEMPTS: Final = 8
CREATE_ATTEMPTS: Final = 8
RESOLVE_TIMEOUT: Final = 20.0  # a leader election takes 4–9 s (FLEET.md §3.6)
UNAVAILABLE_PAUSE: Final = 0.25
CONFLICT_PAUSE_BASE: Final = 0.001
CONFLICT_PAUSE_CAP: Final = 0.1
# read or write errors after which nothing was stored and a retry may succeed
TRANSIENT: Final = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
JOBS_HISTORY: Final = 10
JOBS_MAX_VALUE: Final = 256 * 1024
NODES_MAX_VALUE: Final = 64 * 1024
ALIVE_MARKER_TTL: Final = 60.0


class KvError(Exception):
    """A fleet KV operation failed; the message says which and why."""


class CasConflict(KvError):
    """Every attempt met a newer revision (someone else kept writing the key)."""


class OutcomeUnknown(KvError):
    """A write's reply was lost and the stream leader could not say whether it was stored."""


class KeyExists(KvError):
    """``create_or_reclaim`` found a live value under the key."""

    def __init__(self, key: str, entry: Entry) -> None:
        super().__init__(f"{key} exists (revision {entry.revision})")
        self.entry = entry


class WrongLast(KvError):
    """The leader refused a write: the key's last revision is not the expected one."""


class InProcess(WrongLast):
    """The leader refused a write because another write of the key is still being
    replicated (servers >= 2.11, error 10164): nothing of ours was stored by this answer,
    but the key's last revision is not known yet."""


class Unavailable(KvError):
    """The leader answered that it cannot take the write now (no responders, 503, an
    election in progress): nothing was stored."""


class NotStored(Unavailable):
    """A write whose reply was lost, resolved by a leader read: it was not stored."""


class Operation(StrEnum):
    PUT = "PUT"
    DELETE = "DEL"
    PURGE = "PURGE"
    MARKER = "MARKER"  # a server's limit marker (Nats-Marker-Reason), e.g. MaxAge expiry


@dataclass(frozen=True)
class Entry:
    """One message of a key, as the stream holds it."""

    key: str
    value: bytes
    revision: int
    operation: Operation

    @property
    def present(self) -> bool:
        """False for deletes, purges and limit markers: the key is absent."""
        return self.operation is Operation.PUT


def operation_of(headers: dict[str, str] | None) -> Operation:
    if not headers:
        return Operation.PUT
    if headers.get(MARKER_REASON):
        return Operation.MARKER
    op = headers.get(KV_OPERATION)
    if op == "DEL":
        return Operation.DELETE
    if op == "PURGE":
        return Operation.PURGE
    return Operation.PUT


def conflict_pause(conflicts: int) -> float:
    """Seconds to wait after the ``conflicts``-th lost CAS in a row: exponential with full
    jitter, so that writers racing for one key spread out instead of retrying in step."""
    return random.uniform(0.0, min(CONFLICT_PAUSE_CAP, CONFLICT_PAUSE_BASE * 2.0**conflicts))


# ---------------------------------------------------------------------- bucket specs


@dataclass(frozen=True)
class BucketSpec:
    """A bucket as FLEET.md §6 wants it; ``stream_config`` is the exact stream config."""

    bucket: str
    history: int
    max_value_size: int
    replicas: int
    max_age: float = 0.0  # seconds; 0 = keys never expire
    marker_ttl: float = 0.0  # seconds; limit markers need server API level 1

    @property
    def stream(self) -> str:
        return f"KV_{self.bucket}"

    def stream_config(self) -> js_api.StreamConfig:
        window = min(self.max_age, 120.0) if self.max_age else 120.0
        return js_api.StreamConfig(
            name=self.stream,
            subjects=[f"$KV.{self.bucket}.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            num_replicas=self.replicas,
            max_msgs_per_subject=self.history,
            max_msgs=-1,
            max_bytes=-1,
            max_age=self.max_age,
            max_msg_size=self.max_value_size,
            max_consumers=-1,
            discard=js_api.DiscardPolicy.NEW,
            duplicate_window=window,
            allow_rollup_hdrs=True,
            deny_delete=True,
            allow_direct=True,
            allow_msg_ttl=True,
            compression=js_api.StoreCompression.S2,
            subject_delete_marker_ttl=self.marker_ttl or None,
        )


def bucket_name(prefix: str, role: str) -> str:
    """``<prefix>_<role>``; a dotted subject prefix becomes underscores (bucket names
    allow no dots)."""
    return f"{prefix.replace('.', '_')}_{role}"


def jobs_spec(prefix: str, replicas: int) -> BucketSpec:
    return BucketSpec(bucket_name(prefix, "jobs"), JOBS_HISTORY, JOBS_MAX_VALUE, replicas)


def nodes_spec(prefix: str, replicas: int) -> BucketSpec:
    return BucketSpec(bucket_name(prefix, "nodes"), 1, NODES_MAX_VALUE, replicas)


def alive_spec(prefix: str, replicas: int, node_ttl: float) -> BucketSpec:
    return BucketSpec(
        bucket_name(prefix, "alive"), 1, NODES_MAX_VALUE, replicas, node_ttl, ALIVE_MARKER_TTL
    )


COMPARED: Final = (
    "num_replicas",
    "max_msgs_per_subject",
    "max_age",
    "max_msg_size",
    "storage",
    "discard",
    "deny_delete",
    "allow_direct",
    "allow_rollup_hdrs",
    "subject_delete_marker_ttl",
)


def config_differences(want: js_api.StreamConfig, have: js_api.StreamConfig) -> list[str]:
    """``field: have (wanted want)`` for every compared field that differs."""
    out = []
    for name in COMPARED:
        wanted, actual = getattr(want, name), getattr(have, name)
        if name == "subject_delete_marker_ttl":
            wanted, actual = wanted or 0, actual or 0
        if name == "max_age":
            wanted, actual = float(wanted or 0), float(actual or 0)
        if wanted != actual:
            out.append(f"{name}: {_plain(actual)} (wanted {_plain(wanted)})")
    return out


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


async def ensure_stream(js: JetStreamContext, want: js_api.StreamConfig) -> js_api.StreamConfig:
    """Create ``want`` if absent; if present, log its differences and use it as it is."""
    assert want.name is not None
    try:
        have = (await js.stream_info(want.name)).config
    except nats.js.errors.NotFoundError:
        try:
            return (await js.add_stream(want)).config
        except nats.js.errors.BadRequestError:
            # another node created it a moment ago, perhaps with other settings
            have = (await js.stream_info(want.name)).config
    differences = config_differences(want, have)
    if differences:
        log.warning(
            "stream %s differs from what this dpd would create; using it as it is "
            "(`dpd fleet init` applies changes): %s",
            want.name,
            "; ".join(differences),
        )
    return have


# --------------------------------------------------------------------------- bucket


WriteFn = Callable[["Entry | None"], "bytes | None"]


@dataclass(frozen=True)
class CasResult:
    """What ``cas_update`` did: ``written`` False when ``fn`` wanted no change."""

    entry: Entry | None  # the key's value now (None: absent and fn wrote nothing)
    written: bool
    attempts: int
    lost_replies: int  # replies lost and resolved by a leader read (stored or not)


class Bucket:
    """One KV bucket (``dpd_jobs``, ``dpd_nodes`` or ``dpd_alive``) on one connection."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: BucketSpec,
        config: js_api.StreamConfig | None = None,
        resolve_timeout: float = RESOLVE_TIMEOUT,
    ) -> None:
        self.js = js
        self.spec = spec
        self.config = config or spec.stream_config()
        self.stream = spec.stream
        self.prefix = f"$KV.{spec.bucket}."
        self.resolve_timeout = resolve_timeout

    @classmethod
    async def ensure(cls, js: JetStreamContext, spec: BucketSpec, **kw: Any) -> Bucket:
        """The bucket, created per §6 if absent (warn-only if it differs)."""
        return cls(js, spec, await ensure_stream(js, spec.stream_config()), **kw)

    @property
    def effective_max_age(self) -> float:
        """The stream's own ``max_age`` (for ``dpd_alive``: the effective ``node_ttl``)."""
        return float(self.config.max_age or 0)

    def subject(self, key: str) -> str:
        return self.prefix + key

    # -- reads ---------------------------------------------------------------

    async def leader_get(self, key: str) -> Entry | None:
        """The key's last message as the stream leader holds it; None if it never existed
        (or was trimmed). Deleted and expired keys come back with ``present`` False."""
        return await self._leader_msg(subject=self.subject(key))

    async def last_revision(self) -> int:
        """The bucket's last revision (its stream's last sequence), as the stream leader
        answers ``STREAM.INFO``: what a watcher must have applied to be this recent."""
        info = await self.js.stream_info(self.stream)
        return int(info.state.last_seq or 0)

    async def get(self, key: str) -> Entry | None:
        """A direct get (any replica, maybe stale): a hint, for read → decide → CAS."""
        try:
            msg = await self.js.get_msg(self.stream, subject=self.subject(key), direct=True)
        except nats.js.errors.NotFoundError:
            return None
        return self._entry(msg)

    async def _leader_msg(
        self, subject: str, seq: int | None = None, next_after: bool = False
    ) -> Entry | None:
        """The leader's message on ``subject``: the last one; with ``seq``, the one at that
        sequence; with ``next_after`` too, the first at or after it."""
        msg = await self._leader_raw(subject, seq, next_after)
        return None if msg is None else self._entry(msg)

    async def _leader_raw(
        self, subject: str, seq: int | None = None, next_after: bool = False
    ) -> js_api.RawStreamMsg | None:
        """``_leader_msg`` with the message's headers."""
        try:
            if seq is not None and not next_after:  # nats-py: a subject means last_by_subj
                msg = await self.js.get_msg(self.stream, seq=seq, direct=False)
            else:
                msg = await self.js.get_msg(
                    self.stream, seq=seq, subject=subject, direct=False, next=next_after
                )
        except nats.js.errors.NotFoundError:
            return None
        if msg.subject != subject:
            return None
        return msg

    def _entry(self, msg: js_api.RawStreamMsg) -> Entry:
        subject = msg.subject or ""
        return Entry(
            key=subject[len(self.prefix) :],
            value=msg.data or b"",
            revision=int(msg.seq or 0),
            operation=operation_of(msg.headers),
        )

    # -- writes --------------------------------------------------------------

    async def write(self, key: str, value: bytes, last: int) -> int:
        """Store ``value`` if the key's last revision is ``last`` (0: the key has never
        been written); the new revision. Raises ``WrongLast`` (someone wrote first),
        ``Unavailable`` (definitely not stored), ``OutcomeUnknown``."""
        return (await self._write(key, value, last))[0]

    async def _write(self, key: str, value: bytes, last: int) -> tuple[int, bool]:
        """``write``, and whether its reply was lost and resolved by a leader read."""
        headers = {EXPECTED_LAST_SUBJECT_SEQUENCE: str(last), MSG_ID: uuid.uuid4().hex}
        try:
            return await self._publish(key, value, headers), False
        except (nats.errors.TimeoutError, nats.errors.ConnectionClosedError, TimeoutError) as err:
            return await self._resolve(key, value, headers, err), True

    async def _publish(self, key: str, value: bytes, headers: dict[str, str]) -> int:
        try:
            ack = await self.js.publish(self.subject(key), value, headers=headers)
        except nats.js.errors.APIError as err:
            if err.err_code == IN_PROCESS:
                raise InProcess(f"{key}: {err.description}") from err
            if err.err_code == WRONG_LAST:
                raise WrongLast(f"{key}: {err.description}") from err
            raise Unavailable(f"{key}: {err}") from err
        except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as err:
            raise Unavailable(f"{key}: no stream answered") from err
        return int(ack.seq)

    async def _resolve(
        self, key: str, value: bytes, headers: dict[str, str], err: BaseException
    ) -> int:
        """The reply of a write was lost. Send the very same message again (same
        ``Nats-Msg-Id``, same expected revision) until the leader answers: a PubAck (a
        duplicate of the first, or the first never arrived) means stored, exactly once —
        two messages expecting one revision cannot both pass. A wrong-last answer means a
        later message is stored: the first one after the expected revision is ours (it
        carries our message id) or not, and ours can never be stored later, its
        expectation being stale for good. An in-process answer (another write of the key
        still being replicated, perhaps ours) settles nothing: sent again after a pause."""
        log.info("%s: reply of a write lost (%r); sending it again", key, err)
        last = int(headers[EXPECTED_LAST_SUBJECT_SEQUENCE])
        deadline = time.monotonic() + self.resolve_timeout
        while True:
            try:
                return await self._publish(key, value, headers)
            except InProcess as again:
                if time.monotonic() > deadline:
                    raise OutcomeUnknown(f"{key}: the key stayed in process ({again})") from err
                await asyncio.sleep(UNAVAILABLE_PAUSE)
            except WrongLast:
                return await self._stored_as(key, headers[MSG_ID], last)
            except (Unavailable, *TRANSIENT, nats.errors.ConnectionClosedError) as again:
                if time.monotonic() > deadline:
                    raise OutcomeUnknown(f"{key}: no answer from the stream ({again!r})") from err
                await asyncio.sleep(UNAVAILABLE_PAUSE)

    async def _stored_as(self, key: str, msg_id: str, last: int) -> int:
        """After a wrong-last answer to our retry: our revision if the first message after
        ``last`` carries our message id ``msg_id``, else ``NotStored`` (``OutcomeUnknown``
        if trimming hid it). Never the value: another client may have written the same
        bytes against the same revision."""
        subject = self.subject(key)
        first_after = await self._leader_raw(subject, seq=last + 1, next_after=True)
        if first_after is None:
            raise NotStored(f"{key}: not stored (the leader holds nothing after {last})")
        revision = int(first_after.seq or 0)
        if (first_after.headers or {}).get(MSG_ID) == msg_id:
            return revision
        # another write follows ``last``: ours was not stored — unless trimming removed it
        if last > 0 and await self._leader_msg(subject, seq=last) is not None:
            raise NotStored(f"{key}: not stored (revision {revision} is not ours)")
        if last == 0 and await self._retained(subject) < self.spec.history:
            raise NotStored(f"{key}: not stored (revision {revision} is not ours)")
        raise OutcomeUnknown(f"{key}: the key's history no longer shows whether it was stored")

    async def _retained(self, subject: str) -> int:
        info = await self.js.stream_info(self.stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def create_or_reclaim(self, key: str, value: bytes) -> int:
        """Create ``key``; take it over if its last message is a delete, purge or limit
        marker; ``KeyExists`` if it holds a value. The new revision.

        A wrong-last answer while the leader holds no value for the key happens when
        another write of the key is still being replicated (servers >= 2.11 refuse a
        second expectation on a subject with a proposal in flight: error 10164): it is read
        again after a short pause, ``CREATE_ATTEMPTS`` times; then ``WrongLast``."""
        try:
            return await self.write(key, value, 0)
        except WrongLast:
            pass
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            last = await self.leader_get(key)
            if last is not None and last.present:
                raise KeyExists(key, last)
            try:
                return await self.write(key, value, last.revision if last else 0)
            except WrongLast:
                await asyncio.sleep(conflict_pause(attempt + 3))
        current = await self.leader_get(key)
        if current is not None and current.present:
            raise KeyExists(key, current)
        raise WrongLast(f"{key}: the key kept changing while it was created")

    async def cas_update(
        self,
        key: str,
        fn: WriteFn,
        max_attempts: int = DEFAULT_ATTEMPTS,
        patience: float | None = None,
    ) -> CasResult:
        """Read the key, ``fn(entry or None)`` → new value (None: no change), write it
        against the read revision; on a newer revision read again and retry. The first read
        is a direct get (cheap, maybe stale); retries read from the leader. ``fn`` may run
        several times and must be pure; its exceptions propagate.

        Raises ``CasConflict`` after ``max_attempts`` conflicts; ``Unavailable`` when the
        stream could not be read or written for ``patience`` seconds (default: the resolve
        timeout; an election takes 4–9 s); ``OutcomeUnknown`` as ``write``."""
        deadline = time.monotonic() + (self.resolve_timeout if patience is None else patience)
        conflicts = lost = 0
        from_leader = False
        while True:
            try:
                current = await (self.leader_get(key) if from_leader else self.get(key))
                live = current if current is not None and current.present else None
                value = fn(live)
                if value is None:
                    return CasResult(live, False, conflicts + 1, lost)
                last = current.revision if current is not None else 0
                revision, resolved = await self._write(key, value, last)
            except WrongLast:
                conflicts += 1
                if conflicts >= max_attempts:
                    raise CasConflict(f"{key}: {conflicts} conflicts in a row") from None
                await asyncio.sleep(conflict_pause(conflicts))
            except (Unavailable, *TRANSIENT) as err:  # nothing stored: try again
                lost += isinstance(err, NotStored)
                if time.monotonic() > deadline:
                    raise Unavailable(f"{key}: unavailable past the patience: {err}") from err
                await asyncio.sleep(UNAVAILABLE_PAUSE)
            else:
                entry = Entry(key, value, revision, Operation.PUT)
                return CasResult(entry, True, conflicts + 1, lost + resolved)
            from_leader = True
