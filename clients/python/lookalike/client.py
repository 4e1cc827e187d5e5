"""A typed, synchronous client for lookalike's gRPC API, with streaming ingest and back-pressure."""

from __future__ import annotations

import collections
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

from .channel import (
    DEFAULT_SERVER,
    MAX_MESSAGE_BYTES,
    LookalikeClientError,
    _BearerToken,
    channel_credentials,
    channel_options,
    error_from_rpc,
    grpc_target,
)
from .messages import (
    CHUNK_BYTES,
    CONSISTENCY_LEVELS,
    IMAGE_EXTENSIONS,
    ById,
    ByIds,
    CollectionInfo,
    Hit,
    IngestResult,
    ItemLike,
    MeanOf,
    QueryLike,
    Text,
    Texts,
    collection_from_wire,
    create_collection_request,
    embed_request,
    embed_texts_request,
    embeddings_from_reply,
    hits_from_reply,
    image_files,
    ingest_requests,
    rows_from_reply,
    search_request,
)

# Client, and what `lookalike.client` offered before channel.py and messages.py took their parts out.
__all__ = [
    "CHUNK_BYTES", "CONSISTENCY_LEVELS", "DEFAULT_SERVER", "IMAGE_EXTENSIONS", "MAX_MESSAGE_BYTES", "ById", "ByIds",
    "Client", "CollectionInfo", "Hit", "IngestResult", "ItemLike", "LookalikeClientError", "MeanOf", "QueryLike",
    "Text", "Texts", "image_files",
]


class Client:
    """Talks to one or several lookalike servers. Thread-safe; close it (or use `with`) when done.

    `server` is HOST:PORT, several of them comma-separated (`a:50051,b:50051`), or any gRPC target such
    as `dns:///lookalike.svc:50051`; calls are spread over every address with gRPC's round_robin, and
    idempotent calls are retried on UNAVAILABLE by gRPC itself (bounded attempts, exponential backoff).
    `token` is sent as `authorization: Bearer <token>`; `ca_cert` (and `client_cert`/`client_key` for
    mutual TLS) switch the channel to TLS, as does `secure` alone (the system's root certificates);
    `server_name` overrides the name expected in the server's certificate.
    """

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        collection: str = "",
        timeout: float | None = 60.0,
        token: str | None = None,
        ca_cert: str | os.PathLike | None = None,
        client_cert: str | os.PathLike | None = None,
        client_key: str | os.PathLike | None = None,
        ingest_retries: int = 5,
        ingest_window: int = 256,
        secure: bool = False,
        server_name: str | None = None,
    ) -> None:
        self.server = server
        self.collection = collection
        self.timeout = timeout
        self.ingest_retries = ingest_retries
        self.ingest_window = ingest_window
        options = channel_options(server_name)
        target = grpc_target(server)
        credentials = channel_credentials(secure, ca_cert, client_cert, client_key)
        if credentials:
            channel = grpc.secure_channel(target, credentials, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        self._channel = grpc.intercept_channel(channel, _BearerToken(token)) if token else channel
        self._raw_channel = channel
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._images = pb_grpc.ImagesStub(self._channel)

    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Blocks until the server's health check says SERVING."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            time.sleep(0.2)
        raise TimeoutError(f"lookalike at {self.server} was not SERVING within {timeout:.0f} s ({last})")

    # Collections

    def create_collection(
        self,
        name: str,
        metric: str = "",
        index_type: str = "",
        index_params: Mapping[str, int] | None = None,
        min_recall: float = 0.0,
        dimension: int = 0,
        vectors_only: bool = False,
    ) -> CollectionInfo:
        """Creates a collection of the server's model; metric cosine|ip|l2, index FLAT|HNSW|IVF_FLAT|IVF_SQ8
        (a Milvus server also IVF_PQ|SCANN).

        `vectors_only=True` (or a `dimension` other than the model's) makes a vectors-only collection, for
        embeddings computed elsewhere: the server then refuses images and image or text queries for it.
        """
        request = create_collection_request(name, metric, index_type, index_params, min_recall, dimension,
                                             vectors_only)
        try:
            return collection_from_wire(self._collections.CreateCollection(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None

    def list_collections(self) -> list[CollectionInfo]:
        try:
            reply = self._collections.ListCollections(pb.ListCollectionsRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return [collection_from_wire(c) for c in reply.collections]

    def describe_collection(self, name: str = "") -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=name or self.collection)
        try:
            return collection_from_wire(self._collections.DescribeCollection(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None

    def drop_collection(self, name: str) -> None:
        try:
            self._collections.DropCollection(pb.DropCollectionRequest(name=name), timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None

    # Ingest

    def ingest(self, items: Iterable[ItemLike], collection: str = "") -> Iterator[IngestResult]:
        """Streams items and yields one result per item as the server stores it.

        Items are read lazily, so a generator over a huge folder is never held in memory: gRPC's flow
        control and the server's window hold the reader back when the server is busy. If the stream
        breaks with UNAVAILABLE (a replica died), the items sent but not yet acknowledged are sent again
        on a new stream, to whichever replica answers (upserts, so nothing is stored twice).
        """
        collection = collection or self.collection
        source = iter(items)
        # Items sent but not acknowledged (each its requests), oldest first; the server acknowledges in order.
        pending: collections.deque[list[pb.IngestRequest]] = collections.deque()
        # At most `window` items in flight: gRPC's own flow control lets a fast reader run far ahead.
        slots = threading.Semaphore(self.ingest_window)
        # A file that cannot be read never reaches the server; its failure is reported here instead.
        unreadable: queue.SimpleQueue[IngestResult] = queue.SimpleQueue()
        lock = threading.Lock()
        source_lock = threading.Lock()
        attempt = 0

        def requests(resend: list[pb.IngestRequest], epoch: int) -> Iterator[pb.IngestRequest]:
            yield from resend
            while True:
                while not slots.acquire(timeout=0.5):
                    if epoch != attempt:
                        return  # a newer stream took over
                # The items' own lock: a slow source never holds up acknowledgements, which take `lock`.
                with source_lock:
                    if epoch != attempt:
                        slots.release()
                        return
                    try:
                        item = next(source)
                    except StopIteration:
                        slots.release()
                        return
                try:
                    item_requests = ingest_requests(item, collection)
                except OSError as e:
                    slots.release()
                    unreadable.put(IngestResult(str(item[0]), "INVALID_ARGUMENT", f"cannot read file: {e}"))
                    continue
                with lock:
                    pending.append(item_requests)
                yield from item_requests

        while True:
            with lock:
                resend = [request for item_requests in pending for request in item_requests]
            try:
                for reply in self._images.Ingest(requests(resend, attempt)):
                    while not unreadable.empty():
                        yield unreadable.get()
                    with lock:
                        if pending and pending[0][0].id == reply.id:
                            pending.popleft()
                            slots.release()
                    yield IngestResult(reply.id, pb.StatusCode.Name(reply.code), reply.message)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.ingest_retries:
                    raise error_from_rpc(e, self.server) from None
                with lock:
                    attempt += 1
                time.sleep(min(2.0, 0.1 * 2**attempt))
        while not unreadable.empty():
            yield unreadable.get()

    def ingest_folder(
        self, root: Path | str, collection: str = "", all_files: bool = False
    ) -> Iterator[IngestResult]:
        """Ingests every image under root; ids are the paths relative to root, with '/' separators."""
        root = Path(root)
        items = ((path.relative_to(root).as_posix(), path) for path in image_files(root, all_files))
        return self.ingest(items, collection)

    # Embed

    def embed(self, images: Sequence[str | os.PathLike | bytes]) -> np.ndarray:
        """Embeddings of images (paths or bytes) as an (N, dim) array; raises on the first bad image."""
        try:
            reply = self._images.Embed(embed_request(images), timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return embeddings_from_reply(reply)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text prompts' embeddings as an (N, dim) array, for a model with a text tower; raises on the first
        bad prompt (empty, over the model's context length) or when the model has no text tower."""
        try:
            reply = self._images.Embed(embed_texts_request(texts), timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return embeddings_from_reply(reply)

    # Search

    def search_many(
        self,
        queries: Sequence[QueryLike],
        k: int = 10,
        collection: str = "",
        filter: str = "",
        include_metadata: bool = False,
        include_vectors: bool = False,
        reverse: bool = False,
        offset: int = 0,
        restrict_ids: Sequence[str] = (),
        consistency: str = "",
        min_recall: float = 0.0,
    ) -> list[list[Hit]]:
        """One ranked list of hits per query, in one call.

        `restrict_ids` limits the candidates to those ids; `reverse` returns the least similar first;
        `consistency` is a Milvus level (Strong, Session, Bounded, Eventually; default Session).
        """
        request = search_request(
            queries, k, collection or self.collection, filter, include_metadata, include_vectors, reverse, offset,
            restrict_ids, consistency, min_recall,
        )
        try:
            reply = self._images.Search(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return hits_from_reply(reply, include_metadata, include_vectors)

    def search(self, query: QueryLike, k: int = 10, **kwargs: Any) -> list[Hit]:
        """The k nearest stored images to one query (a path, bytes, a vector, ById, or Text("a red car"))."""
        return self.search_many([query], k, **kwargs)[0]

    # Rows

    def get(
        self, ids: Sequence[str], collection: str = "", vectors: bool = True, metadata: bool = True
    ) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
        """Stored rows by id; ids that are not stored are absent from the result."""
        request = pb.GetRequest(
            collection=collection or self.collection, ids=list(ids), include_vectors=vectors,
            include_metadata=metadata,
        )
        try:
            reply = self._images.Get(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return rows_from_reply(reply, vectors, metadata)

    def delete(self, ids: Sequence[str], collection: str = "") -> int:
        """Deletes rows by id; returns how many were stored."""
        request = pb.DeleteRequest(collection=collection or self.collection, ids=list(ids))
        try:
            return self._images.Delete(request, timeout=self.timeout).deleted_count
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
