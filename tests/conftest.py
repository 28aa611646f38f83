"""Shared pytest fixtures."""
from __future__ import annotations

import os
import uuid
from typing import Iterator

import pymysql
import pytest

from serve_app.settings import StoreSettings

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


@pytest.fixture(scope="session")
def mysql_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSettings]:
    """StoreSettings for a fresh, uniquely named database (signalgen_test_<hex>), dropped afterwards."""
    try:
        admin = mysql_admin_connection()
    except pymysql.err.MySQLError as exc:
        message = f"MariaDB/MySQL not reachable at {MYSQL_TEST_HOST}:{MYSQL_TEST_PORT}: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
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
