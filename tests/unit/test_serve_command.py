"""The serve command belongs to the server package, its flags generated from ServerConfig's fields;
`lookalike serve` forwards to it, and says what to install when the server is not there."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from lookalike_server.config import ENV_PREFIX, ServerConfig
from lookalike_server.flags import build_parser, config_from_args, flag_name

REPO = Path(__file__).resolve().parents[2]
FIELDS = dataclasses.fields(ServerConfig)

# Runs a command with the modules named in BLOCKED unimportable, as if they were not installed.
BLOCKING = """
import sys
BLOCKED = {blocked!r}
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, NotInstalled())
from {module} import main
sys.exit(main({argv!r}))
"""


def _without(blocked: set[str], module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    code = BLOCKING.format(blocked=blocked, module=module, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


@pytest.fixture
def no_lookalike_env(monkeypatch):
    for name in [f"{ENV_PREFIX}{f.name.upper()}" for f in FIELDS] + [f"{ENV_PREFIX}CONFIG"]:
        monkeypatch.delenv(name, raising=False)


def test_every_setting_has_a_flag_with_help_and_its_variable():
    options = {action.dest: action for action in build_parser()._actions}
    for field in FIELDS:
        assert field.name in options, f"ServerConfig.{field.name} has no flag"
        action = options[field.name]
        assert flag_name(field) in action.option_strings
        assert action.help and f"[{ENV_PREFIX}{field.name.upper()}]" in action.help, field.name
        assert action.default is None, f"{field.name}: a flag's default would hide LOOKALIKE_* and the config file"


def test_flags_become_the_typed_settings(no_lookalike_env, tmp_path):
    args = build_parser().parse_args([
        "--max-batch-size", "8", "--max-queue-delay-ms", "2.5", "--data-dir", str(tmp_path), "--milvus-tls",
        "--default-index", "FLAT", "--inference-threads", "3", "--max-metadata-bytes", "100",
    ])
    config = config_from_args(args)
    assert (config.max_batch_size, config.max_queue_delay_ms, config.data_dir) == (8, 2.5, tmp_path)
    assert config.milvus_tls is True
    assert (config.default_index, config.inference_threads, config.max_metadata_bytes) == ("FLAT", 3, 100)
    assert config.address == ServerConfig().address  # not given: the default


def test_a_flag_not_given_leaves_the_variable_and_the_file_in_force(no_lookalike_env, monkeypatch, tmp_path):
    file = tmp_path / "lookalike.toml"
    file.write_text('address = "0.0.0.0:1"\nmilvus_tls = true\nworkers = 3\n')
    monkeypatch.setenv("LOOKALIKE_WORKERS", "2")
    config = config_from_args(build_parser().parse_args(["--config", str(file), "--no-milvus-tls"]))
    assert (config.address, config.milvus_tls, config.workers) == ("0.0.0.0:1", False, 2)


def test_a_bad_choice_is_refused_by_the_parser():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--milvus-embedded", "sqlite"])


@pytest.mark.parametrize("command", [["-m", "lookalike_server"], ["-m", "lookalike.cli", "serve"]])
def test_help_lists_every_setting(command):
    result = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    missing = [flag_name(f) for f in FIELDS if flag_name(f) not in result.stdout]
    assert not missing, f"--help does not list {missing}"


def test_the_console_script_is_the_server_command():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lookalike-server"] == "lookalike_server.main:main"


def test_lookalike_serve_without_the_server_says_what_to_install():
    result = _without({"lookalike_server"}, "lookalike.cli", ["serve", "--address", "127.0.0.1:0"])
    assert result.returncode == 2
    assert 'pip install "lookalike[server]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_the_server_command_without_its_dependencies_says_what_to_install():
    result = _without({"pymilvus"}, "lookalike.cli", ["serve", "--address", "127.0.0.1:0"])
    assert result.returncode == 2
    assert "pymilvus" in result.stderr and 'pip install "lookalike[server]"' in result.stderr
    assert "Traceback" not in result.stderr
