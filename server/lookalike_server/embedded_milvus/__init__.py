"""The Milvus `serve` runs itself when no `--milvus-uri` is given.

`choice` picks one (Milvus Lite in this process, `milvus-lite server` as a child, or the real Milvus
standalone as a child) and starts it; `lite_server` and `standalone` manage the two child processes.
"""

from .choice import (
    EMBEDDED_DATA,
    MIN_MILVUS_LITE,
    EmbeddedMilvus,
    choose_embedded_milvus,
    require_milvus_lite,
    resolve_milvus,
    restart_embedded_milvus,
    start_embedded_milvus,
)
from .lite_server import MilvusLiteServer
from .standalone import MilvusStandalone

__all__ = [
    "EMBEDDED_DATA",
    "MIN_MILVUS_LITE",
    "EmbeddedMilvus",
    "MilvusLiteServer",
    "MilvusStandalone",
    "choose_embedded_milvus",
    "require_milvus_lite",
    "resolve_milvus",
    "restart_embedded_milvus",
    "start_embedded_milvus",
]
