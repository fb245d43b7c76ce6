"""Where an event goes on NATS and what it looks like there (DESIGN §5). Pure: no I/O.

Subjects: ``<prefix>.<scope>.<id>.<kind>`` for task events (scope "jobs" or "preprocess"),
``<prefix>.models.<download_id>.progress`` and ``<prefix>.gpus.<node>``.

Ids with dots. A NATS subject is split into tokens at ``.``, and a token may not hold
whitespace, ``*`` or ``>``. Task ids may contain dots (``^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$``),
so in the subject ONLY every ``.`` becomes ``~`` — a character task ids can never hold, so
two tasks never share a subject (``a.b`` -> ``a~b``, while ``a_b`` stays ``a_b``) and the
mapping can be undone (``id_from_token``). Anything else a token cannot hold (ids of other
scopes, node names) is written ``%XX``, and so are ``~`` and ``%`` themselves. The payload
always carries the real id. Subscribe to one task with ``subject_token(task_id)``.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote

SCOPES: Final = ("jobs", "preprocess", "models")
GPUS: Final = "gpus"
MSG_ID_HEADER: Final = "Nats-Msg-Id"
_DOT: Final = "~"
# one character a subject token cannot carry as is (or that the encoding itself uses)
_UNSAFE = re.compile(r"[\s*>~%\x00-\x1f\x7f]")
# one encoder for every payload: json.dumps with options builds a new one per call
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@lru_cache(maxsize=4096)  # the same few ids, thousands of times a second
def subject_token(identifier: str) -> str:
    """One subject token standing for ``identifier`` (reversible, see module doc)."""
    if not identifier:
        raise ValueError("an empty id has no subject token")
    escaped = _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m[0].encode()), identifier)
    return escaped.replace(".", _DOT)


def id_from_token(token: str) -> str:
    """The identifier ``subject_token`` was made from."""
    return unquote(token.replace(_DOT, "."), errors="strict")


def event_subject(prefix: str, event: dict[str, Any]) -> str:
    """The subject of a bus event (it carries ``scope``, ``task_id`` and ``type``)."""
    scope = event.get("scope", "jobs")
    if scope not in SCOPES:
        raise ValueError(f"unknown event scope {scope!r}")
    return f"{prefix}.{scope}.{subject_token(str(event['task_id']))}.{event['type']}"


def job_subject(prefix: str, task_id: str, kind: str) -> str:
    """``event_subject`` of a training job's event, without building the event."""
    return f"{prefix}.jobs.{subject_token(task_id)}.{kind}"


def gpu_subject(prefix: str, node: str) -> str:
    return f"{prefix}.{GPUS}.{subject_token(node)}"


def encode_payload(event: dict[str, Any], max_bytes: int = 0) -> bytes:
    """The event minus ``scope``: {type, task_id, node, seq, timestamp, data}.

    A payload over ``max_bytes`` (the server's max_payload; 0 = no limit) — a batch of very
    long log lines — keeps its seq but its data becomes ``{"truncated": true, "bytes": n}``
    (plus ``offset`` for logs): the subscriber sees no gap and can read the lines over REST.
    """
    payload = event
    if "scope" in event:
        payload = {key: value for key, value in event.items() if key != "scope"}
    encoded = _ENCODE(payload).encode()
    if max_bytes <= 0 or len(encoded) <= max_bytes:
        return encoded
    data = payload.get("data") or {}
    payload = dict(payload, data={"truncated": True, "bytes": len(encoded)})
    if isinstance(data, dict) and "offset" in data:
        payload["data"]["offset"] = data["offset"]
    return _ENCODE(payload).encode()


def message_id(event: dict[str, Any]) -> str:
    """JetStream's dedup key for a job event: ``<task_id>:<seq>`` (DESIGN §5)."""
    return f"{event['task_id']}:{event['seq']}"


def stream_subjects(prefix: str) -> list[str]:
    return [f"{prefix}.>"]
