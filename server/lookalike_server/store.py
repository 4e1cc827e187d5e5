"""Milvus, and only here: collections of (id, vector, metadata) rows. pymilvus types never leave this module
(milvus_rpc, which it uses for searches and reads by id on a Milvus server, returns plain rows)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import MilvusException

from . import metrics, served_index
from .config import INDEX_TYPES, SERVER_ONLY_INDEX_TYPES, ServerConfig
from .errors import AlreadyExists, FailedPrecondition, InvalidArgument, LookalikeError, NotFound, Unavailable
from .expressions import ids_in, string_literal
from .read_write_lock import ReadWriteLock
from .served_index import IndexState
from .store_layout import (
    ID_MAX_BYTES,
    Candidate,
    CollectionSpec,
    build_params,
    candidates,
    output_fields,
    rows_by_id,
    search_params,
)

log = logging.getLogger(__name__)

# The calls that only read; on Milvus Lite in this process these run side by side, every other call alone.
LITE_READS = frozenset({"search", "query", "describe_collection", "describe_index", "get_load_state",
                        "has_collection", "list_collections"})
# Ids per `id in [...]` query when reading rows by id.
GET_CHUNK = 1000
# A Milvus server's largest offset + limit for one query.
MAX_QUERY_WINDOW = 16_384
# Floats per reply when scanning a Milvus server: about 16 MB of vectors, well under gRPC's 64 MB.
REPLY_FLOATS = 4_000_000
_PROP_MODEL = "lookalike.model"
_PROP_METRIC = "lookalike.metric"
# The model property of a vectors-only collection (an empty property value might not survive every Milvus).
_VECTORS_ONLY = "(vectors only)"
_PROP_INDEX = "lookalike.index"
_PROP_INDEX_PARAMS = "lookalike.index_params"
_PROP_MIN_RECALL = "lookalike.min_recall"
CONSISTENCY_LEVELS = ("Strong", "Session", "Bounded", "Eventually")
def _released(error: MilvusException) -> bool:
    text = str(error.message).lower()
    return "released" in text or "not loaded" in text or "call load()" in text


class Store:
    """A connection to one Milvus (Lite in a local folder, or a server) with lookalike's row layout."""

    def __init__(self, config: ServerConfig) -> None:
        self.is_lite = not config.milvus_uri
        if self.is_lite:
            os.makedirs(config.data_dir, mode=0o700, exist_ok=True)
            uri = str(config.milvus_lite_path)
            kwargs: dict[str, Any] = {}
        else:
            uri = config.milvus_uri
            kwargs = {
                "user": config.milvus_user,
                "password": config.milvus_password,
                "token": config.milvus_token,
                "db_name": config.milvus_db_name,
            }
            if config.milvus_tls:
                kwargs["secure"] = True
                for key, value in (
                    ("ca_pem_path", config.milvus_ca_cert),
                    ("client_pem_path", config.milvus_client_cert),
                    ("client_key_path", config.milvus_client_key),
                    ("server_name", config.milvus_server_name),
                ):
                    if value:
                        kwargs[key] = value
        self.uri = uri
        self.connect_args = kwargs
        try:
            self.client = MilvusClient(uri, **kwargs)
        except MilvusException as e:
            raise Unavailable(f"cannot connect to Milvus at {uri}: {e.message}") from e
        # Searches read with Session consistency (our own upserts are visible, about 5 ms a query on a
        # server). Reads by id and counts use Strong: on Milvus 2.3 Session does not yet see our own
        # deletes, and a Get right after a Delete must not return the row. Milvus Lite is always strong.
        self._consistency = {} if self.is_lite else {"consistency_level": "Session"}
        self._strong = {} if self.is_lite else {"consistency_level": "Strong"}
        # Milvus Lite in this process runs a write (a flush, an upsert) alone, whichever thread makes it: its
        # flush swaps in an empty memtable before the flushed segment is visible, and its searches read both
        # without a lock, so a search beside a flush (on another of AsyncStore's threads) missed rows.
        # Reads share it: when every call ran alone, a calibration's read of all rows (2-4 s a
        # call at 20,000 x 1280) held each search behind it, p99 2.1 s in the half minute after an ingest.
        self._lite_lock = ReadWriteLock() if self.is_lite else None

    def close(self) -> None:
        self.client.close()

    def ping(self) -> None:
        """Raises Unavailable unless Milvus answers."""
        self._call(self.client.list_collections)

    def _call(self, fn: Any, *args: Any, collection: str = "", **kwargs: Any) -> Any:
        with self._translated(getattr(fn, "__name__", "call"), collection):
            try:
                return fn(*args, **kwargs)
            except MilvusException as e:
                if not (collection and _released(e)):
                    raise
                self._reload(collection)
                return fn(*args, **kwargs)

    async def call_async(self, fn: Any, *args: Any, collection: str, filter_expr: str = "", **kwargs: Any) -> Any:
        """_call for AsyncStore's event-loop client: the same errors, metrics and reload of a released collection."""
        with self._translated(fn.__name__, collection, filter_expr):
            try:
                return await fn(collection, *args, **kwargs)
            except MilvusException as e:
                if not _released(e):
                    raise
                await asyncio.get_running_loop().run_in_executor(None, self._reload, collection)
                return await fn(collection, *args, **kwargs)

    @contextlib.contextmanager
    def _translated(self, operation: str, collection: str, filter_expr: str = "") -> Iterator[None]:
        """Times a Milvus call and turns its failures into lookalike errors (a bad filter named as such); for
        Milvus Lite in this process, it also lets reads in together and any other call in alone (_lite_lock)."""
        with self._turn(operation):
            started = time.perf_counter()
            try:
                yield
            except MilvusException as e:
                metrics.MILVUS_ERRORS.labels(operation).inc()
                error = self._translate(e, collection)
                if filter_expr and isinstance(error, InvalidArgument):
                    why = f"filter {filter_expr!r} is not a valid Milvus expression: {e.message}"
                    raise InvalidArgument(why) from e
                raise error from e
            except (ConnectionError, TimeoutError, OSError, grpc.RpcError) as e:
                metrics.MILVUS_ERRORS.labels(operation).inc()
                raise Unavailable(f"Milvus at {self.uri} does not answer: {e}") from e
            finally:
                metrics.MILVUS_SECONDS.labels(operation).observe(time.perf_counter() - started)

    def _turn(self, operation: str) -> contextlib.AbstractContextManager[None]:
        if self._lite_lock is None:
            return contextlib.nullcontext()
        return self._lite_lock.reading() if operation in LITE_READS else self._lite_lock.writing()

    @staticmethod
    def _translate(e: MilvusException, collection: str) -> LookalikeError:
        text = str(e.message)
        lowered = text.lower()
        if collection and ("not exist" in lowered or "not found" in lowered) and "collection" in lowered:
            return NotFound(f"collection {collection!r} does not exist")
        if "already exist" in lowered:
            return AlreadyExists(f"collection {collection!r} already exists")
        if "unavailable" in lowered or "connect" in lowered or "deadline" in lowered:
            return Unavailable(f"Milvus at {text}")
        return InvalidArgument(text)

    # Collections

    def list_collections(self) -> list[str]:
        return sorted(self._call(self.client.list_collections))

    def create(self, spec: CollectionSpec) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=spec.dimension)
        schema.add_field("metadata", DataType.JSON)
        index = self.client.prepare_index_params()
        built_with = build_params(spec.index_type, spec.dimension, spec.index_params)
        index.add_index(
            field_name="vector",
            index_type=spec.index_type,
            metric_type=spec.metric.upper(),
            params={"params": built_with},
        )
        if spec.index_type in SERVER_ONLY_INDEX_TYPES and self.engine_is_lite():
            lite_types = ", ".join(t for t in INDEX_TYPES if t not in SERVER_ONLY_INDEX_TYPES)
            raise FailedPrecondition(f"index type {spec.index_type} needs a Milvus server (serve --milvus-uri, or "
                                     f"--milvus-embedded standalone): Milvus Lite builds only {lite_types}")
        if self._call(self.client.has_collection, spec.name):
            raise AlreadyExists(f"collection {spec.name!r} already exists")
        properties = {
            _PROP_MODEL: spec.model or _VECTORS_ONLY,
            _PROP_METRIC: spec.metric,
            _PROP_INDEX: spec.index_type,
            _PROP_INDEX_PARAMS: json.dumps(built_with),
            _PROP_MIN_RECALL: str(spec.min_recall),
        }
        try:
            self._call(
                self.client.create_collection,
                spec.name,
                schema=schema,
                index_params=index,
                properties=properties,
                collection=spec.name,
                **self._consistency,
            )
        except LookalikeError:
            # Two replicas creating the same collection at once: whatever the engine said, the loser
            # sees the collection exists (Milvus Lite reports a file clash, a server a duplicate name),
            # once the winner has finished creating it.
            for _ in range(20):
                if self._call(self.client.has_collection, spec.name):
                    raise AlreadyExists(f"collection {spec.name!r} already exists") from None
                time.sleep(0.1)
            raise
        log.info("created collection %s (%s, %s, %d-d, model %s)", spec.name, spec.metric, spec.index_type,
                 spec.dimension, spec.model)

    def engine_is_lite(self) -> bool:
        """Milvus Lite, in this process or as a `milvus-lite server` (which reports "milvus_lite-3.2.2")."""
        if self.is_lite:
            return True
        try:
            return str(self.client.get_server_version()).startswith("milvus_lite")
        except (MilvusException, grpc.RpcError):  # not known: Milvus itself says what it cannot build
            return False

    def _described(self, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Milvus' description of one of lookalike's collections, and its vector field (NotFound for another's)."""
        info = self._call(self.client.describe_collection, name, collection=name)
        vector_field = next((f for f in info["fields"] if f["name"] == "vector"), None)
        if vector_field is None or _PROP_MODEL not in info.get("properties", {}):
            raise NotFound(f"collection {name!r} exists in Milvus but was not created by lookalike")
        return info, vector_field

    def describe(self, name: str) -> CollectionSpec:
        info, vector_field = self._described(name)
        props = info["properties"]
        return CollectionSpec(
            name=name,
            metric=props.get(_PROP_METRIC, "cosine"),
            index_type=props.get(_PROP_INDEX, "HNSW"),
            model="" if props[_PROP_MODEL] == _VECTORS_ONLY else props[_PROP_MODEL],
            dimension=int(vector_field["params"]["dim"]),
            index_params=json.loads(props.get(_PROP_INDEX_PARAMS, "{}")),
            min_recall=float(props.get(_PROP_MIN_RECALL, 0.99)),
        )

    def _reload(self, name: str) -> None:
        """Milvus restarted and released the collection: load it again (once), then the call is retried."""
        log.warning("collection %s was released by Milvus (a restart?); loading it again", name)
        self.client.load_collection(name)

    def ensure_loaded(self, name: str) -> None:
        """Loads the collection into memory if it is not: after a restart Milvus keeps it released."""
        state = self._call(self.client.get_load_state, name, collection=name)
        if "Loaded" not in str(state.get("state", "")):
            started = time.monotonic()
            self._call(self.client.load_collection, name, collection=name)
            log.info("loaded collection %s in %.1f s", name, time.monotonic() - started)

    def describe_index(self, name: str) -> dict[str, Any]:
        """What Milvus itself reports about the vector index (type, metric, build parameters)."""
        return self._call(self.client.describe_index, name, "vector", collection=name)

    def row_count(self, name: str) -> int:
        rows = self._call(self.client.query, name, filter="", output_fields=["count(*)"], collection=name,
                          **self._strong)
        return int(rows[0]["count(*)"])

    def flush(self, name: str) -> None:
        """Seals the collection's recent rows so Milvus indexes them."""
        self._call(self.client.flush, name, collection=name)

    def index_state(self, name: str) -> IndexState | None:
        """The segments and indexes that answer the collection's searches, once every flushed row is searched
        through its index; None while some are still searched another way."""
        if self.is_lite:
            # Its index files appear before the index is attached, so they cannot stand in: an unreadable Milvus
            # Lite fails the calibration, and searches keep the generous default.
            return served_index.lite_state(self.uri, name)
        info = self.describe_index(name)
        flushed = int(info.get("total_rows", 0))
        # A server reports its index "Finished" while sealed segments still wait for theirs (IVF_PQ at 50,000
        # rows: 21,881 of 50,000 indexed), and its query node loads a built index later still.
        if int(info.get("indexed_rows", 0)) < flushed:
            return None
        try:
            segments = self._call(self.client.list_loaded_segments, name, collection=name)
        except LookalikeError:
            # A Milvus without the call (a Milvus Lite server, whose index report is all there is).
            return frozenset({("indexed_rows", flushed)})
        return served_index.server_state(segments, flushed)

    def page(self, name: str, offset: int, limit: int) -> tuple[list[str], np.ndarray]:
        """Rows `offset` to `offset + limit` in Milvus' own order (a server caps offset + limit at 16,384)."""
        if not self.is_lite:
            offset = max(0, min(offset, MAX_QUERY_WINDOW - limit))
        rows = self._call(self.client.query, name, filter="", offset=offset, limit=limit,
                          output_fields=["id", "vector"], collection=name, **self._strong)
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return [r["id"] for r in rows], np.asarray([r["vector"] for r in rows], dtype=np.float32)

    def drop(self, name: str) -> None:
        if not self._call(self.client.has_collection, name):
            raise NotFound(f"collection {name!r} does not exist")
        self._call(self.client.drop_collection, name, collection=name)
        log.info("dropped collection %s", name)

    # Rows

    def upsert(self, name: str, ids: list[str], vectors: np.ndarray, metadata: list[dict[str, Any]]) -> None:
        """Stores the rows; when this returns, Milvus has accepted them (same id: replaced)."""
        rows = [
            {"id": i, "vector": v, "metadata": m}
            for i, v, m in zip(ids, vectors.tolist(), metadata, strict=True)
        ]
        self._call(self.client.upsert, name, rows, collection=name)

    def search(
        self,
        name: str,
        spec: CollectionSpec,
        vectors: np.ndarray,
        limit: int,
        filter_expr: str = "",
        with_metadata: bool = False,
        effort: int = 0,
        consistency: str = "",
        with_vectors: bool = True,
    ) -> list[list[Candidate]]:
        """Approximate nearest neighbours with Milvus' distances, and their stored vectors if asked for.

        Vectors are costly here (pymilvus hands back Python lists: 32 queries x 42 candidates took 660 ms a
        call against 310 ms without), so they are fetched only when a re-rank or the caller needs them.
        """
        request = self._search_request(spec, vectors, limit, filter_expr, with_metadata, effort, consistency,
                                       with_vectors)
        with self._translated("search", name, filter_expr):
            try:
                results = self.client.search(name, **request)
            except MilvusException as e:
                if not _released(e):
                    raise
                self._reload(name)
                results = self.client.search(name, **request)
        return candidates(results, with_vectors, with_metadata)

    def _search_request(
        self, spec: CollectionSpec, vectors: np.ndarray, limit: int, filter_expr: str, with_metadata: bool,
        effort: int, consistency: str, with_vectors: bool,
    ) -> dict[str, Any]:
        return {
            "data": vectors.tolist(),
            "limit": limit,
            "filter": filter_expr,
            "output_fields": output_fields(with_vectors, with_metadata),
            "search_params": search_params(spec.index_type, limit, effort),
            **self._level(consistency),
        }

    def _level(self, consistency: str) -> dict[str, str]:
        if self.is_lite:
            return {}
        return {"consistency_level": self.level_name(consistency)}

    @staticmethod
    def level_name(consistency: str) -> str:
        """The consistency level a server read uses: the one asked for, or Session."""
        if consistency and consistency not in CONSISTENCY_LEVELS:
            raise InvalidArgument(f"consistency must be one of {CONSISTENCY_LEVELS}, got {consistency!r}")
        return consistency or "Session"

    def get(
        self, name: str, ids: list[str], with_vectors: bool = True, with_metadata: bool = True,
        filter_expr: str = "",
    ) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
        """The stored rows among `ids` (and matching the filter), keyed by id; others are simply absent."""
        if filter_expr and self.is_lite:
            # Milvus Lite reads ids alone by primary key, but with another condition it tests `id in [...]` row
            # by row (100,300 ids with a metadata filter: 60-85 s over 1,500 rows): the ids first, then the
            # filter among those found (3.8 s).
            ids = list(self.get(name, ids, with_vectors=False, with_metadata=False))
        found: dict[str, tuple[np.ndarray | None, dict[str, Any] | None]] = {}
        for request in self.get_requests(ids, with_vectors, with_metadata, filter_expr, self._strong):
            found.update(rows_by_id(self._call(self.client.query, name, collection=name, **request),
                                     with_vectors, with_metadata))
        return found

    def get_requests(self, ids: Sequence[str], with_vectors: bool, with_metadata: bool, filter_expr: str,
                      level: dict[str, str]) -> Iterator[dict[str, Any]]:
        fields = output_fields(with_vectors, with_metadata)
        for start in range(0, len(ids), GET_CHUNK):
            chunk = list(ids[start : start + GET_CHUNK])
            expr = ids_in(chunk) + (f" and ({filter_expr})" if filter_expr else "")
            yield {"filter": expr, "output_fields": fields, **level}

    def scan(self, name: str, filter_expr: str = "", with_metadata: bool = False,
             batch_size: int = 10_000) -> Iterator[tuple[list[str], np.ndarray, list[Any]]]:
        """Every row (matching the filter) in batches of (ids, vectors, metadata): for exact search.

        Milvus Lite pages by offset: each of its calls costs a pass over the rows, so large pages keep a
        scan of 20,000 x 1280 near 12 s (its query iterator took 77 s). A Milvus server refuses
        offset + limit above 16,384, so there pymilvus' query iterator reads everything (Python float lists,
        ~130 MB of objects a page of 3,125 x 1280): AsyncStore.scan reads a server through milvus_rpc instead
        (the same pages as float32 arrays; see scan_filter): only Milvus Lite in this process comes here.
        """
        fields = ["id", "vector", "metadata"] if with_metadata else ["id", "vector"]
        if self.is_lite:
            pages = (
                self._call(self.client.query, name, filter=filter_expr, offset=offset, limit=batch_size,
                           output_fields=fields, collection=name, **self._strong)
                for offset in itertools.count(0, batch_size)
            )
        else:
            # A reply must also fit gRPC's message limit: 10,000 rows of 1280 floats came to 98 MB.
            dimension = self.describe(name).dimension
            pages = self._iterate(name, filter_expr, fields, scan_page_rows(dimension, batch_size))
        for rows in pages:
            if not rows:
                return
            yield (
                [r["id"] for r in rows],
                np.asarray([r["vector"] for r in rows], dtype=np.float32),
                [r.get("metadata") for r in rows],
            )
            if self.is_lite and len(rows) < batch_size:
                return

    def scan_target(self, name: str) -> tuple[int, int]:
        """The collection's Milvus id and vector dimension, for a scan through milvus_rpc (a server only)."""
        info, vector_field = self._described(name)
        return int(info["collection_id"]), int(vector_field["params"]["dim"])

    def _iterate(self, name: str, filter_expr: str, fields: list[str], batch_size: int) -> Iterator[list[Any]]:
        iterator = self._call(self.client.query_iterator, name, batch_size=batch_size, filter=filter_expr,
                              output_fields=fields, collection=name, **self._strong)
        try:
            while rows := self._call(iterator.next, collection=name):
                yield rows
        finally:
            iterator.close()

    def delete(self, name: str, ids: list[str]) -> int:
        """Deletes the ids and returns how many of them were stored."""
        present = list(self.get(name, ids, with_vectors=False, with_metadata=False))
        for start in range(0, len(present), GET_CHUNK):
            self._call(self.client.delete, name, filter=ids_in(present[start : start + GET_CHUNK]), collection=name)
        return len(present)


def scan_page_rows(dimension: int, batch_size: int) -> int:
    """Rows per page of a scan of a Milvus server: a reply must fit gRPC's message limit too (10,000 rows of
    1280 floats came to 98 MB), and a server refuses a limit over 16,384."""
    return max(1, min(batch_size, MAX_QUERY_WINDOW, max(64, REPLY_FLOATS // dimension)))


def scan_filter(filter_expr: str, after: str | None) -> str:
    """A scan page's expression, as pymilvus' QueryIterator builds it: the rows past the last id read (pages
    come in primary-key order), within the user's filter; every row (`id != ""`) with neither."""
    if after is None:
        return filter_expr or 'id != ""'
    cursor = f"id > {string_literal(after)}"
    return f"{cursor} and ({filter_expr})" if filter_expr else cursor
