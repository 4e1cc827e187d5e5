"""lookalike's Python client: `Client` talks to a lookalike server over gRPC."""

from .client import ById, Client, CollectionInfo, Hit, IngestResult, LookalikeClientError

__all__ = ["ById", "Client", "CollectionInfo", "Hit", "IngestResult", "LookalikeClientError"]
