"""HTTP for the SDK over the standard library (no dependency): one request, one envelope.

Errors become ``dpd.client.errors`` exceptions here and nowhere else: an error envelope
raises the class of its code; a refused connection, a timeout or a non-HTTP answer raise
``UnavailableError``; an answer that is not an envelope raises ``ServerError``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from http.client import HTTPException, HTTPResponse
from typing import Any

from dpd.client.errors import ServerError, UnavailableError, error_for

Params = Mapping[str, Any]


def build_url(base_url: str, path: str, params: Params | None = None) -> str:
    query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
    url = base_url + path
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def open_url(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None = None,
    timeout: float = 30.0,
) -> HTTPResponse:
    """The open response of a 2xx answer; error answers raise."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as err:
        with err:
            raise _error_from(err.code, err.read()) from None
    except (urllib.error.URLError, OSError, HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise UnavailableError(f"cannot reach dpd at {url}: {reason}") from err


def request_envelope(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    try:
        with open_url(method, url, headers, body, timeout) as response:
            raw = response.read()
    except (TimeoutError, ConnectionError) as err:
        raise UnavailableError(f"dpd at {url} did not answer: {err}") from err
    envelope = _json(raw)
    if not isinstance(envelope, dict) or "code" not in envelope:
        raise ServerError(502, "the answer is not a dpd envelope", {"body": raw[:200].decode()})
    return envelope


def _error_from(status: int, raw: bytes) -> Exception:
    envelope = _json(raw)
    if isinstance(envelope, dict) and "message" in envelope:
        return error_for(int(envelope.get("code") or status), envelope["message"],
                         envelope.get("data"))  # fmt: skip
    return error_for(status, raw[:200].decode(errors="replace") or f"HTTP {status}")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
