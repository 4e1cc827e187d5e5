"""Images and text prompts to L2-normalised embeddings: decoding threads, the micro-batcher and ONNX Runtime,
with an interactive lane (Search, Embed) that never queues behind an ingest's backlog."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from .. import _native, metrics
from ..batcher import INTERACTIVE, MicroBatcher, Pacer
from ..config import ServerConfig
from ..embedder import Embedder
from ..errors import FailedPrecondition, InvalidArgument, LookalikeError
from ..imaging import image_to_tensor
from ..model_card import cards_with_text
from ..store import CollectionSpec
from ..thread_priority import BULK_NICE, BulkGate, thread_pool
from .types import ItemResult
from .vectors import mean_of


@dataclass
class EmbedJob:
    """One image for the embed batcher: its bytes, which the inference thread decodes (on a CPU), or the
    tensor a decoding thread made from them (on a GPU); or one tokenized prompt for the text tower."""

    image: bytes | None = None
    tensor: np.ndarray | None = None
    tokens: np.ndarray | None = None


class Embedding:
    def __init__(self, config: ServerConfig, embedder: Embedder, pacer: Pacer | None = None) -> None:
        self.config = config
        self.embedder = embedder
        cores = os.cpu_count() or 1
        # Bulk decoding and inference get every core at a lower priority; interactive calls (Search, Embed)
        # have their own threads at normal priority, so they never queue behind an ingest's backlog of
        # JPEGs nor share the cores with it evenly.
        # ... and they step aside (between units of work) while an interactive call is in flight.
        self.bulk_gate = BulkGate()
        # On a GPU the bulk unit that would step aside is a batch on the device, which frees no core for the
        # interactive call, and the decoders have cores enough beside it at their lower priority.
        gate = None if embedder.on_gpu else self.bulk_gate
        # On a GPU, decoding threads feed the device beside it. On a CPU, where decoding and inference share
        # the cores anyway, each inference thread decodes its own batch's images straight into the batch:
        # separate decoding threads there only added threads that take turns on the same cores (2 decoders
        # beside 2 inference runs made inference 10% slower per image, 9.5 against 8.7 ms) and one more
        # hand-over per image (8-stream ingest: 12.3-13.0 ms of server CPU an image, against 12.5-13.7).
        self.decode_in_inference = not embedder.on_gpu
        self.decode_pool = thread_pool(config.decode_workers or cores, "decode", BULK_NICE, gate)
        self._interactive_pool = thread_pool(2, "decode-interactive")
        self._inference_pool = thread_pool(embedder.concurrent_runs, "inference", BULK_NICE, gate)
        self._interactive_inference_pool = thread_pool(1, "inference-interactive")
        # On a CPU, batches of 4 cost the least CPU per image here (10.0 ms vs 11.3 at 8 and 15.6 at 32), and
        # short batches keep an interactive Embed from waiting long behind bulk ingest.
        self.max_batch = config.max_batch_size or (64 if embedder.on_gpu else 4)
        self._batcher: MicroBatcher[EmbedJob, np.ndarray] = MicroBatcher(
            self.embed_batch,
            self._inference_pool,
            max_batch_size=self.max_batch,
            max_queue_delay=config.max_queue_delay_ms / 1000.0,
            preferred_batch_sizes=[b for b in (1, 2, 4, 8, 16, 32, 64) if b <= self.max_batch],
            concurrency=embedder.concurrent_runs,
            name="embed-batcher",
            interactive_executor=self._interactive_inference_pool,
            pacer=pacer,  # bulk batches yield while searches near their latency target
        )

    @property
    def model_name(self) -> str:
        return self.embedder.card.name

    def start(self) -> None:
        self._batcher.start()

    async def close(self) -> None:
        await self._batcher.close()
        for pool in (self.decode_pool, self._interactive_pool, self._inference_pool,
                     self._interactive_inference_pool):
            pool.shutdown(wait=True, cancel_futures=True)

    def embed_batch(self, jobs: Sequence[EmbedJob]) -> list[np.ndarray | LookalikeError]:
        """Images through the image network and prompts through the text tower, in one batch's turn; every
        vector L2-normalised by the native core."""
        texts = [position for position, job in enumerate(jobs) if job.tokens is not None]
        if not texts:
            return self._embed_images(jobs)
        images = [position for position, job in enumerate(jobs) if job.tokens is None]
        results: list[np.ndarray | LookalikeError] = [np.empty(0)] * len(jobs)
        if images:
            for position, result in zip(images, self._embed_images([jobs[p] for p in images]), strict=True):
                results[position] = result
        assert self.embedder.text is not None  # prompts are tokenized only when there is a text tower
        with metrics.EMBED_SECONDS.time():
            vectors = self.embedder.text.embed([jobs[p].tokens for p in texts])  # type: ignore[misc]
        _native.normalize_rows(vectors)
        for position, vector in zip(texts, vectors, strict=True):
            results[position] = vector
        return results

    def _embed_images(self, jobs: Sequence[EmbedJob]) -> list[np.ndarray | LookalikeError]:
        """Each job's tensor, or its decoded image, goes straight into one batch buffer; an image that does not
        decode fails alone (its error is its result), and the others are embedded and L2-normalised."""
        card = self.embedder.card
        batch = np.empty((len(jobs), 3, card.height, card.width), dtype=np.float32)
        results: list[np.ndarray | LookalikeError] = []
        rows: list[int] = []  # results' positions whose images are in the batch, in batch order
        for job in jobs:
            row = batch[len(rows)]
            try:
                if job.tensor is not None:
                    row[...] = job.tensor
                else:
                    image_to_tensor(job.image or b"", card, self.config.max_image_pixels, out=row)
            except LookalikeError as e:
                results.append(e)
                continue
            rows.append(len(results))
            results.append(row)  # replaced by its embedding below
        if rows:
            with metrics.EMBED_SECONDS.time():
                vectors = self.embedder.embed(batch[: len(rows)])
            _native.normalize_rows(vectors)
            for position, vector in zip(rows, vectors, strict=True):
                results[position] = vector
        return results

    async def embed_image(self, data: bytes, priority: int = INTERACTIVE, deadline: float | None = None) -> np.ndarray:
        """Image bytes to an L2-normalised embedding; InvalidArgument if the bytes are no image.

        `deadline` is in event-loop time: past it, the image is not computed (DeadlineExceeded).
        """
        if priority != INTERACTIVE:
            return await self._embed(self.decode_pool, data, priority, deadline)
        with self.bulk_gate.interactive():
            return await self._embed(self._interactive_pool, data, priority, deadline)

    async def _embed(self, decode_pool: Executor, data: bytes, priority: int, deadline: float | None) -> np.ndarray:
        if self.decode_in_inference:
            return await self._batcher.submit(EmbedJob(image=data), priority, deadline)
        tensor = await asyncio.get_running_loop().run_in_executor(
            decode_pool, image_to_tensor, data, self.embedder.card, self.config.max_image_pixels
        )
        return await self._batcher.submit(EmbedJob(tensor=tensor), priority, deadline)

    async def embed_many(self, items: Sequence[tuple[str, bytes]], deadline: float | None = None) -> list[ItemResult]:
        return list(await asyncio.gather(*(self.embed_one(i, data, deadline) for i, data in items)))

    async def embed_one(self, item_id: str, data: bytes, deadline: float | None = None) -> ItemResult:
        try:
            return ItemResult(item_id, vector=await self.embed_image(data, INTERACTIVE, deadline))
        except LookalikeError as e:
            return ItemResult(item_id, e.code, f"image {item_id!r}: {e.message}")

    async def image_vector(
        self, data: bytes, spec: CollectionSpec, priority: int = INTERACTIVE, deadline: float | None = None
    ) -> np.ndarray:
        """An image's embedding for a collection: refused for vectors-only collections and other models'."""
        self._check_ours(spec, f"collection {spec.name!r} holds {spec.dimension}-d vectors computed elsewhere "
                               "(no model): send vectors or stored ids, not images")
        return await self.embed_image(data, priority, deadline)

    def _check_ours(self, spec: CollectionSpec, vectors_only: str) -> None:
        """FailedPrecondition unless the collection holds this server's model's vectors (`vectors_only`: what a
        vectors-only collection is told)."""
        if not spec.model:
            raise FailedPrecondition(vectors_only)
        if spec.model != self.model_name:
            raise FailedPrecondition(
                f"collection {spec.name!r} holds embeddings of model {spec.model!r}; "
                f"this server embeds with {self.model_name!r}"
            )

    # Text prompts

    @property
    def embeds_text(self) -> bool:
        return self.embedder.text is not None

    def _tokens(self, text: str, what: str) -> np.ndarray:
        if self.embedder.text is None:
            known = ", ".join(str(p) for p in cards_with_text()) or (
                "none here: models/clip-vit-b-32/export.py writes one from CLIP weights, and "
                "`python -m lookalike_server.testing.tiny_clip DIR` a tiny one for tests"
            )
            raise FailedPrecondition(
                f"model {self.model_name!r} has no text tower, so {what} cannot be embedded: serve a card with a "
                f"[text] section (cards with one: {known}), or search by image, vector or stored id"
            )
        return self.embedder.text.tokenize(text, what)

    async def embed_text(self, text: str, deadline: float | None = None, what: str = "text") -> np.ndarray:
        """A prompt's L2-normalised embedding, through the interactive lane: InvalidArgument if it is empty or
        over the card's context length, FailedPrecondition if the model has no text tower."""
        return await self._embed_tokens(self._tokens(text, what), deadline)

    async def _embed_tokens(self, tokens: np.ndarray, deadline: float | None) -> np.ndarray:
        with self.bulk_gate.interactive():
            return await self._batcher.submit(EmbedJob(tokens=tokens), INTERACTIVE, deadline)

    async def embed_texts(self, items: Sequence[tuple[str, str]], deadline: float | None = None) -> list[ItemResult]:
        return list(await asyncio.gather(*(self.embed_text_one(i, text, deadline) for i, text in items)))

    async def embed_text_one(self, item_id: str, text: str, deadline: float | None = None) -> ItemResult:
        try:
            return ItemResult(item_id, vector=await self.embed_text(text, deadline, f"text {item_id!r}"))
        except LookalikeError as e:
            return ItemResult(item_id, e.code, e.message)

    async def text_vector(
        self, texts: Sequence[str], spec: CollectionSpec, deadline: float | None = None
    ) -> np.ndarray:
        """The query vector of one prompt, or of several by their mean, for a collection of this server's model."""
        self._check_ours(spec, f"collection {spec.name!r} is vectors-only: it holds {spec.dimension}-d vectors "
                               "computed elsewhere (no model), so a text query cannot be embedded for it; search by "
                               "vector or stored id")
        if not texts:
            raise InvalidArgument("a query by several texts needs at least one text")
        whats = ["text"] if len(texts) == 1 else [f"text {i + 1} of {len(texts)}" for i in range(len(texts))]
        # Every prompt is checked before any is embedded.
        tokens = [self._tokens(text, what) for text, what in zip(texts, whats, strict=True)]
        vectors = await asyncio.gather(*(self._embed_tokens(t, deadline) for t in tokens))
        return vectors[0] if len(vectors) == 1 else mean_of(list(vectors), spec)
