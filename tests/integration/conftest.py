"""Ray fixtures: one real local Ray cluster per session, the real serve config deployed over the
dashboard's REST API (as KubeRay does), the embedded store seeded with the sample data and a trained model."""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from serve_app.cluster import deploy, free_port
from serve_app.settings import StoreSettings
from tests.conftest import mysql_admin_connection
from tests.ray_helpers import serve_config_for_test
from tests.tcp_proxy import TcpProxy


# A second copy of the application, under /nodb, whose store is a MySQL server that refuses connections.
STORE_DOWN_APP = {"nodb": {"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": "1"}}


@pytest.fixture(scope="session")
def sample_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A seeded SQLite store and a trained default model in a temp dir, as the replicas' environment."""
    from bench.kuberay_local import sample_environment

    return sample_environment(tmp_path_factory.mktemp("signalgen"))


@pytest.fixture(scope="session")
def ray_dashboard() -> Iterator[str]:
    import ray
    from ray import serve

    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
             configure_logging=False, log_to_driver=False)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def signal_app(ray_dashboard: str, sample_env: dict[str, str]) -> Iterator[dict]:
    """The whole seven-deployment application from configs/serve_config.yaml, serving over HTTP."""
    http_port = free_port()
    config = serve_config_for_test(http_port, sample_env, overrides={"refresh_interval_s": 2},
                                   extra_apps=STORE_DOWN_APP)
    status = deploy(ray_dashboard, config)
    base = f"http://127.0.0.1:{http_port}"
    with httpx.Client(base_url=base, timeout=30) as client:
        yield {"url": base, "client": client, "env": sample_env, "status": status, "dashboard": ray_dashboard}


def session_apps_config(http_port: int, env: dict[str, str], name: str, app_env: dict[str, str] | None,
                        args: dict | None = None) -> dict:
    """The serve config of the session's two apps exactly as `signal_app` deploys them (so a PUT leaves them
    running untouched), plus, when `app_env` is given, a third copy under /<name> with that environment, tiny
    CPU reservations, a candle refresh every second and `args` over its app args (top-level keys replace the
    config's). A PUT without it deletes that third app."""
    extra = dict(STORE_DOWN_APP)
    if app_env is not None:
        extra[name] = app_env
    return serve_config_for_test(http_port, env, overrides={"refresh_interval_s": 2}, extra_apps=extra,
                                 extra_app_overrides={name: {"refresh_interval_s": 1, **(args or {})}},
                                 extra_app_num_cpus={name: 0.01})


@contextmanager
def proxied_database(mysql_settings: StoreSettings, name: str, symbols: list[str], spill_dir: Path,
                     proxy_up: bool = True) -> Iterator[dict]:
    """A MariaDB database of its own, seeded with the synthetic sample for `symbols`, behind a TCP proxy the
    test can cut (tests/tcp_proxy.py); `app_env` is the environment of an app that uses it through the proxy
    with its own journal directory. The database is dropped afterwards."""
    from serve_app.data.sample import seed_store
    from serve_app.store import open_store

    database = f"signalgen_test_{name}_{uuid.uuid4().hex[:10]}"
    settings = StoreSettings(mysql_host=mysql_settings.mysql_host, mysql_port=mysql_settings.mysql_port,
                             mysql_user=mysql_settings.mysql_user, mysql_password=mysql_settings.mysql_password,
                             mysql_database=database, sqlite_path=mysql_settings.sqlite_path)
    with open_store(settings) as store:
        seed_store(store, symbols=symbols, n=600)
        last_close = {s: float(store.load_candles(s, "1h", limit=1).close[-1]) for s in symbols}
    proxy = TcpProxy((mysql_settings.mysql_host or "127.0.0.1", mysql_settings.mysql_port), start=proxy_up)
    app_env = {"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": str(proxy.port), "MYSQL_DATABASE": database,
               "MYSQL_USER": settings.mysql_user, "MYSQL_PASSWORD": settings.mysql_password,
               "SIGNAL_SPILL_DIR": str(spill_dir)}
    try:
        yield {"database": database, "proxy": proxy, "last_close": last_close, "app_env": app_env}
    finally:
        proxy.close()
        admin = mysql_admin_connection()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
        admin.close()
