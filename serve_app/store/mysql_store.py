"""The MySQL / MariaDB backend (pymysql), used when MYSQL_HOST is set.

One autocommit connection per store, utf8mb4, short timeouts so that nothing hangs. A connection
the server dropped (restart, idle timeout, KILL) is replaced transparently: the statement is
retried once on a fresh connection (every write in the store is idempotent, so a retry is safe);
if that fails too the call raises StoreUnavailable naming host:port.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from typing import Any, Iterator

import pymysql
from pymysql.err import InterfaceError, MySQLError, OperationalError

from serve_app.settings import DEFAULT_EXCHANGE, DEFAULT_QUOTE
from serve_app.store.base import StoreError, StoreUnavailable
from serve_app.store.schema import MYSQL
from serve_app.store.sqlbase import Mode, SQLStore

log = logging.getLogger(__name__)

# A database name is formatted into CREATE DATABASE (identifiers cannot be bound parameters), so
# only plain names are accepted.
DATABASE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")

# Server error codes that mean the connection is gone (the 2xxx client codes are all connection
# errors: can't connect, server has gone away, lost connection during query, ...).
_CONNECTION_ERRNOS = frozenset({
    1040,  # too many connections
    1053,  # server shutdown in progress
    1152, 1153, 1158, 1159, 1160, 1161,  # aborted connection / network read/write errors
    1927,  # MariaDB: connection was killed
    4031,  # MySQL 8: disconnected by the server because of inactivity
})

# Strict mode makes bad values errors on every server, whatever its configured default.
_SESSION_INIT = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'"


def is_connection_error(exc: BaseException) -> bool:
    """True when `exc` means the connection is unusable (as opposed to a bad statement)."""
    if isinstance(exc, InterfaceError):
        return True
    if isinstance(exc, OperationalError) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        return code in _CONNECTION_ERRNOS or 2000 <= code < 3000
    return False


def validate_database_name(name: str) -> str:
    if not DATABASE_NAME.match(name or ""):
        raise ValueError(f"invalid MySQL database name {name!r}: use 1-64 letters, digits or _")
    return name


class MySQLStore(SQLStore):
    backend = "mysql"
    dialect = MYSQL

    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 create_database: bool = True, *, connect_timeout: int = 5,
                 read_timeout: int = 10, write_timeout: int = 10, exchange: str = DEFAULT_EXCHANGE,
                 quote: str = DEFAULT_QUOTE) -> None:
        super().__init__(exchange, quote)
        self.host, self.port, self.user = host, int(port), user
        self.database = validate_database_name(database)
        self._password = password
        self._create_database = create_database
        self._timeouts = {"connect_timeout": connect_timeout, "read_timeout": read_timeout,
                          "write_timeout": write_timeout}
        self._conn: pymysql.connections.Connection | None = None
        self._connection()  # fail fast: an unreachable server raises StoreUnavailable here

    def describe(self) -> str:
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"

    # ---- connection ----------------------------------------------------------------------------
    def _connection(self) -> pymysql.connections.Connection:
        """The open connection, connecting (and creating the database) first if there is none."""
        if self._conn is None:
            try:
                self._conn = self._connect()
            except MySQLError as exc:
                raise StoreUnavailable(f"MySQL at {self.host}:{self.port} is unavailable "
                                       f"(database {self.database!r}): {exc}") from exc
        return self._conn

    def _connect(self) -> pymysql.connections.Connection:
        conn = pymysql.connect(host=self.host, port=self.port, user=self.user, password=self._password,
                               charset="utf8mb4", autocommit=True, init_command=_SESSION_INIT,
                               **self._timeouts)
        try:
            if self._create_database:
                self._ensure_database(conn)
            conn.select_db(self.database)
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_database(self, conn: pymysql.connections.Connection) -> None:
        """CREATE DATABASE when it is missing (checked first, so a user without the CREATE
        privilege can still use an existing database). Done once per store."""
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s", (self.database,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}` "
                            "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        self._create_database = False

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except MySQLError:
                pass  # already broken; nothing to release

    def _close_connection(self) -> None:
        self._drop_connection()

    # ---- statements ----------------------------------------------------------------------------
    def _run(self, sql: str, params: Any, mode: Mode) -> Any:
        """Run on the current connection; on a connectivity error reconnect once and retry."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                return _perform(conn, sql, params, mode)
            except MySQLError as exc:
                if not is_connection_error(exc):
                    raise
                self._drop_connection()
                if attempt == 2:
                    raise StoreUnavailable(f"MySQL at {self.host}:{self.port} is unavailable: "
                                           f"connection lost and the retry failed: {exc}") from exc
                log.warning("MySQL connection to %s:%s lost (%s); reconnecting", self.host, self.port, exc)
        raise AssertionError("unreachable")

    @contextmanager
    def _migration_section(self) -> Iterator[None]:
        """A named server lock (GET_LOCK: no privilege needed) so that two processes never apply a
        migration at once. (MySQL commits DDL statement by statement; a migration's ALTER is one atomic
        statement and every other step can be run again.)"""
        lock = f"signalgen_migrate_{self.database}"[:64]  # the servers' limit on lock names
        if int(self._q("SELECT GET_LOCK(?, ?)", [lock, 60])[0][0] or 0) != 1:
            raise StoreError(f"MySQL at {self.host}:{self.port}: another process kept the migration lock "
                             f"{lock!r} for 60 s")
        try:
            yield
        finally:
            try:
                self._q("SELECT RELEASE_LOCK(?)", [lock])
            except StoreError:
                pass  # the connection is gone, and the lock with it

    def connection_id(self) -> int:
        """The server-side id of this store's connection (CONNECTION_ID(); for diagnostics)."""
        return int(self._q("SELECT CONNECTION_ID()")[0][0])


def _perform(conn: pymysql.connections.Connection, sql: str, params: Any, mode: Mode) -> Any:
    # pymysql formats `sql % escaped_params`; pass None when there are none so '%' stays literal.
    with conn.cursor() as cur:
        if mode == "executemany":
            return cur.executemany(sql, params)
        cur.execute(sql, params or None)
        return cur.fetchall() if mode == "query" else cur.rowcount
