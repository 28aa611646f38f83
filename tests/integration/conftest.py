"""Ray fixtures: one real local Ray cluster per session, the real serve config deployed over the
dashboard's REST API (as KubeRay does), the embedded store seeded with the sample data and a trained model."""
from __future__ import annotations

from typing import Iterator

import httpx
import pytest

from serve_app.cluster import deploy, free_port
from tests.ray_helpers import serve_config_for_test


# A second copy of the application, under /nodb, whose store is a MySQL server that refuses connections.
STORE_DOWN_APP = {"nodb": {"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": "1"}}


@pytest.fixture(scope="session")
def sample_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A seeded SQLite store and a trained default model in a temp dir, as the replicas' environment."""
    from serve_app.training.train import train
    from serve_app.settings import StoreSettings
    from serve_app.store import open_store
    from serve_app.data.sample import seed_store

    root = tmp_path_factory.mktemp("signalgen")
    env = {"SIGNAL_DB_PATH": str(root / "crypto_prices.sqlite"), "MODEL_DIR": str(root / "models"),
           "MYSQL_HOST": ""}
    store = open_store(StoreSettings.from_env(env))
    try:
        seed_store(store)
        train(store, root=env["MODEL_DIR"], n_estimators=60)
    finally:
        store.close()
    return env


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
