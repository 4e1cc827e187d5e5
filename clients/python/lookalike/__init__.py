"""lookalike's Python client: `Client` talks to a lookalike server over gRPC, `AsyncClient` from asyncio."""

from .async_client import AsyncClient
from .client import (
    ById,
    ByIds,
    Client,
    CollectionInfo,
    Hit,
    IngestResult,
    LookalikeClientError,
    MeanOf,
    Text,
    Texts,
)

__all__ = [
    "AsyncClient", "ById", "ByIds", "Client", "CollectionInfo", "Hit", "IngestResult", "LookalikeClientError",
    "MeanOf", "Text", "Texts",
]
