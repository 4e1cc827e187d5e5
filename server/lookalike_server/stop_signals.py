"""What SIGTERM and SIGINT do once a server process is stopping: nothing but a log line, to the end."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger("lookalike_server")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def ignore_further_stop_signals(loop: asyncio.AbstractEventLoop) -> None:
    """A second SIGTERM while stopping (an impatient supervisor, a test's stop()) must not kill the drain
    half-way, nor the exit after it: closing the loop would put back the default handlers, which die at once.
    From here until the drain is done such signals are logged and ignored; SIGKILL still stops it at once."""
    def already_stopping(signum: int, _frame: Any) -> None:
        log.warning("%s while stopping: already stopping (SIGKILL stops at once)", signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
        signal.signal(sig, already_stopping)


def ignore_stop_signals_until_exit() -> None:
    """Once stopped: Python's own exit puts back the default (fatal) handler of any signal with a Python
    handler, and atexit work (Milvus Lite's release) still follows; ignored at the C level, a late SIGTERM
    or SIGINT stays ignored to the end instead of turning a clean stop into -15."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
