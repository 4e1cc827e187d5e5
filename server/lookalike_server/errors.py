"""Errors that carry a gRPC-like status code as plain data, so layers below the service stay wire-free."""

from __future__ import annotations


class LookalikeError(Exception):
    """A failure the caller can act on; `code` is a gRPC status name such as "INVALID_ARGUMENT"."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(LookalikeError):
    code = "INVALID_ARGUMENT"


class NotFound(LookalikeError):
    code = "NOT_FOUND"


class AlreadyExists(LookalikeError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(LookalikeError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(LookalikeError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(LookalikeError):
    code = "UNAVAILABLE"


class Internal(LookalikeError):
    code = "INTERNAL"


class DeadlineExceeded(LookalikeError):
    code = "DEADLINE_EXCEEDED"


class StartupError(RuntimeError):
    """The server cannot start (a taken port, a missing Milvus, no GPU where one is required); the message
    says why and what to change. Raised before any call is served, so it carries no status code."""
