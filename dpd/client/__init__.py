"""The dpd Python SDK (api.md §12): ``DpdClient(base_url, api_key)``, synchronous, stdlib only.

from dpd.client import DpdClient
client = DpdClient("http://127.0.0.1:5000", api_key="sk_...")
gpus = client.get_available_gpus()["data"]["available_gpus"]
"""

from dpd.client.client import DEFAULT_URL, DpdClient, StreamEvent
from dpd.client.errors import (
    BadRequestError,
    ConflictError,
    DpdError,
    ForbiddenError,
    InsufficientResourcesError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    UnauthorizedError,
    UnavailableError,
    ValidationError,
)

__all__ = [
    "DEFAULT_URL",
    "BadRequestError",
    "ConflictError",
    "DpdClient",
    "DpdError",
    "ForbiddenError",
    "InsufficientResourcesError",
    "NotFoundError",
    "RateLimitedError",
    "ServerError",
    "StreamEvent",
    "UnauthorizedError",
    "UnavailableError",
    "ValidationError",
]
