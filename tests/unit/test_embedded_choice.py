"""`--milvus-embedded auto`: the store already holding the data directory's data, else standalone if installed."""

from __future__ import annotations

from pathlib import Path

from lookalike_server.config import ServerConfig
from lookalike_server.server import choose_embedded_milvus


def _fake_milvus_venv(root: Path) -> Path:
    """A folder shaped like a venv with the PyPI package `milvus` installed (what `available` looks for)."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").touch()
    package = root / "lib" / "python3.11" / "site-packages" / "milvus"
    package.mkdir(parents=True)
    (package / "__init__.py").touch()
    return root


def test_auto_picks_standalone_for_a_new_data_directory_when_installed(tmp_path):
    venv = _fake_milvus_venv(tmp_path / "venv")
    config = ServerConfig(data_dir=tmp_path / "data", milvus_standalone_venv=str(venv))
    assert config.milvus_embedded == "auto"
    mode, why = choose_embedded_milvus(config)
    assert mode == "standalone" and str(venv) in why


def test_auto_falls_back_to_lite_and_says_how_to_install_standalone(tmp_path):
    config = ServerConfig(data_dir=tmp_path / "data", milvus_standalone_venv=str(tmp_path / "missing"))
    mode, why = choose_embedded_milvus(config)
    assert mode == "lite" and "make milvus-standalone" in why


def test_auto_keeps_the_store_that_already_holds_the_data(tmp_path):
    venv = _fake_milvus_venv(tmp_path / "venv")
    data = tmp_path / "data"
    data.mkdir()
    (data / "milvus.db").touch()
    config = ServerConfig(data_dir=data, milvus_standalone_venv=str(venv))
    assert choose_embedded_milvus(config)[0] == "lite", "an existing Milvus Lite store must not be hidden"
    (data / "milvus.db").unlink()
    (data / "milvus-lite-server").mkdir()
    assert choose_embedded_milvus(config)[0] == "lite-server"


def test_a_named_store_is_used_as_configured(tmp_path):
    config = ServerConfig(data_dir=tmp_path, milvus_embedded="lite", milvus_standalone_venv=str(tmp_path))
    assert choose_embedded_milvus(config) == ("lite", "as configured")
