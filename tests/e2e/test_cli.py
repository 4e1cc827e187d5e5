"""As a user would: the `lookalike` command and grpcurl against a running server, on real photos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ServerProcess, free_port

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def lookalike(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lookalike {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def grpcurl(*args: str) -> str:
    result = subprocess.run([GRPCURL, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory):
    proc = ServerProcess(tmp_path_factory.mktemp("cli-server"))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def ingested(cli_server, photos_dir):
    result = lookalike("ingest", str(photos_dir), "--server", cli_server.address, "--quiet")
    count = len(list(photos_dir.iterdir()))
    assert f"stored {count} of {count} images" in result.stdout
    return photos_dir


def test_every_photo_ranks_itself_first(cli_server, ingested):
    for photo in sorted(ingested.iterdir()):
        out = lookalike("search", str(photo), "-k", "3", "--json", "--server", cli_server.address).stdout
        hits = json.loads(out)
        assert len(hits) == 3
        assert hits[0]["id"] == photo.name, f"{photo.name}: {hits}"
        assert hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
        assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_table_output_names_the_photo_first(cli_server, ingested):
    out = lookalike("search", str(ingested / "chelsea.jpg"), "-k", "3", "--server", cli_server.address).stdout
    lines = out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id"]
    assert lines[1].split()[2] == "chelsea.jpg"
    assert len(lines) == 4


def test_resized_recompressed_copy_finds_its_original(cli_server, ingested, tmp_path):
    for name in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"):
        image = Image.open(ingested / name)
        copy = tmp_path / f"copy-{name}"
        image.resize((image.width * 2 // 3, image.height * 2 // 3)).save(copy, "JPEG", quality=50)
        hits = json.loads(lookalike("search", str(copy), "-k", "1", "--json", "--server", cli_server.address).stdout)
        assert hits[0]["id"] == name


def test_ingest_reports_broken_files_and_strict_exit(cli_server, photos_dir, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(photos_dir / "coffee.jpg", folder / "nested" / "coffee.jpg")
    shutil.copy(photos_dir / "rocket.jpg", folder / "rocket.jpg")
    (folder / "notes.jpg").write_text("not an image at all")
    (folder / "cut.jpg").write_bytes((photos_dir / "chelsea.jpg").read_bytes()[:2000])
    (folder / "empty.png").write_bytes(b"")
    (folder / "README.txt").write_text("skipped: not an image extension")
    lookalike("collections", "create", "mixed", "--server", cli_server.address)
    args = ("ingest", str(folder), "--server", cli_server.address, "--collection", "mixed", "--quiet")
    result = lookalike(*args)
    assert "stored 2 of 5 images" in result.stdout
    for broken in ("notes.jpg", "cut.jpg", "empty.png"):
        assert broken in result.stdout
    assert "README.txt" not in result.stdout
    strict = lookalike(*args, "--strict", check=False)
    assert strict.returncode == 1
    listed = json.loads(lookalike("collections", "--json", "--server", cli_server.address).stdout)
    assert {c["name"]: c["row_count"] for c in listed}["mixed"] == 2
    found = json.loads(lookalike("search", "nested/coffee.jpg", "--id", "--json", "-k", "1", "--server",
                                 cli_server.address, "--collection", "mixed").stdout)
    assert found[0]["id"] == "nested/coffee.jpg"


def test_search_of_a_missing_file_is_a_clear_error(cli_server, tmp_path):
    result = lookalike("search", str(tmp_path / "nope.jpg"), "--server", cli_server.address, check=False)
    assert result.returncode == 2
    assert "nope.jpg" in result.stderr


@pytest.mark.parametrize("command", [["search", "PHOTO"], ["search", "--id", "a.jpg"], ["ingest", "FOLDER", "--quiet"],
                                     ["collections"], ["collections", "describe", "default"]])
def test_every_command_says_when_no_server_answers(command, photos_dir):
    """As a new user would meet it: no server running. One line says so and how to start or point elsewhere."""
    server = f"127.0.0.1:{free_port()}"
    photo = str(next(iter(sorted(photos_dir.iterdir()))))
    args = [photo if a == "PHOTO" else str(photos_dir) if a == "FOLDER" else a for a in command]
    result = lookalike(*args, "--server", server, check=False)
    assert result.returncode != 0
    assert f"no lookalike server answers at {server}: start one with `lookalike serve`" in result.stderr
    assert "--server HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_grpcurl_lists_and_describes_our_services(cli_server):
    services = grpcurl("-plaintext", cli_server.address, "list").split()
    assert {"lookalike.v1.Images", "lookalike.v1.Collections", "grpc.health.v1.Health"} <= set(services)
    described = grpcurl("-plaintext", cli_server.address, "describe", "lookalike.v1.Images")
    assert "rpc Search" in described and "rpc Ingest" in described
    health = json.loads(grpcurl("-plaintext", cli_server.address, "grpc.health.v1.Health/Check"))
    assert health["status"] == "SERVING"


def test_grpcurl_search_by_vector(cli_server, ingested):
    embedded = json.loads(
        subprocess.run(
            [sys.executable, "-c",
             "import sys, json; from lookalike import Client; "
             f"c = Client('{cli_server.address}'); "
             f"print(json.dumps(c.get(['chelsea.jpg'])['chelsea.jpg'][0].tolist()))"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout
    )
    request = json.dumps({"queries": [{"vector": {"values": embedded}}], "k": 2})
    reply = json.loads(grpcurl("-plaintext", "-d", request, cli_server.address, "lookalike.v1.Images/Search"))
    hits = reply["results"][0]["hits"]
    assert hits[0]["id"] == "chelsea.jpg"
    assert np.isclose(hits[0]["score"], 1.0, atol=1e-3)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--require-gpu", "cannot start: --require-gpu: no GPU execution provider is active"),
        ("--fp16", "cannot start: --fp16 needs a GPU execution provider"),
    ],
)
def test_serve_refuses_gpu_only_settings_on_a_cpu_machine(flag, message, tmp_path):
    """Without a GPU, these flags end `serve` at start-up with one clear line, not a server on the CPU."""
    result = lookalike("serve", flag, "--address", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                       "--milvus-embedded", "lite", check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
