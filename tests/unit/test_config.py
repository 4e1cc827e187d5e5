"""Settings merge as documented: flags > LOOKALIKE_* environment > config file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike_server.config import ServerConfig


def test_defaults():
    config = ServerConfig.load({}, env={})
    assert config.address == "localhost:50051"
    assert config.data_dir == Path("lookalike-data")
    assert config.milvus_uri == ""


def test_precedence(tmp_path):
    file = tmp_path / "lookalike.toml"
    file.write_text('address = "0.0.0.0:1"\nmax_batch_size = 8\ndevice = "cpu"\nmilvus_tls = true\n')
    env = {"LOOKALIKE_ADDRESS": "0.0.0.0:2", "LOOKALIKE_MAX_BATCH_SIZE": "16"}
    config = ServerConfig.load({"address": "0.0.0.0:3", "data_dir": None}, env=env, config_file=file)
    assert config.address == "0.0.0.0:3"  # flag
    assert config.max_batch_size == 16  # env over file, converted to int
    assert config.device == "cpu"  # file
    assert config.milvus_tls is True


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="max_batch_size"):
        ServerConfig.load({}, env={"LOOKALIKE_MAX_BATCH_SIZE": "many"})
    with pytest.raises(ValueError, match="default_metric"):
        ServerConfig.load({"default_metric": "hamming"}, env={})
    with pytest.raises(ValueError, match="unknown settings"):
        ServerConfig.load({"adress": "x"}, env={})


def test_secrets_are_redacted():
    config = ServerConfig.load({"milvus_password": "hunter2", "milvus_token": "t0k"}, env={})
    text = str(config.redacted())
    assert "hunter2" not in text and "t0k" not in text
