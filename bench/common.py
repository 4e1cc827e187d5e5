"""Shared helpers for the benchmarks: machine facts, the photo folder, child processes, RSS sampling, stats.

Nothing here measures anything by itself; `bench/embedding.py` and friends import it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import psutil
from PIL import Image

PHOTO_SIZE = (640, 480)
JPEG_QUALITY = 90
# skimage.data photos that ship inside the wheel (no download). Greyscale ones become RGB.
PHOTO_SOURCES = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "stereo_motorcycle", "colorwheel", "camera", "moon", "coins", "clock", "brick", "grass", "gravel", "cell",
)
RESULTS = Path(__file__).resolve().parent / "results"
_MANIFEST = "manifest.json"
_PHOTO_RECIPE = 1  # bump when the way photos are made changes, so old caches are rebuilt


def cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gpu_names() -> list[str]:
    """GPU names from nvidia-smi, empty when there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def machine_info() -> dict:
    """What the figures were measured on."""
    import onnxruntime as ort

    return {
        "cores": cores(),
        "cpu_model": cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpu_names(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_available_providers": ort.get_available_providers(),
        "pillow": Image.__version__,
        "numpy": np.__version__,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    """a / b rounded, or None when either was not measured (or b is 0)."""
    return round(a / b, digits) if a and b else None


def percentiles(values_s: Sequence[float]) -> dict:
    """p50/p99/mean/max in milliseconds of latencies given in seconds."""
    if not values_s:
        return {"calls": 0, "p50": None, "p99": None, "mean": None, "max": None}
    ms = np.asarray(values_s) * 1e3
    return {
        "calls": len(ms),
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p99": round(float(np.percentile(ms, 99)), 2),
        "mean": round(float(ms.mean()), 2),
        "max": round(float(ms.max()), 2),
    }


# The photo folder


def _source_photos() -> list[tuple[str, np.ndarray]]:
    import skimage.data

    photos = []
    for name in PHOTO_SOURCES:
        loaded = getattr(skimage.data, name)()
        arrays = loaded[:2] if isinstance(loaded, tuple) else (loaded,)  # stereo pairs: both views
        for i, arr in enumerate(arrays):
            if arr.ndim == 2:
                arr = np.stack([arr] * 3, axis=-1)
            photos.append((f"{name}{i or ''}", np.ascontiguousarray(arr[..., :3].astype(np.uint8))))
    return photos


def _variant(source: Image.Image, rng: random.Random) -> Image.Image:
    """A 640x480 crop of a random rescaling of source, sometimes flipped."""
    width, height = PHOTO_SIZE
    scale = max(width / source.width, height / source.height) * rng.uniform(1.0, 1.8)
    size = (max(width, round(source.width * scale)), max(height, round(source.height * scale)))
    img = source.resize(size, Image.Resampling.BICUBIC)
    left, top = rng.randint(0, img.width - width), rng.randint(0, img.height - height)
    img = img.crop((left, top, left + width, top + height))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.2:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return img


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n photo-sized JPEGs made from scikit-image's photos, generated once and reused while the recipe holds."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {"recipe": _PHOTO_RECIPE, "seed": seed, "size": list(PHOTO_SIZE), "quality": JPEG_QUALITY}
    manifest = folder / _MANIFEST
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(manifest.read_text())
        if {k: known.get(k) for k in wanted} == wanted and known.get("count", 0) >= n:
            paths = [folder / name for name in known["files"][:n]]
            if all(p.is_file() for p in paths):
                return paths
    sources = [(name, Image.fromarray(arr)) for name, arr in _source_photos()]
    names = [f"photo-{i:05d}.jpg" for i in range(n)]

    def write(i: int) -> None:
        rng = random.Random(f"{seed}-{i}")
        source = sources[i % len(sources)][1]
        tmp = folder / (names[i] + ".tmp")
        _variant(source, rng).save(tmp, "JPEG", quality=JPEG_QUALITY)
        tmp.replace(folder / names[i])

    with ThreadPoolExecutor(cores()) as pool:
        list(pool.map(write, range(n)))
    manifest.write_text(json.dumps({**wanted, "count": n, "sources": [s for s, _ in sources], "files": names}))
    return [folder / name for name in names]


# Child processes


class ManagedProcess:
    """A child process in its own session, stopped (SIGTERM, then SIGKILL) on exit whatever happened."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ManagedProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL to its process group (only what it started) if it outlives grace_s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # any child it left behind in its session
        return self.proc.returncode

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def wait_for_port(port: int, process: ManagedProcess, timeout_s: float) -> None:
    """Waits until something accepts connections on 127.0.0.1:port; fails early if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.args[0]} exited before listening:\n{process.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on port {port} within {timeout_s:.0f} s:\n{process.log_tail()}")


def wait_serving(server: Any, timeout_s: float = 180.0) -> None:
    """Waits until a `lookalike serve` (lookalike_server.testing.ServerProcess) is SERVING; raises with its log's
    tail if it exits first or takes longer."""
    from lookalike import Client

    deadline = time.monotonic() + timeout_s
    with Client(server.address) as client:
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"lookalike serve exited with {server.proc.returncode}:\n{server.log()[-3000:]}")
            try:
                client.wait_until_ready(2)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"lookalike serve not SERVING in {timeout_s:.0f} s:\n{server.log()[-3000:]}") from None


def wait_for_calibration(server: str, collection: str, timeout_s: float = 60.0) -> bool:
    """Waits until the lookalike server reports a recall calibration for the collection (measured in the
    background after an ingest, once its rows are flushed); False if none came within timeout_s."""
    from lookalike import Client
    from lookalike_server.pipeline.calibration import MIN_ROWS

    deadline = time.monotonic() + timeout_s
    with Client(server) as client:
        while not (info := client.describe_collection(collection)).calibrations:
            if info.row_count < MIN_ROWS or info.index_type == "FLAT":
                return False  # the server calibrates neither (exact search, or too few rows to matter)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)
    return True


def stop_processes_under(marker: str) -> list[int]:
    """Stops this user's processes that name marker (a unique temp path) in their command line or environment:
    the ones a child started and left behind (FiftyOne's mongod and its service). Returns their pids."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "uids"]):
        try:
            if proc.pid == os.getpid() or proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                continue
            if any(marker in part for part in proc.info["cmdline"] or ()) or any(
                marker in value for value in proc.environ().values()
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    for proc in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [proc.pid for proc in found]


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raises TimeoutError in the main thread after seconds (SIGALRM); SIGTERM becomes SystemExit so cleanup runs."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the benchmark ran past its limit of {seconds:.0f} s (--timeout)")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    old_term = signal.signal(signal.SIGTERM, on_term)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


# Memory


@dataclass
class RssSampler:
    """Polls a process's resident memory (and its children's) in a thread, every interval_s."""

    pid: int
    interval_s: float = 0.1
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (monotonic, own, own + children)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    # psutil's children() reads every process on the machine (1.1 ms of this process' CPU a call, measured), which
    # 10 samples a second would take from the cores being measured: the children are looked up every 2 s instead.
    _children: list[psutil.Process] = field(default_factory=list)
    _children_at: float = float("-inf")

    def sample(self) -> tuple[float, int, int] | None:
        try:
            proc = psutil.Process(self.pid)
            own = proc.memory_info().rss
            if time.monotonic() - self._children_at > 2.0:
                self._children, self._children_at = proc.children(recursive=True), time.monotonic()
            tree = own
            for child in self._children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    tree += child.memory_info().rss
        except psutil.NoSuchProcess:
            return None
        point = (time.monotonic(), own, tree)
        self.samples.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def window(self, start: float, end: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if start <= s[0] <= end]


def mib(n_bytes: float) -> float:
    return round(n_bytes / 2**20, 1)



# CPU accounting: the machine may be shared, so every phase says who used the cores while it ran.


@dataclass
class CpuMeter:
    """Busy CPU seconds of the whole machine over a phase, split into this process (and the children it has
    waited for), one watched process (e.g. the server), and everything else on the machine.
    tree: the watched process's live children count as watched too (a server and the Milvus it started)."""

    watched_pid: int | None = None
    result: dict = field(default_factory=dict)
    tree: bool = False
    _start: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def _watched_s(self) -> float:
        if self.watched_pid is None:
            return 0.0
        total = 0.0
        with contextlib.suppress(psutil.NoSuchProcess):
            watched = psutil.Process(self.watched_pid)
            t = watched.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for child in watched.children(recursive=True) if self.tree else ():
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = child.cpu_times()
                    total += t.user + t.system
        return total

    def _snapshot(self) -> tuple[float, float, float, float]:
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
        own = os.times()
        return (time.monotonic(), busy, own.user + own.system + own.children_user + own.children_system,
                self._watched_s())

    def __enter__(self) -> CpuMeter:
        self._start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        wall, busy, own, watched = (b - a for a, b in zip(self._start, end, strict=True))
        self.result = {
            "wall_s": round(wall, 2),
            "cpu_capacity_s": round(wall * cores(), 2),
            "this_process_s": round(own, 2),
            **({"watched_process_s": round(watched, 2)} if self.watched_pid is not None else {}),
            "other_processes_s": round(max(0.0, busy - own - watched), 2),
        }


def emit(result: dict[str, Any], name: str, write: bool) -> None:
    """Prints a benchmark's JSON; with --write also saves it as bench/results/<name>.json."""
    text = json.dumps(result, indent=2)
    print(text)
    if write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(text + "\n")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def installed_server() -> dict[str, Any]:
    """Which build of the server was measured: the installed package's version, install time and a digest."""
    import hashlib
    import importlib.metadata

    import lookalike_server

    folder = Path(lookalike_server.__file__).parent
    files = sorted(folder.glob("*.py"))
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()[:16]
    installed = max(f.stat().st_mtime for f in files)
    return {"version": importlib.metadata.version("lookalike"), "modules": [f.stem for f in files],
            "installed_at": dt.datetime.fromtimestamp(installed, dt.timezone.utc).isoformat(timespec="seconds"),
            "sha256_16_of_modules": digest}
