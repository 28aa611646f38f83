"""MySQL backend against a real MariaDB/MySQL server (see the database fixtures in tests/conftest.py):
the shared store contract, plus reconnection and unreachable-server behaviour."""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pymysql
import pytest

from serve_app.settings import StoreSettings
from serve_app.store import StoreError, StoreUnavailable, open_store
from serve_app.store.mysql_store import MySQLStore
from serve_app.store.schema import DATA_TABLES
from tests.polling import wait_for
from tests.conftest import mysql_admin_connection
from tests.store_contract import T0, StoreContract, candle_rows, create_version_1, make_signal, store_opener
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.mysql


def mysql_store(settings: StoreSettings, **overrides: object) -> MySQLStore:
    args = dict(host=settings.mysql_host, port=settings.mysql_port, user=settings.mysql_user,
                password=settings.mysql_password, database=settings.mysql_database)
    args.update(overrides)
    return MySQLStore(**args)  # type: ignore[arg-type]


@pytest.fixture
def store(mysql_store: MySQLStore) -> MySQLStore:
    """The contract's `store`: tests/conftest.py's emptied MySQL store."""
    assert isinstance(mysql_store, MySQLStore)
    return mysql_store


@pytest.fixture
def same_database(mysql_settings: StoreSettings, store: MySQLStore) -> Iterator:
    with store_opener(lambda exchange, quote: open_store(mysql_settings.with_source(exchange, quote))) as opener:
        yield opener


@pytest.fixture
def new_database(mysql_settings: StoreSettings) -> Iterator:
    """Stores on a database of this test's own, created empty by the first one opened, dropped afterwards."""
    settings = replace(mysql_settings, mysql_database=f"signalgen_test_{uuid.uuid4().hex[:12]}")
    try:
        with store_opener(lambda exchange, quote: open_store(settings.with_source(exchange, quote),
                                                             migrate=False)) as opener:
            yield opener
    finally:
        admin = mysql_admin_connection()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{settings.mysql_database}`")
        admin.close()


class TestMySQLContract(StoreContract):
    pass


def test_the_source_columns_have_no_default(store: MySQLStore, mysql_settings: StoreSettings) -> None:
    """Only the store writes the source, always explicitly: a row written without one is an error, never
    silently some default source's."""
    admin = mysql_admin_connection(mysql_settings.mysql_database)
    with admin.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, COLUMN_NAME, IS_NULLABLE, COLUMN_DEFAULT FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND COLUMN_NAME IN ('exchange', 'quote') ORDER BY 1, 2")
        columns = cur.fetchall()
        with pytest.raises(pymysql.err.OperationalError, match="exchange"):
            cur.execute("INSERT INTO candles (quote, symbol, timeframe, open_time, open, high, low, close, volume) "
                        "VALUES ('USDT', 'BTC', '1h', 0, 1, 1, 1, 1, 1)")
    admin.close()
    assert [(t, c, n) for t, c, n, _ in columns] == [
        ("candles", "exchange", "NO"), ("candles", "quote", "NO"),
        ("news_sentiment", "exchange", "NO"), ("news_sentiment", "quote", "NO")]
    assert all(d is None or d == "NULL" for *_, d in columns)


def kill_connection(connection_id: int) -> None:
    """KILL a server connection from a second, independent connection; returns once the server no longer
    lists it."""
    admin = mysql_admin_connection()
    try:
        with admin.cursor() as cur:
            cur.execute("KILL %s", (connection_id,))

        def gone() -> bool:
            with admin.cursor() as cur:
                cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = %s", (connection_id,))
                return cur.fetchone()[0] == 0

        wait_for(f"connection {connection_id} gone", gone, 10, every_s=0.02)
    finally:
        admin.close()


# ---- reconnection ------------------------------------------------------------------------------------

def test_reconnects_after_the_server_kills_the_connection(store: MySQLStore,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    store.upsert_candles("BTC", "1h", candle_rows(4))
    before = store.connection_id()
    kill_connection(before)
    assert len(store.load_candles("BTC", "1h")) == 4  # retried on a fresh connection
    assert "reconnecting" in caplog.text
    assert store.connection_id() != before


def test_write_after_kill_is_retried_once_and_stored_once(store: MySQLStore) -> None:
    kill_connection(store.connection_id())
    assert store.insert_signals([make_signal("after-kill", T0)]) == 1
    kill_connection(store.connection_id())
    assert store.insert_signals([make_signal("after-kill", T0)]) == 0
    assert store.count_signals() == 1


def test_statement_errors_are_not_mistaken_for_connection_loss(store: MySQLStore) -> None:
    before = store.connection_id()
    with pytest.raises(pymysql.err.IntegrityError):
        store.insert_signals([make_signal("bad", T0, symbol=None)])  # NOT NULL
    assert store.connection_id() == before


def test_lost_connection_that_cannot_be_restored_is_store_unavailable(mysql_settings: StoreSettings) -> None:
    proxy = TcpProxy((mysql_settings.mysql_host or "", mysql_settings.mysql_port))
    try:
        s = mysql_store(mysql_settings, host="127.0.0.1", port=proxy.port)
        s.ping()
    finally:
        proxy.close()
    # bounded by the store's connect timeout (5 s; how long it takes is not asserted here)
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{proxy.port}"):
        s.count_signals()
    s.close()


# ---- connecting ----------------------------------------------------------------------------------------

def test_unreachable_server_is_store_unavailable(mysql_settings: StoreSettings) -> None:
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
        mysql_store(mysql_settings, host="127.0.0.1", port=1)
    with pytest.raises(StoreUnavailable, match="127.0.0.1:1"):
        open_store(StoreSettings.from_env({"MYSQL_HOST": "127.0.0.1", "MYSQL_PORT": "1"}))


def test_creates_a_missing_database(mysql_settings: StoreSettings) -> None:
    name = f"signalgen_test_{uuid.uuid4().hex[:12]}"
    try:
        with mysql_store(mysql_settings, database=name) as s:
            s.migrate()
            s.upsert_candles("BTC", "1h", candle_rows(2))
            assert s.describe().endswith(f":{mysql_settings.mysql_port}/{name}")
        with mysql_store(mysql_settings, database=name, create_database=False) as again:
            assert len(again.load_candles("BTC", "1h")) == 2
    finally:
        admin = mysql_admin_connection()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def test_missing_database_without_create_is_store_unavailable(mysql_settings: StoreSettings) -> None:
    with pytest.raises(StoreUnavailable, match="signalgen_test_does_not_exist"):
        mysql_store(mysql_settings, database="signalgen_test_does_not_exist", create_database=False)


@pytest.mark.parametrize("name", ["bad`name", "x; DROP DATABASE mysql", "", "a" * 65, "dash-name"])
def test_database_name_is_validated_before_connecting(mysql_settings: StoreSettings, name: str) -> None:
    with pytest.raises(ValueError, match="invalid MySQL database name"):
        mysql_store(mysql_settings, database=name)


def test_tables_use_utf8mb4(store: MySQLStore, mysql_settings: StoreSettings) -> None:
    admin = mysql_admin_connection()
    with admin.cursor() as cur:
        cur.execute("SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
                    (mysql_settings.mysql_database,))
        collations = dict(cur.fetchall())
    admin.close()
    assert set(collations) >= {t.name for t in DATA_TABLES} | {"schema_migrations"}
    assert all(c.startswith("utf8mb4") for c in collations.values())


@contextmanager
def limited_user(db: str, grants: list[str]) -> Iterator[tuple[str, str]]:
    """A MySQL user (user, password) with only these grants (`SELECT ON {db}.candles`, ...), dropped afterwards."""
    import secrets

    user = f"sg_ro_{uuid.uuid4().hex[:8]}"
    password = secrets.token_hex(16)
    admin = mysql_admin_connection()
    hosts = ("localhost", "127.0.0.1", "%")
    with admin.cursor() as cur:
        for host in hosts:
            cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
            for grant in grants:
                cur.execute(f"GRANT {grant.format(db=db)} TO %s@%s", (user, host))
    try:
        yield user, password
    finally:
        with admin.cursor() as cur:
            for host in hosts:
                cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
        admin.close()


# docs/security.md: SELECT on market data and schema_migrations, SELECT + INSERT on signals and outcomes
RUNTIME_GRANTS = ["SELECT ON `{db}`.candles", "SELECT ON `{db}`.news_sentiment", "SELECT ON `{db}`.schema_migrations",
                  "SELECT, INSERT ON `{db}`.signals", "SELECT, INSERT ON `{db}`.signal_outcomes"]


def test_the_service_runs_with_the_least_privilege_user_from_the_readme(mysql_settings: StoreSettings,
                                                                       mysql_store: MySQLStore) -> None:
    """The documented grants (docs/security.md: SELECT on market data and schema_migrations, SELECT + INSERT on signals and
    outcomes) suffice for everything a serving replica does, and nothing more is allowed."""
    from serve_app.core.analytics import score_pending

    mysql_store.upsert_candles("BTC", "1h", candle_rows(10))  # the admin migrated (fixture) and loads market data
    db = mysql_settings.mysql_database
    with limited_user(db, RUNTIME_GRANTS) as (user, password):
        limited = replace(mysql_settings, mysql_user=user, mysql_password=password)
        with open_store(limited) as store:  # opening checks the schema version with reads only
            assert len(store.load_candles("BTC", "1h")) == 10
            records = [make_signal(f"lp-{i}", T0 + i * 3_600_000) for i in range(3)]
            assert store.insert_signals(records) == 3
            assert store.insert_signals(records) == 0  # idempotent without UPDATE
            assert store.count_signals() == 3
            assert score_pending(store, "1h", 2, now_ms=T0 + 100 * 3_600_000) == 3
            assert score_pending(store, "1h", 2, now_ms=T0 + 100 * 3_600_000) == 0
            assert all(r["realized_return"] is not None for r in store.load_performance_rows())
            with pytest.raises(pymysql.err.OperationalError, match="denied"):  # market data is read-only
                store.upsert_candles("BTC", "1h", candle_rows(1))
            with pytest.raises(pymysql.err.OperationalError, match="denied"):
                store._q("DELETE FROM signals", mode="execute")


def test_a_user_who_may_not_migrate_is_told_to_run_migrate_as_the_admin(new_database) -> None:
    """A database an upgrade has not migrated yet (here: at version 1): the least-privilege user's store cannot
    apply the migration, and says so, instead of a bare driver error; the database is left as it was."""
    old = new_database("binance", "USDT")
    create_version_1(old)
    with limited_user(old.database, RUNTIME_GRANTS) as (user, password):
        limited = StoreSettings(mysql_host=old.host, mysql_port=old.port, mysql_user=user, mysql_password=password,
                                mysql_database=old.database, sqlite_path=Path("unused.sqlite"))
        with pytest.raises(StoreError, match=r"schema migration 2 \(candles and news_sentiment carry their exchange "
                                             r"and quote currency\) failed: OperationalError: .*denied.*run `signalgen "
                                             r"store migrate` as the database admin"):
            open_store(limited)
    assert old.applied_versions() == [1] and "exchange" not in old.table_columns("candles")
