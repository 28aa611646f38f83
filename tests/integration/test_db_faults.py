"""Database faults against a real MariaDB, through a TCP proxy the test takes down and brings back.

A third copy of the application (/dbfault, tiny CPU reservations, candle refresh every second) is
deployed next to the session's `signals` and `nodb` apps, with its store at 127.0.0.1:<proxy port> on a
database of its own seeded with BTC/ETH/SOL. The proxy is down when the app starts. The tests, in order:

1. the app starts while the database is down: /health is 503 naming the unreachable store and
   /generate_signal is 503 with a clear message (host:port included);
2. the database comes up: the same replicas (no restart) start serving signals and report healthy;
3. connections are cut, then the database drops mid-run: signals keep being served from the candle
   cache and say so (`data.store_reachable: false`, `data.served_from_cache: true`, `cache_age_s`), the
   analytics journal holds them and /health says why; when the database is back every signal accepted
   (each 200's signal_id) is in the `signals` table exactly once, and the app reports healthy again.
"""
from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from serve_app.cluster import applications, deploy, wait_deleted
from serve_app.settings import StoreSettings
from tests.conftest import stored_signal_counts
from tests.integration.conftest import proxied_database, session_apps_config
from tests.polling import wait_for

# A scenario in steps: the fixture deploys /dbfault with the database down, the first test sees that start and
# brings the database up, the next cuts it mid-run. The module's place in the suite is random; its order is not.
pytestmark = [pytest.mark.mysql, pytest.mark.random_order(disabled=True)]

APP = "dbfault"
SYMBOLS = ["BTC", "ETH", "SOL"]


def _config(http_port: int, env: dict[str, str], dbfault_env: dict[str, str] | None) -> dict:
    """The session's two apps, plus /dbfault when `dbfault_env` is given."""
    return session_apps_config(http_port, env, APP, dbfault_env)


def _replica_ids(dashboard: str) -> set[str]:
    deployments = applications(dashboard)["applications"][APP]["deployments"]
    return {rep["replica_id"] for d in deployments.values() for rep in d.get("replicas", [])
            if rep.get("state") == "RUNNING"}


@pytest.fixture(scope="module")
def dbfault(signal_app: dict, mysql_settings: StoreSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    http_port = int(signal_app["url"].rsplit(":", 1)[1])
    env = signal_app["env"]
    with proxied_database(mysql_settings, "dbfault", SYMBOLS, tmp_path_factory.mktemp("dbfault-spill"),
                          proxy_up=False) as db:
        proxy = db["proxy"]
        try:
            status = deploy(signal_app["dashboard"], _config(http_port, env, db["app_env"]), timeout_s=180)
            yield {"client": signal_app["client"], "proxy": proxy, "database": db["database"], "status": status,
                   "dashboard": signal_app["dashboard"], "last_close": db["last_close"],
                   "replicas": _replica_ids(signal_app["dashboard"]), "accepted": []}
        finally:
            proxy.start()  # the app's Analytics stores what it journaled before it is deleted
            deploy(signal_app["dashboard"], _config(http_port, env, None), timeout_s=180)
            wait_deleted(signal_app["dashboard"], [APP], timeout_s=180)  # later tests see the session's apps only


def _signal(ctx: dict, symbol: str = "SOL") -> httpx.Response:
    r = ctx["client"].post(f"/{APP}/generate_signal", json={"symbol": symbol, "price": ctx["last_close"][symbol]})
    if r.status_code == 200:
        ctx["accepted"].append(r.json()["signal_id"])
    return r


def _health(ctx: dict) -> tuple[int, dict]:
    h = ctx["client"].get(f"/{APP}/health")
    return h.status_code, h.json()


def test_starts_while_the_database_is_down_then_recovers(dbfault: dict) -> None:
    assert not dbfault["proxy"].up
    assert dbfault["status"]["applications"][APP]["status"] == "RUNNING"
    where = f"127.0.0.1:{dbfault['proxy'].port}"

    r = _signal(dbfault)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "store_unavailable"
    assert "unreachable" in body["detail"] and where in body["detail"], body
    assert "Traceback" not in r.text

    code, health = _health(dbfault)
    assert code == 503 and health["status"] == "unavailable"
    features = health["stages"]["features"]
    assert features["store_reachable"] is False and where in features["store_error"]
    assert any(reason.startswith("features:") and "no candles cached" in reason for reason in health["reasons"])
    # the session's apps are untouched by the third one
    assert dbfault["client"].post("/generate_signal", json={"symbol": "SOL", "price": 100.0}).status_code == 200

    # the database comes up: the same replicas recover without a restart
    dbfault["proxy"].start()
    r = wait_for("a 200 once the database is up", lambda: (lambda r: r if r.status_code == 200 else None)(_signal(dbfault)))
    data = r.json()["data"]
    assert data["store_reachable"] is True and data["served_from_cache"] is False
    assert data["candles_cached"] > 0
    wait_for("/health 200", lambda: _health(dbfault)[0] == 200)
    for sym in SYMBOLS:
        assert _signal(dbfault, sym).status_code == 200
    assert _replica_ids(dbfault["dashboard"]) >= dbfault["replicas"], "a replica was restarted"


def test_drop_mid_run_serves_from_cache_and_loses_no_signal(dbfault: dict) -> None:
    proxy, database = dbfault["proxy"], dbfault["database"]
    proxy.start()
    wait_for("serving", lambda: _signal(dbfault).status_code == 200)

    # 1. every open connection is cut (server restart, network blip): the store reconnects transparently
    proxy.cut()
    for sym in SYMBOLS * 2:
        assert _signal(dbfault, sym).status_code == 200
    wait_for("signals before the outage written", lambda: set(dbfault["accepted"]) <= set(stored_signal_counts(database)))

    # 2. the database goes away mid-run
    proxy.stop()
    r = wait_for("a signal marked served_from_cache",
              lambda: (lambda r: r if r.status_code == 200 and r.json()["data"]["served_from_cache"] else None)(
                  _signal(dbfault)))
    during: list[str] = []
    for sym in SYMBOLS * 5:
        r = _signal(dbfault, sym)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert data["store_reachable"] is False and data["served_from_cache"] is True, data
        assert data["cache_age_s"] is not None and data["cache_age_s"] > 0
        during.append(r.json()["signal_id"])
    code, health = wait_for("/health naming the analytics backlog",
                         lambda: (lambda h: h if h[1]["stages"]["analytics"]["pending_writes"] > 0 else None)(
                             _health(dbfault)))
    assert code == 503 and health["stages"]["analytics"]["store_reachable"] is False, health
    assert health["stages"]["features"]["store_reachable"] is False
    assert any(reason.startswith("analytics:") and "journaled" in reason for reason in health["reasons"])
    assert not set(during) & set(stored_signal_counts(database)), "written while the database was down?"

    # 3. back: the same replicas catch up; every accepted signal is stored exactly once
    proxy.start()
    accepted = dbfault["accepted"]
    wait_for("every accepted signal written", lambda: set(accepted) <= set(stored_signal_counts(database)), timeout_s=40)
    stored = stored_signal_counts(database)
    assert len(accepted) == len(set(accepted))
    assert set(stored) == set(accepted), {"missing": set(accepted) - set(stored), "extra": set(stored) - set(accepted)}
    assert all(n == 1 for n in stored.values()), "a signal was written twice"

    r = wait_for("signals from a refreshed cache",
              lambda: (lambda r: r if r.status_code == 200 and r.json()["data"]["store_reachable"] else None)(
                  _signal(dbfault)))
    assert r.json()["data"]["served_from_cache"] is False
    wait_for("/health 200 again", lambda: _health(dbfault)[0] == 200)
    wait_for("the last signal written", lambda: set(accepted) <= set(stored_signal_counts(database)))
    assert set(stored_signal_counts(database)) == set(accepted)
    assert _replica_ids(dbfault["dashboard"]) >= dbfault["replicas"], "a replica was restarted"
