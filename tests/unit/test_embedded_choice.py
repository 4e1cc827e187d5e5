"""`--milvus-embedded auto`: the store already holding the data directory's data, else the standalone that
lookalike[server] installs; and Milvus Lite only in the release the server is written for."""

from __future__ import annotations

import re
from importlib import metadata

import pytest

from lookalike_server.config import ServerConfig
from lookalike_server.embedded_milvus import choose_embedded_milvus, resolve_milvus, standalone
from lookalike_server.errors import StartupError


def _standalone_installed(monkeypatch, installed: bool) -> None:
    """Makes the PyPI package `milvus` look installed or not (it is a dependency of lookalike[server])."""
    monkeypatch.setattr(standalone, "available", lambda: installed)


def test_the_standalone_comes_with_the_server_install():
    assert standalone.available(), "lookalike[server] depends on the PyPI package `milvus`"


def test_auto_picks_standalone_for_a_new_data_directory_when_installed(tmp_path, monkeypatch):
    _standalone_installed(monkeypatch, True)
    config = ServerConfig(data_dir=tmp_path / "data")
    assert config.milvus_embedded == "auto"
    mode, why = choose_embedded_milvus(config)
    assert mode == "standalone" and "a new data directory" in why


def test_auto_falls_back_to_lite_and_says_how_to_install_standalone(tmp_path, monkeypatch):
    _standalone_installed(monkeypatch, False)
    mode, why = choose_embedded_milvus(ServerConfig(data_dir=tmp_path / "data"))
    assert mode == "lite" and "pip install 'lookalike[server]'" in why


def test_auto_keeps_the_store_that_already_holds_the_data(tmp_path, monkeypatch):
    _standalone_installed(monkeypatch, True)
    data = tmp_path / "data"
    data.mkdir()
    (data / "milvus.db").touch()
    config = ServerConfig(data_dir=data)
    assert choose_embedded_milvus(config)[0] == "lite", "an existing Milvus Lite store must not be hidden"
    (data / "milvus.db").unlink()
    (data / "milvus-lite-server").mkdir()
    assert choose_embedded_milvus(config)[0] == "lite-server"
    (data / "milvus-lite-server").rmdir()
    (data / "milvus-standalone").mkdir()
    _standalone_installed(monkeypatch, False)
    assert choose_embedded_milvus(config)[0] == "standalone", "and the standalone's, even when it went away"


def test_a_named_store_is_used_as_configured(tmp_path):
    config = ServerConfig(data_dir=tmp_path, milvus_embedded="lite")
    assert choose_embedded_milvus(config) == ("lite", "as configured")


def test_a_named_standalone_that_is_not_installed_says_what_to_install(tmp_path, monkeypatch):
    _standalone_installed(monkeypatch, False)
    config = ServerConfig(data_dir=tmp_path, milvus_embedded="standalone")
    with pytest.raises(StartupError, match=r"needs the PyPI package `milvus`: pip install 'lookalike\[server\]'"):
        resolve_milvus(config)


def _installed_milvus_lite(monkeypatch, version: str | None) -> None:
    """Makes the package metadata report this milvus-lite version (None: not installed)."""
    real = metadata.version

    def fake(name: str) -> str:
        if name != "milvus-lite":
            return real(name)
        if version is None:
            raise metadata.PackageNotFoundError(name)
        return version

    monkeypatch.setattr(metadata, "version", fake)


def test_the_installed_milvus_lite_is_one_the_server_accepts(tmp_path):
    config = ServerConfig(data_dir=tmp_path, milvus_embedded="lite")
    assert resolve_milvus(config) == (config, None)


@pytest.mark.parametrize("mode", ["lite", "lite-server"])
def test_milvus_lite_2_is_refused_with_the_version_to_install(tmp_path, monkeypatch, mode):
    _installed_milvus_lite(monkeypatch, "2.5.1")
    config = ServerConfig(data_dir=tmp_path, milvus_embedded=mode)
    with pytest.raises(StartupError, match=r"milvus-lite 2\.5\.1 is installed.*pip install 'milvus-lite>=3\.2\.2,<4'"):
        resolve_milvus(config)


def test_a_missing_milvus_lite_names_the_package_and_the_uri_alternative(tmp_path, monkeypatch):
    _installed_milvus_lite(monkeypatch, None)
    with pytest.raises(StartupError, match=r"not installed: pip install 'milvus-lite.*--milvus-uri"):
        resolve_milvus(ServerConfig(data_dir=tmp_path, milvus_embedded="lite"))


@pytest.mark.parametrize("version", ["3.2.2", "3.3.0rc1", "3.10.1+local"])
def test_later_milvus_lite_3_releases_are_accepted(tmp_path, monkeypatch, version):
    _installed_milvus_lite(monkeypatch, version)
    config = ServerConfig(data_dir=tmp_path, milvus_embedded="lite")
    assert resolve_milvus(config)[0].milvus_embedded == "lite"


@pytest.mark.parametrize("version", ["3.2.1", "4.0.0"])
def test_milvus_lite_outside_the_tested_major_release_is_refused(tmp_path, monkeypatch, version):
    _installed_milvus_lite(monkeypatch, version)
    with pytest.raises(StartupError, match=f"milvus-lite {re.escape(version)} is installed"):
        resolve_milvus(ServerConfig(data_dir=tmp_path, milvus_embedded="lite"))


def test_a_milvus_uri_needs_no_milvus_lite(tmp_path, monkeypatch):
    _installed_milvus_lite(monkeypatch, None)
    config = ServerConfig(data_dir=tmp_path, milvus_uri="http://127.0.0.1:19530")
    assert resolve_milvus(config) == (config, None)
