"""KubeRay's own path, without a cluster: start Ray from the RayService's rayStartParams the way the operator
does (head + worker groups as separate nodes, the env vars KubeRay sets for a RayService, token auth),
PUT the manifest's serveConfigV2 to the dashboard, wait for RUNNING, check /-/healthz, POST the README's
requests, scrape the metrics ports, and check every Grafana/alert query against that scrape."""
from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts.ray_procs import CLUSTER_ENV
from tests.polling import wait_for
from scripts.ray_procs import stop as stop_processes
from serve_app.cluster import free_port, wait_running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = ROOT / "kuberay" / "rayservice.yaml"


def _ray_exe() -> str:
    import sys

    return str(Path(sys.executable).parent / "ray")


def start_params_to_flags(params: dict[str, str]) -> list[str]:
    """`ray start` flags from rayStartParams, quoted the way the operator's shell command sees them."""
    flags: list[str] = []
    for key, value in params.items():
        flags += shlex.split(f"--{key}={value}")
    return flags


def kuberay_env(cluster: str, token: str, extra: dict[str, str]) -> dict[str, str]:
    """What the operator adds to every Ray container of a RayService (KubeRay v1.7), plus token auth."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({
        "RAY_CLUSTER_NAME": cluster,
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
        "RAY_timeout_ms_task_wait_for_death_info": "0",
        "RAY_gcs_server_request_timeout_seconds": "5",
        "RAY_SERVE_KV_TIMEOUT_S": "5",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    })
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


@pytest.fixture(scope="module")
def operator_cluster(rayservice: dict, sample_env: dict[str, str]) -> Iterator[dict]:
    spec = rayservice["spec"]["rayClusterConfig"]
    temp_dir = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    token = secrets.token_hex(16)
    gcs_port, dash_port = free_port(), free_port()
    env = {**kuberay_env(rayservice["metadata"]["name"], token, sample_env), CLUSTER_ENV: temp_dir}
    head_params = dict(spec["headGroupSpec"]["rayStartParams"])
    head_params.update({"dashboard-host": "127.0.0.1", "metrics-export-port": str(free_port())})
    metrics_ports = [int(head_params["metrics-export-port"])]
    head = [_ray_exe(), "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
            f"--temp-dir={temp_dir}", "--disable-usage-stats", *start_params_to_flags(head_params)]
    # one node per worker group; num-cpus is what KubeRay derives from the container's CPU limit
    workers = []
    for group, cpus in zip(spec["workerGroupSpecs"], ("2", "1")):
        params = dict(group["rayStartParams"])
        params.update({"metrics-export-port": str(free_port()), "num-cpus": cpus})
        metrics_ports.append(int(params["metrics-export-port"]))
        workers.append([_ray_exe(), "start", f"--address=127.0.0.1:{gcs_port}", f"--temp-dir={temp_dir}",
                        *start_params_to_flags(params)])
    try:
        for cmd in [head, *workers]:
            subprocess.run(cmd, env={**env, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}"} if cmd is not head else env,
                           check=True, capture_output=True, timeout=180)
        yield {"dashboard": f"http://127.0.0.1:{dash_port}", "token": token, "metrics_ports": metrics_ports,
               "env": env, "temp_dir": temp_dir, "gcs_port": gcs_port}
    finally:
        left = stop_processes(temp_dir)
        assert not left, f"processes still running after stop: {left}"


def _headers(token: str) -> dict[str, str]:
    return {"x-ray-authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def deployed(operator_cluster: dict, rayservice: dict) -> dict:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    # Two Ray nodes share this one machine, so only the head runs an HTTP proxy and the port is free-picked;
    # everything else is the manifest's serveConfigV2 as the operator sends it.
    config["proxy_location"] = "HeadOnly"
    config["http_options"]["port"] = http_port = free_port()
    dash, hdr = operator_cluster["dashboard"], _headers(operator_cluster["token"])
    # token auth is on: the dashboard refuses a request without the token
    assert httpx.get(f"{dash}/api/serve/applications/", timeout=10).status_code in (401, 403)
    r = httpx.put(f"{dash}/api/serve/applications/", content=json.dumps(config), timeout=60,
                  headers={**hdr, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    os.environ["RAY_AUTH_TOKEN"] = operator_cluster["token"]  # for wait_running's headers
    try:
        status = wait_running(dash, [a["name"] for a in config["applications"]], timeout_s=300)
    finally:
        os.environ.pop("RAY_AUTH_TOKEN", None)
    return {"status": status, "url": f"http://127.0.0.1:{http_port}", **operator_cluster}


def test_every_application_running_with_seven_deployments(deployed):
    app = deployed["status"]["applications"]["signals"]
    assert app["status"] == "RUNNING"
    assert len(app["deployments"]) == 7 and all(d["status"] == "HEALTHY" for d in app["deployments"].values())


def _state(deployed: dict, kind: str) -> list[dict]:
    """Ray's state API over the dashboard (the pytest process may already be a driver of another cluster)."""
    r = httpx.get(f"{deployed['dashboard']}/api/v0/{kind}", params={"limit": 10000}, timeout=30,
                  headers=_headers(deployed["token"]))
    assert r.status_code == 200, r.text
    return r.json()["data"]["result"]["result"]


def test_ml_engine_lands_on_the_ml_group(deployed):
    """The custom resource places the ML engine on the node that advertises `ml_engine`."""
    ml_nodes = {n["node_id"] for n in _state(deployed, "nodes") if "ml_engine" in (n.get("resources_total") or {})}
    replicas = [a for a in _state(deployed, "actors")
                if a.get("state") == "ALIVE" and "MLEngine" in (a.get("class_name") or "")]
    assert len(ml_nodes) == 1 and replicas, (ml_nodes, [a.get("class_name") for a in _state(deployed, "actors")])
    assert {a["node_id"] for a in replicas} <= ml_nodes


def test_healthz_and_seed_requests(deployed):
    assert httpx.get(f"{deployed['url']}/-/healthz", timeout=10).status_code == 200
    for symbol, price in (("SOL", 100.0), ("BTC", 50000.0)):
        r = httpx.post(f"{deployed['url']}/generate_signal", json={"symbol": symbol, "price": price}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["symbol"] == symbol and r.json()["action"] in ("BUY", "SELL", "HOLD")


def scrape(ports: list[int]) -> set[str]:
    names: set[str] = set()
    for port in ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=20).text
        for fam in text_string_to_metric_families(text):
            names.update(s.name for s in fam.samples)
    return names


WANTED = {"ray_signalgen_signals_total", "ray_signalgen_ml_batch_size_bucket", "ray_serve_num_http_requests_total",
          "ray_serve_deployment_request_counter_total"}


@pytest.fixture(scope="module")
def scraped(deployed) -> set[str]:
    """Every metric name on the cluster's metrics ports once signals have flowed (Ray reports metrics every
    few seconds): what both tests below read, whichever runs first."""
    for _ in range(5):
        httpx.post(f"{deployed['url']}/generate_signal", json={"symbol": "ETH", "price": 3000.0}, timeout=60)
    return wait_for("every wanted name exported",
                    lambda: (lambda n: n if WANTED <= n else None)(scrape(deployed["metrics_ports"])), 90, 3)


def test_metrics_ports_export_app_and_serve_metrics(scraped):
    assert WANTED <= scraped, sorted(WANTED - scraped)


def test_dashboard_and_alert_queries_use_exported_names(scraped):
    from kuberay.metric_names import dashboard_and_alert_metric_names

    referenced = dashboard_and_alert_metric_names()
    assert referenced
    missing = sorted(n for n in referenced if n not in scraped)
    assert not missing, f"queries reference metrics the app does not export: {missing}"
