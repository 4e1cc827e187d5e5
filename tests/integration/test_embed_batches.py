"""The embed batcher's batches: images decoded straight into the batch, one bad image failing alone, and the
same embedding whether an inference thread or a decoding thread decoded the image."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lookalike_server.batcher import BULK
from lookalike_server.config import ServerConfig
from lookalike_server.embedder import Embedder
from lookalike_server.errors import InvalidArgument
from lookalike_server.imaging import image_to_tensor
from lookalike_server.model_card import load_model_card
from lookalike_server.pipeline import Pipeline
from lookalike_server.pipeline.embedding import EmbedJob
from lookalike_server.store import Store


@pytest.fixture
def pipeline(tmp_path):
    config = ServerConfig(data_dir=tmp_path / "data", milvus_embedded="lite")
    store = Store(config)
    yield Pipeline(config, Embedder(load_model_card(), device="cpu"), store)
    store.close()


def alone(pipeline: Pipeline, data: bytes) -> np.ndarray:
    vector = pipeline.embedder.embed(image_to_tensor(data, pipeline.embedder.card)[None])[0]
    return vector / np.linalg.norm(vector)


def test_a_batch_embeds_bytes_and_tensors_and_fails_only_the_image_that_does_not_decode(pipeline, photos_dir):
    coffee, rocket = (photos_dir / "coffee.jpg").read_bytes(), (photos_dir / "rocket.jpg").read_bytes()
    jobs = [
        EmbedJob(image=coffee),
        EmbedJob(image=b"\xff\xd8\xff not a whole jpeg"),
        EmbedJob(tensor=image_to_tensor(rocket, pipeline.embedder.card)),
    ]
    first, bad, third = pipeline.embedding.embed_batch(jobs)
    assert isinstance(bad, InvalidArgument)
    np.testing.assert_allclose(first, alone(pipeline, coffee), atol=1e-5)
    np.testing.assert_allclose(third, alone(pipeline, rocket), atol=1e-5)


def test_on_a_cpu_inference_threads_decode_and_the_embedding_is_the_same_either_way(pipeline, photos_dir):
    names = ["chelsea.jpg", "coffee.jpg", "astronaut.jpg", "moon.jpg"]
    images = [(photos_dir / n).read_bytes() for n in names]
    assert pipeline.embedding.decode_in_inference  # a CPU

    async def embed_all() -> list[np.ndarray]:
        bulk = [pipeline.embed_image(data, BULK) for data in images]
        return list(await asyncio.gather(*bulk, pipeline.embed_image(images[0])))

    async def main() -> tuple[list[np.ndarray], list[np.ndarray]]:
        await pipeline.start()
        try:
            in_inference = await embed_all()
            assert not pipeline.embedding.decode_pool._threads  # no decoding thread was needed
            pipeline.embedding.decode_in_inference = False  # as on a GPU: decoding threads feed inference
            return in_inference, await embed_all()
        finally:
            await pipeline.close()

    in_inference, in_decoders = asyncio.run(main())
    assert pipeline.embedding.decode_pool._threads
    np.testing.assert_allclose(np.stack(in_inference), np.stack(in_decoders), atol=1e-5)
    np.testing.assert_allclose(in_inference[0], in_inference[-1], atol=1e-5)  # bulk and interactive
    np.testing.assert_allclose(in_inference[1], alone(pipeline, images[1]), atol=1e-5)
