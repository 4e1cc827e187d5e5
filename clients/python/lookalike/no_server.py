"""What a call says when no lookalike server answers at its address: how to start one, or where to point."""

from __future__ import annotations

# gRPC's details when nothing listens at the address, or its name does not resolve (a server that answers
# and fails, say on TLS, says something else and keeps its own message).
_NOTHING_ANSWERS = (
    "Failed to connect to remote host",
    "Connection refused",
    "errors resolving",
    "DNS resolution failed",
    "No route to host",
    "Network is unreachable",
)


def no_server_message(server: str, details: str) -> str:
    return (f"no lookalike server answers at {server}: start one with `lookalike serve` (by default on "
            f"localhost:50051), or point at a running one with --server HOST:PORT (Client(server=...) in Python). "
            f"gRPC said: {details}")


def call_details(code: str, details: str, server: str) -> str:
    """A failed call's details as the client reports them: gRPC's own, unless no server answers at `server`."""
    if code == "UNAVAILABLE" and any(sign in details for sign in _NOTHING_ANSWERS):
        return no_server_message(server, details)
    return details
