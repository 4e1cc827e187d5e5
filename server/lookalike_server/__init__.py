"""lookalike's server: gRPC service, embedding pipeline, native core and Milvus store."""

__version__ = "0.1.0"
