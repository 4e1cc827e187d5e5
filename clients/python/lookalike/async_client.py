"""`Client`'s surface on grpc.aio, for asyncio services: the same requests and results, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

from .channel import DEFAULT_SERVER, channel_credentials, channel_options, error_from_rpc, grpc_target
from .messages import (
    CollectionInfo,
    Hit,
    IngestResult,
    ItemLike,
    QueryLike,
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

REFUSAL_WAIT_S = 1.0  # the longest an Ingest stream waits for the server's headers before its first write


def _reads_files(values: Iterable[Any]) -> bool:
    return any(isinstance(v, (str, os.PathLike)) for v in values)


async def _accepted(call: Any) -> bool:
    """Waits (briefly) for the server's headers, which it sends as it opens a stream, or for its refusal in their
    place (a token, a limit). grpc.aio reports a refusal that crosses a write as INTERNAL "Internal error from
    Core" (grpc/grpc#36066); after the wait no write crosses it. A server that sends no early headers (an older
    one) only delays the first write by REFUSAL_WAIT_S."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(call.initial_metadata(), REFUSAL_WAIT_S)
    return not call.done()


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class AsyncClient:
    """Talks to one or several lookalike servers from asyncio; `async with` it, or await `close()`.

    The arguments are `Client`'s, and so are the methods, as coroutines (`ingest` an async generator).
    Files named by path are read in a worker thread, never on the event loop. Unlike `Client.ingest`, a
    broken Ingest stream is not resent: the error is raised and the caller decides.
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
        ingest_window: int = 256,
        secure: bool = False,
        server_name: str | None = None,
    ) -> None:
        self.server = server
        self.collection = collection
        self.timeout = timeout
        self.ingest_window = ingest_window
        options = channel_options(server_name)
        target = grpc_target(server)
        # The token goes with each call's metadata (simpler than grpc.aio's four kinds of interceptor).
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        credentials = channel_credentials(secure, ca_cert, client_cert, client_key)
        if credentials:
            self._channel = aio.secure_channel(target, credentials, options=options)
        else:
            self._channel = aio.insecure_channel(target, options=options)
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._images = pb_grpc.ImagesStub(self._channel)

    def _per_call(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "metadata": self._metadata}

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Returns once the server's health check says SERVING."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last = "no answer"
        while loop.time() < deadline:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            await asyncio.sleep(0.2)
        raise TimeoutError(f"lookalike at {self.server} was not SERVING within {timeout:.0f} s ({last})")

    # Collections

    async def create_collection(
        self,
        name: str,
        metric: str = "",
        index_type: str = "",
        index_params: Mapping[str, int] | None = None,
        min_recall: float = 0.0,
        dimension: int = 0,
        vectors_only: bool = False,
    ) -> CollectionInfo:
        """As `Client.create_collection`."""
        request = create_collection_request(name, metric, index_type, index_params, min_recall, dimension,
                                             vectors_only)
        try:
            return collection_from_wire(await self._collections.CreateCollection(request, **self._per_call()))
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None

    async def list_collections(self) -> list[CollectionInfo]:
        try:
            reply = await self._collections.ListCollections(pb.ListCollectionsRequest(), **self._per_call())
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return [collection_from_wire(c) for c in reply.collections]

    async def describe_collection(self, name: str = "") -> CollectionInfo:
        request = pb.DescribeCollectionRequest(name=name or self.collection)
        try:
            return collection_from_wire(await self._collections.DescribeCollection(request, **self._per_call()))
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None

    async def drop_collection(self, name: str) -> None:
        try:
            await self._collections.DropCollection(pb.DropCollectionRequest(name=name), **self._per_call())
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None

    # Ingest

    async def ingest(
        self, items: Iterable[ItemLike] | AsyncIterable[ItemLike], collection: str = ""
    ) -> AsyncIterator[IngestResult]:
        """Streams items (an iterable or an async iterable) and yields one result per item once stored.

        At most `ingest_window` items are in flight; a file that cannot be read is reported as that item's
        INVALID_ARGUMENT without reaching the server.
        """
        collection = collection or self.collection
        slots = asyncio.Semaphore(self.ingest_window)
        unreadable: list[IngestResult] = []

        call = self._images.Ingest(metadata=self._metadata)

        async def write() -> None:
            # Written by this task rather than handed to grpc.aio as a request iterator, so that a failing
            # item source is told apart from a failing call.
            if not await _accepted(call):
                return  # refused before the first write: reading the call says why
            try:
                async for item in _aiter(items):
                    await slots.acquire()
                    try:
                        if _reads_files(item[1:2]):
                            item_requests = await asyncio.to_thread(ingest_requests, item, collection)
                        else:
                            item_requests = ingest_requests(item, collection)
                    except OSError as e:
                        slots.release()
                        unreadable.append(IngestResult(str(item[0]), "INVALID_ARGUMENT", f"cannot read file: {e}"))
                        continue
                    for request in item_requests:
                        try:
                            await call.write(request)
                        except (grpc.RpcError, asyncio.InvalidStateError):
                            return  # the call ended: reading it says why
                with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                    await call.done_writing()
            except Exception:
                call.cancel()  # the items themselves failed: end the call, and ingest raises their error
                raise

        def source_error() -> BaseException | None:
            return writer.exception() if writer.done() and not writer.cancelled() else None

        writer = asyncio.create_task(write())
        try:
            while (reply := await call.read()) is not aio.EOF:
                slots.release()
                while unreadable:
                    yield unreadable.pop(0)
                yield IngestResult(reply.id, pb.StatusCode.Name(reply.code), reply.message)
            await writer
        except grpc.RpcError as e:
            raise source_error() or error_from_rpc(e, self.server) from None
        except asyncio.CancelledError:
            error = source_error()
            if error is None:
                raise
            raise error from None
        finally:
            call.cancel()  # a caller that stops early ends the stream; a no-op once it is done
            if not writer.done():
                writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        while unreadable:
            yield unreadable.pop(0)

    def ingest_folder(
        self, root: Path | str, collection: str = "", all_files: bool = False
    ) -> AsyncIterator[IngestResult]:
        """Ingests every image under root; ids are the paths relative to root, with '/' separators."""
        root = Path(root)
        items = ((path.relative_to(root).as_posix(), path) for path in image_files(root, all_files))
        return self.ingest(items, collection)

    # Embed

    async def embed(self, images: Sequence[str | os.PathLike | bytes]) -> np.ndarray:
        """Embeddings of images (paths or bytes) as an (N, dim) array; raises on the first bad image."""
        request = await asyncio.to_thread(embed_request, images) if _reads_files(images) else embed_request(images)
        try:
            reply = await self._images.Embed(request, **self._per_call())
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return embeddings_from_reply(reply)

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text prompts' embeddings as an (N, dim) array; raises on the first bad prompt."""
        try:
            reply = await self._images.Embed(embed_texts_request(texts), **self._per_call())
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return embeddings_from_reply(reply)

    # Search

    async def search_many(
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
        """As `Client.search_many`: one ranked list of hits per query, in one call."""
        arguments = (queries, k, collection or self.collection, filter, include_metadata, include_vectors, reverse,
                     offset, restrict_ids, consistency, min_recall)
        if _reads_files(queries):
            request = await asyncio.to_thread(search_request, *arguments)
        else:
            request = search_request(*arguments)
        try:
            reply = await self._images.Search(request, **self._per_call())
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return hits_from_reply(reply, include_metadata, include_vectors)

    async def search(self, query: QueryLike, k: int = 10, **kwargs: Any) -> list[Hit]:
        """The k nearest stored images to one query (a path, bytes, a vector, or ById)."""
        return (await self.search_many([query], k, **kwargs))[0]

    # Rows

    async def get(
        self, ids: Sequence[str], collection: str = "", vectors: bool = True, metadata: bool = True
    ) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
        """Stored rows by id; ids that are not stored are absent from the result."""
        request = pb.GetRequest(
            collection=collection or self.collection, ids=list(ids), include_vectors=vectors,
            include_metadata=metadata,
        )
        try:
            reply = await self._images.Get(request, **self._per_call())
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
        return rows_from_reply(reply, vectors, metadata)

    async def delete(self, ids: Sequence[str], collection: str = "") -> int:
        """Deletes rows by id; returns how many were stored."""
        request = pb.DeleteRequest(collection=collection or self.collection, ids=list(ids))
        try:
            return (await self._images.Delete(request, **self._per_call())).deleted_count
        except grpc.RpcError as e:
            raise error_from_rpc(e, self.server) from None
