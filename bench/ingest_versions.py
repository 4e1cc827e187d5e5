"""Ingest of two installs side by side: this checkout's `lookalike serve` against another install's (an older
commit's virtual environment), so that a change's effect on ingest is measured in one run and not across days.

The machine's speed drifts by tens of percent over a day here (on Dec 6 the same network alone ran 280 img/s
at 14:00 and 150 at 15:45; the same code ingested 148 and 114 img/s), so figures from two dates compare the
machines as much as the code. Each turn runs both
servers one after the other, first this one then the other in turn, each a fresh `lookalike serve` on a fresh
data folder with the same embedded Milvus (--store), warmed by 10 Embed calls, then bench/embedding.py's
ingest: --streams concurrent Ingest streams of the same photos, the median of --ingest-rounds rounds, each into
a new collection. Each figure is the mean of its turns: images per second, and the server's CPU milliseconds
per image (its process tree, a figure other work on the machine disturbs less).

Run (the other install, e.g. the Nov 29 commit whose ingest_e2e / limit was 0.874):
    git worktree add /tmp/wt-old 10fcb73 && python3 -m venv /tmp/venv-old
    (cd /tmp/wt-old && /tmp/venv-old/bin/pip install ".[server]")
    .venv/bin/python bench/ingest_versions.py --other-venv /tmp/venv-old --other-label 10fcb73 [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from common import CpuMeter, emit, free_port, log, machine_info, make_photos  # noqa: E402
from embedding_server import ingest_on_new_server  # noqa: E402

THIS_VENV = Path(sys.executable).parent.parent


def _ingest_once(venv: Path, work: Path, files: list[Path], args: argparse.Namespace) -> dict:
    server = f"127.0.0.1:{free_port()}"
    command = [str(venv / "bin" / "lookalike"), "serve", "--address", server, "--data-dir",
               str(work / "lookalike-data"), "--milvus-embedded", args.store]
    # The other install runs its own code: a PYTHONPATH that points this run at a working tree stays with this one.
    env = None if venv == THIS_VENV else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    summary = ingest_on_new_server(command, server, work, files, args, env)
    summary["server_cpu_ms_per_image"] = round(1000 * summary["cpu"]["watched_process_s"] / len(files), 2)
    return summary


def _commit(venv: Path, label: str) -> str:
    if label:
        return label
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() if venv == THIS_VENV else str(venv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    files = make_photos(Path(args.data), args.n, args.seed)
    installs = {"this": THIS_VENV, "other": Path(args.other_venv).resolve()}
    turns: dict[str, list[dict]] = {name: [] for name in installs}
    with CpuMeter() as meter, tempfile.TemporaryDirectory(prefix="lookalike-bench-versions-") as tmp:
        for turn in range(args.turns):
            order = ("this", "other") if turn % 2 == 0 else ("other", "this")
            for name in order:
                work = Path(tmp) / f"{name}-{turn}"
                work.mkdir()
                turns[name].append(_ingest_once(installs[name], work, files, args))
                log(f"turn {turn}: {name}: {turns[name][-1]['images_per_s']} img/s, "
                    f"{turns[name][-1]['server_cpu_ms_per_image']} ms of server CPU an image")
    out: dict[str, Any] = {}
    for name, runs in turns.items():
        out[name] = {
            "install": str(installs[name]),
            # this install may run a working tree's code through PYTHONPATH (the other never does)
            "pythonpath": os.environ.get("PYTHONPATH", "") if name == "this" else "",
            "commit": _commit(installs[name], args.this_label if name == "this" else args.other_label),
            "images_per_s": round(statistics.mean(r["images_per_s"] for r in runs), 1),
            "server_cpu_ms_per_image": round(statistics.mean(r["server_cpu_ms_per_image"] for r in runs), 2),
            "all_ok": all(r["all_ok"] for r in runs),
            "turns": runs,
        }
    shares = round(meter.result["other_processes_s"] / meter.result["cpu_capacity_s"], 3)
    return {
        "benchmark": "ingest-versions",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **out,
        "this_over_other": {
            "images_per_s": round(out["this"]["images_per_s"] / out["other"]["images_per_s"], 3),
            "server_cpu_ms_per_image": round(out["this"]["server_cpu_ms_per_image"]
                                             / out["other"]["server_cpu_ms_per_image"], 3),
        },
        "how": f"{args.turns} turns, this install first in even turns; each a fresh `lookalike serve "
               f"--milvus-embedded {args.store}`, {args.streams} Ingest streams of {len(files)} photos, the median of "
               f"{args.ingest_rounds} rounds; figures are the mean of the turns",
        "contention": {"other_processes_cpu_share": shares,
                       "note": "share of the machine's CPU used by processes outside the benchmark over the run"},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other-venv", required=True, help="the other install's virtual environment")
    parser.add_argument("--other-label", default="", help="what the other install is (e.g. its commit)")
    parser.add_argument("--this-label", default="", help="what this install is (default: HEAD's commit)")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--ingest-rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--store", default="lite", help="--milvus-embedded for both servers (default lite, as "
                                                       "embedding.json's ingest_e2e)")
    parser.add_argument("--n", type=int, default=2000, help="photos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="/tmp/lookalike-bench-photos", help="photo folder (made once, reused)")
    parser.add_argument("--stage-timeout", type=float, default=600.0)
    parser.add_argument("--write", action="store_true", help="also save bench/results/ingest-versions.json")
    args = parser.parse_args(argv)
    result = run(args)
    emit(result, "ingest-versions", args.write)


if __name__ == "__main__":
    main()
