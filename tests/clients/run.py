"""The harness of `make clients-test`: one live server, and each client's tests run against it.

Starts one `lookalike serve` (Milvus Lite in its process, a temporary data directory) on a free loopback
port, ingests the test photos into the model's default collection, asks the Python client for the top 3 ids
of one photo, then runs each command given with LOOKALIKE_SERVER, LOOKALIKE_TEST_IMAGE and LOOKALIKE_TEST_TOP3
set, so every client must find the same 3; each --example command (an example printing `rank score id`
lines for that photo) must print those same 3 ids. Each client's tests use a collection of their own; the
server is stopped at the end. Exits non-zero if any command failed.

    .venv/bin/python -m tests.clients.run 'ctest --test-dir build/x' --example 'search-cpp "$LOOKALIKE_TEST_IMAGE"'
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lookalike import Client
from lookalike_server.testing import ServerProcess
from tests.photos import write_photos

REPO = Path(__file__).resolve().parents[2]
QUERY_PHOTO = "chelsea.jpg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("commands", nargs="*", help="shell commands, each run from the repository root")
    parser.add_argument("--example", action="append", default=[],
                        help="a shell command that must print the same top 3 ids as the Python client")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lookalike-clients-") as tmp:
        workdir = Path(tmp)
        photos = workdir / "photos"
        write_photos(photos)
        started = time.monotonic()
        server = ServerProcess(workdir / "server", "--data-dir", str(workdir / "data"), "--milvus-embedded", "lite")
        try:
            server.wait_ready(timeout=120)
            with Client(server.address) as client:
                failed = [r for r in client.ingest_folder(photos) if not r.ok]
                if failed:
                    raise RuntimeError(f"ingest of the test photos failed: {failed}")
                top3 = [hit.id for hit in client.search(photos / QUERY_PHOTO, k=3)]
            print(f"clients-test: server at {server.address} ready with {QUERY_PHOTO}'s top 3 {top3} "
                  f"in {time.monotonic() - started:.1f} s", flush=True)
            env = {
                **os.environ,
                "LOOKALIKE_SERVER": server.address,
                "LOOKALIKE_TEST_IMAGE": str(photos / QUERY_PHOTO),
                "LOOKALIKE_TEST_TOP3": ",".join(top3),
            }
            results = []
            for command in [*args.commands, *args.example]:
                print(f"clients-test: $ {command}", flush=True)
                began = time.monotonic()
                if command in args.example:
                    run = subprocess.run(command, shell=True, cwd=REPO, env=env, check=False, capture_output=True,
                                         text=True)
                    print(run.stdout + run.stderr, end="", flush=True)
                    ids = [line.split()[-1] for line in run.stdout.splitlines() if line.strip()]
                    code = run.returncode or (ids != top3 and 1)
                    if ids != top3:
                        print(f"clients-test: printed {ids}, the Python client {top3}", flush=True)
                else:
                    code = subprocess.run(command, shell=True, cwd=REPO, env=env, check=False).returncode
                results.append((command, code, time.monotonic() - began))
        finally:
            code_on_stop = server.stop()
            if code_on_stop not in (0, None):
                print(f"clients-test: the server exited with {code_on_stop}; its log:\n{server.log()[-4000:]}")
    for command, code, seconds in results:
        print(f"clients-test: {'ok  ' if code == 0 else 'FAIL'} {seconds:6.1f} s  {command}")
    return 0 if all(code == 0 for _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
