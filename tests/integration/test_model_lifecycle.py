"""`signalgen models promote` / `rollback` against the running application: the ML engine switches model
through its user_config (the live declarative config re-applied over the dashboard, as KubeRay does)
while a client keeps sending requests — no failed request, the other application left deployed."""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import httpx
import pytest

from serve_app import cluster
from serve_app.cluster import applications
from serve_app.cli import models as models_cli
from serve_app.training import lifecycle
from tests.polling import wait_for

pytestmark = pytest.mark.integration

REQUEST = {"symbol": "SOL", "price": 100.0}
# what is under test is the switch, not the promotion gate (tests/unit/test_lifecycle.py): forced past it
FORCED = ("--force", "--reason", "test: switching without downtime, not the gate, is under test")


def run_models(*argv: str) -> int:
    ap = argparse.ArgumentParser()
    models_cli.register(ap.add_subparsers(required=True))
    args = ap.parse_args(["models", *argv])
    return args.func(args)


def declarative(dashboard: str) -> dict:
    # an application another test module is still deleting is not part of what promote keeps
    return {name: a for name, a in applications(dashboard)["applications"].items() if a.get("status") != "DELETING"}


def ml_model_version(app: dict) -> str:
    ml = next(d for d in app["deployed_app_config"]["deployments"] if d["name"] == "MLEngine")
    return ml["user_config"]["model_version"]


class Client(threading.Thread):
    """POSTs /generate_signal in a loop; records (time sent, model_version) and every failure."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.responses: list[tuple[float, str]] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    r = c.post("/generate_signal", json=REQUEST)
                except httpx.HTTPError as e:
                    self.failures.append(repr(e))
                    continue
                if r.status_code == 200:
                    self.responses.append((sent, r.json()["model_version"]))
                else:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")

    def wait_for(self, version: str, timeout_s: float = 120) -> None:
        wait_for(f"{version} served (failures: {self.failures[-3:]})",
                 lambda: self.responses and self.responses[-1][1] == version, timeout_s, every_s=0.2)

    def wait_for_more(self, n: int, timeout_s: float = 60) -> None:
        """Until `n` more answers arrived (instead of sleeping and hoping some did)."""
        target = len(self.responses) + n
        wait_for(f"{n} more answers", lambda: len(self.responses) >= target, timeout_s, every_s=0.05)

    def versions_sent_between(self, start: float, end: float) -> set[str]:
        return {v for t, v in list(self.responses) if start <= t < end}


def test_promote_then_rollback_without_downtime(signal_app, monkeypatch):
    from serve_app.training import registry
    from serve_app.training.train import train
    from serve_app.settings import StoreSettings
    from serve_app.store import open_store

    env, dashboard = signal_app["env"], signal_app["dashboard"]
    root = Path(env["MODEL_DIR"])
    store = open_store(StoreSettings.from_env(env))
    try:
        new = train(store, root=root, n_estimators=30, set_current=False, seed=11).name
    finally:
        store.close()
    old = signal_app["client"].post("/generate_signal", json=REQUEST).json()["model_version"]
    assert old != new and registry.current_version(root) == old
    before = declarative(dashboard)
    assert {"signals", "nodb"} <= set(before)

    monkeypatch.setenv("MODEL_DIR", str(root))
    client = Client(signal_app["url"])
    client.start()
    try:
        client.wait_for(old)
        assert run_models("promote", new, "--address", dashboard, "--require-deploy", *FORCED) == 0
        promoted = time.monotonic()
        client.wait_for(new)
        client.wait_for_more(5)  # a few more requests on the new model
        rollback_started = time.monotonic()
        assert run_models("rollback", "--address", dashboard, "--require-deploy") == 0
        rolled_back = time.monotonic()
        client.wait_for(old)
        client.wait_for_more(5)
    finally:
        client.stop.set()
        client.join(60)

    assert client.failures == []
    switches = [v for i, (_, v) in enumerate(client.responses) if i == 0 or client.responses[i - 1][1] != v]
    assert switches[0] == old and new in switches and switches[-1] == old
    # promote/rollback return once every ML replica runs the new model: later requests all carry it
    assert client.versions_sent_between(promoted, rollback_started) == {new}
    assert client.versions_sent_between(rolled_back, float("inf")) == {old}

    assert registry.current_version(root) == old
    history = registry.read_history(root)
    assert [(h["action"], h["version"], h["previous"]) for h in history[-2:]] == [
        ("promote", new, old), ("rollback", old, new)]

    after = declarative(dashboard)
    assert set(after) == set(before) and all(a["status"] == "RUNNING" for a in after.values())
    for name in ("signals", "nodb"):  # both apps are built from serve_app.app:build_app
        assert ml_model_version(after[name]) == old
        # nothing but the model version changed in either application's config
        expected, _ = lifecycle.with_model_version({"applications": [before[name]["deployed_app_config"]]}, old)
        assert after[name]["deployed_app_config"] == expected["applications"][0]


def test_promote_that_the_app_does_not_take_restores_the_previous_config(signal_app, monkeypatch):
    """The new config is PUT for real; when the app does not become healthy on it in time (here: the wait
    gives up at once), promote re-applies the previous live config, leaves the registry as it was and exits 2."""
    from serve_app.settings import StoreSettings
    from serve_app.store import open_store
    from serve_app.training import registry
    from serve_app.training.train import train

    env, dashboard = signal_app["env"], signal_app["dashboard"]
    root = Path(env["MODEL_DIR"])
    with open_store(StoreSettings.from_env(env)) as store:
        new = train(store, root=root, n_estimators=20, set_current=False, seed=23).name
    current, history = registry.current_version(root), registry.read_history(root)
    before = declarative(dashboard)
    served = signal_app["client"].post("/generate_signal", json=REQUEST).json()["model_version"]
    put: list[str] = []
    real_deploy = cluster.deploy

    def deploy_and_record(address: str, config: dict, timeout_s: float) -> dict:
        put.append(ml_model_version({"deployed_app_config": next(
            a for a in config["applications"] if a["name"] == "signals")}))
        return real_deploy(address, config, timeout_s)

    def never_healthy(*args, **kwargs) -> None:
        raise TimeoutError("MLEngine not HEALTHY on the new version (test)")

    monkeypatch.setenv("MODEL_DIR", str(root))
    monkeypatch.setattr(cluster, "deploy", deploy_and_record)
    monkeypatch.setattr(lifecycle, "_wait_model_applied", never_healthy)
    assert run_models("promote", new, "--address", dashboard, "--require-deploy", *FORCED) == 2
    assert put == [new, ml_model_version(before["signals"])]       # the new config, then the previous one
    after = declarative(dashboard)
    for name in ("signals", "nodb"):
        assert after[name]["deployed_app_config"] == before[name]["deployed_app_config"]
    assert registry.current_version(root) == current and registry.read_history(root) == history
    wait_for(f"{served} served again", lambda: signal_app["client"].post(
        "/generate_signal", json=REQUEST).json()["model_version"] == served, 120)
