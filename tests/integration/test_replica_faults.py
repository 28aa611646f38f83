"""Replica faults on a real local Ray (issue 5, requirement 3).

Three extra copies of the application are deployed next to the session's (`signals` and `nodb` stay as they
are; the original app list is restored at teardown), every deployment with a tiny CPU reservation and a
fixed replica count:
  /faults    the real graph with the production config's minimum of one replica per stage: that replica is
             killed (`ray.kill` on its actor) under load; at most 1% of the requests may fail (batches wait
             for the replacement, `replacement_wait_s`) and the replica must come back
  /faulty    the real graph with a test-only RiskManager (tests/faulty_stage.py): ETH raises → 500 naming
             the stage, counted in signalgen_stage_failures_total; BTC sleeps past the proxy's
             request_timeout_s → 408/504, not a hang
  /slowstage the same faulty graph with stage_timeout_s 2: BTC's slow risk stage ends in 504 naming the stage
             after 2 s, counted in signalgen_stage_failures_total{reason="timeout"}
  /badmodel  the current model file corrupted: the ML engine fails start-up naming the file, /health says
             so (the deployment's status message from Serve), and signals end with 504 (stage_timeout_s) or
             503 naming 'ml', never a hang
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from serve_app.cluster import applications, put_config, wait_deleted
from tests.polling import wait_for
from tests.ray_helpers import serve_config_for_test

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXTRA = ("faults", "faulty", "slowstage", "badmodel")
TINY_CPU = 0.001  # 28 replicas: 0.028 CPU; the session apps leave 0.1 of the 2 CPUs free
FAULT_REPLICAS = 1  # configs/serve_config.yaml's min_replicas: the worst case, nothing to fail over to
KILL_STAGES = ["FeatureEngine", "MarketContext", "MLEngine", "Portfolio", "RiskManager", "Orchestrator"]
STAGE_TIMEOUT_BADMODEL_S = 1.0
STAGE_TIMEOUT_SLOW_S = 2.0
LOAD_S, KILL_AT_S = 30, 5  # hey runs 4 clients x 10 req/s; the replica dies 5 s in and has 25 s to come back


def running_replicas(dashboard: str, app: str, deployment: str) -> list[str]:
    dep = applications(dashboard)["applications"][app]["deployments"][deployment]
    return [r["actor_name"] for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]


def fix_replicas(app: dict, replicas: int = 1) -> None:
    """Fixed replica counts (no autoscaling) so a killed replica is replaced, not scaled around."""
    for dep in app["deployments"]:
        dep.pop("autoscaling_config", None)
        dep["num_replicas"] = replicas if dep["name"] in KILL_STAGES else 1


@pytest.fixture(scope="module")
def fault_apps(signal_app: dict, tmp_path_factory: pytest.TempPathFactory):
    dashboard, env = signal_app["dashboard"], signal_app["env"]
    before = applications(dashboard)
    session_apps = [a["deployed_app_config"] for n, a in before["applications"].items() if n not in EXTRA]
    assert {a["name"] for a in session_apps} >= {"signals"}

    # a copy of the model registry whose current model file is garbage
    bad_root = tmp_path_factory.mktemp("badmodel") / "models"
    shutil.copytree(env["MODEL_DIR"], bad_root)
    current = (bad_root / "CURRENT").read_text().strip()
    bad_file = next(p for p in (bad_root / current).iterdir() if p.name.startswith("model."))
    bad_file.write_bytes(b"this is not an XGBoost model")

    port = urlparse(signal_app["url"]).port
    cfg = serve_config_for_test(
        port, env,
        extra_apps={"faults": {}, "faulty": {"PYTHONPATH": str(ROOT)}, "slowstage": {"PYTHONPATH": str(ROOT)},
                    "badmodel": {"MODEL_DIR": str(bad_root)}},
        extra_app_overrides={"faulty": {"stage_timeout_s": 120, "pipeline_max_in_flight": 4},
                             "slowstage": {"stage_timeout_s": STAGE_TIMEOUT_SLOW_S},
                             "badmodel": {"stage_timeout_s": STAGE_TIMEOUT_BADMODEL_S,
                                          "replacement_wait_s": STAGE_TIMEOUT_BADMODEL_S}},
        extra_app_num_cpus={n: TINY_CPU for n in EXTRA})
    extras = {a["name"]: a for a in cfg["applications"] if a["name"] in EXTRA}
    fix_replicas(extras["faults"], replicas=FAULT_REPLICAS)
    fix_replicas(extras["faulty"])
    fix_replicas(extras["slowstage"])
    fix_replicas(extras["badmodel"])
    extras["faulty"]["import_path"] = extras["slowstage"]["import_path"] = "tests.faulty_stage:build_faulty_app"
    cfg["applications"] = session_apps + [extras[n] for n in EXTRA]
    put_config(dashboard, cfg)
    try:
        def up() -> bool:
            apps = applications(dashboard)["applications"]
            states = {n: apps.get(n, {}).get("status")
                      for n in ("faults", "faulty", "slowstage", *[a["name"] for a in session_apps])}
            failed = {n: apps[n].get("message") for n, s in states.items() if s == "DEPLOY_FAILED"}
            assert not failed, f"deploy failed: {failed}"
            return all(s == "RUNNING" for s in states.values())

        wait_for("the fault-test applications to be RUNNING", up, 240, every_s=1.0)
        slow = start_slow_request(signal_app["url"])  # checked by the last test, 30 s later
        yield {"dashboard": dashboard, "base": signal_app["url"], "bad_file": bad_file, "slow": slow}
        slow["thread"].join(timeout=60)
    finally:
        cfg["applications"] = session_apps
        put_config(dashboard, cfg)
        wait_deleted(dashboard, list(EXTRA), 120)


# ------------------------------------------------------------------------------------------ (b) a stage raises
def test_stage_that_raises_answers_500_naming_it_and_is_counted(fault_apps: dict) -> None:
    base = fault_apps["base"]
    # at once, not after a wait: the client gives up long before stage_timeout_s (120 s on /faulty) would end it
    r = httpx.post(f"{base}/faulty/generate_signal", json={"symbol": "ETH", "price": 3000.0}, timeout=30)
    assert r.status_code == 500, r.text
    assert r.json() == {"detail": "internal error in stage 'risk'"}
    assert "Traceback" not in r.text and "injected" not in r.text
    # the other symbols still go through the same (faulty) deployment
    ok = httpx.post(f"{base}/faulty/generate_signal", json={"symbol": "SOL", "price": 100.0}, timeout=30)
    assert ok.status_code == 200, ok.text

    def counted() -> float:
        text = httpx.get(f"{base}/faulty/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ray_signalgen_stage_failures_total{") and 'stage="risk"' in line)

    assert wait_for("the risk failure in signalgen_stage_failures_total", counted, 20) >= 1


# ------------------------------------------------------------------------------------------ (c) stage timeout
def test_a_stage_slower_than_stage_timeout_ends_in_504_naming_it(fault_apps: dict) -> None:
    base = fault_apps["base"]
    # the slow stage sleeps 45 s; the client waits 30 s (the proxy's request_timeout_s), so only the ingress's
    # own stage timeout can produce this answer
    r = httpx.post(f"{base}/slowstage/generate_signal", json={"symbol": "BTC", "price": 50000.0}, timeout=30)
    assert r.status_code == 504, r.text
    assert r.json()["detail"] == (f"signal pipeline timed out after {STAGE_TIMEOUT_SLOW_S:g} s "
                                  f"waiting for stage 'risk'")

    def counted() -> float:
        text = httpx.get(f"{base}/slowstage/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("ray_signalgen_stage_failures_total{")
                   and 'stage="risk"' in line and 'reason="timeout"' in line)

    assert wait_for("the timeout in signalgen_stage_failures_total", counted, 20) >= 1


# ------------------------------------------------------------------------------------------ (d) bad model file
def test_corrupt_model_file_fails_ml_start_up_naming_the_file_and_health_says_so(fault_apps: dict) -> None:
    dashboard, base, bad_file = fault_apps["dashboard"], fault_apps["base"], fault_apps["bad_file"]

    seen: list = []

    def ml_message() -> str | None:
        dep = applications(dashboard)["applications"]["badmodel"]["deployments"]["MLEngine"]
        seen[:] = [dep.get("status"), (dep.get("message") or "")[-300:]]
        return dep.get("message") if str(bad_file) in (dep.get("message") or "") else None

    try:
        message = wait_for("the MLEngine deployment's status message naming the model file", ml_message, 120)
    except AssertionError as e:
        raise AssertionError(f"{e}; MLEngine status: {seen}") from None
    assert "MLEngine cannot start" in message and "checksum mismatch" in message

    def health() -> httpx.Response | None:
        r = httpx.get(f"{base}/badmodel/health", timeout=30)
        return r if r.status_code == 503 and str(bad_file) in r.text else None

    r = wait_for("/badmodel/health naming the model file", health, 60, every_s=1.0)
    body = r.json()
    assert body["status"] == "unavailable" and not body["stages"]["ml"]["ok"]
    assert any(str(bad_file) in reason for reason in body["reasons"]), body["reasons"]
    assert body["stages"]["features"]["ok"], "only the ML engine is at fault"

    # a signal needs the ML engine: while Serve still retries its start-up (no running ML replica) the call
    # waits for one up to replacement_wait_s and ends with 504 (1 s here); once the deployment is
    # DEPLOY_FAILED Serve refuses it at once (503). Either way it names the stage and does not hang.
    s = httpx.post(f"{base}/badmodel/generate_signal", json={"symbol": "SOL", "price": 100.0}, timeout=30)
    assert s.status_code in (503, 504), s.text
    assert "'ml'" in s.json()["detail"]


# ------------------------------------------------------------------------------------------ (a) kill a replica
def hey(url: str, seconds: float, concurrency: int, qps: float) -> dict[str, int]:
    """hey's summary → {status code: responses, "no response": requests that got none}."""
    out = subprocess.run(["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-q", f"{qps:g}", "-m", "POST",
                          "-t", "35",  # clients wait as long as the proxy does (request_timeout_s 30)
                          "-T", "application/json", "-d", json.dumps({"symbol": "SOL", "price": 100.0}), url],
                         capture_output=True, text=True, timeout=seconds + 120)
    codes = {code: int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out.stdout)}
    errors = out.stdout.split("Error distribution:", 1)[1] if "Error distribution:" in out.stdout else ""
    lost = sum(int(n) for n in re.findall(r"^\s*\[(\d+)\]", errors, re.M))
    if lost:
        codes["no response"] = lost
    return codes


def requests_answered(base: str) -> float:
    """/faults' answered signal requests, as its ingress counts them (any status)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/faults/metrics", timeout=30).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "ray_signalgen_requests"
               for s in f.samples if s.name.endswith("_total") and s.labels.get("route") == "/generate_signal")


@pytest.mark.parametrize("deployment", KILL_STAGES)
def test_killing_a_replica_under_load_fails_at_most_1_percent(fault_apps: dict, deployment: str) -> None:
    """/faults runs one replica of every stage: the ingress retries a batch that lost a stage replica until
    the controller has started its replacement, so only requests inside a killed ingress can fail."""
    import ray

    assert shutil.which("hey"), "hey is not installed (`make test` installs it: apt-get install hey)"
    dashboard, base = fault_apps["dashboard"], fault_apps["base"]
    replicas = wait_for(f"{deployment} replicas RUNNING", lambda: (lambda r: r if len(r) == FAULT_REPLICAS else None)(
        running_replicas(dashboard, "faults", deployment)), 60)
    victim = replicas[0]
    result: dict = {}
    load = threading.Thread(target=lambda: result.update(hey(f"{base}/faults/generate_signal", LOAD_S, 4, 10)))
    answered_before = requests_answered(base)
    load.start()
    # kill once the load is flowing: KILL_AT_S worth of it (40 requests a second) answered, not a sleep
    wait_for("the load answered", lambda: requests_answered(base) - answered_before >= 40 * KILL_AT_S, 60, 0.2)
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    load.join()
    # the killed replica is replaced (the controller starts a new one; the batches waited for it)
    wait_for(f"a new {deployment} replica", lambda: (lambda now: len(now) == FAULT_REPLICAS and victim not in now)(
        running_replicas(dashboard, "faults", deployment)), 120, every_s=1.0)
    total = sum(result.values())
    failed = total - result.get("200", 0)
    print(f"\nkill {deployment}: {failed}/{total} failed ({failed / max(total, 1):.2%}) {result}")
    assert total >= 100, f"too little load to measure 1%: {result}"
    assert failed <= 0.01 * total, f"killing {deployment} failed {failed}/{total} requests: {result}"


# ------------------------------------------------------------------------------------------ (c) request timeout
def start_slow_request(base: str) -> dict:
    """BTC makes the faulty risk stage sleep 45 s (stage_timeout_s 120 on /faulty): the proxy's
    request_timeout_s (30 s) must end the request first. Runs beside the other tests."""
    out: dict = {}

    def run() -> None:
        try:
            r = httpx.post(f"{base}/faulty/generate_signal", json={"symbol": "BTC", "price": 50000.0}, timeout=90)
            out.update(status=r.status_code, text=r.text[:300])
        except httpx.HTTPError as e:
            out.update(status=None, text=repr(e))

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def test_request_past_the_proxy_request_timeout_ends_408_or_504_not_a_hang(fault_apps: dict) -> None:
    """The risk stage sleeps 45 s with stage_timeout_s 120 s: only the proxy's request_timeout_s (30 s) can
    end the request before the client's 90 s, so a 408/504 answer is that timeout."""
    slow = fault_apps["slow"]
    slow["thread"].join(timeout=90)
    assert not slow["thread"].is_alive(), "the request hung past the proxy's request_timeout_s"
    assert slow["status"] in (408, 504), slow
