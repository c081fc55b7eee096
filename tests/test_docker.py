"""docker/: what can be checked without a Docker engine (none runs on these machines)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from node.watch.metrics import NodeMetrics

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
yaml = pytest.importorskip("yaml", reason="PyYAML not installed: pip install -e '.[test]'")


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def compose_schema() -> dict:
    """The Compose file schema as docker-compose 1.29.2 ships it (the Makefile downloads that wheel)."""
    wheels = sorted((ROOT / ".venv" / "cache").glob("docker_compose-*.whl"))
    if not wheels:
        pytest.skip("the Compose schema is not downloaded: `make test` fetches docker-compose's wheel into .venv/cache")
    return json.loads(zipfile.ZipFile(wheels[0]).read("compose/config/compose_spec.json"))


def test_compose_file_matches_the_compose_schema():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft201909Validator(compose_schema())
    validator.validate(compose())
    broken = compose()
    broken["services"]["volunteer"]["depends_on"] = {"bootstrap": {"condition": "when_ready"}}
    assert not validator.is_valid(broken)  # the schema does check what we wrote


def test_compose_services_and_scaling():
    services = compose()["services"]
    assert {"bootstrap", "volunteer", "monitor", "prometheus", "grafana"} <= set(services)
    volunteer = services["volunteer"]
    # --scale needs volunteers without fixed names or host ports
    assert "container_name" not in volunteer and "ports" not in volunteer
    assert volunteer["depends_on"]["bootstrap"]["condition"] == "service_healthy"
    assert "/bootstrap/bootstrap.json" in volunteer["command"]
    for name in ("bootstrap", "volunteer", "monitor"):
        assert services[name]["stop_signal"] == "SIGINT", name  # a clean leave on `docker compose stop`
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_discovers_volunteers_by_service_name():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    sd = jobs["swarmtrain-volunteers"]["dns_sd_configs"][0]
    assert sd["names"] == ["volunteer"] and sd["port"] == 9100
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "SWARMTRAIN_STATUS_PORT=9100" in dockerfile and "SWARMTRAIN_STATUS_HOST=0.0.0.0" in dockerfile


def test_promtool_accepts_the_prometheus_config():
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (Debian package prometheus; `make test` installs it as root)")
    out = subprocess.run(
        [promtool, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_is_multistage_non_root_with_a_cuda_switch():
    text = (DOCKER / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "torch==${TORCH_VERSION}" in text and text.index("torch==") < text.index("pip install /src")


def test_grafana_provisioning_points_at_the_dashboard():
    provider = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "dashboards" / "swarmtrain.yaml").read_text())
    mounted = [v for v in compose()["services"]["grafana"]["volumes"] if "dashboards:" in v][0].split(":")[1]
    assert provider["providers"][0]["options"]["path"] == mounted
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "swarmtrain.json").read_text())
    datasource = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_queries_only_documented_node_metrics():
    """Unit-level twin of swarm_tests/test_monitor.py, which checks against a running node's /metrics."""
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "swarmtrain.json").read_text())
    queried = {
        name
        for p in dashboard["panels"]
        for t in p["targets"]
        for name in re.findall(r"\bswarmtrain_[a-z_]+", t["expr"])
    }
    exported = set(re.findall(r"^# TYPE (swarmtrain_\S+)", NodeMetrics().exposition().decode(), re.M))
    unknown = {
        q
        for q in queried
        if not q.startswith("swarmtrain_monitor_") and not any(q == e or q.startswith(e + "_") for e in exported)
    }
    assert not unknown, unknown
