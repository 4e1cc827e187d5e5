"""Container health check: exit 0 when lookalike's grpc.health.v1 service answers SERVING, 1 otherwise.

The images run it as their HEALTHCHECK (grpc_health_probe is not in them; grpcio-health-checking is, as a
dependency of lookalike). It asks 127.0.0.1 on the port of LOOKALIKE_ADDRESS, or the HOST:PORT given.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0
DEFAULT_PORT = 50051


def target(argv: list[str], env: dict[str, str]) -> str:
    """The address to ask: argv[1] if given, else loopback on the port lookalike listens on."""
    if len(argv) > 1:
        return argv[1]
    port = env.get("LOOKALIKE_ADDRESS", "").rsplit(":", 1)[-1]
    return f"127.0.0.1:{port if port.isdigit() else DEFAULT_PORT}"


def main() -> int:
    address = target(sys.argv, dict(os.environ))
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as e:
            print(f"{address}: {e.code().name}: {e.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
