"""Text-query latency with the tiny two-tower card, idle and under an 8-stream ingest.

One `lookalike serve --model-card <tiny card>` (Milvus Lite, a fresh folder) holds --photos photo-sized JPEGs
in its default collection. One client then calls, one after the other with --pause-ms between calls:
Embed of one prompt (the text tower through the interactive lane, no Milvus), Search by one prompt (k=10), and,
as the baseline measured in the same run, Search by one photo's bytes (the image tower, same lane). Phases:
idle, then while 8 Ingest streams (another process) send photos into another collection without pause, then
idle again; the idle figures pool both idle phases (the second starts --settle-s after the ingest, once the bulk
collection's flush and recall calibration are done).

The tiny model's towers are a few random layers: its absolute speed says nothing about CLIP's (a ViT-B/32 text
tower is 12 transformer layers at 77 tokens). What it shows is the plumbing's cost and whether text queries
keep their latency beside bulk ingest, as image queries do.

Run (about 3 minutes with the defaults):
    .venv/bin/python bench/text_search.py [--phase-s 40] [--photos 300] [--model-card CARD] [--write [--output F]]
--write also saves the JSON to bench/results/text_search.json (or --output).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, make_photos, percentiles

RESULT = Path(__file__).resolve().parent / "results" / "text_search.json"
STREAMS = 8
PROMPTS = ["a red car", "a kite high in the air", "a cat sleeping on a chair", "coffee cup on a table",
           "an astronaut on the moon", "a rocket at night", "grass and gravel", "old clock on a wall"]


def ingest_worker(server: str, folder: Path, seconds: float) -> None:
    """8 Ingest streams, each over its share of the photos again and again under new ids, for `seconds`;
    prints the acknowledged and failed counts as JSON. Runs in its own process, as another user would."""
    from lookalike import Client

    files = sorted(folder.glob("*.jpg"))
    stop_at = time.monotonic() + seconds
    counts = [[0, 0] for _ in range(STREAMS)]

    def stream(i: int) -> None:
        def items() -> Iterator[tuple[str, Path]]:
            rounds = 0
            while time.monotonic() < stop_at:
                for path in files[i::STREAMS]:
                    yield f"s{i}-r{rounds}-{path.name}", path
                rounds += 1

        with Client(server, collection="bulk", timeout=seconds + 120) as client:
            for result in client.ingest(items()):
                counts[i][0 if result.ok else 1] += 1

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"acknowledged": sum(c[0] for c in counts), "failed": sum(c[1] for c in counts)}))


class CpuShare:
    """The share of the machine's CPU that processes other than `ours` took between start() and stop()."""

    def __init__(self, ours: Sequence[int]) -> None:
        self.ours = list(ours)

    def _times(self) -> tuple[float, float]:
        total = sum(psutil.cpu_times()[:3])  # user, nice, system
        mine = 0.0
        for pid in self.ours:
            try:
                process = psutil.Process(pid)
                for p in [process, *process.children(recursive=True)]:
                    t = p.cpu_times()
                    mine += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total, mine

    def start(self) -> None:
        self._start, self._wall = self._times(), time.monotonic()

    def stop(self) -> float:
        (total, mine), wall = self._times(), time.monotonic() - self._wall
        other = (total - self._start[0]) - (mine - self._start[1])
        return round(max(0.0, other) / (wall * (psutil.cpu_count() or 1)), 3)


def measure(client: Any, photo: bytes, seconds: float, pause_s: float) -> dict[str, list[float]]:
    """Embed(text), Search(text) and Search(image) in turn, one call at a time, for `seconds`."""
    from lookalike import Text

    times: dict[str, list[float]] = {"embed_text": [], "search_text": [], "search_image": []}
    stop_at = time.monotonic() + seconds
    n = 0
    while time.monotonic() < stop_at:
        prompt = PROMPTS[n % len(PROMPTS)]
        calls = (("embed_text", client.embed_texts, [prompt]), ("search_text", client.search, Text(prompt)),
                 ("search_image", client.search, photo))
        for kind, call, query in calls:
            started = time.perf_counter()
            call(query) if kind == "embed_text" else call(query, k=10)
            times[kind].append(time.perf_counter() - started)
            time.sleep(pause_s)
        n += 1
    return times


def run(args: argparse.Namespace) -> dict:
    from lookalike import Client
    from lookalike_server.testing import ServerProcess
    from lookalike_server.testing.tiny_clip import write_tiny_clip

    work = Path(tempfile.mkdtemp(prefix="text-search-bench-"))
    card = Path(args.model_card) if args.model_card else write_tiny_clip(work / "tiny-clip")
    files = make_photos(work / "photos", args.photos)
    server = ServerProcess(work / "server", "--model-card", str(card))
    try:
        server.wait_ready(180)
        with Client(server.address, timeout=120) as client:
            stored = [r for r in client.ingest((p.name, p) for p in files) if r.ok]
            if len(stored) != len(files):
                raise RuntimeError(f"only {len(stored)} of {len(files)} photos were stored")
            client.create_collection("bulk")  # where the 8 streams write: the searched collection stays as it is
            photo = files[0].read_bytes()
            measure(client, photo, 3.0, args.pause_ms / 1000)  # warm-up: sessions, channels, first batches
            cpu = CpuShare([server.proc.pid, psutil.Process().pid])
            cpu.start()
            idle_before = measure(client, photo, args.phase_s, args.pause_ms / 1000)
            share_idle_before = cpu.stop()

            worker = subprocess.Popen(
                [sys.executable, __file__, "--ingest-worker", server.address, str(files[0].parent),
                 str(args.phase_s + 6)], stdout=subprocess.PIPE, text=True)
            cpu = CpuShare([server.proc.pid, psutil.Process().pid, worker.pid])
            time.sleep(3.0)  # the streams under way
            cpu.start()
            under = measure(client, photo, args.phase_s, args.pause_ms / 1000)
            share_under = cpu.stop()
            out, _ = worker.communicate(timeout=args.phase_s + 180)
            ingest = json.loads(out.strip().splitlines()[-1])
            ingest["img_per_s"] = round(ingest["acknowledged"] / (args.phase_s + 6), 1)
            if worker.returncode != 0 or ingest["failed"]:
                raise RuntimeError(f"the ingest worker failed: {worker.returncode} {ingest}")

            time.sleep(args.settle_s)  # the bulk collection's flush and recall calibration end first
            cpu = CpuShare([server.proc.pid, psutil.Process().pid])
            cpu.start()
            idle_after = measure(client, photo, args.phase_s, args.pause_ms / 1000)
            share_idle_after = cpu.stop()
    finally:
        server.stop()

    def phase(kind: str) -> dict:
        idle = percentiles(idle_before[kind] + idle_after[kind])
        busy = percentiles(under[kind])
        return {"idle": idle, "under_ingest": busy, "idle_before": percentiles(idle_before[kind]),
                "idle_after": percentiles(idle_after[kind]),
                "p99_ratio_under_ingest_vs_idle": round(busy["p99"] / idle["p99"], 2) if idle["p99"] else None}

    return {
        "bench": "text_search",
        "model": (f"{args.model_card} (as --model-card)" if args.model_card else
                  "tiny-clip (lookalike_server.testing.tiny_clip, 64-d): its speed says nothing about CLIP's"),
        "store": "Milvus Lite in the server's process",
        "setup": {"photos_stored": len(files), "k": 10, "pause_ms": args.pause_ms, "phase_s": args.phase_s,
                  "settle_s": args.settle_s,
                  "ingest_streams": STREAMS, "prompts": len(PROMPTS)},
        "latency_ms": {kind: phase(kind) for kind in ("embed_text", "search_text", "search_image")},
        "ingest_during": ingest,
        "contention": {"other_processes_cpu_share": {"idle_before": share_idle_before, "under_ingest": share_under,
                                                     "idle_after": share_idle_after}},
        "machine": machine_info(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase-s", type=float, default=40.0, help="seconds per phase (idle, ingest, idle)")
    parser.add_argument("--photos", type=int, default=300, help="photo-sized JPEGs to store and ingest")
    parser.add_argument("--pause-ms", type=float, default=20.0, help="pause between calls")
    parser.add_argument("--settle-s", type=float, default=20.0,
                        help="wait after the ingest before the second idle phase (its flush and calibration)")
    parser.add_argument("--model-card", help="another card with a text tower (default: a fresh tiny-clip card)")
    parser.add_argument("--output", type=Path, default=RESULT, help="where --write writes (default %(default)s)")
    parser.add_argument("--write", action="store_true", help=f"also write {RESULT.relative_to(RESULT.parents[2])}")
    parser.add_argument("--ingest-worker", nargs=3, metavar=("SERVER", "FOLDER", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ingest_worker:
        ingest_worker(args.ingest_worker[0], Path(args.ingest_worker[1]), float(args.ingest_worker[2]))
        return
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.write:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
