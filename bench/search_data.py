"""The search benchmarks' data sets: random unit vectors, and clustered vectors around real photo embeddings
(each cluster spread along its own subspace, as augmented photos are), with their exact numpy top k."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import log, make_photos

from lookalike import Client

MODEL_DIM = 1280


SUBSPACE_DIM = 16  # clustered data: each cluster spreads along its own 16-d subspace, like real embeddings


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


@dataclass
class Clusters:
    """Cluster centres (unit rows) and a random subspace per cluster; rows = centre + subspace noise + a little
    isotropic noise, normalised: near-duplicates of each centre along a few directions, as augmented photos are."""

    centres: np.ndarray
    bases: np.ndarray  # (clusters, dim, SUBSPACE_DIM)
    source: str
    spread: float = 0.5  # norm of the subspace offset, relative to the unit centre
    jitter: float = 0.15  # norm of the isotropic noise

    @classmethod
    def make(cls, centres: np.ndarray, source: str, seed: int) -> Clusters:
        rng = np.random.default_rng(seed)
        dim = centres.shape[1]
        bases = rng.standard_normal((len(centres), dim, SUBSPACE_DIM), dtype=np.float32) / np.sqrt(dim)
        return cls(centres.astype(np.float32), bases, source)

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        count, dim = self.centres.shape
        # Uneven cluster sizes (some photos have many near-duplicates, most have few).
        weights = 1.0 / (np.arange(count) + 10.0)
        labels = rng.choice(count, size=n, p=weights / weights.sum())
        out = np.empty((n, dim), dtype=np.float32)
        for c in np.unique(labels):
            rows = np.flatnonzero(labels == c)
            z = rng.standard_normal((len(rows), SUBSPACE_DIM), dtype=np.float32) * (self.spread / np.sqrt(SUBSPACE_DIM))
            noise = rng.standard_normal((len(rows), dim), dtype=np.float32) * (self.jitter / np.sqrt(dim))
            out[rows] = self.centres[c] + z @ self.bases[c].T + noise
        for start in range(0, n, 65_536):  # in slices: a million 1280-d rows are 5 GB, their squares 5 more
            out[start : start + 65_536] /= np.linalg.norm(out[start : start + 65_536], axis=1, keepdims=True)
        return out


def photo_centres(address: str, folder: Path, count: int) -> np.ndarray:
    """EfficientNet-Lite0 embeddings (through the server's Embed) of `count` augmented scikit-image photos."""
    paths = make_photos(folder, count, seed=7)
    with Client(address, timeout=300) as client:
        vectors = np.concatenate([client.embed([str(p) for p in paths[i : i + 32]]) for i in range(0, count, 32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def exact_top(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row numbers of each query's exact top k by inner product (unit rows: cosine), best first."""
    scores = queries @ data.T
    k = min(k, data.shape[0])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def row_id(i: int) -> str:
    return f"v{i}"


@dataclass
class DataSet:
    name: str
    rows: np.ndarray
    queries: np.ndarray
    truth: np.ndarray  # exact top max(k) row numbers per query
    description: str


def dataset_description(name: str, args: argparse.Namespace, source: str) -> str:
    if name == "random":
        return f"{args.rows} random unit {MODEL_DIM}-d vectors (normal, normalised); held-out queries alike"
    return (f"{args.rows} {MODEL_DIM}-d vectors around {args.clusters} centres ({source}); each row = centre + an "
            f"offset of norm ~{Clusters.spread} in the cluster's own random {SUBSPACE_DIM}-d subspace + isotropic "
            f"noise of norm ~{Clusters.jitter}, normalised; cluster sizes ~1/(c+10); queries drawn the same way "
            "(held out, not stored rows)")


def make_datasets(args: argparse.Namespace, clusters: Clusters) -> list[DataSet]:
    top = max(args.ks)
    out = []
    for name in args.datasets:
        if name == "random":
            rows, queries = random_unit(args.rows, MODEL_DIM, 1), random_unit(args.queries, MODEL_DIM, 2)
        else:
            rows, queries = clusters.sample(args.rows, 1), clusters.sample(args.queries, 2)
        description = dataset_description(name, args, clusters.source)
        started = time.monotonic()
        truth = exact_top(rows, queries, top)
        log(f"data set {name}: {rows.shape}, brute force top {top} in {time.monotonic() - started:.1f} s")
        out.append(DataSet(name, rows, queries, truth, description))
    return out


def ensure_clusters(args: argparse.Namespace, address: str, workdir: Path, holder: list[Clusters]) -> Clusters:
    """The clustered data's centres, made once per run through whichever server is up first (deterministic:
    the same photos and model give the same centres in every run)."""
    if not holder:
        if args.centres == "photos":
            started = time.monotonic()
            centres = photo_centres(address, workdir / "photos", args.clusters)
            source = (f"EfficientNet-Lite0 embeddings (through Embed) of {args.clusters} augmented 640x480 "
                      f"scikit-image photos, bench/common.make_photos; made in {time.monotonic() - started:.0f} s")
        else:
            centres, source = random_unit(args.clusters, MODEL_DIM, 3), "random unit vectors"
        source += f"; centres fingerprint (sum of all values) {float(centres.astype(np.float64).sum()):.6f}"
        holder.append(Clusters.make(centres, source, seed=4))
    return holder[0]


def project(vectors: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """The clustered data in another dimension: a fixed random projection, normalised."""
    if vectors.shape[1] == dim:
        return vectors
    basis = np.random.default_rng(seed).standard_normal((vectors.shape[1], dim), dtype=np.float32)
    out = vectors @ basis
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out
