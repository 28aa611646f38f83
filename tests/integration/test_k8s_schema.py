"""The schema as kuberay/ applies it, on a real MariaDB, in the documented order (docs/security.md#least-privilege-
mysql-user, docs/kubernetes.md): the admin, the migration Job, the grants of the service's and the collector's
users, the collector, the service - then an upgrade that brings a migration.

The migration Job and the collector run as the kubelet would run them: their command and arguments, and their
environment resolved from the rendered manifest (`kubectl kustomize kuberay/`) - the ConfigMap's values (with
MYSQL_HOST, MYSQL_PORT and MYSQL_DATABASE pointing at the test's server and database) and their Secrets' keys
(signalgen-mysql-admin, signalgen-mysql-collector) mapped to users created with the documented grants. The
grants are read from docs/security.md's SQL, so the test runs with exactly what the page tells a DBA to grant.

In order (one scenario; the steps depend on each other):
1. the previous release's Job (this code without its newest migration, through a sitecustomize on PYTHONPATH:
   the same command, another image) creates the database and its schema; the documented grants follow; this
   release's Job applies the newest migration alone, keeps the grants (it alters tables), and is a no-op when
   run again;
2. the collector CronJob's exact command (its environment resolved the same way, SIGNAL_EXCHANGE_URL pointing
   at a fake Binance over real HTTP, tests/fake_exchange.py) fills the store as the collector's user, whose
   documented grants allow market data and nothing else;
3. the whole application, deployed next to the session's apps on the local Ray cluster, serves signals and
   stores them as the service's user with exactly its documented grants;
4. a migration added on top (a test-only one, registered the same way) is applied by running the same Job
   again - that migration only - and the running application and the service's user keep working.
"""
from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pymysql
import pytest

from serve_app.cluster import deploy, wait_deleted
from serve_app.settings import StoreSettings
from serve_app.store import open_store
from serve_app.store.schema import MIGRATIONS
from tests import k8s_helpers as h
from tests.conftest import MYSQL_TEST_HOST, MYSQL_TEST_PORT, mysql_admin_connection, skip_or_fail, stored_signal_counts
from tests.fake_exchange import FakeBinance
from tests.integration.conftest import session_apps_config
from tests.polling import wait_for

pytestmark = [pytest.mark.mysql, pytest.mark.integration, pytest.mark.random_order(disabled=True)]

APP = "k8sschema"
SYMBOLS = ["BTC", "ETH", "SOL"]
SECURITY_DOC = h.REPO / "docs" / "security.md"
VENV_BIN = Path(sys.executable).parent           # where `signalgen` is, as on the image's PATH
HOSTS = ("localhost", "127.0.0.1", "%")           # every host a TCP connection from here may match on MariaDB
GRANT = re.compile(r"^GRANT (?P<privileges>[A-Z, ]+) ON crypto_prices\.(?P<table>\w+|\*) TO '(?P<user>[^']+)'@'%';$",
                   re.M)
# the documented users (docs/security.md) and the Secrets kuberay/ gives them to
ADMIN, RUNTIME, COLLECTOR = "signalgen-admin", "signals", "signalgen-collector"


def documented_grants() -> dict[str, list[tuple[str, str]]]:
    """{user: [(privileges, table or *)]} of the GRANT statements in docs/security.md."""
    grants: dict[str, list[tuple[str, str]]] = {}
    for m in GRANT.finditer(SECURITY_DOC.read_text(encoding="utf-8")):
        grants.setdefault(m["user"], []).append((m["privileges"], m["table"]))
    return grants


def test_the_documented_grants_are_parsed() -> None:
    grants = documented_grants()
    assert set(grants) == {ADMIN, RUNTIME, COLLECTOR}
    assert grants[ADMIN] == [("ALL PRIVILEGES", "*")]
    assert ("SELECT, INSERT", "signals") in grants[RUNTIME] and ("SELECT", "candles") in grants[RUNTIME]
    assert ("SELECT, INSERT, UPDATE", "candles") in grants[COLLECTOR]


def container_env(container: dict, configmaps: dict[str, dict], secret_data: dict[str, dict]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom in order, then env, which wins. A reference to
    a ConfigMap or Secret key that is not given is a KeyError (the manifest needs something the test lacks)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]])
        else:
            env.update(secret_data[src["secretRef"]["name"]])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret_data[ref["name"]][ref["key"]]
        else:
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]][ref["key"]]
    return env


class Database:
    """The test's database and its three users (unique names, the documented grants), all dropped afterwards."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:10]
        self.name = f"signalgen_test_k8s_{tag}"
        self.users = {ADMIN: f"sg_admin_{tag}", RUNTIME: f"sg_signals_{tag}", COLLECTOR: f"sg_collect_{tag}"}
        self.passwords = {role: secrets.token_hex(16) for role in self.users}
        self.admin = mysql_admin_connection()

    def create_user(self, role: str) -> None:
        """CREATE USER with the grants docs/security.md gives `role`, on this database."""
        user, password = self.users[role], self.passwords[role]
        with self.admin.cursor() as cur:
            for host in HOSTS:
                cur.execute("CREATE USER %s@%s IDENTIFIED BY %s", (user, host, password))
                for privileges, table in documented_grants()[role]:
                    on = f"`{self.name}`.*" if table == "*" else f"`{self.name}`.`{table}`"
                    cur.execute(f"GRANT {privileges} ON {on} TO %s@%s", (user, host))

    def grants(self, role: str) -> set[str]:
        with self.admin.cursor() as cur:
            cur.execute("SHOW GRANTS FOR %s@'%%'", (self.users[role],))
            return {row[0] for row in cur.fetchall()}

    def migrations(self) -> dict[int, int]:
        """version -> applied_at_ms of schema_migrations."""
        with self.admin.cursor() as cur:
            cur.execute(f"SELECT version, applied_at_ms FROM `{self.name}`.schema_migrations")
            return {int(v): int(at) for v, at in cur.fetchall()}

    def tables(self) -> set[str]:
        with self.admin.cursor() as cur:
            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (self.name,))
            return {row[0] for row in cur.fetchall()}

    def settings(self, role: str, **source: str) -> StoreSettings:
        return StoreSettings(mysql_host=MYSQL_TEST_HOST, mysql_port=MYSQL_TEST_PORT, mysql_user=self.users[role],
                             mysql_password=self.passwords[role], mysql_database=self.name,
                             sqlite_path=Path("/nonexistent/unused.sqlite"), **source)

    def connect(self, role: str) -> pymysql.connections.Connection:
        return pymysql.connect(host=MYSQL_TEST_HOST, port=MYSQL_TEST_PORT, user=self.users[role],
                               password=self.passwords[role], database=self.name, autocommit=True,
                               connect_timeout=3)

    def drop(self) -> None:
        self.admin.ping(reconnect=True)
        with self.admin.cursor() as cur:
            for user in self.users.values():
                for host in HOSTS:
                    cur.execute("DROP USER IF EXISTS %s@%s", (user, host))
            cur.execute(f"DROP DATABASE IF EXISTS `{self.name}`")
        self.admin.close()


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    try:
        return h.render_kustomization()
    except h.KustomizeUnavailable as exc:
        skip_or_fail(str(exc))


@pytest.fixture(scope="module")
def db() -> Iterator[Database]:
    try:
        database = Database()
    except pymysql.err.MySQLError as exc:
        skip_or_fail(f"MariaDB/MySQL not reachable at {MYSQL_TEST_HOST}:{MYSQL_TEST_PORT}: {exc}")
    database.create_user(ADMIN)  # step 0: the admin; the others need the tables (MySQL grants name tables)
    try:
        yield database
    finally:
        database.drop()


def job_runner(rendered: list[dict], kind: str, name: str, db: Database, secret_data: dict[str, dict],
               home: Path, hooks: pytest.TempPathFactory, **config: str):
    """Runs the container of the rendered Job or CronJob `name` here, as the kubelet would: its command and
    arguments, its environment from the rendered ConfigMap (the database's location and `config` changed, as an
    operator sets them) and `secret_data`, and nothing inherited. Returns run(release=None) -> CompletedProcess;
    `release` is Python run at interpreter start (a sitecustomize on PYTHONPATH) that makes this code another
    release's: the image differs, the Job is the same."""
    (obj,) = [o for o in rendered if o["kind"] == kind and o["metadata"]["name"] == name]
    spec = obj["spec"] if kind == "Job" else obj["spec"]["jobTemplate"]["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    configmaps = {o["metadata"]["name"]: dict(o["data"]) for o in rendered if o["kind"] == "ConfigMap"}
    configmaps["signalgen-config"].update(MYSQL_HOST=MYSQL_TEST_HOST, MYSQL_PORT=str(MYSQL_TEST_PORT),
                                          MYSQL_DATABASE=db.name, **config)
    env = container_env(container, configmaps, secret_data)
    argv = container["command"] + container.get("args", [])

    def run(release: str | None = None) -> subprocess.CompletedProcess:
        process_env = {**env, "PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(home)}
        if release is not None:
            hook = hooks.mktemp("release")
            (hook / "sitecustomize.py").write_text(release, encoding="utf-8")
            process_env["PYTHONPATH"] = str(hook)
        return subprocess.run(argv, env=process_env, capture_output=True, text=True, timeout=300)

    run.env, run.argv = env, argv
    return run


@pytest.fixture(scope="module")
def migration_job(rendered: list[dict], db: Database, tmp_path_factory: pytest.TempPathFactory):
    secret = {"signalgen-mysql-admin": {"username": db.users[ADMIN], "password": db.passwords[ADMIN]}}
    return job_runner(rendered, "Job", "signalgen-migrate", db, secret, tmp_path_factory.mktemp("home"),
                      tmp_path_factory)


@pytest.fixture(scope="module")
def exchange() -> Iterator[FakeBinance]:
    """A fake Binance whose clock is now (the candles it serves end at the last full hour)."""
    with FakeBinance(int(time.time() * 1000)) as fake:
        yield fake


@pytest.fixture(scope="module")
def collector_job(rendered: list[dict], db: Database, exchange: FakeBinance,
                  tmp_path_factory: pytest.TempPathFactory):
    """The collector CronJob's container, its exchange API moved to the fake: SIGNAL_EXCHANGE_URL, the
    ConfigMap's proxy setting (docs/kubernetes.md, the exchange and the network)."""
    secret = {"signalgen-mysql-collector": {"username": db.users[COLLECTOR], "password": db.passwords[COLLECTOR]}}
    return job_runner(rendered, "CronJob", "signalgen-collect-1h", db, secret, tmp_path_factory.mktemp("home"),
                      tmp_path_factory, SIGNAL_EXCHANGE_URL=exchange.url)


PREVIOUS_RELEASE = """
import serve_app.store.schema as schema
schema.MIGRATIONS = schema.MIGRATIONS[:-1]
schema.LATEST_VERSION = schema.MIGRATIONS[-1].version
"""
EXTRA_VERSION = MIGRATIONS[-1].version + 1
NEXT_RELEASE = f"""
import serve_app.store.schema as schema
extra = schema.Table("test_only_extra", (schema.Column("id", "INT", False), schema.Column("note", "VARCHAR(64)")),
                     primary_key=("id",))
schema.MIGRATIONS = schema.MIGRATIONS + (schema.Migration({EXTRA_VERSION}, "test only: a table added later", (extra,)),)
schema.LATEST_VERSION = {EXTRA_VERSION}
"""


# --- 1. the schema ---------------------------------------------------------------------------------------------
def test_the_migration_job_applies_the_schema_as_the_admin_and_only_what_is_new(migration_job, db: Database) -> None:
    assert migration_job.argv == ["signalgen", "store", "migrate"]
    assert migration_job.env["MYSQL_USER"] == db.users[ADMIN] and migration_job.env["MYSQL_DATABASE"] == db.name
    assert len(MIGRATIONS) >= 2, "the upgrade step needs a previous release with fewer migrations"
    versions = [m.version for m in MIGRATIONS]

    # the previous release's Job: the database does not exist yet; the admin's grant lets the Job create it
    previous = migration_job(PREVIOUS_RELEASE)
    assert previous.returncode == 0, previous.stderr
    assert sorted(db.migrations()) == versions[:-1]
    # the service's and the collector's users, on the tables the migration made
    db.create_user(RUNTIME)
    db.create_user(COLLECTOR)
    grants_before = {role: db.grants(role) for role in (RUNTIME, COLLECTOR)}

    # this release's Job: the newest migration only (it alters candles and news_sentiment)
    before = db.migrations()
    upgrade = migration_job()
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"schema up to date (versions {versions})" in upgrade.stdout
    after = db.migrations()
    assert sorted(after) == versions and {v: after[v] for v in before} == before
    # ALTER TABLE keeps the table grants: the users still have exactly what the page grants
    assert {role: db.grants(role) for role in (RUNTIME, COLLECTOR)} == grants_before

    again = migration_job()
    assert again.returncode == 0, again.stderr
    assert db.migrations() == after, "a re-run must apply nothing"


# --- 2. the collector ---------------------------------------------------------------------------------------------
def _stored_open_times(db: Database, symbol: str) -> list[int]:
    with db.admin.cursor() as cur:
        cur.execute(f"SELECT open_time FROM `{db.name}`.candles WHERE symbol = %s AND timeframe = '1h' "
                    "ORDER BY open_time", (symbol,))
        return [int(row[0]) for row in cur.fetchall()]


def test_the_collector_cronjob_fills_the_store_as_its_documented_user(collector_job, exchange: FakeBinance,
                                                                      db: Database) -> None:
    from serve_app.data.sample import sample_news

    assert collector_job.argv == ["signalgen", "collect", "--timeframes", "1h"]
    assert collector_job.env["MYSQL_USER"] == db.users[COLLECTOR]
    assert collector_job.env["SIGNAL_SYMBOLS"].split(",") == SYMBOLS
    first = collector_job()
    assert first.returncode == 0, first.stdout + first.stderr
    for symbol in SYMBOLS:  # every closed candle the exchange served, stored once: the last 30 days
        served = sorted(set(exchange.served[(f"{symbol}USDT", "1h")]))
        assert len(served) >= 30 * 24 - 1 and _stored_open_times(db, symbol) == served, symbol
    again = collector_job()  # the next scheduled run: nothing new yet, nothing stored twice
    assert again.returncode == 0, again.stdout + again.stderr
    assert all(len(_stored_open_times(db, s)) == len(set(exchange.served[(f"{s}USDT", "1h")])) for s in SYMBOLS)

    # news (`--news FILE` each run) is the collector's to write too: an upsert, twice
    source = {"exchange": collector_job.env["SIGNAL_EXCHANGE"], "quote": collector_job.env["SIGNAL_QUOTE"]}
    with open_store(db.settings(COLLECTOR, **source)) as store:
        news = sample_news(SYMBOLS, days=3)
        assert store.insert_news(news) == len(news) and store.insert_news(news) == 0
    conn = db.connect(COLLECTOR)
    try:
        with conn.cursor() as cur:
            for statement in ("INSERT INTO signals (signal_id) VALUES ('x')", "DELETE FROM candles",
                              "CREATE TABLE not_allowed (id INT)", "SELECT COUNT(*) FROM signals"):
                with pytest.raises(pymysql.err.OperationalError, match="denied"):
                    cur.execute(statement)
    finally:
        conn.close()


# --- 3. the whole application as the service's user --------------------------------------------------------------
@pytest.fixture(scope="module")
def app(signal_app: dict, db: Database, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    http_port = int(signal_app["url"].rsplit(":", 1)[1])
    env = signal_app["env"]
    runtime = db.settings(RUNTIME)
    app_env = {"MYSQL_HOST": runtime.mysql_host, "MYSQL_PORT": str(runtime.mysql_port),
               "MYSQL_DATABASE": db.name, "MYSQL_USER": runtime.mysql_user, "MYSQL_PASSWORD": runtime.mysql_password,
               "SIGNAL_SPILL_DIR": str(tmp_path_factory.mktemp("k8s-schema-spill"))}
    try:
        deploy(signal_app["dashboard"], session_apps_config(http_port, env, APP, app_env), timeout_s=240)
        yield {"client": signal_app["client"], "accepted": []}
    finally:
        deploy(signal_app["dashboard"], session_apps_config(http_port, env, APP, None), timeout_s=240)
        wait_deleted(signal_app["dashboard"], [APP], timeout_s=180)


def _last_close(db: Database, symbol: str) -> float:
    with db.admin.cursor() as cur:
        cur.execute(f"SELECT close FROM `{db.name}`.candles WHERE symbol = %s ORDER BY open_time DESC LIMIT 1",
                    (symbol,))
        return float(cur.fetchone()[0])


def _serve_each_symbol(app: dict, db: Database) -> list[str]:
    """One signal per symbol, each answered 200 from fresh data; their ids."""
    ids = []
    for symbol in SYMBOLS:
        r = wait_for(f"a signal for {symbol}", lambda: (lambda r: r if r.status_code == 200 else None)(
            app["client"].post(f"/{APP}/generate_signal", json={"symbol": symbol, "price": _last_close(db, symbol)})))
        data = r.json()["data"]
        assert data["store_reachable"] is True and data["served_from_cache"] is False, data
        ids.append(r.json()["signal_id"])
    app["accepted"] += ids
    return ids


def test_the_application_serves_and_stores_signals_as_the_documented_runtime_user(app: dict, db: Database) -> None:
    ids = _serve_each_symbol(app, db)
    wait_for("the signals stored by Analytics", lambda: set(ids) <= set(stored_signal_counts(db.name)))
    assert all(stored_signal_counts(db.name)[i] == 1 for i in ids)
    health = wait_for("/health 200", lambda: (lambda r: r if r.status_code == 200 else None)(
        app["client"].get(f"/{APP}/health")))
    assert health.json()["status"] == "ok", health.json()
    # the user it runs as may not write market data or change the schema
    conn = db.connect(RUNTIME)
    try:
        with conn.cursor() as cur:
            for statement in ("DELETE FROM signals", "UPDATE candles SET close = 0",
                              "ALTER TABLE signals ADD COLUMN x INT"):
                with pytest.raises(pymysql.err.OperationalError, match="denied"):
                    cur.execute(statement)
    finally:
        conn.close()


# --- 4. a migration added later -------------------------------------------------------------------------------------
def test_a_later_migration_is_applied_by_rerunning_the_job_and_the_service_keeps_working(
        migration_job, app: dict, db: Database) -> None:
    before, grants = db.migrations(), {role: db.grants(role) for role in (RUNTIME, COLLECTOR)}
    assert "test_only_extra" not in db.tables()

    rerun = migration_job(NEXT_RELEASE)
    assert rerun.returncode == 0, rerun.stderr
    after = db.migrations()
    assert set(after) - set(before) == {EXTRA_VERSION}, "exactly the new migration is applied"
    assert {v: after[v] for v in before} == before, "the applied ones are not run again"
    assert "test_only_extra" in db.tables()
    assert {role: db.grants(role) for role in (RUNTIME, COLLECTOR)} == grants

    # the running replicas keep serving and storing, and a store opened now as the service's user (code that
    # does not know the new version) reads the schema as current and creates nothing
    ids = _serve_each_symbol(app, db)
    wait_for("the signals stored after the migration", lambda: set(ids) <= set(stored_signal_counts(db.name)))
    stored = stored_signal_counts(db.name)
    assert set(stored) == set(app["accepted"]) and all(n == 1 for n in stored.values())
    with open_store(db.settings(RUNTIME)) as store:
        assert store.count_signals() == len(app["accepted"])
        assert store.applied_versions()[-1] == EXTRA_VERSION

    # the next release's Job again: nothing left to apply
    assert migration_job(NEXT_RELEASE).returncode == 0 and db.migrations() == after


def test_the_job_reads_nothing_the_test_did_not_map() -> None:
    """container_env fails on a reference it was not given (so the Job above ran with the manifest's env only)."""
    container = {"envFrom": [{"configMapRef": {"name": "c"}}],
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    assert container_env(container, {"c": {"A": "0", "C": "3"}}, {"s": {"k": "2"}}) == {"A": "1", "B": "2", "C": "3"}
    with pytest.raises(KeyError):
        container_env(container, {"c": {}}, {"s": {}})
