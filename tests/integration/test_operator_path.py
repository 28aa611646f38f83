"""KubeRay's own path, without a cluster: start Ray from the RayService's rayStartParams the way the operator
does (head + worker groups as separate nodes, the env vars KubeRay sets for a RayService, token auth),
PUT the manifest's serveConfigV2 to the dashboard, wait for RUNNING, check /-/healthz, POST the README's
requests, scrape the metrics ports, and check every Grafana/alert query against that scrape."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.kuberay_local import kuberay_like_cluster, load_rayservice
from tests.polling import wait_for
from serve_app.cluster import free_port, wait_running

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAYSERVICE = ROOT / "kuberay" / "rayservice.yaml"


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return load_rayservice(RAYSERVICE)


@pytest.fixture(scope="module")
def operator_cluster(rayservice: dict, sample_env: dict[str, str]) -> Iterator[dict]:
    with kuberay_like_cluster(rayservice, sample_env) as cluster:
        yield cluster


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
    # and nothing else of the application takes the ML pod's room: it advertises no CPU, the CPU stages need some
    others = [a for a in _state(deployed, "actors") if a.get("state") == "ALIVE"
              and "ServeReplica:signals:" in (a.get("class_name") or "") and "MLEngine" not in a["class_name"]]
    assert len(others) >= 6 and not {a["node_id"] for a in others} & ml_nodes, [
        (a["class_name"], a["node_id"]) for a in others]


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


def test_the_capacity_alerts_select_series_that_exist(deployed, scraped):
    """SignalgenReplicaUnplaced compares the target with the healthy replicas per deployment, RayHeadMemoryHigh
    reads the head's memory: the label values those rules select on are in a real scrape (a name alone is not
    enough - a selector on a label Ray does not set would never fire)."""
    samples = [s for port in deployed["metrics_ports"]
               for fam in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=20).text)
               for s in fam.samples]

    def having(name: str, **labels: str) -> list:
        return [s for s in samples if s.name == name and labels.items() <= s.labels.items()]

    targets = {s.labels["deployment"]: s.value for s in having("ray_serve_autoscaling_target_replicas",
                                                                application="signals")}
    healthy: dict[str, float] = {}
    for s in having("ray_serve_deployment_replica_healthy", application="signals"):
        healthy[s.labels["deployment"]] = healthy.get(s.labels["deployment"], 0) + s.value
    assert "MLEngine" in targets and set(targets) <= set(healthy), (targets, healthy)
    assert all(healthy[d] >= targets[d] for d in targets), (targets, healthy)   # all placed: the alert is quiet
    head_used, head_total = having("ray_node_mem_used", RayNodeType="head"), having("ray_node_mem_total",
                                                                                    RayNodeType="head")
    assert len(head_used) == len(head_total) == 1 and 0 < head_used[0].value < head_total[0].value


def test_dashboard_and_alert_queries_use_exported_names(scraped):
    from kuberay.metric_names import dashboard_and_alert_metric_names

    referenced = dashboard_and_alert_metric_names()
    assert referenced
    missing = sorted(n for n in referenced if n not in scraped)
    assert not missing, f"queries reference metrics the app does not export: {missing}"
