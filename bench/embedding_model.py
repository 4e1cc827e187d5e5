"""The network alone and the preprocessing alone (model_only, preprocess_only): the two halves of the limit."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from common import CpuMeter, cores, log


def bench_model_only(card: Any, tensors: np.ndarray, batch_sizes: list[int], min_s: float,
                     only_layout: str = "", fp16: bool = False) -> dict:
    """The server's Embedder on ready tensors, every batch size, all cores, in both layouts that use every core:
    one run over all cores, and (on a CPU) one single-threaded run per core side by side. The best counts.
    only_layout: measure that layout alone (the re-measurement after the server phase)."""
    from lookalike_server.embedder import Embedder

    layouts = {"one_run_all_cores": Embedder(card, device="auto", threads=cores(), fp16=fp16)}
    if not layouts["one_run_all_cores"].on_gpu and cores() > 1:
        layouts["one_run_per_core"] = Embedder(card, device="auto", threads=1)
    if only_layout:
        layouts = {only_layout: layouts[only_layout]}
    by_size: dict[str, dict[str, float]] = {name: {} for name in layouts}
    cpu_ms: dict[str, dict[str, float]] = {name: {} for name in layouts}
    with CpuMeter() as meter:
        for name, embedder in layouts.items():
            runs = cores() if name == "one_run_per_core" else 1
            for size in batch_sizes:
                batch = np.ascontiguousarray(np.resize(tensors, (size, *tensors.shape[1:])))
                embedder.embed(batch)
                embedder.embed(batch)  # warm-up: memory arenas, kernel choice for this shape

                def loop(batch: np.ndarray = batch, embedder: Any = embedder, size: int = size) -> int:
                    images, start = 0, time.perf_counter()
                    while time.perf_counter() - start < min_s or images < 4 * size:
                        embedder.embed(batch)
                        images += size
                    return images

                start, cpu = time.perf_counter(), _own_cpu_s()
                with ThreadPoolExecutor(runs) as pool:
                    images = sum(pool.map(lambda _: loop(), range(runs)))
                elapsed = time.perf_counter() - start
                by_size[name][str(size)] = round(images / elapsed, 1)
                cpu_ms[name][str(size)] = round((_own_cpu_s() - cpu) / images * 1e3, 2)
                log(f"model_only {name} batch {size}: {by_size[name][str(size)]} img/s")
    agreement = _gpu_agreement(card, layouts["one_run_all_cores"], tensors) \
        if layouts.get("one_run_all_cores") and layouts["one_run_all_cores"].on_gpu else None
    best_layout, best = max(((n, s) for n in by_size for s in by_size[n]), key=lambda ns: by_size[ns[0]][ns[1]])
    return {
        "images_per_s": by_size[best_layout][best],
        "best_batch_size": int(best),
        "best_layout": best_layout,
        "by_batch_size": by_size[best_layout],
        "by_layout_and_batch_size": by_size,
        "cpu_ms_per_image_by_batch_size": cpu_ms[best_layout],
        "provider": next(iter(layouts.values())).provider,
        "precision": next(iter(layouts.values())).precision,
        "threads": cores(),
        "cpu": meter.result,
        **({"gpu_agreement": agreement} if agreement else {}),
    }


def _gpu_agreement(card: Any, gpu: Any, tensors: np.ndarray) -> dict:
    """The GPU's embeddings against the CPU's on the same tensors, and one at a time against all at once."""
    from lookalike_server.embedder import Embedder

    def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    together = gpu.embed(tensors)
    one_by_one = np.concatenate([gpu.embed(tensors[i:i + 1]) for i in range(len(tensors))])
    on_cpu = Embedder(card, device="cpu", threads=cores()).embed(tensors)
    return {
        "images": len(tensors),
        "min_cosine_vs_cpu": round(float(cosines(together, on_cpu).min()), 6),
        "max_abs_diff_vs_cpu": float(np.abs(together - on_cpu).max()),
        "min_cosine_batch_1_vs_batch_all": round(float(cosines(one_by_one, together).min()), 6),
        "max_abs_diff_batch_1_vs_batch_all": float(np.abs(one_by_one - together).max()),
    }


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def bench_preprocess_only(card: Any, blobs: list[bytes], max_pixels: int) -> dict:
    """The server's bytes-to-tensor function over every photo in memory, a thread pool of one worker per core."""
    from lookalike_server.imaging import image_to_tensor

    def one(data: bytes) -> int:
        return image_to_tensor(data, card, max_pixels).shape[0]

    with ThreadPoolExecutor(cores()) as pool:
        list(pool.map(one, blobs[: 4 * cores()]))  # warm-up
        with CpuMeter() as meter:
            start = time.perf_counter()
            list(pool.map(one, blobs))
            elapsed = time.perf_counter() - start
    rate = round(len(blobs) / elapsed, 1)
    log(f"preprocess_only: {rate} img/s")
    return {
        "images_per_s": rate,
        "workers": cores(),
        "images": len(blobs),
        "cpu": meter.result,
        "cpu_ms_per_image": round(meter.result["this_process_s"] / len(blobs) * 1e3, 2),
        "function": "lookalike_server.imaging.image_to_tensor (decode + preprocess, from bytes in memory)",
    }
