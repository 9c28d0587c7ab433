"""docker-compose.yml, parsed and checked; no Docker engine runs here, so its
nginx configuration is rendered the way the nginx image does it and checked by
the real nginx."""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from string import Template

import pytest
import yaml

from impetus.settings import Settings
from impetus.stack.nginx import nginx_binary

REPO = Path(__file__).resolve().parents[2]
AUXILIARY = {"redis", "nginx", "prometheus", "grafana", "redis-exporter", "nginx-exporter"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def interpolate(value: str, env: dict | None = None) -> str:
    """Compose's ${VAR:-default}, with the defaults (what a plain `docker compose up` does)."""
    env = env or {}
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1], m[2] or ""), value)


def test_the_auxiliary_services_and_no_model_service(compose):
    services = compose["services"]
    assert set(services) == AUXILIARY
    for name, service in services.items():
        # The model runs natively (Metal is out of a container's reach): nothing here builds or runs it.
        assert "build" not in service, name
        text = yaml.safe_dump(service).lower()
        assert not re.search(r"\b(impetus serve|gunicorn|mlx)\b", text), name
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image version"
        assert service.get("restart") == "unless-stopped", name


def test_mounted_paths_exist_in_the_repository(compose):
    named = set(compose.get("volumes") or {})
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            volume = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume)  # compose's default when the variable is unset
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
                mounts += 1
            else:
                assert source in named, f"{name}: named volume {source} is not declared"
            assert target.startswith("/")
    assert mounts >= 6


def test_ports_are_loopback_unless_asked(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host, host_port, container_port = interpolate(port).split(":")
            assert host == "127.0.0.1", f"{name} publishes {port} beyond this machine by default"
            published[name] = int(host_port)
    assert published == {"redis": 6379, "nginx": 8080, "prometheus": 9090, "grafana": 3000}
    # The LAN is opt-in: IMPETUS_BIND=0.0.0.0 docker compose up -d
    assert interpolate(compose["services"]["nginx"]["ports"][0], {"IMPETUS_BIND": "0.0.0.0"}).startswith("0.0.0.0:")


def test_containers_reach_the_native_server_and_each_other(compose):
    services = compose["services"]
    for name in ("nginx", "prometheus"):
        assert "host.docker.internal:host-gateway" in services[name]["extra_hosts"]
    upstream = services["nginx"]["environment"]["UPSTREAM"]
    assert upstream == f"host.docker.internal:{Settings().port}"

    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    fixed = {name: ipaddress.ip_address(s["networks"]["default"]["ipv4_address"])
             for name, s in services.items() if isinstance(s.get("networks"), dict)}
    assert set(fixed) == {"prometheus", "nginx-exporter"} and all(ip in subnet for ip in fixed.values())
    # nginx opens its operator paths to exactly those two containers (and loopback).
    allowed = re.findall(r"allow ([^;]+);", services["nginx"]["environment"]["ADMIN_ALLOW"])
    assert sorted(allowed) == sorted(["127.0.0.1", *map(str, fixed.values())])

    # Every target Prometheus scrapes is a compose service or the native server.
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job.get("static_configs", []) for t in c["targets"]}
    for target in targets:
        host = target.rsplit(":", 1)[0]
        assert host in services or host in ("host.docker.internal", "localhost"), target
    assert upstream in targets
    exporter = services["nginx-exporter"]["command"][0]
    assert exporter == "--nginx.scrape-uri=http://nginx/nginx_status"


def test_grafana_gets_the_provisioning_and_the_dashboard(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/impetus.yml").read_text())
    dashboards_in_container = provider["providers"][0]["options"]["path"]
    assert mounts["./deploy/grafana/dashboards"] == dashboards_in_container
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "deploy/grafana/dashboards" / Path(home).relative_to(dashboards_in_container)).exists()
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_compose_nginx_configuration_is_accepted_by_nginx(compose, tmp_path):
    """Render the shared templates as the nginx image's entrypoint does (envsubst of
    the variables compose sets) and let the real nginx check the result."""
    service = compose["services"]["nginx"]
    env = {k: str(v) for k, v in service["environment"].items()}
    # host.docker.internal only resolves inside compose; nginx resolves upstreams at load.
    env["UPSTREAM"] = "127.0.0.1:8081"
    mounts = dict(v.split(":")[:2] for v in service["volumes"])
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    for source, target in mounts.items():
        if target.startswith("/etc/nginx/templates/"):
            rendered = Template((REPO / source).read_text()).safe_substitute(env)
            assert "${" not in rendered.replace("${ADMIN_ALLOW_NOTE}", ""), f"{source}: a variable is not set"
            (conf_d / Path(target).name.removesuffix(".template")).write_text(rendered)
    assert mounts["./nginx/compose/nginx.conf"] == "/etc/nginx/nginx.conf"
    outer = (REPO / "nginx/compose/nginx.conf").read_text().replace("/etc/nginx/conf.d/", f"{conf_d}/")
    (tmp_path / "nginx.conf").write_text(outer)
    result = subprocess.run([nginx_binary(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c",
                             str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    server = (conf_d / "impetus-server.conf").read_text()
    assert "listen 80;" in server and "allow 172.30.53.10;" in server
