"""Errors of the dpd SDK: one class per envelope code, each carrying the envelope.

DpdError                      code, message, data (the envelope's), status
├── BadRequestError           400
├── UnauthorizedError         401
├── ForbiddenError            403
├── NotFoundError             404
├── ConflictError             409
├── ValidationError           422  data["errors"] lists every problem
├── RateLimitedError          429  retry_after (seconds)
├── ServerError               5xx
│   └── InsufficientResourcesError  507
└── UnavailableError          the daemon could not be reached (no envelope)
"""

from __future__ import annotations

from typing import Any


class DpdError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.status = code
        self.message = message
        self.data = data


class BadRequestError(DpdError):
    pass


class UnauthorizedError(DpdError):
    pass


class ForbiddenError(DpdError):
    pass


class NotFoundError(DpdError):
    pass


class ConflictError(DpdError):
    pass


class ValidationError(DpdError):
    @property
    def errors(self) -> list[dict[str, str]]:
        return list((self.data or {}).get("errors") or [])


class RateLimitedError(DpdError):
    @property
    def retry_after(self) -> float | None:
        value = (self.data or {}).get("retry_after")
        return float(value) if value is not None else None


class ServerError(DpdError):
    pass


class InsufficientResourcesError(ServerError):
    pass


class UnavailableError(DpdError):
    """No answer at all: connection refused, timeout, not HTTP."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


_BY_CODE: dict[int, type[DpdError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitedError,
    507: InsufficientResourcesError,
}


def error_for(code: int, message: str, data: Any = None) -> DpdError:
    """The exception for an error envelope (or an HTTP status without one)."""
    kind = _BY_CODE.get(code) or (ServerError if code >= 500 else DpdError)
    return kind(code, message, data)
