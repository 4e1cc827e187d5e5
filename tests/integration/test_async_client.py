"""AsyncClient against the real server (Milvus Lite): the tests of Client in test_server.py that apply, awaited."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lookalike import AsyncClient, ById, Client, LookalikeClientError

DIM = 1280


def unit_rows(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def run(coroutine_function, server, **kwargs):  # type: ignore[no-untyped-def]
    """Runs `coroutine_function(client)` with an AsyncClient of the session's server, in a fresh event loop."""

    async def main():  # type: ignore[no-untyped-def]
        async with AsyncClient(server.address, **kwargs) as client:
            await client.wait_until_ready(30)
            return await coroutine_function(client)

    return asyncio.run(main())


async def collect(results):  # type: ignore[no-untyped-def]
    return [r async for r in results]


def test_collection_lifecycle(server):
    async def body(client: AsyncClient) -> None:
        created = await client.create_collection("async_lifecycle", "l2", "IVF_FLAT")
        assert (created.metric, created.index_type, created.dimension) == ("l2", "IVF_FLAT", DIM)
        with pytest.raises(LookalikeClientError) as e:
            await client.create_collection("async_lifecycle")
        assert e.value.code == "ALREADY_EXISTS"
        assert "async_lifecycle" in [c.name for c in await client.list_collections()]
        assert (await client.describe_collection("async_lifecycle")).row_count == 0
        await client.drop_collection("async_lifecycle")
        with pytest.raises(LookalikeClientError) as e:
            await client.describe_collection("async_lifecycle")
        assert e.value.code == "NOT_FOUND" and "async_lifecycle" in e.value.details

    run(body, server)


def test_ingest_vectors_upsert_and_per_item_errors(server, collection):
    rows = unit_rows(3)

    async def items():  # an async iterable, as a service reading a queue would give
        for item in [("a", rows[0], {"n": 1}), ("b", rows[1]), ("short", rows[2][:10]),
                     ("nan", np.full(DIM, np.nan, dtype=np.float32)), ("a", rows[2], {"n": 2})]:
            yield item

    async def body(client: AsyncClient) -> None:
        results = await collect(client.ingest(items(), collection=collection))
        assert [r.code for r in results] == ["OK", "OK", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "OK"]
        assert "10 dimensions" in results[2].message and "1280" in results[2].message
        assert "NaN" in results[3].message
        stored = await client.get(["a", "b"], collection=collection)
        np.testing.assert_allclose(stored["a"][0], rows[2], atol=1e-6)
        assert stored["a"][1] == {"n": 2}
        assert (await client.describe_collection(collection)).row_count == 2

    run(body, server)


def test_ingest_images_with_bad_items_and_an_unreadable_file(server, collection, photos_dir, tmp_path):
    async def body(client: AsyncClient) -> None:
        items = [
            ("good", photos_dir / "chelsea.jpg", {"label": "cat"}),
            ("not-an-image", b"plain text"),
            ("gone", tmp_path / "no-such-file.jpg"),
        ]
        results = {r.id: r for r in await collect(client.ingest(items, collection=collection))}
        assert results["good"].ok
        assert results["not-an-image"].code == "INVALID_ARGUMENT" and "decode" in results["not-an-image"].message
        assert results["gone"].code == "INVALID_ARGUMENT" and "cannot read file" in results["gone"].message
        assert (await client.describe_collection(collection)).row_count == 1

    run(body, server)


def test_search_by_image_id_and_filter_as_client_does(server, collection, photos_dir):
    async def body(client: AsyncClient) -> None:
        results = await collect(client.ingest_folder(photos_dir, collection=collection))
        assert all(r.ok for r in results)
        hits = await client.search(photos_dir / "coffee.jpg", k=3, collection=collection)
        assert hits[0].id == "coffee.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-4)
        by_id = await client.search(ById("chelsea.jpg"), k=3, collection=collection, include_metadata=True)
        assert by_id[0].id == "chelsea.jpg" and by_id[0].metadata == {}
        return [h.id for h in hits]

    ids = run(body, server)
    with Client(server.address) as sync:
        assert [h.id for h in sync.search(photos_dir / "coffee.jpg", k=3, collection=collection)] == ids


def test_search_with_a_filter_get_and_delete(server, collection):
    rows = unit_rows(3)

    async def body(client: AsyncClient) -> None:
        items = zip(["a", "b", "c"], rows, [{"i": 0}, {"i": 1}, {"i": 2}], strict=True)
        assert all(r.ok for r in await collect(client.ingest(items, collection=collection)))
        filtered = await client.search(ById("a"), k=10, collection=collection, filter='metadata["i"] >= 1')
        assert {h.id for h in filtered} == {"b", "c"}
        got = await client.get(["c", "missing", "a"], collection=collection, vectors=False)
        assert set(got) == {"a", "c"} and got["c"] == (None, {"i": 2})
        assert await client.delete(["a", "missing"], collection=collection) == 1
        assert set(await client.get(["a", "b", "c"], collection=collection)) == {"b", "c"}

    run(body, server)


def test_search_errors_are_precise(server, collection):
    async def body(client: AsyncClient) -> None:
        await collect(client.ingest([("only", unit_rows(1)[0])], collection=collection))
        with pytest.raises(LookalikeClientError) as e:
            await client.search(unit_rows(1)[0], k=0, collection=collection)
        assert e.value.code == "INVALID_ARGUMENT" and "16384" in e.value.details
        with pytest.raises(LookalikeClientError) as e:
            await client.search(ById("ghost"), k=3, collection=collection)
        assert e.value.code == "NOT_FOUND" and "ghost" in e.value.details
        with pytest.raises(LookalikeClientError) as e:
            await client.search(unit_rows(1)[0], k=3, collection="nowhere")
        assert e.value.code == "NOT_FOUND" and "nowhere" in e.value.details

    run(body, server)


def test_embed_matches_the_sync_client(server, photos_dir):
    paths = [photos_dir / "chelsea.jpg", photos_dir / "coffee.jpg"]

    async def body(client: AsyncClient) -> np.ndarray:
        vectors = await client.embed([paths[0], paths[1].read_bytes()])
        with pytest.raises(LookalikeClientError) as e:
            await client.embed([b"not an image"])
        assert e.value.code == "INVALID_ARGUMENT"
        return vectors

    vectors = run(body, server)
    with Client(server.address) as sync:
        np.testing.assert_allclose(vectors, sync.embed(paths), atol=1e-5)


def test_concurrent_searches_on_one_client_each_get_their_own_answer(server, collection):
    rows = unit_rows(40, seed=3)

    async def body(client: AsyncClient) -> None:
        ids = [f"r{i}" for i in range(len(rows))]
        assert all(r.ok for r in await collect(client.ingest(zip(ids, rows, strict=True), collection=collection)))
        answers = await asyncio.gather(*(client.search(row, k=1, collection=collection) for row in rows))
        assert [hits[0].id for hits in answers] == ids

    run(body, server)


def test_a_failing_item_source_ends_the_stream_with_its_own_error(server, collection):
    rows = unit_rows(2)

    async def items():  # type: ignore[no-untyped-def]
        yield ("a", rows[0])
        raise ValueError("the queue went away")

    async def body(client: AsyncClient) -> None:
        with pytest.raises(ValueError, match="the queue went away"):
            await collect(client.ingest(items(), collection=collection))
        # The client is still good for the next call.
        assert (await client.describe_collection(collection)).dimension == DIM

    run(body, server)
