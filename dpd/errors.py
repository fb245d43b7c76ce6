"""The one error tree of dpd.

Every failure a client or a spool writer can see is a ``DpdError``; each class fixes the
envelope ``code`` (which is also the HTTP status). Foreign exceptions are translated at the
boundary where they happen (``raise BadRequest(...) from err``); the HTTP middleware and the
spool's rejection writer turn any ``DpdError`` into the same envelope (``dpd.envelope``).

    DpdError
    ├── BadRequest            400  unparseable body/file, bad query parameter
    ├── Unauthorized          401  missing or unknown API key
    ├── Forbidden             403  valid key without the permission
    ├── NotFound              404  unknown task, route or resource
    ├── MethodNotAllowed      405
    ├── Conflict              409  task_id exists, GPU busy
    ├── PayloadTooLarge       413
    ├── ValidationFailed      422  well-formed but invalid: data.errors lists every problem
    ├── TooManyRequests       429
    ├── InternalError         500  never carries a traceback to the client
    ├── BadGateway            502  an upstream service (the model hub) failed or answered badly
    └── InsufficientResources 507  not enough GPUs, disk space

``ConfigError`` is separate: it stops start-up and never reaches a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


class ConfigError(Exception):
    """A configuration problem; the message is one line naming the key and the expectation."""


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class DpdError(Exception):
    code: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        self.message = message or self.default_message
        self.data = data
        super().__init__(self.message)


class BadRequest(DpdError):
    code = 400
    default_message = "bad request"


class Unauthorized(DpdError):
    code = 401
    default_message = "missing or invalid API key"


class Forbidden(DpdError):
    code = 403
    default_message = "permission denied"


class NotFound(DpdError):
    code = 404
    default_message = "not found"


class MethodNotAllowed(DpdError):
    code = 405
    default_message = "method not allowed"


class Conflict(DpdError):
    code = 409
    default_message = "conflict"


class PayloadTooLarge(DpdError):
    code = 413
    default_message = "payload too large"


class ValidationFailed(DpdError):
    """Carries every problem found, not the first: ``data = {"errors": [...]}``."""

    code = 422
    default_message = "validation failed"

    def __init__(self, errors: list[FieldError], message: str | None = None) -> None:
        self.errors = list(errors)
        super().__init__(message, {"errors": [e.as_dict() for e in self.errors]})


class TooManyRequests(DpdError):
    code = 429
    default_message = "rate limit exceeded"


class InternalError(DpdError):
    code = 500
    default_message = "internal error"


class BadGateway(DpdError):
    """Not dpd's fault nor the client's: the service dpd relies on for this request failed."""

    code = 502
    default_message = "bad gateway"


class ServiceUnavailable(DpdError):
    """A service dpd needs for this request is down for now (fleet mode: the NATS queue);
    nothing was changed and the same request may be sent again."""

    code = 503
    default_message = "service unavailable"


class InsufficientResources(DpdError):
    code = 507
    default_message = "insufficient resources"
