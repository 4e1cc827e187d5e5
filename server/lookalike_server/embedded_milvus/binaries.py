"""The Milvus standalone server's binaries, from the PyPI package ``milvus`` installed beside this server.

The package (a dependency of ``lookalike[server]``, no Python dependencies of its own) ships the ``milvus``
binary and the libraries it loads as ``.lzma`` files; they are extracted once per user and version into
``~/.cache/lookalike/milvus-<version>/bin`` (about 250 MB), md5-checked against the package as the package
itself does, and every standalone server links its data directory's ``bin`` there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import lzma
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from ..errors import StartupError

CACHE_ROOT = Path.home() / ".cache" / "lookalike"
INSTALL = "pip install 'lookalike[server]' (it brings the PyPI package `milvus`)"
# Written once the extracted binary has run here; later starts only check that its libraries resolve.
CHECKED_MARKER = ".checked"


def available() -> bool:
    """True when the PyPI package ``milvus`` (the standalone server) is installed beside this server."""
    return importlib.util.find_spec("milvus") is not None


def installed_binaries(cache_root: Path = CACHE_ROOT) -> Path:
    """The folder holding the ``milvus`` binary and its libraries, extracted if needed and checked to load
    here; StartupError says what is missing and what to do."""
    spec = importlib.util.find_spec("milvus")
    if spec is None or spec.origin is None:
        raise StartupError(f"the Milvus standalone server is not installed: {INSTALL}, "
                           "or choose --milvus-embedded lite or --milvus-uri")
    version = metadata.version("milvus")
    packed = Path(spec.origin).parent / "data" / "bin"
    bin_dir = Path(cache_root) / f"milvus-{version}" / "bin"
    try:
        bin_dir.mkdir(parents=True, exist_ok=True)
        with _locked(bin_dir.parent / ".lock"):
            if _extract(packed, bin_dir):
                (bin_dir / CHECKED_MARKER).unlink(missing_ok=True)
            _check_loads(bin_dir)
    except OSError as e:
        raise StartupError(f"cannot extract the Milvus standalone binaries of {packed} into {bin_dir} ({e}): it "
                           "needs a writable home directory; or choose --milvus-embedded lite or --milvus-uri") from e
    return bin_dir


@contextlib.contextmanager
def _locked(path: Path):
    """One process at a time extracts into a cache folder (servers and tests start side by side)."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _extract(packed: Path, bin_dir: Path) -> bool:
    """Decompresses every ``NAME.lzma`` of the package whose md5 differs from ``NAME.lzma.md5`` beside the
    extracted file (the package's own layout, so its start-up check finds them current); True if any was."""
    names = sorted(p.name for p in packed.iterdir() if p.name.endswith(".lzma"))
    if "milvus.lzma" not in names:
        raise StartupError(f"the PyPI package `milvus` at {packed.parent.parent} carries no server binary "
                           f"(milvus.lzma): reinstall it ({INSTALL})")
    changed = False
    for name in names:
        target = bin_dir / name.removesuffix(".lzma")
        md5_file = bin_dir / f"{name}.md5"
        digest = hashlib.md5((packed / name).read_bytes()).hexdigest()
        if target.is_file() and md5_file.is_file() and md5_file.read_text().strip() == digest:
            continue
        partial = target.with_name(f"{target.name}.partial")
        with lzma.open(packed / name) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        partial.chmod(0o755)
        partial.replace(target)  # a running server keeps the file it started from
        md5_file.write_text(digest)
        changed = True
    return changed


def _check_loads(bin_dir: Path) -> None:
    """The binary needs only glibc and finds its other libraries beside it: every library must resolve, and
    (once per extraction) the binary must run and print its usage."""
    binary = bin_dir / "milvus"
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(bin_dir),
                                                                          os.environ.get("LD_LIBRARY_PATH")]))}
    if shutil.which("ldd"):
        ldd = subprocess.run(["ldd", str(binary)], env=env, capture_output=True, text=True, check=False)
        missing = [line.strip() for line in ldd.stdout.splitlines() if "not found" in line]
        if missing or ldd.returncode != 0:
            raise StartupError(
                f"the Milvus standalone binary {binary} cannot load on this machine "
                f"({'; '.join(missing) or ldd.stderr.strip() or f'ldd exited with {ldd.returncode}'}): it needs "
                "x86-64 Linux with glibc; choose --milvus-embedded lite or --milvus-uri instead")
    if (bin_dir / CHECKED_MARKER).exists():
        return
    try:
        run = subprocess.run([str(binary)], env=env, capture_output=True, text=True, timeout=60, check=False)
        output = run.stdout + run.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        output = str(e)
    if "milvus run" not in output:
        raise StartupError(
            f"the Milvus standalone binary {binary} does not run on this machine ({output.strip()[-300:]!r}): "
            "it needs x86-64 Linux with glibc; choose --milvus-embedded lite or --milvus-uri instead")
    (bin_dir / CHECKED_MARKER).touch()
