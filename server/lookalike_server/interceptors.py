"""Cross-cutting gRPC concerns, applied to every call: authentication, limits, metrics and unreadable requests."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message

from . import metrics

log = logging.getLogger(__name__)

# Calls that read only; every other lookalike call writes (Ingest, Delete, Create/DropCollection).
READ_METHODS = frozenset({
    "/lookalike.v1.Images/Search", "/lookalike.v1.Images/SearchStream", "/lookalike.v1.Images/Embed",
    "/lookalike.v1.Images/EmbedStream", "/lookalike.v1.Images/Get",
    "/lookalike.v1.Collections/ListCollections", "/lookalike.v1.Collections/DescribeCollection",
})
_OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
ROLES = ("read", "write")


def _is_open(method: str) -> bool:
    return method.startswith(_OPEN_PREFIXES)


def _wrap(handler: grpc.RpcMethodHandler, wrap_behavior: Callable[[Any, bool], Any],
          request_deserializer: Callable[[bytes], Any] | None = None) -> grpc.RpcMethodHandler:
    """The same handler with its behaviour (and, if given, its request deserializer) replaced, whatever its
    streaming shape."""
    read = request_deserializer or handler.request_deserializer
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            wrap_behavior(handler.stream_stream, True), read, handler.response_serializer)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            wrap_behavior(handler.stream_unary, False), read, handler.response_serializer)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            wrap_behavior(handler.unary_stream, True), read, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(
        wrap_behavior(handler.unary_unary, False), read, handler.response_serializer)


class _WrapCache:
    """Each method's wrapped handler, made on its first call and reused: wrapping builds closures and a
    handler object, which every Search would otherwise pay for again."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler,
            make: Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> grpc.RpcMethodHandler:
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = make(handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """An interceptor that wraps the handlers it applies to, each method's once (_WrapCache)."""

    def __init__(self) -> None:
        self._cache = _WrapCache()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or not self._applies(handler, method):
            return handler
        return self._cache.get(method, handler, lambda h: self._wrapped(h, method))

    def _applies(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return True

    def _wrapped(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError


def _refusing(code: grpc.StatusCode, message: str) -> Callable[[Any, bool], Any]:
    def wrap_behavior(_behavior: Any, streaming_response: bool) -> Any:
        if streaming_response:
            async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await context.abort(code, message)
                yield  # pragma: no cover - makes this an async generator
            return refuse_stream

        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(code, message)

        return refuse

    return wrap_behavior


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens with roles: `read` may search, embed, get and list; `write` may do everything.

    Health checking and reflection stay open, so probes and `grpcurl list` work without a token.
    """

    def __init__(self, tokens: dict[str, str]) -> None:
        self._roles = tokens  # token -> role

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method
        if handler is None or _is_open(method):
            return handler
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        role = self._roles.get(token)
        if role is None:
            reason = "a bearer token is required" if not token else "the bearer token is not valid"
            return _wrap(handler, _refusing(grpc.StatusCode.UNAUTHENTICATED,
                                            f"{reason}: send 'authorization: Bearer <token>'"))
        if role != "write" and method not in READ_METHODS:
            return _wrap(handler, _refusing(grpc.StatusCode.PERMISSION_DENIED,
                                            f"this token may only read; {method} needs a write token"))
        return handler


class LimitsInterceptor(_WrappingInterceptor):
    """Bounds the calls in flight, and the open streams per client, with RESOURCE_EXHAUSTED past them."""

    def __init__(self, max_inflight: int, max_streams_per_client: int) -> None:
        super().__init__()
        self.max_inflight = max_inflight
        self.max_streams_per_client = max_streams_per_client
        self.inflight = 0
        self._streams: Tally[str] = Tally()

    def _applies(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return not _is_open(method)

    def _wrapped(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        limits = self

        def wrap_behavior(behavior: Any, streaming_response: bool) -> Any:
            streaming = handler.request_streaming or handler.response_streaming

            def admit(context: grpc.aio.ServicerContext) -> str | None:
                if limits.inflight >= limits.max_inflight:
                    return (f"the server is overloaded ({limits.inflight} calls in flight, the limit is "
                            f"{limits.max_inflight}); retry with backoff")
                if streaming:
                    peer = _client_of(context.peer())
                    if limits._streams[peer] >= limits.max_streams_per_client:
                        return (f"this client has {limits._streams[peer]} streams open, the limit is "
                                f"{limits.max_streams_per_client}; close one or retry later")
                return None

            def enter(context: grpc.aio.ServicerContext) -> str:
                limits.inflight += 1
                metrics.INFLIGHT.set(limits.inflight)
                if not streaming:
                    return ""
                peer = _client_of(context.peer())
                limits._streams[peer] += 1
                return peer

            def leave(peer: str) -> None:
                limits.inflight -= 1
                metrics.INFLIGHT.set(limits.inflight)
                if streaming:
                    limits._streams[peer] -= 1
                    if limits._streams[peer] <= 0:
                        del limits._streams[peer]

            if streaming_response:
                async def limited_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    refusal = admit(context)
                    if refusal:
                        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                    peer = enter(context)
                    try:
                        async for reply in behavior(request, context):
                            yield reply
                    finally:
                        leave(peer)
                return limited_stream

            async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
                refusal = admit(context)
                if refusal:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
                peer = enter(context)
                try:
                    return await behavior(request, context)
                finally:
                    leave(peer)

            return limited

        return _wrap(handler, wrap_behavior)


def _client_of(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' -> 'ipv4:127.0.0.1': streams are counted per client host."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class MetricsInterceptor(_WrappingInterceptor):
    """Counts every call by method and final status code, and times it."""

    def _wrapped(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _timed(handler, method)


def _timed(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The handler, counting each call under `method` and its final status code, and timing it."""
    counters: dict[str, Any] = {}  # code -> its counter: labels() takes a lock and builds a key each time
    seconds = metrics.REQUEST_SECONDS.labels(method)

    def record(started: float, code: str) -> None:
        counter = counters.get(code)
        if counter is None:
            counter = counters[code] = metrics.REQUESTS.labels(method, code)
        counter.inc()
        seconds.observe(time.perf_counter() - started)

    def code_of(context: grpc.aio.ServicerContext, failed: bool) -> str:
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code.name
        return "UNKNOWN" if failed else "OK"

    def wrap_behavior(behavior: Any, streaming_response: bool) -> Any:
        if streaming_response:
            async def timed_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, outcome = time.perf_counter(), ""
                try:
                    async for reply in behavior(request, context):
                        yield reply
                except asyncio.CancelledError:
                    outcome = "CANCELLED"
                    raise
                except BaseException:
                    outcome = "failed"
                    raise
                finally:
                    record(started, outcome if outcome == "CANCELLED" else code_of(context, bool(outcome)))
            return timed_stream

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, failed = time.perf_counter(), False
            try:
                return await behavior(request, context)
            except BaseException:
                failed = True
                raise
            finally:
                record(started, code_of(context, failed))

        return timed

    return _wrap(handler, wrap_behavior)


def load_tokens(path: str) -> dict[str, str]:
    """Reads `ROLE TOKEN` lines (role read or write; # comments) into token -> role."""
    tokens: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ROLES:
                raise ValueError(f"{path}:{number}: expected 'read TOKEN' or 'write TOKEN'")
            tokens[parts[1]] = parts[0]
    if not tokens:
        raise ValueError(f"{path}: no tokens")
    return tokens


class _Unreadable:
    """Stands in for a request protobuf could not parse, so that the call itself can say so."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class UnreadableRequestInterceptor(_WrappingInterceptor):
    """A single request that protobuf cannot parse (a string that is not UTF-8, a corrupt message) is answered
    INVALID_ARGUMENT, saying why; gRPC's own answer to a failed parse is UNKNOWN. A stream's requests are read
    by the stream (service._readable), which names the request that failed and what was read before it.

    Innermost of the interceptors, so that the others (and the metrics) see the call answered as refused."""

    def _applies(self, handler: grpc.RpcMethodHandler, method: str) -> bool:
        return not handler.request_streaming and handler.request_deserializer is not None

    def _wrapped(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return _refusing_unreadable(handler)


def _refusing_unreadable(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = handler.request_deserializer

    def read(data: bytes) -> Any:
        try:
            return parse(data)
        except message.DecodeError as e:
            return _Unreadable(str(e))

    def refusal(request: _Unreadable) -> str:
        hint = "; protobuf strings (ids, texts, filters, collection names) must be UTF-8"
        return f"the request cannot be read ({request.error})" + (hint if "UTF-8" in request.error else "")

    def wrap_behavior(behavior: Any, streaming_response: bool) -> Any:
        if streaming_response:
            async def checked_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Unreadable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
                async for reply in behavior(request, context):
                    yield reply
            return checked_stream

        async def checked(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Unreadable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
            return await behavior(request, context)

        return checked

    return _wrap(handler, wrap_behavior, read)
