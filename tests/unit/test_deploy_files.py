"""deploy/: every file parses, and the facts a deployment stands on hold (probes, selectors, images, env).

No Docker engine or cluster is needed: the YAML is read with PyYAML, the Dockerfiles with a small parser,
the health check runs against an in-process gRPC health server, and `kubectl` (when installed) renders
the kustomization and decodes the Deployments offline.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent import futures
from dataclasses import fields
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from lookalike_server.config import ENV_PREFIX, ServerConfig
from lookalike_server.server import LIVENESS

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
PORT = 50051
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.cuda")
DEPLOYMENTS = ("deployment.yaml", "deployment-gpu.yaml")
# LOOKALIKE_* variables the server reads: one per setting, plus the config file's path.
SETTINGS = {ENV_PREFIX + f.name.upper() for f in fields(ServerConfig)} | {ENV_PREFIX + "CONFIG"}


# Reading the files


def parse_yaml(text: str) -> list[Any]:
    """The YAML documents in text (PyYAML comes with the test extra)."""
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is missing: it belongs in the test extra (pip install '.[test]')")
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def load_all(path: Path) -> list[Any]:
    return parse_yaml(path.read_text())


def load(path: Path) -> Any:
    docs = load_all(path)
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    return docs[0]


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def dockerfile(name: str) -> list[list[tuple[str, str]]]:
    """The instructions of deploy/<name> as (INSTRUCTION, arguments), one list per stage.

    The first list holds what comes before the first FROM (global ARGs). Continuation lines are joined
    and comment lines dropped, as Docker does.
    """
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for line in (DEPLOY / name).read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        if logical.strip():
            instruction, _, args = logical.strip().partition(" ")
            if instruction.upper() == "FROM":
                stages.append([])
            stages[-1].append((instruction.upper(), " ".join(args.split())))
        logical = ""
    return stages


def global_args(stages: list[list[tuple[str, str]]]) -> dict[str, str]:
    return dict(args.partition("=")[::2] for instruction, args in stages[0] if instruction == "ARG")


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    """ENV in its KEY=VALUE form."""
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
    return env


def pod_spec(name: str) -> dict[str, Any]:
    return load(K8S / name)["spec"]["template"]["spec"]


def container(name: str) -> dict[str, Any]:
    (only,) = pod_spec(name)["containers"]
    return only


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


# YAML everywhere


def test_there_is_yaml_to_check():
    names = {p.relative_to(DEPLOY).as_posix() for p in yaml_files()}
    assert {"docker-compose.yml", "k8s/kustomization.yaml", "k8s/milvus-values.yaml"} <= names
    assert {f"k8s/{name}" for name in DEPLOYMENTS} <= names


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path):
    docs = load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_every_lookalike_variable_is_a_setting():
    """A misspelt LOOKALIKE_* variable is silently ignored by the server: catch it here."""
    named: dict[str, set[str]] = {}
    for path in [*yaml_files(), *(DEPLOY / name for name in DOCKERFILES)]:
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0]  # comments may name settings still to come
            for name in re.findall(r"\bLOOKALIKE_[A-Z0-9_]+\b", code):
                named.setdefault(name, set()).add(path.name)
    unknown = {name: sorted(files) for name, files in named.items() if name not in SETTINGS}
    assert not unknown, f"not lookalike settings: {unknown}"
    assert {"LOOKALIKE_MILVUS_URI", "LOOKALIKE_ADDRESS", "LOOKALIKE_DEVICE"} <= set(named)


# Kubernetes


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_probes_are_grpc_health_on_50051(name):
    c = container(name)
    assert {"name": "grpc", "containerPort": PORT, "protocol": "TCP"} in c["ports"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in c, f"{name}: no {probe}"
        assert set(c[probe]) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, f"{name}: {probe}"
        assert c[probe]["grpc"]["port"] == PORT, f"{name}: {probe} asks another port"
        # Readiness follows Milvus (the overall status); liveness asks the name that stays SERVING.
        expected = LIVENESS if probe == "livenessProbe" else ""
        assert c[probe]["grpc"].get("service", "") == expected, f"{name}: {probe} asks the wrong health name"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "the model and Milvus need time"


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_deployment_shape(name):
    doc = load(K8S / name)
    assert (doc["apiVersion"], doc["kind"]) == ("apps/v1", "Deployment")
    labels = doc["spec"]["template"]["metadata"]["labels"]
    assert matches(doc["spec"]["selector"]["matchLabels"], labels), f"{name}: selector misses its own pods"
    spec = pod_spec(name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    c = container(name)
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"
    sources = {next(iter(ref)): ref[next(iter(ref))]["name"] for ref in c["envFrom"]}
    assert sources == {"configMapRef": "lookalike-config", "secretRef": "lookalike-milvus"}


def test_config_map_and_secret_are_the_ones_the_deployments_use():
    config = load(K8S / "configmap.yaml")
    assert (config["kind"], config["metadata"]["name"]) == ("ConfigMap", "lookalike-config")
    assert config["data"]["LOOKALIKE_ADDRESS"] == f"0.0.0.0:{PORT}"
    assert re.fullmatch(r"https?://[a-z0-9.-]+:19530", config["data"]["LOOKALIKE_MILVUS_URI"])
    assert all(isinstance(value, str) for value in config["data"].values()), "ConfigMap values must be strings"
    assert "LOOKALIKE_MILVUS_TOKEN" not in config["data"], "the token belongs in the Secret"
    secret = load(K8S / "secret.example.yaml")
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", "lookalike-milvus")
    assert set(secret["stringData"]) == {"LOOKALIKE_MILVUS_TOKEN"}


def test_device_per_deployment():
    def env(name: str) -> dict[str, Any]:
        return {e["name"]: e.get("value") for e in container(name)["env"]}

    assert env("deployment.yaml")["LOOKALIKE_DEVICE"] == "cpu"
    assert env("deployment-gpu.yaml")["LOOKALIKE_DEVICE"] == "cuda"
    gpu = container("deployment-gpu.yaml")["resources"]
    assert int(gpu["limits"]["nvidia.com/gpu"]) == 1
    assert "nvidia.com/gpu" not in container("deployment.yaml")["resources"]["limits"]


def test_deployment_selectors_do_not_overlap():
    cpu, gpu = (load(K8S / name) for name in DEPLOYMENTS)
    assert not matches(cpu["spec"]["selector"]["matchLabels"], gpu["spec"]["template"]["metadata"]["labels"])
    assert not matches(gpu["spec"]["selector"]["matchLabels"], cpu["spec"]["template"]["metadata"]["labels"])


def test_services_select_every_replica():
    services = {doc["metadata"]["name"]: doc for doc in load_all(K8S / "service.yaml")}
    headless = services["lookalike"]
    assert headless["spec"]["clusterIP"] == "None", "client-side round_robin needs one DNS answer per pod"
    assert services["lookalike-lb"]["spec"].get("clusterIP") != "None"
    for service in services.values():
        (port,) = service["spec"]["ports"]
        assert port["port"] == PORT
        for name in DEPLOYMENTS:
            labels = load(K8S / name)["spec"]["template"]["metadata"]["labels"]
            assert matches(service["spec"]["selector"], labels), f"{service['metadata']['name']} misses {name}"
            assert port["targetPort"] in {p["name"] for p in container(name)["ports"]}


def test_hpa_scales_the_cpu_deployment():
    hpa = load(K8S / "hpa.yaml")
    deployment = load(K8S / "deployment.yaml")
    assert (hpa["apiVersion"], hpa["kind"]) == ("autoscaling/v2", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert "cpu" in container("deployment.yaml")["resources"]["requests"], "utilisation is of the request"


def test_kustomization_lists_files_that_exist():
    kustomization = load(K8S / "kustomization.yaml")
    resources = kustomization["resources"]
    assert {"deployment.yaml", "service.yaml", "hpa.yaml", "configmap.yaml"} <= set(resources)
    assert "secret.example.yaml" not in resources, "an example token must not be applied"
    for resource in resources:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists a missing {resource}"


def test_milvus_values_are_cluster_mode():
    values = load(K8S / "milvus-values.yaml")
    assert values["cluster"]["enabled"] is True
    assert values["etcd"]["replicaCount"] == 3
    queues = [name for name in ("pulsarv3", "pulsar", "kafka", "woodpecker") if values[name]["enabled"]]
    assert len(queues) == 1, f"exactly one message queue, not {queues}"
    assert values["service"]["port"] == 19530
    assert "helm install" in (K8S / "milvus-values.yaml").read_text()


# kubectl, offline


def kubectl(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """kubectl with no kubeconfig, so nothing can reach a cluster even where one is configured."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-kubeconfig")}
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, env=env, timeout=60, check=False)


def test_kubectl_kustomize_renders(tmp_path):
    result = kubectl("kustomize", str(K8S), tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = parse_yaml(result.stdout)
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert {("Deployment", "lookalike"), ("Service", "lookalike"), ("HorizontalPodAutoscaler", "lookalike"),
            ("ConfigMap", "lookalike-config")} <= kinds
    assert all(doc["metadata"].get("namespace") == "lookalike" for doc in docs if doc["kind"] != "Namespace")


def test_kubectl_decodes_the_deployments(tmp_path):
    """`set env --local` decodes into Kubernetes' own types offline: a wrong kind or field type fails."""
    files = [arg for name in DEPLOYMENTS for arg in ("-f", str(K8S / name))]
    result = kubectl("set", "env", "--local", "--dry-run=client", "-o", "json", *files, "LOOKALIKE_CHECK=1",
                     tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    items, text, decoder = [], result.stdout.strip(), json.JSONDecoder()
    while text:  # one JSON object per Deployment, one after another
        item, end = decoder.raw_decode(text)
        items.append(item)
        text = text[end:].strip()
    assert sorted(item["metadata"]["name"] for item in items) == ["lookalike", "lookalike-gpu"]
    for item in items:
        (c,) = item["spec"]["template"]["spec"]["containers"]
        assert c["livenessProbe"]["grpc"]["port"] == PORT


# Docker Compose


def compose() -> dict[str, Any]:
    return load(DEPLOY / "docker-compose.yml")


def test_compose_runs_milvus_standalone_as_documented():
    services = compose()["services"]
    assert {"etcd", "minio", "milvus"} <= set(services)
    milvus = services["milvus"]
    assert re.fullmatch(r"milvusdb/milvus:v2\.5\.\d+", milvus["image"])
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    for name in ("etcd", "minio", "milvus"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert {"etcd", "minio", "milvus"} <= set(compose()["volumes"])


@pytest.mark.parametrize(("service", "dockerfile_name"), [("lookalike", "Dockerfile.cpu"),
                                                          ("lookalike-gpu", "Dockerfile.cuda")])
def test_compose_lookalike_replicas(service, dockerfile_name):
    lookalike = compose()["services"][service]
    assert (DEPLOY / lookalike["build"]["context"]).resolve() == REPO
    assert lookalike["build"]["dockerfile"] == f"deploy/{dockerfile_name}"
    assert lookalike["environment"]["LOOKALIKE_MILVUS_URI"] == "http://milvus:19530"
    assert lookalike["depends_on"]["milvus"]["condition"] == "service_healthy"
    for port in lookalike["ports"]:
        assert str(port).endswith(f":{PORT}")


def test_compose_publishes_a_port_per_replica():
    lookalike = compose()["services"]["lookalike"]
    replicas = lookalike["deploy"]["replicas"]
    assert replicas >= 2
    (published,) = lookalike["ports"]
    first, _, last = published.rsplit(":", 1)[0].partition("-")
    assert int(last or first) - int(first) + 1 >= replicas, "each replica needs a host port of its own"


def test_compose_gpu_service_reserves_a_gpu():
    gpu = compose()["services"]["lookalike-gpu"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert gpu["environment"]["LOOKALIKE_DEVICE"] == "cuda"
    assert gpu["profiles"] == ["gpu"], "the GPU replica must not start on hosts without a GPU"


# Dockerfiles


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_builds_the_wheel_with_the_server_extra(name):
    stages = dockerfile(name)
    assert len(stages) >= 3, "multi-stage: a builder and a runtime"
    runs = " ".join(args for stage in stages for instruction, args in stage if instruction == "RUN")
    assert "pip wheel --no-deps" in runs
    assert re.search(r"pip install \"\$\{wheel\}\[server\]\"", runs), "install the wheel with the server extra"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runtime_stage(name):
    runtime = dockerfile(name)[-1]
    instructions = dict(runtime)  # the last of each kind
    assert json.loads(instructions["ENTRYPOINT"]) == ["lookalike", "serve"]
    assert instructions["EXPOSE"] == str(PORT)
    assert env_of(runtime)["LOOKALIKE_ADDRESS"] == f"0.0.0.0:{PORT}"
    user = instructions["USER"].split(":")[0]
    assert user not in ("0", "root"), "run as a non-root user"
    assert "healthcheck.py" in instructions["HEALTHCHECK"]
    assert "--from=builder" in " ".join(args for instruction, args in runtime if instruction == "COPY")


def test_dockerfile_bases():
    cpu = dockerfile("Dockerfile.cpu")
    cpu_args = global_args(cpu)
    assert cpu_args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"
    assert env_of(cpu[-1])["LOOKALIKE_DEVICE"] == "cpu"
    cuda = dockerfile("Dockerfile.cuda")
    cuda_args = global_args(cuda)
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", cuda_args["CUDA_IMAGE"])
    assert cuda[-1][0] == ("FROM", "${CUDA_IMAGE}")
    assert cuda_args["BUILD_IMAGE"] == "ubuntu:24.04", "the venv must be built on the runtime's Ubuntu and Python"
    assert env_of(cuda[-1])["LOOKALIKE_DEVICE"] == "cuda"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_what_exists_and_is_not_ignored(name):
    """The context is the repository root: every COPY source must be there and not in the .dockerignore."""
    ignore = [
        line.strip() for line in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".git", ".venv*", "build", "lookalike-data"} <= set(ignore)
    copied = []
    for stage in dockerfile(name):
        for instruction, args in stage:
            if instruction == "COPY" and not args.startswith("--from"):
                copied += args.split()[:-1]
    assert {"pyproject.toml", "CMakeLists.txt", "proto", "native", "server", "clients", "models"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), f"{name} copies {source}, which the repository does not have"
        hits = [p for p in ignore if fnmatch.fnmatch(source, p.removeprefix("**/"))]
        assert not hits, f"{name} copies {source}, but its .dockerignore drops it ({hits})"


# The images' health check


def healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_target():
    target = healthcheck_module().target
    assert target(["healthcheck.py"], {"LOOKALIKE_ADDRESS": "0.0.0.0:50051"}) == "127.0.0.1:50051"
    assert target(["healthcheck.py"], {"LOOKALIKE_ADDRESS": "[::]:6000"}) == "127.0.0.1:6000"
    assert target(["healthcheck.py"], {}) == "127.0.0.1:50051"
    assert target(["healthcheck.py", "db:7"], {"LOOKALIKE_ADDRESS": "0.0.0.0:1"}) == "db:7"


def test_healthcheck_exit_code_follows_serving_status():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def check() -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "LOOKALIKE_ADDRESS": f"0.0.0.0:{port}"}
        return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], capture_output=True, text=True,
                              env=env, timeout=30, check=False)

    try:
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        result = check()
        assert (result.returncode, result.stdout.strip()) == (1, f"127.0.0.1:{port}: NOT_SERVING")
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        result = check()
        assert (result.returncode, result.stdout.strip()) == (0, f"127.0.0.1:{port}: SERVING")
    finally:
        server.stop(None).wait()
    result = check()
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout
