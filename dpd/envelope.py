"""The response envelope of the API document: ``{"code", "message", "data", "timestamp"}``.

A rejected spool file gets the very same envelope in ``<name>.error.json`` as a REST caller.
"""

from __future__ import annotations

import time
from typing import Any

from dpd.errors import DpdError


def make_envelope(code: int, message: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "data": data, "timestamp": int(time.time())}


def error_envelope(err: DpdError) -> dict[str, Any]:
    return make_envelope(err.code, err.message, err.data)
