"""One lookalike server: the gRPC server with health and reflection, the model, and the Milvus store.

`main.serve` runs it in a process (signals, logging, `--workers`); this module only puts it together."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

from .config import ServerConfig
from .embedded_milvus import EmbeddedMilvus, resolve_milvus, restart_embedded_milvus
from .embedder import Embedder
from .errors import LookalikeError, StartupError
from .interceptors import (
    AuthInterceptor,
    LimitsInterceptor,
    MetricsInterceptor,
    UnreadableRequestInterceptor,
    load_tokens,
)
from .metrics import serve_metrics
from .model_card import load_model_card
from .pipeline import Pipeline
from .service import CollectionsService, ImagesService
from .store import Store

log = logging.getLogger("lookalike_server")

SERVICE_NAMES = tuple(pb.DESCRIPTOR.services_by_name[s].full_name for s in ("Collections", "Images"))
# Health name for liveness probes: SERVING while the process runs, even when Milvus is away (readiness
# follows Milvus, liveness must not, or an outage of Milvus would restart every replica).
LIVENESS = "liveness"
HEALTH_CHECK_SECONDS = 5.0


class LookalikeServer:
    """One running server: call `start()`, then `wait()`; `stop()` drains in-flight calls first."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        options = [
            # A second server on a taken port must fail, not silently share it with the first; the workers
            # of one `serve --workers N` share it on purpose.
            ("grpc.so_reuseport", 1 if config.reuse_port else 0),
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # A fixed window per stream instead of one that BDP probing grows: clients cannot run far ahead.
            ("grpc.http2.bdp_probe", 0),
            ("grpc.http2.lookahead_bytes", config.stream_window_bytes),
        ]
        if config.max_connection_age_s > 0:
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", 30_000),
            ]
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor()]
        if config.auth_tokens_file:
            tokens = load_tokens(config.auth_tokens_file)
            interceptors.append(AuthInterceptor(tokens))
            log.info("authentication on: %d tokens (%s)", len(tokens),
                     ", ".join(f"{sum(r == role for r in tokens.values())} {role}" for role in ("read", "write")))
        self.limits = LimitsInterceptor(config.max_inflight_requests, config.max_streams_per_client)
        interceptors.append(self.limits)
        interceptors.append(UnreadableRequestInterceptor())  # innermost: see its docstring
        self.grpc_server = grpc.aio.server(options=options, interceptors=interceptors)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection((*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                            self.grpc_server)
        self.collections = CollectionsService()
        self.images = ImagesService()
        pb_grpc.add_CollectionsServicer_to_server(self.collections, self.grpc_server)
        pb_grpc.add_ImagesServicer_to_server(self.images, self.grpc_server)
        try:
            if config.tls_cert:
                credentials = grpc.ssl_server_credentials(
                    [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())],
                    root_certificates=Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None,
                    require_client_auth=bool(config.tls_client_ca),
                )
                self.port = self.grpc_server.add_secure_port(config.address, credentials)
            else:
                self.port = self.grpc_server.add_insecure_port(config.address)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise StartupError(f"cannot listen on {config.address}: is another server using the port?")
        self.pipeline: Pipeline | None = None
        self.embedded_milvus: EmbeddedMilvus | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> None:
        """Listens at once (health NOT_SERVING), then loads the model and Milvus and turns SERVING."""
        await self._set_health(False)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.grpc_server.start()
        security = ("mutual TLS" if self.config.tls_client_ca else "TLS") if self.config.tls_cert else "plaintext"
        log.info("listening on %s (port %d, %s); loading the model and Milvus", self.config.address, self.port,
                 security)
        if self.config.metrics_port:
            serve_metrics(self.config.metrics_port)
            log.info("Prometheus metrics on :%d/metrics", self.config.metrics_port)
        loop = asyncio.get_running_loop()
        card = load_model_card(self.config.model_card or None)
        embedder = await loop.run_in_executor(
            None,
            lambda: Embedder(card, self.config.device, self.config.inference_threads, self.config.require_gpu,
                             fp16=self.config.fp16),
        )
        log.info("model %s (%d-d, %s) runs on ONNX Runtime %s (%d run(s) at once, %d thread(s) each)", card.name,
                 card.dimension, embedder.precision, embedder.provider, embedder.concurrent_runs,
                 embedder.intra_op_threads)
        store_config, self.embedded_milvus = resolve_milvus(self.config)
        if self.embedded_milvus is not None:
            uri = await loop.run_in_executor(None, self.embedded_milvus.start)
            log.info("started embedded Milvus (%s) at %s", store_config.milvus_embedded, uri)
            store_config = dataclasses.replace(store_config, milvus_uri=uri)
        store = await loop.run_in_executor(None, Store, store_config)
        log.info("Milvus: %s", "Milvus Lite at " + store.uri if store.is_lite else store.uri)
        self.pipeline = Pipeline(self.config, embedder, store)
        await self.pipeline.start()
        self.collections.attach(self.pipeline)
        self.images.attach(self.pipeline)
        # What start-up loaded (ONNX Runtime, Milvus Lite, pymilvus, grpc, numpy) lives as long as the server:
        # out of the collector's sight, a full collection under ingest took 7 ms instead of about 50 ms, which
        # had stalled every call in flight (an Embed under ingest among them).
        gc.freeze()
        await self._set_health(True)
        self._watchdog = loop.create_task(self._watch_milvus())
        log.info("SERVING on %s", self.config.address)

    async def _watch_milvus(self) -> None:
        """Health follows Milvus: NOT_SERVING while it does not answer, SERVING again when it does."""
        assert self.pipeline is not None
        serving = True
        while True:
            await asyncio.sleep(HEALTH_CHECK_SECONDS)
            if self.embedded_milvus is not None and self.embedded_milvus.exited():
                await self._restart_embedded_milvus()
            try:
                await self.pipeline.ping()
                ok = True
                self.pipeline.milvus_down = ""
            except LookalikeError as e:
                ok = False
                self.pipeline.milvus_down = f"{e.message} (health checks every {HEALTH_CHECK_SECONDS:.0f} s)"
                if serving:
                    log.warning("Milvus does not answer: %s", e.message)
            if ok != serving:
                serving = ok
                await self._set_health(ok)
                log.info("health: %s", "SERVING" if ok else "NOT_SERVING")

    async def _restart_embedded_milvus(self) -> None:
        """serve supervises the Milvus it started: a crashed child is started again on its data and address."""
        assert self.embedded_milvus is not None and self.pipeline is not None
        self.pipeline.milvus_down = "the embedded Milvus crashed and is starting again: retry in a few seconds"
        await self._set_health(False)
        await asyncio.get_running_loop().run_in_executor(
            None, restart_embedded_milvus, self.embedded_milvus, self.pipeline.store.uri)

    async def wait(self) -> None:
        await self.grpc_server.wait_for_termination()

    async def stop(self, grace: float | None = None) -> None:
        grace = self.config.shutdown_grace_s if grace is None else grace
        log.info("stopping: finishing calls in flight (up to %.0f s)", grace)
        await self._set_health(False)
        if self._watchdog:
            self._watchdog.cancel()
        await self.grpc_server.stop(grace)
        if self.pipeline:
            await self.pipeline.close()  # closes the store too
        if self.embedded_milvus:
            await asyncio.get_running_loop().run_in_executor(None, self.embedded_milvus.stop)
        log.info("stopped")
