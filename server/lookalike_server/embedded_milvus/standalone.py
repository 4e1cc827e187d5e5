"""Run a real Milvus standalone server (PyPI package ``milvus`` 2.3.5) as a managed child process.

`serve --milvus-embedded standalone` runs one in its data directory; the tests run one too.

The ``milvus`` package lives in its own virtual environment (``.venv-milvus`` at the
repository root, made by ``.ci/install-milvus-standalone.sh``) because its client
extra pins an old pymilvus.  The test process (main venv, pymilvus 3.x, no ``milvus``
package) starts this very file with the milvus venv's python as a small launcher::

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

Only the standard library may be imported at module level: the launcher part runs
under the milvus venv, which has no pymilvus.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

# Made by .ci/install-milvus-standalone.sh at the repository root; `serve` takes another with
# --milvus-standalone-venv.
DEFAULT_VENV = Path(".venv-milvus").resolve()
# Pre-extracted server binaries (about 250 MB) written by the install script; without it
# every instance decompresses them into its own base_dir (about 4-5 s, 250 MB each).
BIN_CACHE_SUBDIR = "milvus-home"

STATE_FILE = "milvus-standalone.json"
# The ports of the last run, reused when free so that a restarted server keeps its URI.
PORTS_FILE = "milvus-ports.json"
LAUNCHER_LOG = "launcher.log"

_LIVE: set[MilvusStandalone] = set()
_LIVE_LOCK = threading.Lock()


def _site_packages_milvus(venv: Path) -> list:
    return sorted(venv.glob("lib/python3*/site-packages/milvus/__init__.py"))


def available(venv: Path = DEFAULT_VENV) -> bool:
    """True when ``venv`` exists with the ``milvus`` server package installed."""
    venv = Path(venv)
    return (venv / "bin" / "python").exists() and bool(_site_packages_milvus(venv))


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


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # field 3, after the parenthesised command name
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


class MilvusStandalone:
    """One Milvus standalone server with its data and logs under ``base_dir``."""

    def __init__(self, base_dir: Path, venv: Path = DEFAULT_VENV, *, stop_grace: float = 10.0):
        self.base_dir = Path(base_dir).resolve()
        self.venv = Path(venv).resolve()
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
        if not available(self.venv):
            raise RuntimeError(
                f"milvus server package not installed in {self.venv}; run .ci/install-milvus-standalone.sh"
            )
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
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
            str(self.venv / "bin" / "python"),
            str(Path(__file__).resolve()),
            "--launch",
            "--base-dir",
            str(self.base_dir),
            "--bin-cache",
            str(self.venv / BIN_CACHE_SUBDIR / "bin"),
            "--parent-pid",
            str(os.getpid()),
            "--graceful-stop",
            str(max(1, int(self.stop_grace) - 2)),
        ]
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self._proc = subprocess.Popen(
            cmd,
            cwd=str(self.base_dir),
            env=env,
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
        from pymilvus import MilvusClient  # main venv only

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
        server_dead = self.server_pid is not None and not _pid_alive(self.server_pid)
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
        return pid is not None and _pid_alive(pid) and str(self.base_dir) in _pid_cmdline(pid) + self._exe_of(pid)

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


# ===================================================================================
# Launcher: runs under .venv-milvus/bin/python (has `milvus`, not pymilvus)
# ===================================================================================


def _pick_ports(names: list) -> dict:
    """Distinct free TCP ports, below the kernel's ephemeral range (so outgoing
    connections made while the server starts cannot take them) and at random (so
    instances started at the same moment do not pick the same ones)."""
    lo, hi = 20000, 32000
    try:
        eph_lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if eph_lo > 12000:
            hi = min(hi, eph_lo - 1)
            lo = min(lo, hi - 4000)
    except (OSError, ValueError, IndexError):
        pass
    held = []
    ports = {}
    try:
        for name in names:
            for _ in range(1000):
                port = random.randint(lo, hi)
                if port in ports.values() or port in (19530, 19529, 19531, 2379, 2380, 9091):
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    sock.bind(("0.0.0.0", port))  # the server listens on all addresses
                    sock.listen()
                except OSError:
                    sock.close()
                    continue
                held.append(sock)
                ports[name] = port
                break
            else:
                raise RuntimeError(f"no free port for {name}")
    finally:
        for sock in held:
            sock.close()
    return ports


def _probe_port(port: int, host: str = "127.0.0.1"):
    """A listening socket on host:port, or None if the port is taken (TIME_WAIT does not count)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen()
        return sock
    except (OSError, OverflowError, ValueError):
        sock.close()
        return None


def _reuse_ports(path: Path, names: list) -> dict | None:
    """The ports of this data folder's previous run, if they are all still free: a restarted server keeps
    its address, so clients (lookalike's own store among them) reconnect to the same URI."""
    try:
        ports = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(ports, dict) or set(ports) != set(names):
        return None
    if not all(isinstance(port, int) for port in ports.values()):
        return None
    for port in ports.values():
        sock = _probe_port(port, "0.0.0.0")  # the server listens on all addresses
        if sock is None:
            return None
        sock.close()
    return ports


def _launch(argv: list) -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--launch", action="store_true")
    ap.add_argument("--base-dir", required=True)
    ap.add_argument("--bin-cache", default="")
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--graceful-stop", type=int, default=5)
    args = ap.parse_args(argv)

    from milvus import MilvusServer, MilvusServerConfig  # milvus venv only

    base = Path(args.base_dir).resolve()
    (base / "configs").mkdir(parents=True, exist_ok=True)
    (base / "logs").mkdir(parents=True, exist_ok=True)

    # Reuse the binaries extracted once by the install script (saves ~4.5 s and 250 MB).
    bin_dir = base / "bin"
    cache = Path(args.bin_cache) if args.bin_cache else None
    if cache and (cache / "milvus").is_file() and not bin_dir.exists() and not bin_dir.is_symlink():
        bin_dir.symlink_to(cache, target_is_directory=True)

    server = MilvusServer(MilvusServerConfig(), wait_for_started=False)
    # The package probes each port without SO_REUSEADDR, which Milvus' own listeners set: a restart on the
    # last run's ports would fail for a minute while its connections linger in TIME_WAIT.
    server.config.try_bind_port = _probe_port
    server.set_base_dir(str(base))
    port_keys = [k for k in server.config.configurable_items if k.endswith("_port")]
    names = [*port_keys, "metrics_port", "etcd_peer_port"]
    ports = _reuse_ports(base / PORTS_FILE, names) or _pick_ports(names)

    # The embedded etcd ignores `etcd_port` for its own listeners (always
    # localhost:2379/2380) unless given an etcd config file via etcd.config.path.
    etcd_cfg = base / "configs" / "embed-etcd.yaml"
    etcd_cfg.write_text(
        "name: default\n"
        f"listen-client-urls: http://127.0.0.1:{ports['etcd_port']}\n"
        f"advertise-client-urls: http://127.0.0.1:{ports['etcd_port']}\n"
        f"listen-peer-urls: http://127.0.0.1:{ports['etcd_peer_port']}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{ports['etcd_peer_port']}\n"
        f"initial-cluster: default=http://127.0.0.1:{ports['etcd_peer_port']}\n"
        f"log-outputs: [{json.dumps(str(base / 'logs' / 'etcd.log'))}]\n"
    )
    # Milvus reads environment variables over milvus.yaml (etcd.config.path <- ETCD_CONFIG_PATH).
    os.environ["ETCD_CONFIG_PATH"] = str(etcd_cfg)
    os.environ["ETCD_ENDPOINTS"] = f"127.0.0.1:{ports['etcd_port']}"
    # The template's common.gracefulStopTimeout is 1800 s, and a query node with a
    # loaded collection never finishes its graceful stop on its own (it waits to hand
    # its segments to another node): without these, SIGTERM hangs until SIGKILL.
    os.environ.setdefault("COMMON_GRACEFULSTOPTIMEOUT", str(args.graceful_stop))
    os.environ.setdefault("QUERYNODE_GRACEFULSTOPTIMEOUT", "1")
    # Rows not yet indexed are searched through an "interim" IVF index probing 16 of its 128 lists, whatever
    # nprobe lookalike asks: on 50,000 random 1280-d rows, 28,000 of them still waiting for their IVF_PQ
    # index (a build of minutes), recall@10 was 0.58 at every k; 1.0 once all were indexed. Without the
    # interim index those rows are searched exactly.
    os.environ.setdefault("QUERYNODE_SEGCORE_INTERIMINDEX_ENABLEINDEX", "false")

    # Explicit *_port values are bound strictly (RuntimeError if taken) instead of
    # "first free port from the default upwards".
    server.config.update(**{k: ports[k] for k in port_keys})
    server.webservice_port = ports["metrics_port"]  # METRICS_PORT: /healthz, metrics

    stopping = {"sig": None}

    def on_signal(signum, _frame):
        stopping["sig"] = signum
        proc = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    server.start()
    proc = server.server_proc
    ports["metrics_port"] = server.webservice_port  # moves up if it was taken meanwhile
    (base / PORTS_FILE).write_text(json.dumps(ports))
    state = {"server_pid": proc.pid, "launcher_pid": os.getpid(), "ports": ports}
    tmp = base / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(base / STATE_FILE)
    print(f"milvus standalone pid {proc.pid} ports {json.dumps(ports)}", flush=True)

    # Wait for the server; kill it if whoever started us goes away.
    killed_at = None
    while True:
        try:
            rc = proc.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        orphaned = args.parent_pid and (os.getppid() != args.parent_pid or not _pid_alive(args.parent_pid))
        if orphaned and stopping["sig"] is None:
            print("parent process gone; stopping milvus", flush=True)
            on_signal(signal.SIGTERM, None)
        if stopping["sig"] is not None:
            if killed_at is None:  # also covers a signal that came before server.start()
                killed_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
            elif time.monotonic() - killed_at > 15:
                proc.kill()
    server.server_proc = None  # keep MilvusServer.__del__ from signalling again
    for fh in server.proc_fds.values():
        fh.close()
    print(f"milvus exited with {rc}", flush=True)
    return 0 if stopping["sig"] is not None else (rc or 1)


if __name__ == "__main__" and "--launch" in sys.argv[1:]:
    sys.exit(_launch(sys.argv[1:]))
