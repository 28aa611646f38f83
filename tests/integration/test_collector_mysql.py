"""`signalgen collect` into a real MariaDB/MySQL store (tests/conftest.py's `mysql_store` database, emptied
first; no Ray): the scenarios of tests/unit/test_collector.py - real HTTP to the fake Binance, ccxt, the
command - with the store on this backend."""
from __future__ import annotations

import pytest

from serve_app.settings import StoreSettings
from serve_app.store import Store
from tests.unit.test_collector import CollectorScenarios

pytestmark = pytest.mark.mysql


@pytest.fixture
def store_env(mysql_settings: StoreSettings, mysql_store: Store) -> dict[str, str]:
    return {"MYSQL_HOST": mysql_settings.mysql_host or "", "MYSQL_PORT": str(mysql_settings.mysql_port),
            "MYSQL_USER": mysql_settings.mysql_user, "MYSQL_PASSWORD": mysql_settings.mysql_password,
            "MYSQL_DATABASE": mysql_settings.mysql_database}


class TestCollectorMySQL(CollectorScenarios):
    pass
