"""A collection's settings are read from Milvus once for every caller that finds them missing or stale."""

from __future__ import annotations

import asyncio

from lookalike_server.config import ServerConfig
from lookalike_server.embedder import Embedder
from lookalike_server.model_card import load_model_card
from lookalike_server.pipeline import Pipeline
from lookalike_server.store import Store


def test_concurrent_callers_share_one_read_of_stale_settings(tmp_path):
    config = ServerConfig(data_dir=tmp_path / "data", milvus_embedded="lite")
    store = Store(config)
    pipeline = Pipeline(config, Embedder(load_model_card(), device="cpu"), store)
    reads: list[str] = []
    describe = store.describe

    def counted_describe(name: str):
        reads.append(name)
        return describe(name)

    store.describe = counted_describe  # the real Milvus Lite read, counted

    async def main():
        await pipeline.start()
        try:
            await pipeline.create_collection("shared", "ip", "HNSW", pipeline.model_name)
            spec, _ = pipeline.catalog._specs["shared"]
            pipeline.catalog._specs["shared"] = (spec, 0.0)  # as if read long ago: the next callers must read again
            reads.clear()
            # The first items of eight Ingest streams, 16 each, ask at once.
            specs = await asyncio.gather(*(pipeline.spec("shared") for _ in range(128)))
            fresh = await pipeline.spec("shared")
            return specs, fresh
        finally:
            await pipeline.close()
            store.close()

    specs, fresh = asyncio.run(main())
    assert reads == ["shared"]
    assert all(s == fresh for s in specs) and fresh.metric == "ip" and fresh.index_type == "HNSW"
