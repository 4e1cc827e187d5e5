"""The child side of a Milvus standalone server: run as a script (``python launcher.py --base-dir DIR ...``) by
`standalone.MilvusStandalone`, it starts the ``milvus`` binary of the PyPI package ``milvus`` on free ports,
writes them and the server's pid for its parent, forwards signals, and stops the server if the parent dies.

Only the standard library and the ``milvus`` package are imported here: the file runs as a script, outside
the ``lookalike_server`` package.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

STATE_FILE = "milvus-standalone.json"
# The ports of the last run, reused when free so that a restarted server keeps its URI.
PORTS_FILE = "milvus-ports.json"
# proxy.timeTickInterval of the embedded standalone (Milvus' default: 200 ms); PROXY_TIMETICKINTERVAL overrides it.
TIME_TICK_MS = 20
# queryNode.scheduler.maxReadConcurrentRatio of the embedded standalone (Milvus' default: 1, reads at once =
# cores x ratio); QUERYNODE_SCHEDULER_MAXREADCONCURRENTRATIO overrides it.
READ_CONCURRENCY_RATIO = 4


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return False
    # field 3, after the parenthesised command name
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


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
    ap.add_argument("--base-dir", required=True)
    ap.add_argument("--bin-cache", default="")
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument("--graceful-stop", type=int, default=5)
    args = ap.parse_args(argv)

    from milvus import MilvusServer, MilvusServerConfig

    base = Path(args.base_dir).resolve()
    (base / "configs").mkdir(parents=True, exist_ok=True)
    (base / "logs").mkdir(parents=True, exist_ok=True)

    # The binaries extracted once per user (binaries.py; saves ~4.5 s and 250 MB per data directory). A link
    # left by an earlier release (into .venv-milvus, perhaps gone) is pointed there instead; a folder of its
    # own (a server started without the cache) stays, kept current by the package's own md5 check.
    bin_dir = base / "bin"
    cache = Path(args.bin_cache) if args.bin_cache else None
    if cache and (cache / "milvus").is_file():
        if bin_dir.is_symlink() and Path(os.readlink(bin_dir)) != cache:
            bin_dir.unlink()
        if not bin_dir.exists() and not bin_dir.is_symlink():
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
    # A Session (lookalike's default) or Strong read waits until the query node has seen a time tick past the
    # last write, and the proxy ticks every 200 ms: while ingest writes, every search waited for the next tick
    # (bench/session_reads.py). A 20 ms tick costs the idle server a little CPU for reads that wait ~10x less.
    os.environ.setdefault("PROXY_TIMETICKINTERVAL", str(TIME_TICK_MS))
    # At one read per core, a read by id (a search by id's first step) queued behind searches scanning the rows
    # still growing under ingest: its wait in the query node's queue had a p99 of 46-70 ms, 1 ms at 4 per core.
    os.environ.setdefault("QUERYNODE_SCHEDULER_MAXREADCONCURRENTRATIO", str(READ_CONCURRENCY_RATIO))

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
        orphaned = args.parent_pid and (os.getppid() != args.parent_pid or not pid_alive(args.parent_pid))
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


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1:]))
