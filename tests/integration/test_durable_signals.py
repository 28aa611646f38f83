"""An answered signal is never lost (issue 16): a real graph on a real MariaDB behind a TCP proxy, clients
that record every signal id they were answered with, and faults injected under that load.

/durable runs the production minimum of one replica per stage (fixed, no autoscaling), tiny CPU
reservations, its own database and journal directory. While 6 clients post signals without pause:

  analytics x2   ray.kill of the only Analytics replica, twice
  ingress        ray.kill of the only Orchestrator replica (requests inside it get no answer; nothing answered
                 may be lost)
  ml             ray.kill of the only MLEngine replica
  outage         the database path cut for a while, with an Analytics kill inside the outage

Each phase waits for its replacement replica and for more answers (conditions polled with a deadline, no
sleeps). After the load stops and the journals drain: every answered signal id is in `signals` exactly once.

A second test deletes the app while the database is down (its Analytics journals what it could not store),
redeploys it with the database back, and checks that every journaled signal is stored once.
"""
from __future__ import annotations

import threading
from pathlib import Path
from collections import Counter, defaultdict
from typing import Any, Iterator

import httpx
import pytest

from serve_app.cluster import applications, deploy, wait_deleted
from serve_app.settings import StoreSettings
from tests.conftest import stored_signal_counts
from tests.integration.conftest import STORE_DOWN_APP, proxied_database
from tests.polling import wait_for
from tests.ray_helpers import serve_config_for_test

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

APP = "durable"
SYMBOLS = ["BTC", "ETH", "SOL"]
CLIENTS = 6
TINY_CPU = 0.001


@pytest.fixture(scope="module")
def durable_db(signal_app: dict, mysql_settings: StoreSettings,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A seeded database of its own behind a TCP proxy, and how to deploy / remove /durable on it."""
    http_port = int(signal_app["url"].rsplit(":", 1)[1])
    spill = tmp_path_factory.mktemp("durable-spill")

    def config(app_env: dict[str, str] | None) -> dict:
        extra = {**STORE_DOWN_APP, **({APP: app_env} if app_env else {})}
        cfg = serve_config_for_test(http_port, signal_app["env"], overrides={"refresh_interval_s": 2},
                                    extra_apps=extra, extra_app_overrides={APP: {"refresh_interval_s": 1}},
                                    extra_app_num_cpus={APP: TINY_CPU})
        for app in cfg["applications"]:
            if app["name"] == APP:        # one replica per stage, as the production minimum
                for dep in app["deployments"]:
                    dep.pop("autoscaling_config", None)
                    dep["num_replicas"] = 1
        return cfg

    with proxied_database(mysql_settings, "durable", SYMBOLS, spill) as db:
        ctx = {**db, "client": signal_app["client"], "dashboard": signal_app["dashboard"], "spill": str(spill),
               "deploy": lambda: deploy(signal_app["dashboard"], config(db["app_env"]), timeout_s=240),
               "remove": lambda: (deploy(signal_app["dashboard"], config(None), timeout_s=240),
                                  wait_deleted(signal_app["dashboard"], [APP], timeout_s=240))}
        try:
            yield ctx
        finally:
            db["proxy"].start()
            ctx["remove"]()


def running_replicas(dashboard: str, deployment: str) -> list[str]:
    dep = applications(dashboard)["applications"][APP]["deployments"][deployment]
    return [r["actor_name"] for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]


class Load:
    """CLIENTS threads posting signals back to back; every 200's signal_id is recorded with the phase it
    was answered in."""

    def __init__(self, client: httpx.Client, last_close: dict[str, float]):
        self.client, self.last_close = client, last_close
        self.phase = "warm-up"
        self.answered: dict[str, str] = {}          # signal_id -> phase
        self.statuses: dict[str, Counter] = defaultdict(Counter)
        self.errors: dict[str, Counter] = defaultdict(Counter)
        self.failures: dict[str, Counter] = defaultdict(Counter)   # non-200 bodies, for the report
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=str(self.client.base_url), timeout=40) as c:
            n = 0
            while not self._stop.is_set():
                sym = SYMBOLS[(i + n) % len(SYMBOLS)]
                n += 1
                phase = self.phase
                try:
                    r = c.post(f"/{APP}/generate_signal", json={"symbol": sym, "price": self.last_close[sym]})
                except httpx.HTTPError as e:
                    with self._lock:
                        self.errors[phase][type(e).__name__] += 1
                    continue
                with self._lock:
                    self.statuses[phase][r.status_code] += 1
                    if r.status_code == 200:
                        self.answered[r.json()["signal_id"]] = phase
                    else:
                        self.failures[phase][f"{r.status_code} {r.text[:120]}"] += 1

    def count(self, phase: str | None = None) -> int:
        with self._lock:
            return sum(1 for p in self.answered.values() if phase is None or p == phase)

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def kill_and_wait(ctx: dict, load: Load, deployment: str, phase: str, more: int = 40) -> None:
    """ray.kill the only replica of `deployment`; wait until a new one runs and `more` signals were answered
    in this phase."""
    import ray

    load.phase = phase
    (victim,) = wait_for(f"one RUNNING {deployment}", lambda: running_replicas(ctx["dashboard"], deployment))
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    wait_for(f"a new {deployment} replica", lambda: (lambda r: r and victim not in r)(
        running_replicas(ctx["dashboard"], deployment)), timeout_s=120)
    wait_for(f"{more} signals answered after the {deployment} kill", lambda: load.count(phase) >= more, 120)


def test_answered_signals_survive_replica_kills_and_a_database_outage(durable_db: dict) -> None:
    ctx = durable_db
    ctx["proxy"].start()
    ctx["deploy"]()
    earlier = set(stored_signal_counts(ctx["database"]))  # the module's other test shares the database
    with Load(ctx["client"], ctx["last_close"]) as load:
        wait_for("60 signals answered", lambda: load.count() >= 60)
        kill_and_wait(ctx, load, "Analytics", "analytics kill 1")
        kill_and_wait(ctx, load, "Analytics", "analytics kill 2")
        kill_and_wait(ctx, load, "Orchestrator", "ingress kill")
        kill_and_wait(ctx, load, "MLEngine", "ml kill")
        # the database goes away; signals are served from the candle cache and journaled; Analytics dies
        load.phase = "outage"
        ctx["proxy"].stop()
        wait_for("40 signals answered during the outage", lambda: load.count("outage") >= 40)
        kill_and_wait(ctx, load, "Analytics", "outage + analytics kill")
        load.phase = "recovered"
        ctx["proxy"].start()
        wait_for("40 signals answered after the outage", lambda: load.count("recovered") >= 40)
    answered = dict(load.answered)
    missing: set[str] = set()

    def drained() -> bool:
        missing.clear()
        missing.update(set(answered) - set(stored_signal_counts(ctx["database"])))
        return not missing

    try:
        wait_for("every answered signal stored", drained, timeout_s=90, every_s=1.0)
    except AssertionError:
        pass  # reported below, per phase
    stored = stored_signal_counts(ctx["database"])
    report = {phase: {"answered": n, "stored": sum(1 for s, p in answered.items() if p == phase and s in stored),
                      "statuses": dict(load.statuses[phase]), "client errors": dict(load.errors[phase]),
                      "failures": dict(load.failures[phase])}
              for phase, n in Counter(answered.values()).items()}
    print("\nanswered / stored per phase:")
    for phase, r in report.items():
        print(f"  {phase:<24} {r['answered']:>5} / {r['stored']:<5} statuses {r['statuses']} "
              f"client errors {r['client errors']}" + (f" failures {r['failures']}" if r["failures"] else ""))
    print(f"  total {len(answered)} answered, {len(set(stored) - earlier)} stored; stored but never delivered "
          f"(their request was cut off, e.g. inside the killed ingress): {len(set(stored) - set(answered) - earlier)}")
    assert not missing, f"{len(missing)} answered signals not stored: {report}"
    assert all(n == 1 for n in stored.values()), "a signal was stored twice"
    assert set(answered) <= set(stored)


def test_journal_outlives_the_app_and_is_replayed_on_redeploy(durable_db: dict) -> None:
    """Deleted while the database is down, the app's Analytics journals what the store could not take (and
    a graceful shutdown cannot flush it); redeployed with the database back, every journaled signal is stored
    once. This is the path a pod deletion during an outage takes."""
    ctx = durable_db
    ctx["proxy"].start()
    ctx["deploy"]()
    client = ctx["client"]
    wait_for("serving", lambda: client.post(f"/{APP}/generate_signal",
                                            json={"symbol": "SOL", "price": ctx["last_close"]["SOL"]}).status_code == 200)
    ctx["proxy"].stop()
    answered: list[str] = []

    def one_more() -> bool:
        r = client.post(f"/{APP}/generate_signal", json={"symbol": "BTC", "price": ctx["last_close"]["BTC"]})
        if r.status_code == 200 and r.json()["data"]["served_from_cache"]:
            answered.append(r.json()["signal_id"])
        return len(answered) >= 10

    wait_for("10 signals answered while the database is down", one_more)
    health = client.get(f"/{APP}/health").json()["stages"]["analytics"]
    assert health["pending_writes"] >= 10 and health["store_reachable"] is False, health
    assert not set(answered) & set(stored_signal_counts(ctx["database"]))
    ctx["remove"]()                                  # graceful shutdown with the database still down
    journals = list(Path(ctx["spill"]).glob("signals-*.jsonl"))
    journaled = sum(len(p.read_text().splitlines()) for p in journals)
    assert journaled >= len(answered), f"journals: {journals}"
    ctx["proxy"].start()
    ctx["deploy"]()                                  # a new Analytics replica replays the orphaned journal
    wait_for("every journaled signal stored", lambda: set(answered) <= set(stored_signal_counts(ctx["database"])), 60)
    stored = stored_signal_counts(ctx["database"])
    assert all(stored[s] == 1 for s in answered)
    wait_for("the journal consumed", lambda: not list(Path(ctx["spill"]).glob("signals-*.jsonl")), 30)
    print(f"\njournal replay: {len(answered)} answered during the outage, {journaled} journaled, all stored once")
