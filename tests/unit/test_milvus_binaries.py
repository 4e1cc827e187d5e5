"""The standalone Milvus binaries come from the installed PyPI package `milvus`: extracted once into a cache
(md5-checked in the package's own layout), checked to load, and refused with a precise StartupError."""

from __future__ import annotations

import hashlib
import importlib
import lzma
import sys
from pathlib import Path

import pytest

from lookalike_server.embedded_milvus import binaries
from lookalike_server.errors import StartupError

USAGE = "Usage:\n\nmilvus run [server type] [flags]\n"


def _fake_package(root: Path, monkeypatch, binary: str = f"#!/bin/sh\nprintf '{USAGE}'\n") -> Path:
    """A `milvus` package (version 9.9.9) first on sys.path, carrying a shell script as its server."""
    packed = root / "milvus" / "data" / "bin"
    packed.mkdir(parents=True)
    (root / "milvus" / "__init__.py").write_text("__version__ = '9.9.9'\n")
    (root / "milvus-9.9.9.dist-info").mkdir()
    (root / "milvus-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: milvus\nVersion: 9.9.9\n")
    (packed / "milvus.lzma").write_bytes(lzma.compress(binary.encode()))
    (packed / "libfake.so.1.lzma").write_bytes(lzma.compress(b"not really a library"))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "milvus", raising=False)
    importlib.invalidate_caches()
    return packed


def _fake_ldd(root: Path, monkeypatch, output: str) -> None:
    """An `ldd` first on PATH that prints `output`."""
    bin_dir = root / "tools"
    bin_dir.mkdir()
    (bin_dir / "ldd").write_text(f"#!/bin/sh\nprintf '{output}'\n")
    (bin_dir / "ldd").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def test_extracted_once_in_the_packages_own_layout(tmp_path, monkeypatch):
    packed = _fake_package(tmp_path / "site", monkeypatch)
    _fake_ldd(tmp_path, monkeypatch, "\\tlinux-vdso.so.1 (0x00007ffc)\\n")
    bin_dir = binaries.installed_binaries(tmp_path / "cache")
    assert bin_dir == tmp_path / "cache" / "milvus-9.9.9" / "bin"
    assert (bin_dir / "milvus").read_text().startswith("#!/bin/sh")
    assert (bin_dir / "milvus").stat().st_mode & 0o111
    digest = hashlib.md5((packed / "milvus.lzma").read_bytes()).hexdigest()
    assert (bin_dir / "milvus.lzma.md5").read_text() == digest, "the md5 file the package's own start-up checks"
    assert (bin_dir / "libfake.so.1").read_bytes() == b"not really a library"
    assert (bin_dir / binaries.CHECKED_MARKER).exists()

    before = (bin_dir / "milvus").stat().st_mtime_ns
    (bin_dir / "libfake.so.1").write_bytes(b"changed by hand")  # its md5 file still matches the package
    assert binaries.installed_binaries(tmp_path / "cache") == bin_dir
    assert (bin_dir / "milvus").stat().st_mtime_ns == before, "an up-to-date binary is not extracted again"

    (packed / "libfake.so.1.lzma").write_bytes(lzma.compress(b"a new release"))
    binaries.installed_binaries(tmp_path / "cache")
    assert (bin_dir / "libfake.so.1").read_bytes() == b"a new release"


def test_a_library_that_does_not_resolve_is_named(tmp_path, monkeypatch):
    _fake_package(tmp_path / "site", monkeypatch)
    _fake_ldd(tmp_path, monkeypatch, "\\tlibfake.so.1 => not found\\n")
    with pytest.raises(StartupError, match=r"milvus cannot load on this machine \(libfake\.so\.1 => not found\).*"
                                           r"--milvus-embedded lite or --milvus-uri"):
        binaries.installed_binaries(tmp_path / "cache")


def test_a_binary_that_does_not_run_is_refused(tmp_path, monkeypatch):
    _fake_package(tmp_path / "site", monkeypatch, binary="#!/bin/sh\necho 'cannot execute binary file' >&2\nexit 126\n")
    _fake_ldd(tmp_path, monkeypatch, "\\tlinux-vdso.so.1 (0x00007ffc)\\n")
    with pytest.raises(StartupError, match=r"milvus does not run on this machine \('cannot execute binary file'\)"):
        binaries.installed_binaries(tmp_path / "cache")
    assert not (tmp_path / "cache" / "milvus-9.9.9" / "bin" / binaries.CHECKED_MARKER).exists()


def test_a_missing_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(binaries.importlib.util, "find_spec", lambda name: None)
    assert not binaries.available()
    with pytest.raises(StartupError, match=r"not installed: pip install 'lookalike\[server\]'"):
        binaries.installed_binaries(tmp_path / "cache")


def test_an_unwritable_cache_is_named(tmp_path, monkeypatch):
    _fake_package(tmp_path / "site", monkeypatch)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with pytest.raises(StartupError, match=r"cannot extract the Milvus standalone binaries of .* into .*cache"):
        binaries.installed_binaries(tmp_path / "cache")
