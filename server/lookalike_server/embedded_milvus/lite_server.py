"""`milvus-lite server` as a child process: the Milvus Lite engine behind a real Milvus gRPC port.

`serve --milvus-embedded lite-server` runs one; so do the tests that share one Milvus between replicas.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymilvus import MilvusClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MilvusLiteServer:
    """Starts `milvus-lite server --data-dir DIR --port PORT`; `uri` is ready once `start()` returns."""

    def __init__(self, data_dir: Path, port: int = 0) -> None:
        self.data_dir = data_dir
        self.port = port or _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "milvus-lite-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).with_name("milvus-lite")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(exe), "server", "--data-dir", str(self.data_dir), "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: {self.log_path.read_text()[-2000:]}")
            try:
                client = MilvusClient(self.uri, timeout=2)
                client.list_collections()
                client.close()
                return self.uri
            except Exception:  # not answering yet
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"milvus-lite server did not answer in {timeout:.0f} s")

    def exited(self) -> bool:
        """True once a started server has gone away (crashed or killed), until start() runs again."""
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
