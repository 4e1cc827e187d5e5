"""lookalike's Python client: `Client` talks to a lookalike server over gRPC."""

from .client import ById, ByIds, Client, CollectionInfo, Hit, IngestResult, LookalikeClientError, MeanOf, Text

__all__ = [
    "ById", "ByIds", "Client", "CollectionInfo", "Hit", "IngestResult", "LookalikeClientError", "MeanOf", "Text",
]
