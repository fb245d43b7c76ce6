"""The local admin key: ``<state_dir>/local.key``, so that the first ``dpd ls`` after ``dpd serve``
works for the person who started it, with no ``dpd keys create`` first.

The daemon makes the file at start when it is missing (a raw ``sk_`` key and a newline) and
accepts its key as an admin key on loopback connections only (``dpd.http.auth``); the CLI on
the same machine reads it when it is given no key and talks to this daemon's loopback address
(``dpd.client.local_key``). Whoever can read the file is an administrator of this daemon,
exactly as with Jupyter's token file or Docker's socket; remote callers still need a key from
the key store.

Guarantees:
- The file is never readable by others: mode 0600 for the daemon's user; 0640 when the state
  directory belongs to group ``dpd`` (the Debian package: members of that group are the
  daemon's local users, see packaging/OPERATOR.md). The mode is set again at every start.
- It is written atomically; a file that is not a well-formed key is replaced at start.

Not trusted: the file's content (checked for the key's shape); a symlink is not followed.
Known weakness: the key changes only when the file is deleted and the daemon restarted.
"""

from __future__ import annotations

import grp
import logging
import os
import re
from pathlib import Path

from dpd.keys import new_raw_key
from dpd.spool.atomic import write_atomic

log = logging.getLogger("dpd.local_key")

LOCAL_KEY_FILE = "local.key"
SHARED_GROUP = "dpd"  # a state directory of this group shares the key with the group
PRIVATE_MODE = 0o600
GROUP_MODE = 0o640
KEY_SHAPE = re.compile(r"sk_[A-Za-z0-9_-]{43}")
MAX_FILE_BYTES = 256


def local_key_path(state_dir: Path) -> Path:
    return Path(state_dir) / LOCAL_KEY_FILE


def read_local_key(path: Path) -> str | None:
    """The key in ``path``, or None when the file is missing or not a key. A file this user
    may not read raises PermissionError (the CLI tells the user why)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if isinstance(err, PermissionError):
            raise
        return None  # ELOOP (a symlink) and the like: not our file
    with os.fdopen(fd, "rb") as file:
        text = file.read(MAX_FILE_BYTES).decode("ascii", errors="replace").strip()
    return text if KEY_SHAPE.fullmatch(text) else None


def ensure_local_key(state_dir: Path) -> str:
    """The key of ``<state_dir>/local.key``, made if missing or malformed, with its mode and
    group set as the module header says. Blocking; raises OSError when the disk refuses."""
    path = local_key_path(state_dir)
    key = read_local_key(path)
    if key is None:
        key = new_raw_key()
        write_atomic(path, (key + "\n").encode(), PRIVATE_MODE)
        log.info("made the local admin key %s", path)
    group = shared_group(Path(state_dir))
    if group is not None and os.stat(path).st_gid != group:
        try:
            os.chown(path, -1, group)
        except PermissionError as err:  # not a member of the group: keep the key private
            log.warning("%s stays private to this user: cannot give it to group %s (%s)",
                        path, SHARED_GROUP, err.strerror)  # fmt: skip
            group = None
    os.chmod(path, GROUP_MODE if group is not None else PRIVATE_MODE)
    return key


def prepare_local_key(state_dir: Path) -> str:
    """``ensure_local_key`` for the daemon's start: a failure is logged, not fatal (local
    users then need a key from ``dpd keys create``); "" means no local key."""
    try:
        return ensure_local_key(state_dir)
    except OSError as err:
        log.error("cannot prepare the local admin key in %s: %s", state_dir, err)
        return ""


def shared_group(state_dir: Path) -> int | None:
    """The gid of group ``dpd`` when the state directory belongs to it, else None."""
    try:
        gid = os.stat(state_dir).st_gid
        return gid if grp.getgrgid(gid).gr_name == SHARED_GROUP else None
    except (KeyError, OSError):
        return None
