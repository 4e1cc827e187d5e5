"""A typed, synchronous client for lookalike's gRPC API, with streaming ingest and back-pressure."""

from __future__ import annotations

import collections
import ipaddress
import json
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

from .no_server import call_details

DEFAULT_SERVER = "localhost:50051"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Images larger than this are uploaded in chunks of this size (the server joins them).
CHUNK_BYTES = 4 * 1024 * 1024
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

_METRICS = {"cosine": pb.METRIC_COSINE, "ip": pb.METRIC_IP, "l2": pb.METRIC_L2, "": pb.METRIC_UNSPECIFIED}
_INDEXES = {
    "": pb.INDEX_TYPE_UNSPECIFIED,
    "FLAT": pb.INDEX_TYPE_FLAT,
    "HNSW": pb.INDEX_TYPE_HNSW,
    "IVF_FLAT": pb.INDEX_TYPE_IVF_FLAT,
    "IVF_SQ8": pb.INDEX_TYPE_IVF_SQ8,
    "IVF_PQ": pb.INDEX_TYPE_IVF_PQ,
    "SCANN": pb.INDEX_TYPE_SCANN,
}


# Calls that are safe to repeat: gRPC retries them on UNAVAILABLE (a replica restarting or gone).
_IDEMPOTENT = [
    {"service": "lookalike.v1.Images", "method": m} for m in ("Search", "Embed", "Get", "Delete")
] + [{"service": "lookalike.v1.Collections", "method": m} for m in ("ListCollections", "DescribeCollection")]
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": _IDEMPOTENT,
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


def grpc_target(server: str) -> str:
    """HOST:PORT[,HOST:PORT...] as one gRPC target; a target with a scheme (dns:///, ipv4:) is kept."""
    if "://" in server or server.startswith(("ipv4:", "ipv6:", "unix:")):
        return server
    addresses = [a.strip() for a in server.split(",") if a.strip()]
    if len(addresses) == 1:
        return addresses[0]
    resolved = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            # A name: every address it resolves to joins the list.
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            resolved.extend(f"{info[4][0]}:{port}" for info in infos if info[0] == socket.AF_INET)
            continue
        resolved.append(f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}")
    scheme = "ipv6:" if resolved and all(r.startswith("[") for r in resolved) else "ipv4:"
    return scheme + ",".join(dict.fromkeys(resolved))


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._with_token(details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class LookalikeClientError(Exception):
    """A call failed; `code` is the gRPC status name, `details` the server's message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


@dataclass(frozen=True)
class ById:
    """A query by a stored id: the vector stays on the server."""

    id: str


@dataclass(frozen=True)
class ByIds:
    """Several stored ids searched as one query, by the mean of their vectors."""

    ids: Sequence[str]


@dataclass(frozen=True)
class MeanOf:
    """Several vectors searched as one query, by their mean."""

    vectors: Sequence[Sequence[float]]


@dataclass(frozen=True)
class Text:
    """A text prompt, for models with a text tower (`CollectionInfo.embeds_text`): the server embeds it."""

    text: str


@dataclass(frozen=True)
class Texts:
    """Several text prompts searched as one query, by the mean of their vectors."""

    texts: Sequence[str]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class IngestResult:
    id: str
    code: str
    message: str

    @property
    def ok(self) -> bool:
        return self.code == "OK"


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    metric: str
    index_type: str
    model: str
    dimension: int
    row_count: int
    execution_provider: str
    index_params: dict[str, int]
    min_recall: float
    # k -> (effort, recall) as the server's recall calibration measured them.
    calibrations: dict[int, tuple[int, float]]
    model_precision: str = "float32"  # "float16" with --fp16, "int8" with a quantized card
    vectors_only: bool = False  # vectors computed elsewhere: no images, no image or text queries
    embeds_text: bool = False  # the server's model has a text tower for this collection: Text queries work


# A query: an image path, image bytes, a vector, or a stored id.
QueryLike = str | os.PathLike | bytes | Sequence[float] | np.ndarray | ById | ByIds | MeanOf | Text | Texts
CONSISTENCY_LEVELS = {
    "": pb.CONSISTENCY_UNSPECIFIED,
    "Strong": pb.CONSISTENCY_STRONG,
    "Session": pb.CONSISTENCY_SESSION,
    "Bounded": pb.CONSISTENCY_BOUNDED,
    "Eventually": pb.CONSISTENCY_EVENTUALLY,
}
# An item to ingest: (id, image path | image bytes | vector[, metadata]).
ItemLike = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]


def _struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct | None:
    if not data:
        return None
    message = struct_pb2.Struct()
    message.update(dict(data))
    return message


def _to_dict(message: struct_pb2.Struct, present: bool) -> dict[str, Any] | None:
    return json_format.MessageToDict(message) if present else None


def _raise(e: grpc.RpcError, server: str) -> LookalikeClientError:
    code = e.code().name
    return LookalikeClientError(code, call_details(code, e.details() or "", server))


def _collection_from_wire(info: pb.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        name=info.name,
        metric=pb.Metric.Name(info.metric).removeprefix("METRIC_").lower(),
        index_type=pb.IndexType.Name(info.index_type).removeprefix("INDEX_TYPE_"),
        model=info.model,
        dimension=info.dimension,
        row_count=info.row_count,
        execution_provider=info.execution_provider,
        index_params=dict(info.index_params),
        min_recall=info.min_recall,
        calibrations={c.k: (c.effort, c.recall) for c in info.calibrations if abs(c.target - info.min_recall) < 1e-4},
        model_precision=info.model_precision or "float32",
        vectors_only=info.vectors_only,
        embeds_text=info.embeds_text,
    )


# Requests and replies, shared by Client and AsyncClient: plain Python values in, wire messages out, and back.


def channel_options(server_name: str | None = None) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
        # Each client its own connections: gRPC otherwise shares one among all its channels to a target,
        # and a server's workers (serve --workers) are picked per connection.
        ("grpc.use_local_subchannel_pool", 1),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def channel_credentials(
    secure: bool,
    ca_cert: str | os.PathLike | None,
    client_cert: str | os.PathLike | None,
    client_key: str | os.PathLike | None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials when any TLS setting is given; None means plaintext."""
    if not (secure or ca_cert or client_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca_cert).read_bytes() if ca_cert else None,
        private_key=Path(client_key).read_bytes() if client_key else None,
        certificate_chain=Path(client_cert).read_bytes() if client_cert else None,
    )


def create_collection_request(
    name: str, metric: str, index_type: str, index_params: Mapping[str, int] | None, min_recall: float, dimension: int,
    vectors_only: bool = False,
) -> pb.CreateCollectionRequest:
    return pb.CreateCollectionRequest(
        name=name,
        metric=_METRICS[metric],
        index_type=_INDEXES[index_type],
        index_params=dict(index_params or {}),
        min_recall=min_recall,
        dimension=dimension,
        vectors_only=vectors_only,
    )


def ingest_requests(item: ItemLike, collection: str) -> list[pb.IngestRequest]:
    """One request per item; images over CHUNK_BYTES go as several chunk requests of the same id."""
    item_id, content, *rest = item
    metadata = _struct(rest[0] if rest else None)
    if isinstance(content, (str, os.PathLike)):
        content = Path(content).read_bytes()
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        if len(data) <= CHUNK_BYTES:
            return [pb.IngestRequest(collection=collection, id=item_id, metadata=metadata, image=data)]
        starts = range(0, len(data), CHUNK_BYTES)
        return [
            pb.IngestRequest(
                collection=collection, id=item_id, metadata=metadata if start == 0 else None,
                chunk=pb.ImageChunk(data=data[start : start + CHUNK_BYTES], last=start == starts[-1]),
            )
            for start in starts
        ]
    request = pb.IngestRequest(collection=collection, id=item_id, metadata=metadata)
    request.vector.values.extend(np.asarray(content, dtype=np.float32).ravel().tolist())
    return [request]


def embed_request(images: Sequence[str | os.PathLike | bytes]) -> pb.EmbedRequest:
    return pb.EmbedRequest(items=[
        pb.ImageItem(id=str(i), image=Path(img).read_bytes() if isinstance(img, (str, os.PathLike)) else img)
        for i, img in enumerate(images)
    ])


def _utf8(text: str) -> str:
    """The prompt itself; a ValueError naming it if it cannot be sent (protobuf strings must be UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text prompt {text!r} cannot be sent: it is not valid Unicode ({e.reason} at "
                         f"position {e.start}), and protobuf strings must be UTF-8") from None
    return text


def embed_texts_request(texts: Sequence[str]) -> pb.EmbedRequest:
    return pb.EmbedRequest(texts=[pb.TextItem(id=str(i), text=_utf8(t)) for i, t in enumerate(texts)])


def embeddings_from_reply(reply: pb.EmbedResponse) -> np.ndarray:
    """The (N, dim) array of an Embed reply; raises on the first image the server could not embed."""
    for result in reply.results:
        if result.code != pb.OK:
            raise LookalikeClientError(pb.StatusCode.Name(result.code), result.message)
    return np.array([r.vector.values for r in reply.results], dtype=np.float32)


def query_message(query: QueryLike) -> pb.Query:
    if isinstance(query, ById):
        return pb.Query(id=query.id)
    if isinstance(query, ByIds):
        return pb.Query(ids=pb.IdList(ids=list(query.ids)))
    if isinstance(query, MeanOf):
        vectors = [pb.Vector(values=np.asarray(v, dtype=np.float32).ravel().tolist()) for v in query.vectors]
        return pb.Query(vectors=pb.VectorList(vectors=vectors))
    if isinstance(query, Text):
        return pb.Query(text=_utf8(query.text))
    if isinstance(query, Texts):
        return pb.Query(texts=pb.TextList(texts=[_utf8(t) for t in query.texts]))
    if isinstance(query, (str, os.PathLike)):
        return pb.Query(image=Path(query).read_bytes())
    if isinstance(query, (bytes, bytearray)):
        return pb.Query(image=bytes(query))
    return pb.Query(vector=pb.Vector(values=np.asarray(query, dtype=np.float32).ravel().tolist()))


def search_request(
    queries: Sequence[QueryLike],
    k: int,
    collection: str,
    filter: str,
    include_metadata: bool,
    include_vectors: bool,
    reverse: bool,
    offset: int,
    restrict_ids: Sequence[str],
    consistency: str,
    min_recall: float,
) -> pb.SearchRequest:
    return pb.SearchRequest(
        collection=collection,
        queries=[query_message(q) for q in queries],
        k=k,
        filter=filter,
        include_metadata=include_metadata,
        include_vectors=include_vectors,
        reverse=reverse,
        offset=offset,
        restrict_ids=list(restrict_ids),
        consistency=CONSISTENCY_LEVELS[consistency],
        min_recall=min_recall,
    )


def hits_from_reply(reply: pb.SearchResponse, include_metadata: bool, include_vectors: bool) -> list[list[Hit]]:
    return [
        [
            Hit(
                h.id,
                h.score,
                _to_dict(h.metadata, include_metadata),
                np.asarray(h.vector.values, dtype=np.float32) if include_vectors else None,
            )
            for h in result.hits
        ]
        for result in reply.results
    ]


def rows_from_reply(
    reply: pb.GetResponse, vectors: bool, metadata: bool
) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
    return {
        item.id: (
            np.asarray(item.vector.values, dtype=np.float32) if vectors else None,
            _to_dict(item.metadata, metadata),
        )
        for item in reply.items
    }


def image_files(root: Path | str, all_files: bool = False) -> Iterator[Path]:
    """Image files under root, recursively, in a stable order; hidden files and folders are skipped."""
    root = Path(root)
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if not name.startswith(".") and (all_files or path.suffix.lower() in IMAGE_EXTENSIONS):
                yield path


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
            return _collection_from_wire(self._collections.CreateCollection(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise _raise(e, self.server) from None

    def list_collections(self) -> list[CollectionInfo]:
        try:
            reply = self._collections.ListCollections(pb.ListCollectionsRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _raise(e, self.server) from None
        return [_collection_from_wire(c) for c in reply.collections]

    def describe_collection(self, name: str = "") -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=name or self.collection)
        try:
            return _collection_from_wire(self._collections.DescribeCollection(request, timeout=self.timeout))
        except grpc.RpcError as e:
            raise _raise(e, self.server) from None

    def drop_collection(self, name: str) -> None:
        try:
            self._collections.DropCollection(pb.DropCollectionRequest(name=name), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _raise(e, self.server) from None

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
                    raise _raise(e, self.server) from None
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
            raise _raise(e, self.server) from None
        return embeddings_from_reply(reply)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text prompts' embeddings as an (N, dim) array, for a model with a text tower; raises on the first
        bad prompt (empty, over the model's context length) or when the model has no text tower."""
        try:
            reply = self._images.Embed(embed_texts_request(texts), timeout=self.timeout)
        except grpc.RpcError as e:
            raise _raise(e, self.server) from None
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
            raise _raise(e, self.server) from None
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
            raise _raise(e, self.server) from None
        return rows_from_reply(reply, vectors, metadata)

    def delete(self, ids: Sequence[str], collection: str = "") -> int:
        """Deletes rows by id; returns how many were stored."""
        request = pb.DeleteRequest(collection=collection or self.collection, ids=list(ids))
        try:
            return self._images.Delete(request, timeout=self.timeout).deleted_count
        except grpc.RpcError as e:
            raise _raise(e, self.server) from None
