"""A real `lookalike serve` on a free loopback port, for tests and benchmarks alike (no pytest here)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lookalike import Client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`lookalike serve` as a user runs it, in its own folder, stopped with SIGTERM."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"serve-{self.port}.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", "serve", "--address", self.address, *args],
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Milvus Lite unless a caller names another store: the default ("auto") depends on what is installed.
            env={**os.environ, "LOOKALIKE_MILVUS_EMBEDDED": "lite", **(env or {})},
        )

    def log(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Waits until the server reports SERVING; raises RuntimeError with its log's tail if it does not."""
        with Client(self.address) as client:
            try:
                client.wait_until_ready(timeout)
            except TimeoutError as e:
                raise RuntimeError(f"{e}\n--- server log ---\n{self.log()[-4000:]}") from None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
