"""How the Python clients reach a server: the gRPC target, channel options (retries, round robin), TLS and
bearer-token credentials, and errors as LookalikeClientError."""


from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from .no_server import call_details

DEFAULT_SERVER = "localhost:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Calls that are safe to repeat: gRPC retries them on UNAVAILABLE (a replica restarting or gone).
_IDEMPOTENT = [
    {"service": "lookalike.v1.Images", "method": m} for m in ("Search", "Embed", "Get", "Delete")
] + [{"service": "lookalike.v1.Collections", "method": m} for m in ("ListCollections", "DescribeCollection")]
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": _IDEMPOTENT,
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def grpc_target(server: str) -> str:
    """HOST:PORT[,HOST:PORT...] as one gRPC target; a target with a scheme (dns:///, ipv4:) is kept."""
    if "://" in server or server.startswith(("ipv4:", "ipv6:", "unix:")):
        return server
    addresses = [a.strip() for a in server.split(",") if a.strip()]
    if len(addresses) == 1:
        return addresses[0]
    resolved = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            # A name: every address it resolves to joins the list.
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            resolved.extend(f"{info[4][0]}:{port}" for info in infos if info[0] == socket.AF_INET)
            continue
        resolved.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    scheme = "ipv6:" if resolved and all(r.startswith("[") for r in resolved) else "ipv4:"
    return scheme + ",".join(dict.fromkeys(resolved))


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class LookalikeClientError(Exception):
    """A call failed; `code` is the gRPC status name, `details` the server's message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def error_from_rpc(e: grpc.RpcError, server: str) -> LookalikeClientError:
    code = e.code().name
    return LookalikeClientError(code, call_details(code, e.details() or "", server))


def channel_options(server_name: str | None = None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        # Each client its own connections: gRPC otherwise shares one among all its channels to a target,
        # and a server's workers (serve --workers) are picked per connection.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def channel_credentials(
    secure: bool,
    ca_cert: str | os.PathLike | None,
    client_cert: str | os.PathLike | None,
    client_key: str | os.PathLike | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS setting is given; None means plaintext."""
    if not (secure or ca_cert or client_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_cert).read_bytes() if ca_cert else None,
        private_key=Path(client_key).read_bytes() if client_key else None,
        certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
    )
