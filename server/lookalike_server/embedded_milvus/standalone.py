"""Run a real Milvus standalone server (PyPI package ``milvus`` 2.3.5) as a managed child process.

`serve --milvus-embedded standalone` (and `auto` in a new data directory) runs one in its data directory; the
tests run one too.  The ``milvus`` package is a dependency of ``lookalike[server]``, installed beside pymilvus
(it has no Python dependencies); `binaries` extracts its server once per user, and `launcher` (this
interpreter running that file as a script) starts it::

    with MilvusStandalone(tmp_path) as server:
        client = MilvusClient(server.uri)

Every port the server opens (proxy, internal gRPC ports, embedded etcd client *and*
peer port, metrics/healthz) is chosen free per instance, so several instances and a
developer's own Milvus on 19530 can run side by side.

The launcher runs in a new session (process group).  ``stop()`` sends SIGTERM (the
launcher forwards it to the ``milvus`` binary), waits a few seconds, then SIGKILLs the
whole process group and the ``milvus`` binary by pid.  The launcher also kills the
server when its parent (the test process) dies, so no server outlives the tests.

Things to know when testing against it (Milvus 2.3.5):

* Collections default to Bounded consistency: a search/query/get right after an
  insert, upsert or delete may not see it.  Pass ``consistency_level="Strong"`` (per
  call or at ``create_collection``) in tests; no flush is needed for that.
* ``get_collection_stats()["row_count"]`` counts only flushed segments and includes
  deleted and overwritten (upserted) rows; use ``query(filter="",
  output_fields=["count(*)"], consistency_level="Strong")`` to count.
* A collection needs a vector index before it can be loaded (``create_collection``
  with ``index_params`` creates and loads it at once).
* Restarting on the same ``base_dir`` keeps the data but takes about 55 s: the old
  run's etcd sessions must expire first (``COMMON_SESSION_TTL=10`` in the environment
  cuts it to about 26 s).  Use a fresh ``base_dir`` unless persistence is the point.
* Milvus reads ``SECTION_KEY`` environment variables over its milvus.yaml (for example
  ``COMMON_SESSION_TTL`` for ``common.session.ttl``); the launcher passes the
  environment through.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import launcher
from .binaries import INSTALL, available, installed_binaries
from .launcher import STATE_FILE, pid_alive

__all__ = ["INSTALL", "MilvusStandalone", "available"]

LAUNCHER_LOG = "launcher.log"

_LIVE: set[MilvusStandalone] = set()
_LIVE_LOCK = threading.Lock()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class MilvusStandalone:
    """One Milvus standalone server with its data and logs under ``base_dir``."""

    def __init__(self, base_dir: Path, *, stop_grace: float = 10.0):
        self.base_dir = Path(base_dir).resolve()
        self.binaries: Path | None = None
        self.stop_grace = stop_grace
        self.uri: str | None = None
        self.port: int | None = None
        self.ports: dict = {}
        self.server_pid: int | None = None
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._log_fh = None

    # -- paths ---------------------------------------------------------------------
    @property
    def launcher_log(self) -> Path:
        return self.base_dir / LAUNCHER_LOG

    @property
    def logs_dir(self) -> Path:
        return self.base_dir / "logs"

    def log_tail(self, lines: int = 40) -> str:
        """Last lines of the launcher log and the server's stdout/stderr logs."""
        parts = []
        for path in (self.launcher_log, self.logs_dir / "milvus-stderr.log", self.logs_dir / "milvus-stdout.log"):
            text = _tail(path, lines)
            if text.strip():
                parts.append(f"--- {path} (last {lines} lines) ---\n{text}")
        return "\n".join(parts) or "(no server logs)"

    # -- start ---------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> str:
        """Start the server, wait until pymilvus can list collections, return its uri."""
        if self._proc is not None:
            raise RuntimeError("Milvus standalone already started")
        t0 = time.monotonic()
        self.binaries = installed_binaries()  # StartupError: not installed, or cannot run here
        deadline = t0 + timeout
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(deadline)
                self.start_seconds = time.monotonic() - t0
                return self.uri
            except _PortClash:
                self._kill_all()
                if attempt == attempts or time.monotonic() >= deadline:
                    raise RuntimeError(
                        f"Milvus standalone could not bind its ports after {attempt} tries\n{self.log_tail()}"
                    ) from None
            except BaseException as exc:
                tail = self.log_tail()
                self._kill_all()
                if isinstance(exc, RuntimeError):
                    raise RuntimeError(f"{exc}\n{tail}") from None
                raise
        raise AssertionError("unreachable")

    def _start_once(self, deadline: float) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        state_path = self.base_dir / STATE_FILE
        state_path.unlink(missing_ok=True)
        self.server_pid = None
        self._log_fh = open(self.launcher_log, "ab")  # noqa: SIM115 - closed in _kill_all
        cmd = [
            sys.executable,
            str(Path(launcher.__file__).resolve()),
            "--base-dir",
            str(self.base_dir),
            "--bin-cache",
            str(self.binaries),
            "--parent-pid",
            str(os.getpid()),
            "--graceful-stop",
            str(max(1, int(self.stop_grace) - 2)),
        ]
        self._proc = subprocess.Popen(
            cmd,
            cwd=str(self.base_dir),
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
        with _LIVE_LOCK:
            _LIVE.add(self)

        # 1. the launcher writes the chosen ports and the server pid
        while True:
            if state_path.exists():
                try:
                    state = json.loads(state_path.read_text())
                    break
                except ValueError:
                    pass
            self._check_alive()
            if time.monotonic() >= deadline:
                raise RuntimeError("timed out waiting for the Milvus launcher to start the server")
            time.sleep(0.05)
        self.ports = state["ports"]
        self.port = int(self.ports["proxy_port"])
        self.server_pid = int(state["server_pid"])
        self.uri = f"http://127.0.0.1:{self.port}"

        # 2. wait until the server answers real requests
        from pymilvus import MilvusClient

        last_err: BaseException | None = None
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"Milvus standalone at {self.uri} not ready in time (last error: {last_err!r})")
            client = None
            try:
                client = MilvusClient(uri=self.uri, timeout=min(5.0, max(remaining, 0.5)), dedicated=True)
                client.list_collections(timeout=min(5.0, max(remaining, 0.5)))
                return
            except Exception as exc:
                last_err = exc
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            time.sleep(0.25)

    def _check_alive(self) -> None:
        proc = self._proc
        if proc is None:
            raise RuntimeError("Milvus launcher not running")
        rc = proc.poll()
        server_dead = self.server_pid is not None and not pid_alive(self.server_pid)
        if rc is None and not server_dead:
            return
        text = self.log_tail(200).lower()
        if "address already in use" in text or "bind failed" in text:
            raise _PortClash()
        raise RuntimeError(f"Milvus standalone exited during start-up (launcher rc={rc})")

    def exited(self) -> bool:
        """True once a started server has gone away (crashed or killed), until stop() and start() run again."""
        return self._proc is not None and (self._proc.poll() is not None or not self._server_alive())

    # -- stop ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the server: SIGTERM, a few seconds' grace, then SIGKILL everything."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # launcher forwards it to milvus
        deadline = time.monotonic() + self.stop_grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not self._server_alive():
                break
            time.sleep(0.1)
        self._kill_all()

    def _server_alive(self) -> bool:
        pid = self.server_pid
        return pid is not None and pid_alive(pid) and str(self.base_dir) in _pid_cmdline(pid) + self._exe_of(pid)

    @staticmethod
    def _exe_of(pid: int) -> str:
        try:
            return os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return ""

    def _kill_all(self) -> None:
        proc = self._proc
        # Kill the server first while the launcher still lives to reap it (no zombie
        # left for init), then the launcher's whole process group.
        if self._server_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.server_pid, signal.SIGKILL)
            end = time.monotonic() + 3
            while self._server_alive() and time.monotonic() < end:
                time.sleep(0.02)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: pgid == pid
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        end = time.monotonic() + 10
        while self._server_alive() and time.monotonic() < end:
            time.sleep(0.05)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        self._proc = None
        with _LIVE_LOCK:
            _LIVE.discard(self)

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> MilvusStandalone:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"MilvusStandalone(uri={self.uri!r}, base_dir={str(self.base_dir)!r})"


class _PortClash(Exception):
    pass


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server._kill_all()
