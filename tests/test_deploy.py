"""The deployment files: deploy/kubernetes/, compose.yaml, the Dockerfile and the lock files.

Offline: kubernetes-validate ships the Kubernetes JSON schemas, so nothing here needs a
cluster, a Docker engine or the network.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.settings import Settings, SettingsError, load_settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="kubernetes-validate is not installed (it is one of the test extras)",
)
import yaml  # noqa: E402  (a dependency of kubernetes-validate)
from packaging.requirements import Requirement  # noqa: E402  (likewise)
from packaging.utils import canonicalize_name  # noqa: E402

# The oldest Kubernetes the manifests promise to work on (the preStop sleep action is on by
# default from 1.30). kubernetes-validate ships schemas for it; validation is strict, so an
# unknown or misspelt field fails.
KUBERNETES_VERSION = "1.30"

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in KUBERNETES_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
RUNTIME_LOCK = ROOT / "deploy" / "requirements.lock"
TEST_LOCK = ROOT / "deploy" / "requirements-test.lock"

GATEWAY_PORT = 8000
METRICS_PORT = 9464
GATEWAY_UID = 10001

SETTING_NAME = re.compile(r"\bGATEWAY_[A-Z0-9_]*[A-Z0-9]\b")
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)", re.MULTILINE)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@functools.cache
def _resources() -> tuple[dict[str, Any], ...]:
    return tuple(doc for path in MANIFESTS for doc in _documents(path))


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} named {name}, found {len(found)}"
    return found[0]


def _gateway_deployment() -> dict[str, Any]:
    return _find("Deployment", "numbers-gateway")


def _gateway_container() -> dict[str, Any]:
    containers = _gateway_deployment()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def _setting_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {prefix + name.upper() for name in Settings.model_fields}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the gateway reads them from exactly ``env``, nothing else."""
    for name in _setting_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment with ``${VAR:-default}`` resolved to its default."""
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "write compose environments as mappings"
    return {
        name: INTERPOLATION.sub(lambda m: m.group("default") or "", str(value))
        for name, value in environment.items()
    }


def _gateway_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if "GATEWAY_UPSTREAM_URL" in service.get("environment", {})
    }


def _pins(lock: Path) -> dict[str, str]:
    text = lock.read_text(encoding="utf-8")
    return {canonicalize_name(m["name"]): m["version"] for m in PIN.finditer(text)}


# --- Kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _documents(KUBERNETES_DIR / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(manifest: Path) -> None:
    documents = _documents(manifest)
    assert documents, f"{manifest.name} holds no resource"
    for document in documents:
        validated = kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        assert validated == KUBERNETES_VERSION


def test_every_pod_is_locked_down() -> None:
    deployments = [r for r in _resources() if r["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {
        "numbers-gateway",
        "numbers-gateway-redis",
    }
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod.get("automountServiceAccountToken") is False, name
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host_namespace), name
        assert not any("hostPath" in volume for volume in pod.get("volumes", [])), name
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security.get("runAsUser", 0) != 0, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security.get("runAsNonRoot", pod_security["runAsNonRoot"]) is True, where
            assert security.get("runAsUser", pod_security["runAsUser"]) != 0, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security.get("privileged", False) is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), where


def test_gateway_runs_as_the_image_user_with_a_writable_tmp() -> None:
    pod = _gateway_deployment()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == GATEWAY_UID
    assert re.search(rf"^USER {GATEWAY_UID}(:\d+)?$", DOCKERFILE.read_text(), re.MULTILINE)
    mounts = _gateway_container()["volumeMounts"]
    (tmp,) = [m for m in mounts if m["mountPath"] == "/tmp"]  # noqa: S108  (a mount path)
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume


def test_gateway_probes_and_graceful_drain() -> None:
    deployment = _gateway_deployment()
    container = _gateway_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": GATEWAY_PORT, "metrics": METRICS_PORT}
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    assert deployment["spec"]["replicas"] == 2
    drain = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 0 < drain < grace


def test_gateway_settings_come_from_the_configmap_and_the_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    container = _gateway_container()
    (config_ref,) = [source["configMapRef"]["name"] for source in container["envFrom"]]
    config = _find("ConfigMap", config_ref)["data"]
    (secret_env,) = [e for e in container["env"] if e["name"] == "GATEWAY_CACHE_KEY_SECRET"]
    assert "value" not in secret_env, "the cache-key secret must come from a Secret"
    ref = secret_env["valueFrom"]["secretKeyRef"]
    secret = _find("Secret", ref["name"])["stringData"]
    assert "GATEWAY_CACHE_KEY_SECRET" not in config
    assert "REPLACE" in secret[ref["key"]], "secret.yaml holds a marked placeholder, never a secret"

    assert config["GATEWAY_ENV"] == "production"
    assert config["GATEWAY_UPSTREAM_URL"] == "https://webexapis.com/v1"
    assert config["GATEWAY_REDIS_URL"] == "redis://numbers-gateway-redis:6379/0"
    redis_service = _find("Service", "numbers-gateway-redis")
    assert [p["port"] for p in redis_service["spec"]["ports"]] == [6379]

    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The example value is refused in production: a copy applied as it is does not start.
    with pytest.raises(SettingsError, match="GATEWAY_CACHE_KEY_SECRET: this is a known example"):
        _settings_from(
            {**config, **literal, "GATEWAY_CACHE_KEY_SECRET": secret[ref["key"]]}, monkeypatch
        )
    settings = _settings_from(
        {**config, **literal, "GATEWAY_CACHE_KEY_SECRET": "q7Vx2mPz9LrT4wYb8NcE3hJ6uFsA1dG0oK5"},
        monkeypatch,
    )
    assert settings.production
    assert settings.metrics_port == METRICS_PORT
    assert not settings.embedded_simulator
    assert settings.redis_url is not None


def test_services_autoscaler_budget_and_policy_select_real_pods() -> None:
    pod_labels = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in _resources()
        if d["kind"] == "Deployment"
    }

    def selects(selector: dict[str, str], deployment: str) -> bool:
        return selector.items() <= pod_labels[deployment].items()

    gateway_service = _find("Service", "numbers-gateway")
    assert selects(gateway_service["spec"]["selector"], "numbers-gateway")
    assert [p["targetPort"] for p in gateway_service["spec"]["ports"]] == ["http", "metrics"]
    redis_service = _find("Service", "numbers-gateway-redis")
    assert selects(redis_service["spec"]["selector"], "numbers-gateway-redis")
    assert not selects(redis_service["spec"]["selector"], "numbers-gateway")

    hpa = _find("HorizontalPodAutoscaler", "numbers-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "numbers-gateway",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    pdb = _find("PodDisruptionBudget", "numbers-gateway")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], "numbers-gateway")

    policy = _find("NetworkPolicy", "numbers-gateway-redis")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], "numbers-gateway-redis")
    (rule,) = policy["spec"]["ingress"]
    (peer,) = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], "numbers-gateway")
    assert not selects(peer["podSelector"]["matchLabels"], "numbers-gateway-redis")


def test_redis_keeps_nothing_on_disk() -> None:
    redis = _find("Deployment", "numbers-gateway-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"
    assert not any(
        "persistentVolumeClaim" in v for v in redis["spec"]["template"]["spec"]["volumes"]
    )


# --- every GATEWAY_* name is a setting -------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [*MANIFESTS, KUBERNETES_DIR / "kustomization.yaml", COMPOSE_FILE, DOCKERFILE],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_gateway_variable_named_is_a_setting(path: Path) -> None:
    named = set(SETTING_NAME.findall(path.read_text(encoding="utf-8")))
    unknown = named - _setting_names()
    assert not unknown, f"{path.name} names variables the gateway does not read: {unknown}"


# --- compose.yaml ----------------------------------------------------------------------------


def test_compose_runs_two_gateway_replicas_sharing_one_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    services = compose["services"]
    gateways = _gateway_services(compose)
    assert set(gateways) == {"gateway-1", "gateway-2"}
    assert {"simulator", "redis"} <= set(services)

    image = services["simulator"]["image"]
    assert services["simulator"]["command"][0] == "simulator"
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", services["redis"]["image"])

    envs = {name: _compose_env(service) for name, service in gateways.items()}
    assert envs["gateway-1"] == envs["gateway-2"], "replicas differ only in their host port"
    env = envs["gateway-1"]
    assert urlsplit(env["GATEWAY_REDIS_URL"]).hostname == "redis"
    assert urlsplit(env["GATEWAY_UPSTREAM_URL"]).hostname == "simulator"
    assert env["GATEWAY_ENV"] == "development"
    assert "local" in env["GATEWAY_CACHE_KEY_SECRET"], "the default secret is marked local-only"
    settings = _settings_from(env, monkeypatch)
    assert settings.redis_url is not None
    assert not settings.embedded_simulator

    host_ports = set()
    for name, service in gateways.items():
        assert service["image"] == image, name
        assert service["depends_on"] == {
            "simulator": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
        for mapping in service["ports"]:
            *host, container = str(mapping).split(":")
            assert int(container) in (GATEWAY_PORT, METRICS_PORT), name
            host_ports.add(int(host[-1]))
    assert host_ports == {8000, 8002, 9464, 9465}

    for name, service in services.items():
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name


# --- Dockerfile and locks --------------------------------------------------------------------


def test_dockerfile_installs_the_lock_before_the_code() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage"
    base = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert re.fullmatch(
        r"ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base
    )

    def first(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    assert first("--require-hashes") < first("COPY gateway")
    assert first("COPY deploy/requirements.lock") < first("COPY gateway")
    assert not any(re.match(r"ENV\b.*GATEWAY_ENV", line) for line in lines)
    assert lines[-2:] == [
        'ENTRYPOINT ["numbers-gateway"]',
        f'CMD ["serve", "--host", "0.0.0.0", "--port", "{GATEWAY_PORT}"]',
    ]
    assert f"EXPOSE {GATEWAY_PORT}" in lines
    assert any(line.startswith("HEALTHCHECK") for line in lines)


def test_locks_are_hashed_and_cover_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime, test = _pins(RUNTIME_LOCK), _pins(TEST_LOCK)
    for lock in (RUNTIME_LOCK, TEST_LOCK):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text(encoding="utf-8"))
        pinned = [block for block in blocks if PIN.match(block)]
        assert pinned, lock.name
        for block in pinned:
            assert "--hash=sha256:" in block, f"{lock.name}: unhashed {block.split()[0]}"

    def names(requirements: list[str]) -> set[str]:
        return {canonicalize_name(Requirement(r).name) for r in requirements}

    runtime_names = names(project["dependencies"])
    test_names = names(project["optional-dependencies"]["test"])
    assert runtime_names <= set(runtime), "deploy/requirements.lock is stale: re-lock"
    assert runtime_names | test_names <= set(test), "deploy/requirements-test.lock is stale"
    tools = {"pytest", "hypothesis", "ruff", "mypy", "playwright", "kubernetes-validate"}
    assert not tools & set(runtime), "the runtime lock carries test tools"
    assert {name: test[name] for name in runtime} == runtime, "the two locks pin differently"


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_wheel_carries_every_file_of_the_package(tmp_path: Path) -> None:
    """The image installs a wheel, not the source tree: every file under gateway/ (GraphiQL's
    vendored assets, the example operations, every module) must be in the wheel setuptools
    builds, or the image serves without it while editable installs hide the loss. Built from a
    copy, so a stale build/ folder in the work tree cannot supply what the config misses."""
    source = tmp_path / "source"
    skipped = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")
    shutil.copytree(ROOT / "gateway", source / "gateway", ignore=skipped)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(source),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(wheels),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
        timeout=240,
    )
    [wheel] = wheels.glob("numbers_gateway-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = {name for name in archive.namelist() if name.startswith("gateway/")}
    in_source = {
        path.relative_to(source).as_posix()
        for path in (source / "gateway").rglob("*")
        if path.is_file()
    }
    missing = sorted(in_source - in_wheel)
    assert not missing, (
        f"not in the wheel (see [tool.setuptools.package-data]), so missing from the image: {missing}"
    )


def test_prometheus_scrapes_the_metrics_port_only() -> None:
    template = _gateway_deployment()["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(METRICS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    service = _find("Service", "numbers-gateway")
    ports = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    assert ports == {"http": "http", "metrics": "metrics"}
    operator_dir = KUBERNETES_DIR / "prometheus-operator"
    (kustomization,) = _documents(operator_dir / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == ["..", "servicemonitor.yaml"]
    (monitor,) = _documents(operator_dir / "servicemonitor.yaml")
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert compose["x-gateway"]["environment"]["GATEWAY_METRICS_PORT"] == str(METRICS_PORT)
