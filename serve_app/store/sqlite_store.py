"""The embedded default backend: one SQLite file (stdlib sqlite3), WAL mode so readers never block
the writer. Used when MYSQL_HOST is not set, so a fresh clone runs without a database server."""
from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from serve_app.settings import DEFAULT_EXCHANGE, DEFAULT_QUOTE
from serve_app.store.base import StoreUnavailable
from serve_app.store.schema import SQLITE
from serve_app.store.sqlbase import Mode, SQLStore

# sqlite3.OperationalError messages that mean "cannot use the database now" rather than a bad query.
_UNAVAILABLE_MESSAGES = ("unable to open", "database is locked", "disk i/o error", "readonly database",
                         "database or disk is full", "file is not a database")


class SQLiteStore(SQLStore):
    backend = "sqlite"
    dialect = SQLITE

    def __init__(self, path: str | Path, busy_timeout_s: float = 10.0, *, exchange: str = DEFAULT_EXCHANGE,
                 quote: str = DEFAULT_QUOTE) -> None:
        super().__init__(exchange, quote)
        self.path = Path(path) if str(path) != ":memory:" else None
        self._in_transaction = False
        self._conn = self._connect(busy_timeout_s)

    def describe(self) -> str:
        return f"sqlite:///{self.path if self.path else ':memory:'}"

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        """Open the file (creating its directory), WAL journal, busy timeout for concurrent writers."""
        try:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path or ":memory:"), timeout=busy_timeout_s,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.describe()}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable across app crashes in WAL mode
            return conn
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"cannot open SQLite database {self.describe()}: {exc}") from exc

    def _run(self, sql: str, params: Any, mode: Mode) -> Any:
        """One statement; writes are committed (executemany as a single transaction), except inside
        `_migration_section`, which commits them together."""
        try:
            if mode == "query":
                return self._conn.execute(sql, params).fetchall()
            cursor = self._conn.executemany(sql, params) if mode == "executemany" \
                else self._conn.execute(sql, params)
            if not self._in_transaction:
                self._conn.commit()
            return cursor.rowcount
        except sqlite3.Error as exc:
            if not self._in_transaction:
                self._rollback_quietly()
            if isinstance(exc, sqlite3.OperationalError) and \
                    any(m in str(exc).lower() for m in _UNAVAILABLE_MESSAGES):
                raise StoreUnavailable(f"SQLite database {self.describe()} unavailable: {exc}") from exc
            raise

    @contextmanager
    def _migration_section(self) -> Iterator[None]:
        """One transaction that holds the write lock from its start (BEGIN IMMEDIATE): another process
        migrating waits, then sees this migration applied; a failed migration leaves nothing behind."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite database {self.describe()} unavailable: {exc}") from exc
        self._in_transaction = True
        try:
            yield
            self._conn.commit()
        except BaseException:
            self._rollback_quietly()
            raise
        finally:
            self._in_transaction = False

    def _rollback_quietly(self) -> None:
        try:
            self._conn.rollback()
        except sqlite3.Error:
            pass  # the original error is the one worth reporting

    def _close_connection(self) -> None:
        self._conn.close()

    def journal_mode(self) -> str:
        """The active journal mode ("wal" for a file database)."""
        return str(self._q("PRAGMA journal_mode")[0][0])
