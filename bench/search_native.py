"""Block native: bench/native.py's kernels against numpy, run as a subprocess, its JSON embedded."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from search_common import REPO


def native_block() -> dict[str, Any]:
    """bench/native.py as a subprocess; its JSON as it printed it, plus the two speed-ups against the target."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO / "bench" / "native.py")], capture_output=True, text=True,
                          timeout=900, check=True)
    figures = json.loads(done.stdout)
    speedups = {name: figures[name]["native_vs_numpy"] for name in ("normalize_rows", "rerank",
                                                                     "rerank_same_candidates") if name in figures}
    return {"seconds": round(time.monotonic() - started, 1), "speedups": speedups,
            "pass_2x": {name: value >= 2 for name, value in speedups.items()}, "native_py": figures}


if __name__ == "__main__":  # this block alone: bench/search.py --blocks native [flags]
    import search

    sys.exit(search.main(["--blocks", "native", *sys.argv[1:]]))
