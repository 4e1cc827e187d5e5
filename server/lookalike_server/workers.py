"""`serve --workers N`: N server processes on one port, over one Milvus, under one supervising process.

A small Search spends most of its server time in gRPC's own machinery, under one process' GIL. N processes
(the kernel spreads connections over them with SO_REUSEPORT) use more cores, as N replicas behind a balancer
would. The supervisor owns what must exist once: the port, and the embedded Milvus all the workers share.
It restarts a worker that dies and stops them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from .config import ServerConfig
from .embedded_milvus import resolve_milvus, restart_embedded_milvus
from .errors import StartupError
from .stop_signals import STOP_SIGNALS, ignore_stop_signals_until_exit

log = logging.getLogger("lookalike_server.workers")

POLL_SECONDS = 0.5
# A worker that dies this soon after starting, this many times in a row, is not restarted again: it cannot
# start (a bad model card, an unreachable Milvus), and the supervisor exits with an error instead.
EARLY_DEATH_SECONDS = 30.0
MAX_EARLY_DEATHS = 3


def check_port_free(address: str) -> None:
    """Fails clearly when the address is taken: the workers share the port only with each other."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or int(port) == 0:
        raise StartupError(f"--workers needs a fixed port to share, got address {address!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise StartupError(f"cannot listen on {address}: is another server using the port? ({e})") from None


def worker_config(config: ServerConfig, uri: str, index: int) -> ServerConfig:
    """One worker's settings: the shared Milvus, the shared port, and its own metrics port (base + index)."""
    return dataclasses.replace(
        config,
        workers=1,
        milvus_uri=uri,
        reuse_port=True,
        metrics_port=config.metrics_port + index if config.metrics_port else 0,
    )


class Supervisor:
    """Starts the shared Milvus (when embedded) and the workers; keeps them running until stopped.

    `run_worker(config, index)` runs one worker in its (spawned) process: a module-level function, so that
    the new interpreter can import it (main.run_worker).
    """

    def __init__(self, config: ServerConfig, run_worker: Callable[[ServerConfig, int], None]) -> None:
        self.config = config
        self.run_worker = run_worker
        self.embedded: Any = None
        self.uri = config.milvus_uri
        self._context = multiprocessing.get_context("spawn")  # a fresh interpreter: no gRPC state forked
        self._workers: dict[int, BaseProcess] = {}
        self._started: dict[int, float] = {}
        self._early_deaths: dict[int, int] = {}
        self._stopping = False

    def _start_milvus(self) -> None:
        config, self.embedded = resolve_milvus(self.config)
        if config.milvus_uri:
            return
        if self.embedded is None:
            raise StartupError(
                "--workers shares one Milvus between processes, and Milvus Lite runs inside one process: "
                "use --milvus-embedded standalone or lite-server, or --milvus-uri"
            )
        self.uri = self.embedded.start()
        log.info("started embedded Milvus (%s) at %s for %d workers", config.milvus_embedded, self.uri,
                 self.config.workers)

    def _spawn(self, index: int) -> None:
        process = self._context.Process(
            target=self.run_worker, args=(worker_config(self.config, self.uri, index), index), name=f"worker-{index}"
        )
        process.start()
        self._workers[index] = process
        self._started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, process.pid)

    def _stop_requested(self, signum: int, _frame: Any) -> None:
        self._stopping = True

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT; the exit code: 0 after a clean stop, 1 when workers cannot start."""
        multiprocessing.current_process().name = "supervisor"  # the log's process column
        check_port_free(self.config.address)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._stop_requested)
        code = 0
        try:
            self._start_milvus()
            for index in range(self.config.workers):
                self._spawn(index)
            code = self._supervise()
        finally:
            self._stop_all()
            ignore_stop_signals_until_exit()
        return code

    def _supervise(self) -> int:
        while not self._stopping:
            time.sleep(POLL_SECONDS)
            if self.embedded is not None and self.embedded.exited():
                restart_embedded_milvus(self.embedded, self.uri)
            for index, process in list(self._workers.items()):
                if process.is_alive() or self._stopping:
                    continue
                lived = time.monotonic() - self._started[index]
                self._early_deaths[index] = self._early_deaths.get(index, 0) + 1 if lived < EARLY_DEATH_SECONDS else 0
                if self._early_deaths[index] >= MAX_EARLY_DEATHS:
                    log.error("worker %d exited (code %s) %d times within %.0f s of starting: stopping", index,
                              process.exitcode, MAX_EARLY_DEATHS, EARLY_DEATH_SECONDS)
                    return 1
                log.warning("worker %d exited (code %s) after %.0f s; starting it again", index,
                            process.exitcode, lived)
                self._spawn(index)
        return 0

    def _stop_all(self) -> None:
        """SIGTERM to every worker (each drains its calls in flight), then the shared Milvus."""
        for process in self._workers.values():
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.config.shutdown_grace_s + 15
        for index, process in self._workers.items():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %d did not stop in time: killing it", index)
                process.kill()
                process.join()
        if self.embedded is not None:
            self.embedded.stop()
        log.info("stopped %d workers", len(self._workers))
