"""The gRPC surface: wire types in, plain types to the pipeline, wire types out. One method per RPC."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format, message, struct_pb2

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

from .errors import InvalidArgument, LookalikeError, ResourceExhausted, Unavailable
from .pipeline import CollectionInfo, Hit, IngestItem, ItemResult, Pipeline, Query, SearchOptions

log = logging.getLogger(__name__)

R = TypeVar("R")

_METRIC_TO_WIRE = {"cosine": pb.METRIC_COSINE, "ip": pb.METRIC_IP, "l2": pb.METRIC_L2}
_METRIC_FROM_WIRE = {v: k for k, v in _METRIC_TO_WIRE.items()} | {pb.METRIC_UNSPECIFIED: ""}
_INDEX_TO_WIRE = {
    "FLAT": pb.INDEX_TYPE_FLAT,
    "HNSW": pb.INDEX_TYPE_HNSW,
    "IVF_FLAT": pb.INDEX_TYPE_IVF_FLAT,
    "IVF_SQ8": pb.INDEX_TYPE_IVF_SQ8,
    "IVF_PQ": pb.INDEX_TYPE_IVF_PQ,
    "SCANN": pb.INDEX_TYPE_SCANN,
}
_INDEX_FROM_WIRE = {v: k for k, v in _INDEX_TO_WIRE.items()} | {pb.INDEX_TYPE_UNSPECIFIED: ""}
_CONSISTENCY_FROM_WIRE = {
    pb.CONSISTENCY_UNSPECIFIED: "",
    pb.CONSISTENCY_STRONG: "Strong",
    pb.CONSISTENCY_SESSION: "Session",
    pb.CONSISTENCY_BOUNDED: "Bounded",
    pb.CONSISTENCY_EVENTUALLY: "Eventually",
}


def _abort_on_error(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Turns a LookalikeError into the matching gRPC status; anything else becomes INTERNAL, logged."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await method(self, request, context)
        except LookalikeError as e:
            await context.abort(getattr(grpc.StatusCode, e.code), e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{method.__name__} failed; see the server log")
        raise AssertionError("unreachable")

    return wrapper


def _deadline(context: Any) -> float | None:
    """The call's deadline in event-loop time, or None when the caller set none."""
    remaining = context.time_remaining()
    return None if remaining is None else asyncio.get_running_loop().time() + remaining


def _status_code(code: str) -> int:
    return pb.StatusCode.Value(code)


def _struct(data: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if data is None:
        return None
    message = struct_pb2.Struct()
    message.update(data)
    return message


def _collection_to_wire(info: CollectionInfo) -> pb.CollectionInfo:
    spec = info.spec
    return pb.CollectionInfo(
        name=spec.name,
        metric=_METRIC_TO_WIRE[spec.metric],
        index_type=_INDEX_TO_WIRE[spec.index_type],
        model=spec.model,
        dimension=spec.dimension,
        row_count=info.row_count,
        execution_provider=info.execution_provider,
        model_precision=info.model_precision,
        embeds_text=info.embeds_text,
        vectors_only=not spec.model,
        index_params=spec.index_params,
        min_recall=spec.min_recall,
        calibrations=[
            pb.Calibration(k=k, effort=c.efforts[k], recall=c.recalls[k], target=c.target, rows=c.rows,
                           exact_reference=c.exact_reference, exact_fallback=c.exact_fallback,
                           overfetch=c.overfetch.get(k, 0))
            for c in info.calibrations
            for k in sorted(c.efforts)
        ],
    )


def _item_result_to_wire(result: ItemResult) -> pb.EmbedResult:
    vector = pb.Vector(values=result.vector.tolist()) if result.vector is not None else None
    return pb.EmbedResult(id=result.id, code=_status_code(result.code), message=result.message, vector=vector)


def _query_from_wire(query: pb.Query) -> Query:
    kind = query.WhichOneof("by")
    if kind == "vector":
        return Query(vector=np.asarray(query.vector.values, dtype=np.float32))
    if kind == "vectors":
        return Query(vectors=[np.asarray(v.values, dtype=np.float32) for v in query.vectors.vectors])
    if kind == "image":
        return Query(image=query.image)
    if kind == "id":
        return Query(id=query.id)
    if kind == "ids":
        return Query(ids=list(query.ids.ids))
    if kind == "text":
        return Query(text=query.text)
    if kind == "texts":
        return Query(texts=list(query.texts.texts))
    return Query()


def _search_options(request: pb.SearchRequest, caller: str) -> SearchOptions:
    return SearchOptions(
        k=request.k,
        filter_expr=request.filter,
        include_metadata=request.include_metadata,
        include_vectors=request.include_vectors,
        reverse=request.reverse,
        offset=request.offset,
        restrict_ids=list(request.restrict_ids),
        consistency=_CONSISTENCY_FROM_WIRE.get(request.consistency, ""),
        min_recall=request.min_recall,
        caller=caller,
    )


def _hits_to_wire(hits: list[Hit], options: SearchOptions) -> pb.QueryResult:
    return pb.QueryResult(
        hits=[
            pb.Hit(
                id=h.id,
                score=h.score,
                metadata=_struct(h.metadata) if options.include_metadata else None,
                vector=pb.Vector(values=h.vector.tolist()) if options.include_vectors and h.vector is not None
                else None,
            )
            for h in hits
        ]
    )


async def _readable(requests: AsyncIterator[R]) -> AsyncIterator[R]:
    """The stream's requests; one that protobuf cannot parse (an id that is not UTF-8) ends it clearly."""
    count = 0
    try:
        async for request in requests:
            count += 1
            yield request
    except message.DecodeError as e:
        raise InvalidArgument(
            f"request {count + 1} of the stream cannot be read ({e}); strings such as ids must be UTF-8. "
            f"The {count} requests before it were read"
        ) from None


class _ChunkAssembler:
    """Joins consecutive chunk requests of one id into one image, up to a size limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._id: str | None = None
        self._collection = ""
        self._parts: list[bytes] = []
        self._size = 0
        self._metadata: dict[str, Any] = {}

    def add(self, item_id: str, collection: str, chunk: pb.ImageChunk, metadata: dict[str, Any]) -> list[IngestItem]:
        """Items finished by this chunk: its own when `last`, and a previous id's that never ended."""
        finished = []
        if self._id is not None and item_id != self._id:
            finished.append(self.abandon())
        if self._id is None:
            self._id, self._collection = item_id, collection
        self._size += len(chunk.data)
        if self._size <= self.max_bytes:
            self._parts.append(chunk.data)
        self._metadata = metadata or self._metadata
        if chunk.last:
            item = IngestItem(id=item_id, collection=self._collection, metadata=self._metadata)
            if self._size > self.max_bytes:
                item.error = ResourceExhausted(
                    f"image of {self._size} bytes is over the limit of {self.max_bytes} bytes (--max-image-bytes)"
                )
            else:
                item.image = b"".join(self._parts)
            self._reset()
            finished.append(item)
        return finished

    def abandon(self) -> IngestItem | None:
        """The item being assembled, failed, if its last chunk never came."""
        if self._id is None:
            return None
        error = InvalidArgument("its chunks ended without one marked `last`")
        item = IngestItem(id=self._id, collection=self._collection, metadata=self._metadata, error=error)
        self._reset()
        return item

    def _reset(self) -> None:
        self._id, self._collection, self._parts, self._size, self._metadata = None, "", [], 0, {}


class _PipelineUser:
    """Services are registered before the server starts; the pipeline arrives once the model is loaded."""

    def __init__(self) -> None:
        self._pipeline: Pipeline | None = None

    def attach(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    @property
    def pipeline(self) -> Pipeline:
        if self._pipeline is None:
            raise Unavailable("the server is starting: the model and Milvus are still loading; retry shortly")
        return self._pipeline

    async def _open_stream(self, context: Any) -> Pipeline:
        """The pipeline for a stream, whose headers go out at once: a client that waits for them before writing
        learns of a refusal (here, or by the interceptors) before any write can cross it, which grpc.aio would
        report as INTERNAL instead of the refusal (grpc/grpc#36066)."""
        try:
            pipeline = self.pipeline
        except Unavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, e.message)
            raise
        await context.send_initial_metadata(())
        return pipeline


class CollectionsService(pb_grpc.CollectionsServicer, _PipelineUser):

    @_abort_on_error
    async def CreateCollection(self, request: pb.CreateCollectionRequest, context: Any) -> pb.CollectionInfo:
        info = await self.pipeline.create_collection(
            request.name,
            _METRIC_FROM_WIRE[request.metric],
            _INDEX_FROM_WIRE[request.index_type],
            request.model,
            dict(request.index_params),
            request.min_recall,
            request.dimension,
            request.vectors_only,
        )
        return _collection_to_wire(info)

    @_abort_on_error
    async def ListCollections(self, request: pb.ListCollectionsRequest, context: Any) -> pb.ListCollectionsResponse:
        infos = await self.pipeline.list_collections()
        return pb.ListCollectionsResponse(collections=[_collection_to_wire(i) for i in infos])

    @_abort_on_error
    async def DescribeCollection(self, request: pb.DescribeCollectionRequest, context: Any) -> pb.CollectionInfo:
        return _collection_to_wire(await self.pipeline.describe_collection(request.name))

    @_abort_on_error
    async def DropCollection(self, request: pb.DropCollectionRequest, context: Any) -> pb.DropCollectionResponse:
        if not request.name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name the collection to drop")
        await self.pipeline.drop_collection(request.name)
        return pb.DropCollectionResponse()


class ImagesService(pb_grpc.ImagesServicer, _PipelineUser):

    async def Ingest(
        self, request_iterator: AsyncIterator[pb.IngestRequest], context: Any
    ) -> AsyncIterator[pb.IngestResponse]:
        pipeline = await self._open_stream(context)

        async def items() -> AsyncIterator[IngestItem]:
            assembler = _ChunkAssembler(pipeline.config.max_image_bytes)
            async for request in _readable(request_iterator):
                kind = request.WhichOneof("content")
                metadata = json_format.MessageToDict(request.metadata)
                if kind == "chunk":
                    for item in assembler.add(request.id, request.collection, request.chunk, metadata):
                        yield item
                    continue
                if (unfinished := assembler.abandon()) is not None:
                    yield unfinished
                yield IngestItem(
                    id=request.id,
                    collection=request.collection,
                    image=request.image if kind == "image" else None,
                    vector=np.asarray(request.vector.values, dtype=np.float32) if kind == "vector" else None,
                    metadata=metadata,
                )
            if (unfinished := assembler.abandon()) is not None:
                yield unfinished

        try:
            async for result in pipeline.ingest(items(), context.peer()):
                yield pb.IngestResponse(id=result.id, code=_status_code(result.code), message=result.message)
        except LookalikeError as e:
            # The stream itself broke (an unreadable message): what was acknowledged stays stored.
            await context.abort(getattr(grpc.StatusCode, e.code), e.message)

    @_abort_on_error
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        deadline = _deadline(context)
        results = await self.pipeline.embed_many([(item.id, item.image) for item in request.items], deadline)
        if request.texts:  # after the images, as the proto says
            results += await self.pipeline.embed_texts([(item.id, item.text) for item in request.texts], deadline)
        return pb.EmbedResponse(results=[_item_result_to_wire(r) for r in results])

    async def EmbedStream(
        self, request_iterator: AsyncIterator[pb.ImageItem], context: Any
    ) -> AsyncIterator[pb.EmbedResult]:
        pipeline = await self._open_stream(context)
        try:
            async for item in _readable(request_iterator):
                yield _item_result_to_wire(await pipeline.embed_one(item.id, item.image))
        except LookalikeError as e:  # an unreadable request ends the stream with its status; the results sent stand
            await context.abort(getattr(grpc.StatusCode, e.code), e.message)

    async def _search(
        self, request: pb.SearchRequest, caller: str, deadline: float | None = None
    ) -> pb.SearchResponse:
        options = _search_options(request, caller)
        results = await self.pipeline.search(
            request.collection, [_query_from_wire(q) for q in request.queries], options, deadline
        )
        return pb.SearchResponse(
            results=[_hits_to_wire(hits, options) for hits in results], request_id=request.request_id
        )

    @_abort_on_error
    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        return await self._search(request, context.peer(), _deadline(context))

    async def SearchStream(
        self, request_iterator: AsyncIterator[pb.SearchRequest], context: Any
    ) -> AsyncIterator[pb.SearchResponse]:
        await self._open_stream(context)
        try:
            async for request in _readable(request_iterator):
                try:
                    yield await self._search(request, context.peer())
                except LookalikeError as e:
                    yield pb.SearchResponse(
                        request_id=request.request_id, code=_status_code(e.code), message=e.message
                    )
                except Exception:
                    log.exception("SearchStream request %r failed", request.request_id)
                    yield pb.SearchResponse(
                        request_id=request.request_id, code=pb.INTERNAL, message="search failed; see the server log"
                    )
        except LookalikeError as e:  # an unreadable request (its request_id unknown) ends the stream
            await context.abort(getattr(grpc.StatusCode, e.code), e.message)

    @_abort_on_error
    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        found, missing = await self.pipeline.get(
            request.collection, list(request.ids), request.include_vectors, request.include_metadata
        )
        items = [
            pb.Item(
                id=item_id,
                vector=pb.Vector(values=vector.tolist()) if vector is not None else None,
                metadata=_struct(metadata),
            )
            for item_id, vector, metadata in found
        ]
        return pb.GetResponse(items=items, missing_ids=missing)

    @_abort_on_error
    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        deleted = await self.pipeline.delete(request.collection, list(request.ids), context.peer())
        return pb.DeleteResponse(deleted_count=deleted)
