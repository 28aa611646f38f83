"""Database faults against a real MariaDB, through a TCP proxy the test takes down and brings back.

A third copy of the application (/dbfault, tiny CPU reservations, candle refresh every second) is
deployed next to the session's `signals` and `nodb` apps, with its store at 127.0.0.1:<proxy port> on a
database of its own seeded with BTC/ETH/SOL. The proxy is down when the app starts. The tests, in order:

1. the app starts while the database is down: /health is 503 naming the unreachable store and
   /generate_signal is 503 with a clear message (host:port included);
2. the database comes up: the same replicas (no restart) start serving signals and report healthy;
3. connections are cut, then the database drops mid-run: signals keep being served from the candle
   cache and say so (`data.store_reachable: false`, `data.served_from_cache: true`, `cache_age_s`), the
   analytics buffer holds them and /health says why; when the database is back every signal accepted
   (each 200's signal_id) is in the `signals` table exactly once, and the app reports healthy again.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Iterator

import httpx
import pytest

from serve_app.cluster import applications, deploy, wait_deleted
from serve_app.settings import StoreSettings
from tests.conftest import mysql_admin_connection
from tests.integration.conftest import STORE_DOWN_APP
from tests.ray_helpers import serve_config_for_test
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.mysql

APP = "dbfault"
SYMBOLS = ["BTC", "ETH", "SOL"]


def _config(http_port: int, env: dict[str, str], dbfault_env: dict[str, str] | None) -> dict:
    """The session's two apps exactly as tests/integration/conftest.py deploys them (so a PUT leaves them
    running untouched), plus /dbfault when `dbfault_env` is given."""
    extra = dict(STORE_DOWN_APP)
    if dbfault_env is not None:
        extra[APP] = dbfault_env
    return serve_config_for_test(http_port, env, overrides={"refresh_interval_s": 2}, extra_apps=extra,
                                 extra_app_overrides={APP: {"refresh_interval_s": 1}},
                                 extra_app_num_cpus={APP: 0.01})


def _replica_ids(dashboard: str) -> set[str]:
    deployments = applications(dashboard)["applications"][APP]["deployments"]
    return {rep["replica_id"] for d in deployments.values() for rep in d.get("replicas", [])
            if rep.get("state") == "RUNNING"}


def _wait(what: str, check: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")


@pytest.fixture(scope="module")
def dbfault(signal_app: dict, mysql_settings: StoreSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from serve_app.store import open_store
    from serve_app.data.sample import seed_store

    database = f"signalgen_test_dbfault_{uuid.uuid4().hex[:10]}"
    settings = StoreSettings(mysql_host=mysql_settings.mysql_host, mysql_port=mysql_settings.mysql_port,
                             mysql_user=mysql_settings.mysql_user, mysql_password=mysql_settings.mysql_password,
                             mysql_database=database, sqlite_path=mysql_settings.sqlite_path)
    store = open_store(settings)
    try:
        seed_store(store, symbols=SYMBOLS, n=600)
        last_close = {s: float(store.load_candles(s, "1h", limit=1).close[-1]) for s in SYMBOLS}
    finally:
        store.close()

    proxy = TcpProxy((mysql_settings.mysql_host or "127.0.0.1", mysql_settings.mysql_port), start=False)
    http_port = int(signal_app["url"].rsplit(":", 1)[1])
    env = signal_app["env"]
    app_env = {"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": str(proxy.port), "MYSQL_DATABASE": database,
               "MYSQL_USER": settings.mysql_user, "MYSQL_PASSWORD": settings.mysql_password,
               "SIGNAL_SPILL_DIR": str(tmp_path_factory.mktemp("dbfault-spill"))}
    try:
        status = deploy(signal_app["dashboard"], _config(http_port, env, app_env), timeout_s=180)
        yield {"client": signal_app["client"], "proxy": proxy, "database": database, "status": status,
               "dashboard": signal_app["dashboard"], "last_close": last_close,
               "replicas": _replica_ids(signal_app["dashboard"]), "accepted": []}
    finally:
        try:
            proxy.start()  # let the app's Analytics flush whatever it still holds before it is deleted
            deploy(signal_app["dashboard"], _config(http_port, env, None), timeout_s=180)
            wait_deleted(signal_app["dashboard"], [APP], timeout_s=180)  # later tests see the session's apps only
        finally:
            proxy.close()
            admin = mysql_admin_connection()
            with admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
            admin.close()


def _signal(ctx: dict, symbol: str = "SOL") -> httpx.Response:
    r = ctx["client"].post(f"/{APP}/generate_signal", json={"symbol": symbol, "price": ctx["last_close"][symbol]})
    if r.status_code == 200:
        ctx["accepted"].append(r.json()["signal_id"])
    return r


def _stored(database: str) -> dict[str, int]:
    """signal_id → number of rows, read straight from MariaDB (not through the proxy)."""
    admin = mysql_admin_connection(database)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT signal_id, COUNT(*) FROM signals GROUP BY signal_id")
            return {sid: int(n) for sid, n in cur.fetchall()}
    finally:
        admin.close()


def _health(ctx: dict) -> tuple[int, dict]:
    h = ctx["client"].get(f"/{APP}/health")
    return h.status_code, h.json()


def test_starts_while_the_database_is_down(dbfault: dict) -> None:
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


def test_recovers_when_the_database_comes_up(dbfault: dict) -> None:
    dbfault["proxy"].start()
    r = _wait("a 200 once the database is up", lambda: (lambda r: r if r.status_code == 200 else None)(_signal(dbfault)))
    data = r.json()["data"]
    assert data["store_reachable"] is True and data["served_from_cache"] is False
    assert data["candles_cached"] > 0
    _wait("/health 200", lambda: _health(dbfault)[0] == 200)
    for sym in SYMBOLS:
        assert _signal(dbfault, sym).status_code == 200
    assert _replica_ids(dbfault["dashboard"]) >= dbfault["replicas"], "a replica was restarted"


def test_drop_mid_run_serves_from_cache_and_loses_no_signal(dbfault: dict) -> None:
    proxy, database = dbfault["proxy"], dbfault["database"]
    proxy.start()
    _wait("serving", lambda: _signal(dbfault).status_code == 200)

    # 1. every open connection is cut (server restart, network blip): the store reconnects transparently
    proxy.cut()
    for sym in SYMBOLS * 2:
        assert _signal(dbfault, sym).status_code == 200
    _wait("signals before the outage written", lambda: set(dbfault["accepted"]) <= set(_stored(database)))

    # 2. the database goes away mid-run
    proxy.stop()
    r = _wait("a signal marked served_from_cache",
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
    code, health = _wait("/health naming the analytics backlog",
                         lambda: (lambda h: h if h[1]["stages"]["analytics"]["pending_writes"] > 0 else None)(
                             _health(dbfault)))
    assert code == 503 and health["stages"]["analytics"]["store_reachable"] is False, health
    assert health["stages"]["features"]["store_reachable"] is False
    assert any(reason.startswith("analytics:") and "buffered" in reason for reason in health["reasons"])
    assert not set(during) & set(_stored(database)), "written while the database was down?"

    # 3. back: the same replicas catch up; every accepted signal is stored exactly once
    proxy.start()
    accepted = dbfault["accepted"]
    _wait("every accepted signal written", lambda: set(accepted) <= set(_stored(database)), timeout_s=40)
    stored = _stored(database)
    assert len(accepted) == len(set(accepted))
    assert set(stored) == set(accepted), {"missing": set(accepted) - set(stored), "extra": set(stored) - set(accepted)}
    assert all(n == 1 for n in stored.values()), "a signal was written twice"

    r = _wait("signals from a refreshed cache",
              lambda: (lambda r: r if r.status_code == 200 and r.json()["data"]["store_reachable"] else None)(
                  _signal(dbfault)))
    assert r.json()["data"]["served_from_cache"] is False
    _wait("/health 200 again", lambda: _health(dbfault)[0] == 200)
    _wait("the last signal written", lambda: set(accepted) <= set(_stored(database)))
    assert set(_stored(database)) == set(accepted)
    assert _replica_ids(dbfault["dashboard"]) >= dbfault["replicas"], "a replica was restarted"
