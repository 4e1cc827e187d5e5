"""Which embedded Milvus `serve` runs when no `--milvus-uri` is given, and starting (again) the one chosen."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Protocol

from ..config import ServerConfig
from ..errors import StartupError
from . import standalone
from .lite_server import MilvusLiteServer

log = logging.getLogger("lookalike_server")


class EmbeddedMilvus(Protocol):
    def start(self) -> str: ...
    def stop(self) -> None: ...
    def exited(self) -> bool: ...


# The Milvus Lite release lookalike's embedded store is written and tested against (Milvus Lite 3, pure Python).
MIN_MILVUS_LITE = (3, 2, 2)
# Where each embedded store keeps its data inside data_dir.
EMBEDDED_DATA = {"lite": "milvus.db", "lite-server": "milvus-lite-server", "standalone": "milvus-standalone"}


def choose_embedded_milvus(config: ServerConfig) -> tuple[str, str]:
    """The embedded store `--milvus-embedded` names, resolving "auto"; and why, for the log."""
    if config.milvus_embedded != "auto":
        return config.milvus_embedded, "as configured"
    # Data already in the data directory decides: switching stores would hide it.
    for mode, name in EMBEDDED_DATA.items():
        if (Path(config.data_dir) / name).exists():
            return mode, f"auto: {Path(config.data_dir) / name} holds this data directory's collections"
    if standalone.available():
        return "standalone", "auto: a new data directory, and Milvus standalone (PyPI `milvus`) is installed"
    return "lite", (f"auto: Milvus standalone is not installed ({standalone.INSTALL}; it serves large "
                    "collections faster)")


def start_embedded_milvus(config: ServerConfig) -> EmbeddedMilvus:
    """The child-process Milvus that `--milvus-embedded` names, keeping its data under the data directory."""
    os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
    if config.milvus_embedded == "lite-server":
        return MilvusLiteServer(Path(config.data_dir) / EMBEDDED_DATA["lite-server"])
    if not standalone.available():
        raise StartupError(f"--milvus-embedded standalone needs the PyPI package `milvus`: {standalone.INSTALL}")
    return standalone.MilvusStandalone(Path(config.data_dir).resolve() / EMBEDDED_DATA["standalone"])


def require_milvus_lite() -> None:
    """Refuses to start on a Milvus Lite other than the one lookalike is written for, saying which to install.

    Milvus Lite 2 (a C++ child process) still satisfies an old `milvus-lite>=2.5` pin, and with it the
    server died on its default collection: Lite 2 drops collection properties (where lookalike records each
    collection's model and metric) and builds no HNSW.
    """
    fix = f"pip install 'milvus-lite>={_dotted(MIN_MILVUS_LITE)},<{MIN_MILVUS_LITE[0] + 1}', or give --milvus-uri"
    try:
        installed = metadata.version("milvus-lite")
    except metadata.PackageNotFoundError:
        raise StartupError(f"the embedded Milvus Lite is not installed: {fix}") from None
    if not MIN_MILVUS_LITE <= _release(installed) < (MIN_MILVUS_LITE[0] + 1,):
        raise StartupError(
            f"milvus-lite {installed} is installed, and lookalike's embedded store needs Milvus Lite "
            f"{MIN_MILVUS_LITE[0]} ({_dotted(MIN_MILVUS_LITE)} or newer): {fix}"
        )


def _release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version string: "3.2.2" -> (3, 2, 2), "3.3.0rc1" -> (3, 3, 0)."""
    return tuple(int(n) for n in re.findall(r"\d+", version.split("+")[0])[:3])


def _dotted(release: tuple[int, ...]) -> str:
    return ".".join(map(str, release))


def resolve_milvus(config: ServerConfig) -> tuple[ServerConfig, EmbeddedMilvus | None]:
    """The settings with the embedded store chosen, and the child-process Milvus to start for it: None when a
    URI is given or the store is Milvus Lite in this process."""
    if config.milvus_uri:
        return config, None
    embedded, why = choose_embedded_milvus(config)
    if embedded in ("lite", "lite-server"):
        require_milvus_lite()
    log.info("embedded Milvus: %s (%s)", embedded, why)
    config = dataclasses.replace(config, milvus_embedded=embedded)
    return config, None if embedded == "lite" else start_embedded_milvus(config)


def restart_embedded_milvus(embedded: EmbeddedMilvus, uri: str) -> None:
    """Starts a crashed embedded Milvus again on its data and address (blocking); a failure is logged, and the
    caller's next check tries again."""
    log.warning("the embedded Milvus exited; starting it again on the same data")
    try:
        embedded.stop()  # reaps what is left of it
        new_uri = embedded.start()
    except (RuntimeError, OSError) as e:
        log.error("restarting the embedded Milvus failed (tried again at the next check): %s", e)
        return
    if new_uri != uri:
        log.error("the embedded Milvus came back at %s, not %s: restart lookalike to use it", new_uri, uri)
    else:
        log.info("the embedded Milvus is back at %s", uri)
