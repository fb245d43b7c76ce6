"""The API key store: ``<state_dir>/keys.json``, shared by the daemon and ``dpd keys``.

Guarantees:
- A raw key (``sk_`` + 32 random bytes, url-safe) exists only in the answer to ``create``; the
  file holds its SHA-256. A fast unsalted hash is right here: the keys are 256-bit random
  secrets, not passwords, so there is nothing to brute-force or to look up in a table, and the
  lookup cost stays at a microsecond per request. Lookup goes by hash, then the stored hash is
  compared with ``hmac.compare_digest`` so the comparison leaks no timing either.
- keys.json is replaced only through ``write_json_atomic`` (mode 0600); the previous
  generation is kept as ``keys.json.old`` (reliability.md AF4) and read when keys.json is
  unreadable. Writers (the daemon, ``dpd keys``) serialise on ``keys.json.lock`` (flock).
- A reader sees a change made by another process: ``refresh`` re-reads the file when its
  inode, size or mtime changed (a rename always changes the inode).

Not trusted: the file's contents; an entry that does not parse is skipped and logged.
Blocking: every method may touch the disk; the daemon calls them from a worker thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dpd.errors import NotFound
from dpd.spool.atomic import write_atomic, write_json_atomic

log = logging.getLogger("dpd.keys")

# A century: longer is "never" (0) in all but name, and datetime cannot add 10**6 days.
MAX_EXPIRE_DAYS = 36_600
EXPIRE_DAYS_RULE = f"0 (never) or a whole number of days up to {MAX_EXPIRE_DAYS}"


def valid_expire_days(days: object) -> bool:
    """True for an int (not a bool) from 0 to MAX_EXPIRE_DAYS."""
    return isinstance(days, int) and not isinstance(days, bool) and 0 <= days <= MAX_EXPIRE_DAYS


PERMISSIONS = ("training", "preprocessing", "model_download", "admin")
KEY_PREFIX = "sk_"
KEYS_FILE = "keys.json"
FILE_MODE = 0o600
SCHEMA_VERSION = 1


def new_raw_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def iso(moment: datetime | None) -> str | None:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else None


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True)
class ApiKey:
    """One key as stored: everything but the key itself."""

    key_id: str
    user: str
    permissions: tuple[str, ...]
    created_at: str
    expires_at: str | None
    revoked: bool
    key_hash: str

    def usable(self, now: datetime) -> bool:
        expires = parse_iso(self.expires_at)
        return not self.revoked and (expires is None or now < expires)

    def public(self) -> dict[str, Any]:
        """What may be shown (``dpd keys list``): no hash, no secret."""
        view = asdict(self)
        del view["key_hash"]
        view["permissions"] = list(self.permissions)
        return view

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ApiKey:
        permissions = tuple(str(p) for p in raw["permissions"])
        unknown = set(permissions) - set(PERMISSIONS)
        if unknown:
            raise ValueError(f"unknown permission(s) {sorted(unknown)}")
        key_hash = str(raw["key_hash"])
        if len(key_hash) != 64:
            raise ValueError("key_hash is not a SHA-256 hex digest")
        parse_iso(raw.get("expires_at"))
        return cls(
            key_id=str(raw["key_id"]),
            user=str(raw["user"]),
            permissions=permissions,
            created_at=str(raw["created_at"]),
            expires_at=raw.get("expires_at"),
            revoked=bool(raw.get("revoked", False)),
            key_hash=key_hash,
        )


def check_permissions(permissions: Iterable[str]) -> tuple[str, ...]:
    """Known permissions, de-duplicated in the order given; ValueError names the bad ones."""
    chosen = tuple(dict.fromkeys(permissions))
    unknown = [p for p in chosen if p not in PERMISSIONS]
    if unknown:
        raise ValueError(
            f"unknown permission(s) {', '.join(unknown)}; known: {', '.join(PERMISSIONS)}"
        )
    if not chosen:
        raise ValueError(f"at least one permission is needed: {', '.join(PERMISSIONS)}")
    return chosen


class KeyStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.old_path = path.with_name(path.name + ".old")
        self.lock_path = path.with_name(path.name + ".lock")
        self._lock = threading.Lock()
        self._keys: dict[str, ApiKey] = {}  # key_id -> key
        self._by_hash: dict[str, ApiKey] = {}
        self._signature: tuple[int, int, int] | None = None

    # ---------------------------------------------------------------- reading

    def refresh(self) -> bool:
        """Re-read keys.json if another process replaced it; True if it was read."""
        signature = _signature(self.path)
        if signature is not None and signature == self._signature:
            return False
        keys = self._read()
        with self._lock:
            self._install(keys, signature)
        return True

    def changed_on_disk(self) -> bool:
        """Cheap (one stat): whether ``refresh`` would read the file again."""
        return _signature(self.path) != self._signature

    def lookup(self, raw_key: str, now: datetime | None = None) -> ApiKey | None:
        """The usable key matching ``raw_key``, or None (unknown, revoked or expired).
        Uses what was last read; call ``refresh`` to pick up other processes' changes."""
        digest = hash_key(raw_key)
        with self._lock:
            found = self._by_hash.get(digest)
        if found is None or not hmac.compare_digest(found.key_hash, digest):
            return None
        return found if found.usable(now or datetime.now(UTC)) else None

    def list_keys(self) -> list[ApiKey]:
        self.refresh()
        with self._lock:
            return sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id))

    # ---------------------------------------------------------------- writing

    def create(
        self,
        user: str,
        permissions: Iterable[str],
        expire_days: int = 0,
        now: datetime | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key: returns the raw key (shown once, never stored) and its record."""
        chosen = check_permissions(permissions)
        if not valid_expire_days(expire_days):
            raise ValueError(f"expire_days must be {EXPIRE_DAYS_RULE}, got {expire_days!r}")
        if not user.strip():
            raise ValueError("the user name must not be empty")
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        raw = new_raw_key()
        record = ApiKey(
            key_id="key_" + secrets.token_hex(6),
            user=user.strip(),
            permissions=chosen,
            created_at=iso(moment) or "",
            expires_at=iso(moment + timedelta(days=expire_days)) if expire_days > 0 else None,
            revoked=False,
            key_hash=hash_key(raw),
        )
        with self._exclusive() as keys:
            keys[record.key_id] = record
        return raw, record

    def revoke(self, key_id: str) -> ApiKey:
        """Mark a key revoked (kept in the file so ``list`` still shows it)."""
        with self._exclusive() as keys:
            found = keys.get(key_id)
            if found is None:
                raise NotFound(f"no API key {key_id}", {"key_id": key_id})
            keys[key_id] = replace(found, revoked=True)
            return keys[key_id]

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[dict[str, ApiKey]]:
        """Read-modify-write under the file lock; the dict yielded is written back."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            keys = self._read()
            yield keys
            self._write(keys)
            with self._lock:
                self._install(keys, _signature(self.path))
        finally:
            os.close(fd)  # releases the flock

    def _write(self, keys: dict[str, ApiKey]) -> None:
        document = {
            "schema_version": SCHEMA_VERSION,
            "keys": [asdict(k) | {"permissions": list(k.permissions)} for k in keys.values()],
        }
        with contextlib.suppress(FileNotFoundError):
            write_atomic(self.old_path, self.path.read_bytes(), FILE_MODE)
        write_json_atomic(self.path, document, FILE_MODE)

    def _read(self) -> dict[str, ApiKey]:
        for path in (self.path, self.old_path):
            try:
                document = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as err:
                log.error("%s is unreadable (%s); trying the previous generation", path, err)
                continue
            return _parse_keys(document, path)
        return {}

    def _install(self, keys: dict[str, ApiKey], signature: tuple[int, int, int] | None) -> None:
        self._keys = dict(keys)
        self._by_hash = {k.key_hash: k for k in keys.values()}
        self._signature = signature


def _parse_keys(document: Any, path: Path) -> dict[str, ApiKey]:
    entries = document.get("keys", []) if isinstance(document, dict) else []
    keys: dict[str, ApiKey] = {}
    for entry in entries:
        try:
            key = ApiKey.from_dict(entry)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            log.error("%s: skipping an unreadable key entry (%s)", path, err)
            continue
        keys[key.key_id] = key
    return keys


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
