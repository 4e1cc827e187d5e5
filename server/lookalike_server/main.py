"""The server process: `serve(config)` runs one server, or `--workers N` of them under a supervisor, until
SIGTERM or SIGINT; `main(argv)` is the command (`lookalike-server`, `python -m lookalike_server`,
`lookalike serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import sys
from collections.abc import Sequence

from .config import ServerConfig
from .errors import StartupError
from .flags import build_parser, config_from_args
from .stop_signals import STOP_SIGNALS, ignore_further_stop_signals, ignore_stop_signals_until_exit

log = logging.getLogger("lookalike_server")

INSTALL_SERVER = 'pip install "lookalike[server]"'


def configure_logging(config: ServerConfig) -> None:
    several = config.workers > 1 or config.reuse_port
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s " + ("[%(processName)s] " if several else "") + "%(name)s: %(message)s",
    )
    # pymilvus logs every failed call with a traceback; our own log line says what the caller needs.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    # Milvus Lite's in-process gRPC server logs calls it does not implement; faiss logs its CPU probing.
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("faiss").setLevel(logging.WARNING)


async def _serve_one(config: ServerConfig) -> None:
    """One server in this process, until SIGINT or SIGTERM; then it drains its calls in flight."""
    from .server import LookalikeServer  # the server's dependencies, only once it runs (see serve)

    server = LookalikeServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except BaseException:
        await server.grpc_server.stop(0)
        if server.embedded_milvus:
            server.embedded_milvus.stop()
        raise
    waiter = asyncio.ensure_future(server.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    ignore_further_stop_signals(loop)
    await server.stop()
    for task in (waiter, stopper):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    ignore_stop_signals_until_exit()


def run_worker(config: ServerConfig, index: int) -> None:
    """One process of `serve --workers N` (the supervisor's spawn target): a single server on the shared port."""
    multiprocessing.current_process().name = f"worker-{index}"
    serve(config)


def serve(config: ServerConfig) -> None:
    """Runs the server until SIGINT or SIGTERM: in this process, or `config.workers` processes under a supervisor.
    Exits 1 (SystemExit) when it cannot start."""
    configure_logging(config)
    log.info("settings: %s", config.redacted())
    if config.workers > 1:
        from .workers import Supervisor

        try:
            code = Supervisor(config, run_worker).run()
        except (StartupError, RuntimeError, OSError) as e:
            log.error("cannot start: %s", e)
            raise SystemExit(1) from None
        if code:
            raise SystemExit(code)
        return
    try:
        asyncio.run(_serve_one(config))
    except (StartupError, FileNotFoundError, RuntimeError, ValueError) as e:
        log.error("cannot start: %s", e)
        raise SystemExit(1) from None


def missing_server_dependency() -> str:
    """Empty when the server's own dependencies (the `server` extra) import; otherwise what to install."""
    try:
        from . import server, workers  # noqa: F401
    except ModuleNotFoundError as e:
        return f"the server needs the Python package that provides `{e.name}`, which is not installed: " \
               f"{INSTALL_SERVER}"
    return ""


def main(argv: Sequence[str] | None = None, prog: str = "lookalike-server") -> int:
    """The serve command: flags (generated from ServerConfig) > LOOKALIKE_* > config file > defaults."""
    args = build_parser(prog).parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    missing = missing_server_dependency()
    if missing:
        print(f"{prog}: {missing}", file=sys.stderr)
        return 2
    serve(config)
    return 0
