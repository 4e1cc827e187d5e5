"""What the FiftyOne backend sends the server to embed (each sample's image file, or each object's crop), and
the server's embeddings of them."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import fiftyone.core.labels as fol
import numpy as np
from PIL import Image

from lookalike.client import Client, IngestResult, LookalikeClientError
from lookalike.fiftyone_common import batches, logger


def _patches(label: Any) -> list[tuple[str, fol.Detection]]:
    """(label id, box) of each object in a Detection(s) or Polyline(s) field value."""
    if label is None:
        return []
    if isinstance(label, fol.Detections):
        return [(d.id, d) for d in label.detections]
    if isinstance(label, fol.Detection):
        return [(label.id, label)]
    if isinstance(label, fol.Polylines):
        return [(p.id, p.to_detection()) for p in label.polylines]
    if isinstance(label, fol.Polyline):
        return [(label.id, label.to_detection())]
    raise ValueError(f"Unsupported patches label type {type(label).__name__}: use Detection(s) or Polyline(s)")


def image_items(
    samples: Any, patches_field: str | None, force_square: bool, alpha: float | None
) -> tuple[int, Iterator[tuple[str, Any, dict[str, Any] | None]], list[IngestResult]]:
    """(count, lazy (id, image path | patch bytes, metadata) items, failures found while cropping)."""
    if patches_field is None:
        ids, paths = samples.values(["id", "filepath"])
        return len(ids), ((i, Path(p), None) for i, p in zip(ids, paths, strict=True)), []

    import fiftyone.utils.patches as foup

    ids, paths, labels = samples.values(["id", "filepath", patches_field])
    boxes = [_patches(label) for label in labels]
    failures: list[IngestResult] = []

    def crops() -> Iterator[tuple[str, bytes, dict[str, Any]]]:
        for sample_id, path, objects in zip(ids, paths, boxes, strict=True):
            if not objects:
                continue
            try:
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as e:
                failures.extend(IngestResult(i, "INVALID_ARGUMENT", f"cannot read {path}: {e}") for i, _ in objects)
                continue
            for label_id, box in objects:
                patch = foup.extract_patch(pixels, box, force_square=force_square, alpha=alpha)
                if patch.size == 0:
                    failures.append(IngestResult(label_id, "INVALID_ARGUMENT", f"empty box in {path}"))
                    continue
                buffer = io.BytesIO()
                Image.fromarray(patch).save(buffer, format="PNG", compress_level=1)
                yield label_id, buffer.getvalue(), {"sample_id": sample_id}

    return sum(len(b) for b in boxes), crops(), failures


def server_embeddings(
    client: Client, items: Iterable[tuple[str, Any, dict[str, Any] | None]], batch_size: int
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """(vectors, sample ids, item ids) of the items the server embedded; an image it rejects is logged and left
    out. A server that does not answer raises LookalikeClientError."""
    vectors, sample_ids, item_ids = [], [], []
    for batch in batches(list(items), batch_size):
        for (item_id, _, metadata), vector in zip(batch, _embed(client, batch), strict=True):
            if vector is None:
                continue
            vectors.append(vector)
            sample_ids.append(metadata["sample_id"] if metadata else item_id)
            item_ids.append(item_id)
    return vectors, sample_ids, item_ids


def _embed(client: Client, batch: Sequence[tuple[str, Any, Any]]) -> list[np.ndarray | None]:
    """Server embeddings of a batch of images; None for an image the server rejects (logged)."""
    images = [Path(c).read_bytes() if isinstance(c, Path) else c for _, c, _ in batch]
    try:
        return list(client.embed(images))
    except LookalikeClientError as e:
        if e.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
            raise
    vectors: list[np.ndarray | None] = []
    for (item_id, _, _), image in zip(batch, images, strict=True):  # one by one: which of them was refused
        try:
            vectors.append(client.embed([image])[0])
        except LookalikeClientError as e:
            logger.warning("lookalike could not embed %s: %s", item_id, e.details)
            vectors.append(None)
    return vectors
