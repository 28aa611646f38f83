"""Shared pytest fixtures."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pymysql
import pytest

from serve_app.settings import StoreSettings

# --- a clean environment for the whole session ---
# The service reads these; a developer's shell may export them (an API key, a MySQL host, a running
# cluster's address). Ray clusters the tests start inherit this process's environment, so they go first.
SCRUBBED = ("MODEL_DIR", "RAY_ADDRESS", "RAY_DASHBOARD_ADDRESS", "LOG_LEVEL")
for _name in [k for k in os.environ if k in SCRUBBED or k.startswith(("SIGNAL_", "SIGNALGEN_"))
              or (k.startswith("MYSQL_") and not k.startswith("MYSQL_TEST_"))]:
    del os.environ[_name]

def skip_or_fail(message: str) -> None:
    """A missing prerequisite: skip when run by hand, fail under CI (where everything must run)."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --- database fixtures ---
# A real MariaDB/MySQL server (default root@127.0.0.1:3306 with an empty password; override with
# MYSQL_TEST_HOST / MYSQL_TEST_PORT / MYSQL_TEST_USER / MYSQL_TEST_PASSWORD). Each test session gets
# its own throw-away database. Unreachable server: skip locally, fail when CI is set.

MYSQL_TEST_HOST = os.environ.get("MYSQL_TEST_HOST", "127.0.0.1")
MYSQL_TEST_PORT = int(os.environ.get("MYSQL_TEST_PORT", "3306"))
MYSQL_TEST_USER = os.environ.get("MYSQL_TEST_USER", "root")
MYSQL_TEST_PASSWORD = os.environ.get("MYSQL_TEST_PASSWORD", "")


def mysql_admin_connection(database: str | None = None) -> pymysql.connections.Connection:
    """A plain pymysql connection to the test server (for test setup, not for the code under test)."""
    return pymysql.connect(host=MYSQL_TEST_HOST, port=MYSQL_TEST_PORT, user=MYSQL_TEST_USER,
                           password=MYSQL_TEST_PASSWORD, database=database, charset="utf8mb4",
                           autocommit=True, connect_timeout=3, read_timeout=30, write_timeout=30)


def stored_signal_counts(database: str) -> dict[str, int]:
    """signal_id → rows in `signals`, read straight from the test server (not through a proxy)."""
    admin = mysql_admin_connection(database)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT signal_id, COUNT(*) FROM signals GROUP BY signal_id")
            return {sid: int(n) for sid, n in cur.fetchall()}
    finally:
        admin.close()


@pytest.fixture(scope="session")
def mysql_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSettings]:
    """StoreSettings for a fresh, uniquely named database (signalgen_test_<hex>), dropped afterwards."""
    try:
        admin = mysql_admin_connection()
    except pymysql.err.MySQLError as exc:
        skip_or_fail(f"MariaDB/MySQL not reachable at {MYSQL_TEST_HOST}:{MYSQL_TEST_PORT}: {exc}")
    name = f"signalgen_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield StoreSettings(mysql_host=MYSQL_TEST_HOST, mysql_port=MYSQL_TEST_PORT, mysql_user=MYSQL_TEST_USER,
                            mysql_password=MYSQL_TEST_PASSWORD, mysql_database=name,
                            sqlite_path=tmp_path_factory.mktemp("unused") / "unused.sqlite")
    finally:
        admin.ping(reconnect=True)
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture
def mysql_store(mysql_settings: StoreSettings):
    """A migrated MySQL store on the session's test database, every data table emptied first."""
    from serve_app.store import open_store
    from serve_app.store.schema import DATA_TABLES

    with open_store(mysql_settings) as store:
        admin = mysql_admin_connection(mysql_settings.mysql_database)
        with admin.cursor() as cur:
            for table in DATA_TABLES:
                cur.execute(f"TRUNCATE TABLE {table.name}")
        admin.close()
        yield store
