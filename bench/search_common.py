"""What the search benchmarks share: `lookalike serve` processes, the caps of scaling points, and collections
filled, indexed and calibrated through the server (with waits that read Milvus' own index state)."""

from __future__ import annotations

import argparse
import contextlib
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from common import free_port, log, wait_serving
from search_data import MODEL_DIM, row_id

from lookalike import Client, LookalikeClientError
from lookalike_server.testing import ServerProcess

REPO = Path(__file__).resolve().parents[1]


MODEL_CARD = REPO / "models" / "efficientnet-lite0" / "card.toml"


QPS_K = 10

RECALL_TARGET = 0.99

LOW_TARGET = 0.9

MIN_AVAILABLE_GIB = 2.0  # a capped scaling point stops the phase that leaves less memory available (no swap here)


# The running servers by address: waits read their logs.
SERVERS: dict[str, ServerProcess] = {}


@contextlib.contextmanager
def lookalike_serve(workdir: Path, *args: str) -> Iterator[tuple[ServerProcess, int]]:
    """`lookalike serve` with a metrics port, ready on return; stopped (SIGTERM) afterwards whatever happened."""
    metrics_port = free_port()
    server = ServerProcess(workdir, *args, "--metrics-port", str(metrics_port))
    SERVERS[server.address] = server
    try:
        wait_serving(server)
        yield server, metrics_port
    finally:
        SERVERS.pop(server.address, None)
        server.stop()


def model_card(dim: int, folder: Path) -> Path:
    """The shipped card, or a copy declaring `dim` (vectors only: the network's output is never used)."""
    if dim == MODEL_DIM:
        return MODEL_CARD
    text = MODEL_CARD.read_text()
    text = re.sub(r"^dimension = \d+", f"dimension = {dim}", text, flags=re.M)
    text = re.sub(r'^name = "([^"]+)"', rf'name = "\1-bench-{dim}d"', text, count=1, flags=re.M)
    text = re.sub(r'^file = "([^"]+)"', lambda m: f'file = "{(MODEL_CARD.parent / m.group(1)).resolve()}"', text,
                  flags=re.M)
    path = folder / f"card-{dim}d.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


LOG_FINDING = re.compile(r"WARNING|ERROR|CRITICAL|Traceback|exception", re.I)


def log_findings(server: ServerProcess) -> dict[str, Any]:
    """Warnings, errors and calibration lines from a server's log."""
    lines = server.log().splitlines()
    bad = [line for line in lines if LOG_FINDING.search(line)]
    return {
        "warning_or_error_lines": len(bad),
        "samples": bad[:12],
        "calibrated_lines": [line[-260:] for line in lines if "calibrated " in line][:40],
    }


def available_gib() -> float:
    return psutil.virtual_memory().available / 2**30


class CapReached(Exception):
    """A capped scaling point ran out of time (or memory) in a phase it cannot do without."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(f"{record['phase']}: {record['reason']} after {record['after_s']} s")
        self.record = record


class Cap:
    """One scaling point's limit: `seconds` from its start (0: none) and a floor of available memory. Phases
    check it; cut() notes a phase it ended (which, why, after how long, how many rows were in)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.monotonic()
        self.lowest_available_gib = round(available_gib(), 1)
        self.cuts: list[dict[str, Any]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.elapsed() if self.seconds else float("inf")

    def exceeded(self) -> str:
        """'' while within the cap, else 'time' or 'memory'."""
        gib = available_gib()
        self.lowest_available_gib = min(self.lowest_available_gib, round(gib, 1))
        if self.left() <= 0:
            return "time"
        return "memory" if gib < MIN_AVAILABLE_GIB else ""

    def cut(self, phase: str, reason: str, **details: Any) -> dict[str, Any]:
        why = (f"past the cap of {self.seconds:.0f} s" if reason == "time" else
               f"less than {MIN_AVAILABLE_GIB} GiB of memory available" if reason == "memory" else reason)
        record = {"phase": phase, "reason": why, "after_s": round(self.elapsed(), 1), **details}
        self.cuts.append(record)
        log(f"  cap: {record}")
        return record

    def summary(self) -> dict[str, Any]:
        return {"cap_s": self.seconds or None, "seconds": round(self.elapsed(), 1),
                "lowest_memory_available_gib": self.lowest_available_gib, "phases_cut": self.cuts,
                "finished_within_cap": not self.cuts}


def ingest(address: str, collection: str, vectors: np.ndarray, streams: int = 4,
           cap: Cap | None = None) -> dict[str, Any]:
    """Stores every vector (ids v0, v1, ...) over `streams` Ingest streams; fails loudly on any error. With a
    cap, the streams stop sending once it is reached: `stopped` says why and `rows_in` how many were stored."""
    parts = np.array_split(np.arange(len(vectors)), streams)
    failures: Counter[str] = Counter()
    samples: list[str] = []
    stored = [0] * streams
    stopped: list[str] = []
    lock = threading.Lock()

    def items(i: int) -> Iterator[tuple[str, np.ndarray]]:
        for n, j in enumerate(parts[i]):
            if cap is not None and n % 1000 == 0 and (why := stopped[0] if stopped else cap.exceeded()):
                stopped.append(why)
                return
            yield row_id(j), vectors[j]

    def body(i: int) -> None:
        try:
            with Client(address, timeout=max(1800.0, cap.seconds if cap else 0.0)) as client:
                for result in client.ingest(items(i), collection=collection):
                    if result.ok:
                        stored[i] += 1
                        continue
                    with lock:
                        failures[result.code] += 1
                        samples.append(result.message)
        except LookalikeClientError as e:
            with lock:
                failures[f"stream:{e.code}"] += 1
                samples.append(e.details)

    started = time.monotonic()
    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"ingest into {collection} failed: {dict(failures)} {samples[:3]}")
    out = {"rows": len(vectors), "seconds": round(seconds, 1), "rows_per_s": round(sum(stored) / seconds, 1)}
    if stopped:
        out.update(rows_in=sum(stored), stopped=stopped[0])
    return out


def calibrations(address: str, collection: str) -> list[dict[str, Any]]:
    """Every calibration the server reports for a collection, whatever its target (the client keeps one)."""
    import grpc

    from lookalike.v1 import lookalike_pb2 as pb
    from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

    with grpc.insecure_channel(address) as channel:
        info = pb_grpc.CollectionsStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name=collection),
                                                                    timeout=60)
    return [{"k": c.k, "effort": c.effort, "recall": round(c.recall, 4), "target": round(c.target, 4),
             "rows": c.rows, "exact_reference": c.exact_reference, "exact_fallback": c.exact_fallback,
             **({"overfetch": c.overfetch} if c.overfetch else {})}
            for c in info.calibrations]


def calibration_failure(log_text: str, collection: str) -> tuple[int, str]:
    """How often the server logged that calibrating `collection` failed, and the last error's message (its
    exception line, plus a gRPC error's details line)."""
    marker = f"calibrating {collection} failed"
    count = log_text.count(marker)
    if not count:
        return 0, ""
    lines = []
    for line in log_text[log_text.rindex(marker):].splitlines()[1:]:
        if re.match(r"^\d{4}-\d\d-\d\d ", line):
            break
        lines.append(line.strip())
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    details = [line for line in lines if line.startswith("details = ")]
    return count, " ".join(errors[-1:] + details[-1:]) or (lines[-1] if lines else "")


def wait_calibrated(address: str, collection: str, target: float, probe: np.ndarray,
                    timeout_s: float) -> dict[str, Any]:
    """Starts the server's calibration for `target` with one search, then polls DescribeCollection until it
    reports a calibration for that target (the server waits for Milvus' index before measuring). Gives up
    early when the server logs that the calibration failed (it keeps its default effort then)."""
    started = time.monotonic()
    server = SERVERS.get(address)
    failures_before = calibration_failure(server.log(), collection)[0] if server else 0
    with Client(address, timeout=600) as client:
        client.search(probe, k=QPS_K, collection=collection, min_recall=target)
        polls = 0
        while time.monotonic() - started < timeout_s:
            polls += 1
            found = [c for c in calibrations(address, collection) if abs(c["target"] - target) < 1e-3]
            if found:
                return {"target": target, "waited_s": round(time.monotonic() - started, 1), "polls": polls,
                        "calibrations": found}
            if server is not None:
                failures, error = calibration_failure(server.log(), collection)
                if failures > failures_before:
                    return {"target": target, "waited_s": round(time.monotonic() - started, 1), "polls": polls,
                            "failed": True, "server_error": error, "calibrations": [],
                            "consequence": "the server searches with its uncalibrated default effort"}
            time.sleep(2.0)
            if polls % 15 == 0:  # the server re-checks every 30 s: a search starts it again if it gave up
                client.search(probe, k=QPS_K, collection=collection, min_recall=target)
    return {"target": target, "waited_s": round(time.monotonic() - started, 1), "timed_out": True,
            "calibrations": []}


def default_ef(k: int) -> int:
    """HNSW ef the server uses before (or without) a calibration: default_effort of fetch_size(k)."""
    return max(512, 4 * max(2 * k, k + 32))


def effort_for(calibration: dict[str, Any], k: int, default: int) -> int:
    """The ef the server uses for k (calibration.Calibration.effort_for), from DescribeCollection's figures."""
    efforts = {c["k"]: c["effort"] for c in calibration.get("calibrations", [])}
    for ck in sorted(efforts):
        if k <= ck:
            return efforts[ck]
    return int(efforts[max(efforts)] * k / max(efforts)) if efforts else default


def lite_index_built(db: Path, collection: str) -> bool:
    """Milvus Lite's describe_index always says Finished: its index files beside each data segment are the truth."""
    partitions = db / "collections" / collection / "partitions"
    segments = {p.stem for p in partitions.glob("*/data/*.parquet")}
    indexed = {p.name.split(".")[0] for p in partitions.glob("*/indexes/*.idx")}
    return bool(segments) and segments <= indexed


def wait_index(name: str, db: Path | None, uri: str, cap: Cap, reserve_s: float) -> dict[str, Any]:
    """Waits until Milvus has indexed every row (Milvus Lite: an index file beside every flushed data segment; a
    server, flushed first: indexed_rows reaches total_rows; its pending_index_rows is not waited for, as the
    compactions that follow a million-row ingest keep re-indexing merged segments while the indexed ones serve),
    leaving reserve_s of the cap for the queries; a wait that runs out is cut."""
    started, why = time.monotonic(), ""
    if db is None:
        from pymilvus import MilvusClient

        client = MilvusClient(uri)
        try:
            client.flush(name)
        finally:
            client.close()
    while True:
        state: Any = lite_index_built(db, name) if db is not None else server_index_state(uri, name)
        built = state if db is not None else 0 < int(state.get("total_rows", 0)) <= int(state["indexed_rows"])
        if built or cap.left() <= reserve_s or (why := cap.exceeded()) == "memory":
            break
        time.sleep(5.0)
    out = {"waited_s": round(time.monotonic() - started, 1), "built": built, "state": state}
    log(f"  index wait: {out}")
    if not built:
        cap.cut("index_build", "memory" if why == "memory" else "time", waited_s=out["waited_s"], state=state,
                consequence="calibrated and measured while Milvus was still indexing")
    return out


def server_index_state(uri: str, collection: str) -> dict[str, Any]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        info = client.describe_index(collection, "vector")
    finally:
        client.close()
    return {k: v for k, v in info.items() if k in ("index_type", "params", "total_rows", "indexed_rows",
                                                   "pending_index_rows", "state")}


def lossy(index_type: str) -> bool:
    return index_type != "FLAT"


def prepare_collection(address: str, name: str, index_type: str, data: np.ndarray, probe: np.ndarray,
                       args: argparse.Namespace, cap: Cap | None = None,
                       index_wait: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Creates, fills and calibrates a collection. With a cap: an ingest it stops raises CapReached; index_wait
    (if any) runs before the calibration; the calibration wait ends in time to leave --scaling-reserve seconds
    for the queries (uncalibrated then)."""
    with Client(address, timeout=120) as client:
        with contextlib.suppress(LookalikeClientError):
            client.drop_collection(name)
        client.create_collection(name, "cosine", index_type, min_recall=RECALL_TARGET)
    log(f"  ingesting {len(data)} rows into {name}")
    out: dict[str, Any] = {"ingest": ingest(address, name, data, cap=cap)}
    log(f"  ingested: {out['ingest']}")
    if cap is not None and "stopped" in out["ingest"]:
        with Client(address, timeout=120) as client:
            row_count = client.describe_collection(name).row_count
        raise CapReached(cap.cut("ingest", out["ingest"]["stopped"], rows_in=out["ingest"]["rows_in"],
                                 rows_wanted=len(data), server_row_count=row_count,
                                 ingest_s=out["ingest"]["seconds"], rows_per_s=out["ingest"]["rows_per_s"]))
    if index_wait is not None:
        out["index_wait"] = index_wait()
    if lossy(index_type):
        wait_s = args.calibration_timeout
        if cap is not None:
            wait_s = max(0.0, min(wait_s, cap.left() - args.scaling_reserve))
        out["calibration_wait"] = wait_calibrated(address, name, RECALL_TARGET, probe, wait_s)
        log(f"  calibrated after {out['calibration_wait']['waited_s']} s: {out['calibration_wait']['calibrations']}")
    with Client(address, timeout=120) as client:
        info = client.describe_collection(name)
    out["server_describe"] = {"row_count": info.row_count, "index_params_milvus_reports": info.index_params,
                              "min_recall": round(info.min_recall, 4)}
    return out


@contextlib.contextmanager
def serve_dim(workdir: Path, dim: int, *store_args: str) -> Iterator[str]:
    """Another `lookalike serve` on the same store whose (bench) model card declares `dim`."""
    card = model_card(dim, workdir / "cards")
    with lookalike_serve(workdir / f"serve-{dim}d-{time.monotonic_ns()}", *store_args, "--model-card",
                         str(card)) as (server, _):
        yield server.address
