"""The embed batcher's automatic batch size: small on a CPU, large on a GPU; a configured size wins."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lookalike_server.config import ServerConfig
from lookalike_server.pipeline.embedding import Embedding


def embedding(on_gpu: bool, **settings: int) -> Embedding:
    embedder = SimpleNamespace(on_gpu=on_gpu, concurrent_runs=1 if on_gpu else 2)
    made = Embedding(ServerConfig(**settings), embedder)  # type: ignore[arg-type]
    for pool in (made.decode_pool, made._interactive_pool, made._inference_pool, made._interactive_inference_pool):
        pool.shutdown()
    return made


@pytest.mark.parametrize(("on_gpu", "size", "preferred"),
                         [(False, 4, {1, 2, 4}), (True, 64, {1, 2, 4, 8, 16, 32, 64})])
def test_the_automatic_batch_size_is_4_images_on_a_cpu_and_64_on_a_gpu(on_gpu, size, preferred):
    made = embedding(on_gpu)
    assert made.max_batch == made._batcher.max_batch_size == size
    assert made._batcher.preferred_batch_sizes == preferred


@pytest.mark.parametrize("on_gpu", [False, True])
def test_a_configured_batch_size_wins_on_either(on_gpu):
    made = embedding(on_gpu, max_batch_size=6)
    assert made._batcher.max_batch_size == 6
    assert made._batcher.preferred_batch_sizes == {1, 2, 4}
