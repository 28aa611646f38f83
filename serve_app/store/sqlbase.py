"""The Store implementation shared by both backends: every query, and the conversion of Python values
to and from rows, lives here once. A backend only supplies a `Dialect` and `_run()`, which executes
one (already dialect-translated) statement and maps its driver's connectivity errors to
StoreUnavailable.
"""
from __future__ import annotations

import hashlib
import json
import math
import threading
from abc import abstractmethod
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np

from serve_app.core.timeutil import now_ms
from serve_app.settings import DEFAULT_EXCHANGE, DEFAULT_QUOTE, check_source
from serve_app.store.base import (
    CandleSeries,
    OUTCOME_COLUMNS, SIGNAL_COLUMNS, Candles, NewsItem, Store, StoreError, StoreUnavailable,
)
from serve_app.store.schema import (
    CANDLES, MIGRATIONS, NEWS_COLUMNS, NEWS_DEDUP, NEWS_SENTIMENT, SCHEMA_MIGRATIONS, SIGNAL_JSON_COLUMNS,
    SIGNAL_OUTCOMES, SIGNALS, SOURCE_KEY, Dialect,
)

Mode = Literal["execute", "executemany", "query"]

_CANDLE_VALUES = ("open", "high", "low", "close", "volume")
_SIGNAL_BOOLS = ("approved",)
_OUTCOME_BOOLS = ("hit",)
_PERFORMANCE_COLUMNS = (
    "s.signal_id", "s.symbol", "s.action", "s.confidence", "s.approved", "s.generated_at_ms",
    "s.model_version", "o.horizon_candles", "o.entry_price", "o.exit_price", "o.realized_return",
    "o.hit", "o.evaluated_at_ms",
)
_SIGNAL_SELECT = ", ".join(f"s.{c}" for c in SIGNAL_COLUMNS)


# --------------------------------------------------------------------------------------------------
# value conversion (Python <-> row)
# --------------------------------------------------------------------------------------------------

def db_value(value: Any) -> Any:
    """A Python/numpy value as a driver parameter: numpy scalars unwrapped, bools as 0/1, NaN and
    infinities as NULL (MySQL rejects them and SQLite would store NULL anyway)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def json_text(value: Any) -> str | None:
    """A JSON column's text: strings are taken to be JSON text already (as `Signal.row()` in core/records.py builds
    them) and stored verbatim; anything else is serialized."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def signal_params(record: dict[str, Any]) -> tuple[Any, ...]:
    """One signal record (dict keyed by SIGNAL_COLUMNS; missing keys are NULL) as a row."""
    if not record.get("signal_id"):
        raise ValueError("signal record without signal_id")
    return tuple(json_text(record.get(c)) if c in SIGNAL_JSON_COLUMNS else db_value(record.get(c))
                 for c in SIGNAL_COLUMNS)


def outcome_params(row: dict[str, Any]) -> tuple[Any, ...]:
    if not row.get("signal_id"):
        raise ValueError("outcome row without signal_id")
    return tuple(db_value(row.get(c)) for c in OUTCOME_COLUMNS)


def row_to_dict(columns: Sequence[str], row: Sequence[Any], bools: Sequence[str] = ()) -> dict[str, Any]:
    """A result row as a dict; `bools` columns (0/1 in both databases) come back as bool."""
    out = {c.split(".")[-1]: v for c, v in zip(columns, row)}
    for c in bools:
        if out.get(c) is not None:
            out[c] = bool(out[c])
    return out


def candle_params(source: tuple[str, str], symbol: str, timeframe: str,
                  rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [(*source, symbol, timeframe, int(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]),
             float(r[5])) for r in rows]


def news_params(source: tuple[str, str], item: NewsItem) -> tuple[Any, ...]:
    digest = hashlib.sha256(item.headline.encode("utf-8")).hexdigest()
    return (*source, item.symbol, int(item.published_at), item.source, float(item.score), item.headline, digest)


def _in_list(column: str, values: Sequence[Any]) -> str:
    return f"{column} IN ({', '.join(['?'] * len(values))})"


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


# --------------------------------------------------------------------------------------------------
# the shared store
# --------------------------------------------------------------------------------------------------

class SQLStore(Store):
    """All Store methods over a DB-API connection. Statements are written with `?` placeholders and
    translated by the dialect; values are always bound parameters, never formatted into SQL.

    Candles and news belong to a market data source (exchange, quote): the store reads and writes only the
    rows of its own `source`, which it was opened with (StoreSettings.exchange/quote)."""

    dialect: Dialect

    def __init__(self, exchange: str = DEFAULT_EXCHANGE, quote: str = DEFAULT_QUOTE) -> None:
        self._lock = threading.RLock()
        self._closed = False
        self.source: tuple[str, str] = check_source(exchange, quote)
        self._scope = " AND ".join(f"{c} = ?" for c in SOURCE_KEY)  # the source condition, bound to .source

    # ---- backend hook --------------------------------------------------------------------------
    @abstractmethod
    def _run(self, sql: str, params: Any, mode: Mode) -> Any:
        """Execute one statement: "execute" -> rowcount, "executemany" -> rowcount (params is a
        list of tuples), "query" -> list of row tuples. Connectivity errors -> StoreUnavailable."""

    def _close_connection(self) -> None:
        """Release the driver connection (called once by close())."""

    @contextmanager
    def _migration_section(self) -> Iterator[None]:
        """Around applying one migration: no other process applies one meanwhile, and (where the database
        can) its statements take effect together or not at all."""
        yield

    def _q(self, sql: str, params: Sequence[Any] = (), mode: Mode = "query") -> Any:
        if self._closed:
            raise StoreError(f"{self.backend} store is closed")
        if mode == "executemany" and not params:
            return 0
        with self._lock:
            return self._run(self.dialect.sql(sql), tuple(params) if mode != "executemany" else params, mode)

    def _ascending(self, sql: str, params: list[Any], order: Sequence[str], limit: int | None) -> list[Any]:
        """The rows of `sql` ascending by the `order` columns; with `limit`, the last `limit` of them
        (selected newest first by the database, returned ascending)."""
        if limit is None:
            return self._q(f"{sql} ORDER BY {', '.join(order)}", params)
        newest_first = ", ".join(f"{column} DESC" for column in order)
        return self._q(f"{sql} ORDER BY {newest_first} LIMIT ?", [*params, int(limit)])[::-1]

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close_connection()

    # ---- schema --------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Apply the missing migrations. When every one is recorded already this only reads, so a
        least-privilege user (no CREATE) can open a store an admin has migrated."""
        try:
            applied: set[int] | None = set(self.applied_versions())
        except StoreUnavailable:
            raise
        except Exception:  # noqa: BLE001 - no schema_migrations table yet (or unreadable): create it below
            applied = None
        if applied is not None and all(m.version in applied for m in MIGRATIONS):
            return
        if applied is None:
            with self._migration_failure("creating schema_migrations"):
                for stmt in self.dialect.create_table(SCHEMA_MIGRATIONS):
                    self._q(stmt, mode="execute")
        record = self.dialect.upsert(SCHEMA_MIGRATIONS.name, SCHEMA_MIGRATIONS.column_names, ("version",))
        for migration in MIGRATIONS:
            with self._lock, self._migration_section():
                if migration.version in set(self.applied_versions()):  # read again: another process may have
                    continue
                with self._migration_failure(f"schema migration {migration.version} ({migration.description})"):
                    for stmt, params in migration.statements(self.dialect, self.table_columns, self.source):
                        self._q(stmt, params, "execute")
                    self._q(record, (migration.version, migration.description, now_ms()), "execute")

    @contextmanager
    def _migration_failure(self, what: str) -> Iterator[None]:
        """A driver error while migrating as a StoreError that says what failed and what to do."""
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - the drivers share no error base class
            raise StoreError(f"{self.describe()}: {what} failed: {type(exc).__name__}: {exc}. A user without the "
                             "privileges to create and alter tables cannot migrate the schema: run `signalgen "
                             "store migrate` as the database admin") from exc

    def table_columns(self, table: str) -> set[str]:
        """The column names of `table` as the database has it now (empty when it does not exist)."""
        return {str(r[0]) for r in self._q(self.dialect.columns_query(), [table])}

    def applied_versions(self) -> list[int]:
        """Schema versions recorded in schema_migrations, ascending."""
        return [int(r[0]) for r in self._q("SELECT version FROM schema_migrations ORDER BY version")]

    def ping(self) -> None:
        self._q("SELECT 1")

    # ---- candles -------------------------------------------------------------------------------
    def upsert_candles(self, symbol: str, timeframe: str, rows: Iterable[Sequence[Any]]) -> int:
        params = candle_params(self.source, symbol, timeframe, rows)
        sql = self.dialect.upsert(CANDLES.name, CANDLES.column_names, CANDLES.primary_key, _CANDLE_VALUES)
        self._q(sql, params, "executemany")
        return len(params)

    def load_candles(self, symbol: str, timeframe: str, limit: int | None = None,
                     since_ms: int | None = None, until_ms: int | None = None) -> Candles:
        """Ascending; since_ms and until_ms are both inclusive; `limit` keeps the newest."""
        conditions, params = [self._scope, "symbol = ?", "timeframe = ?"], [*self.source, symbol, timeframe]
        if since_ms is not None:
            conditions.append("open_time >= ?")
            params.append(int(since_ms))
        if until_ms is not None:
            conditions.append("open_time <= ?")
            params.append(int(until_ms))
        sql = f"SELECT open_time, {', '.join(_CANDLE_VALUES)} FROM candles{_where(conditions)}"
        return Candles.from_rows(symbol, timeframe, self._ascending(sql, params, ("open_time",), limit))

    def list_symbols(self, timeframe: str) -> list[str]:
        rows = self._q(f"SELECT DISTINCT symbol FROM candles WHERE {self._scope} AND timeframe = ? ORDER BY symbol",
                       [*self.source, timeframe])
        return [r[0] for r in rows]

    def candle_series(self) -> list[CandleSeries]:
        rows = self._q("SELECT symbol, timeframe, COUNT(*), MIN(open_time), MAX(open_time) FROM candles "
                       f"WHERE {self._scope} GROUP BY symbol, timeframe ORDER BY symbol, timeframe", self.source)
        return [CandleSeries(str(sym), str(tf), int(n), int(first), int(last)) for sym, tf, n, first, last in rows]

    def delete_candles(self, symbol: str, timeframe: str, before_ms: int | None = None,
                       after_ms: int | None = None) -> int:
        outside, params = [], [*self.source, symbol, timeframe]
        if before_ms is not None:
            outside.append("open_time < ?")
            params.append(int(before_ms))
        if after_ms is not None:
            outside.append("open_time > ?")
            params.append(int(after_ms))
        scope = f" AND ({' OR '.join(outside)})" if outside else ""
        return self._q(f"DELETE FROM candles WHERE {self._scope} AND symbol = ? AND timeframe = ?{scope}", params,
                       "execute")

    def sources(self) -> list[tuple[str, str, int]]:
        """Every market data source the database holds candles of, with how many: (exchange, quote,
        candles), this store's own among them when it has any. (The only read across sources.)"""
        rows = self._q(f"SELECT {', '.join(SOURCE_KEY)}, COUNT(*) FROM candles GROUP BY {', '.join(SOURCE_KEY)} "
                       f"ORDER BY {', '.join(SOURCE_KEY)}")
        return [(str(e), str(q), int(n)) for e, q, n in rows]

    # ---- news ----------------------------------------------------------------------------------
    def insert_news(self, items: Iterable[NewsItem]) -> int:
        """Idempotent on (symbol, published_at, source, headline); returns the number of new rows."""
        sql = self.dialect.upsert(NEWS_SENTIMENT.name, NEWS_COLUMNS, NEWS_DEDUP.columns)
        return self._q(sql, [news_params(self.source, i) for i in items], "executemany")

    def load_news(self, since_ms: int, symbols: Sequence[str] | None = None) -> list[NewsItem]:
        conditions, params = [self._scope, "published_at >= ?"], [*self.source, int(since_ms)]
        if symbols is not None:
            if not symbols:
                return []
            conditions.append(_in_list("symbol", symbols))
            params += list(symbols)
        rows = self._q("SELECT symbol, published_at, source, score, headline FROM news_sentiment"
                       f"{_where(conditions)} ORDER BY published_at, id", params)
        return [NewsItem(r[0], int(r[1]), r[2], float(r[3]), r[4]) for r in rows]

    def delete_news(self, source: str, symbols: Sequence[str] | None = None) -> int:
        conditions, params = [self._scope, "source = ?"], [*self.source, source]
        if symbols is not None:
            if not symbols:
                return 0
            conditions.append(_in_list("symbol", symbols))
            params += list(symbols)
        return self._q(f"DELETE FROM news_sentiment{_where(conditions)}", params, "execute")

    # ---- signals and outcomes -----------------------------------------------------------------
    def _insert_new(self, table: str, columns: Sequence[str], key: str, params: list[tuple[Any, ...]]) -> int:
        """INSERT the rows whose `key` is not stored yet; returns how many. Idempotent with only the
        SELECT and INSERT privileges (an upsert's ON DUPLICATE KEY UPDATE needs UPDATE as well). A row
        another writer stored between the SELECT and the INSERT makes the INSERT fail on the key: then
        the missing rows are selected again, once."""
        k = list(columns).index(key)
        insert = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['?'] * len(columns))})"
        for attempt in (1, 2):
            keys = list(dict.fromkeys(p[k] for p in params))
            stored: set[Any] = set()
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                stored.update(r[0] for r in self._q(f"SELECT {key} FROM {table} WHERE {_in_list(key, chunk)}", chunk))
            new = list({p[k]: p for p in params if p[k] not in stored}.values())
            try:
                self._q(insert, new, "executemany")
                return len(new)
            except Exception as exc:  # noqa: BLE001 - the DB-API drivers share no IntegrityError base class
                if attempt == 2 or type(exc).__name__ != "IntegrityError":
                    raise
        raise AssertionError("unreachable")

    def insert_signals(self, records: Sequence[dict[str, Any]]) -> int:
        return self._insert_new(SIGNALS.name, SIGNAL_COLUMNS, "signal_id", [signal_params(r) for r in records])

    def load_signals(self, symbol: str | None = None, since_ms: int | None = None,
                     limit: int | None = None) -> list[dict[str, Any]]:
        """Ascending by generated_at_ms; `limit` keeps the newest. JSON columns come back as the
        stored text, `approved` as bool."""
        conditions, params = [], []
        if symbol is not None:
            conditions.append("s.symbol = ?")
            params.append(symbol)
        if since_ms is not None:
            conditions.append("s.generated_at_ms >= ?")
            params.append(int(since_ms))
        sql = f"SELECT {_SIGNAL_SELECT} FROM signals s{_where(conditions)}"
        rows = self._ascending(sql, params, ("s.generated_at_ms", "s.signal_id"), limit)
        return [row_to_dict(SIGNAL_COLUMNS, r, _SIGNAL_BOOLS) for r in rows]

    def count_signals(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM signals")[0][0])

    def signals_without_outcome(self, generated_before_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Oldest first."""
        rows = self._q(f"SELECT {_SIGNAL_SELECT} FROM signals s LEFT JOIN signal_outcomes o "
                       "ON o.signal_id = s.signal_id WHERE o.signal_id IS NULL AND s.generated_at_ms < ? "
                       "ORDER BY s.generated_at_ms, s.signal_id LIMIT ?", [int(generated_before_ms), int(limit)])
        return [row_to_dict(SIGNAL_COLUMNS, r, _SIGNAL_BOOLS) for r in rows]

    def insert_outcomes(self, rows: Sequence[dict[str, Any]]) -> int:
        return self._insert_new(SIGNAL_OUTCOMES.name, OUTCOME_COLUMNS, "signal_id", [outcome_params(r) for r in rows])

    def load_performance_rows(self, since_ms: int | None = None) -> list[dict[str, Any]]:
        """Every signal (generated at or after since_ms), oldest first, LEFT JOINed with its outcome:
        signal_id, symbol, action, confidence, approved, generated_at_ms, model_version,
        horizon_candles, entry_price, exit_price, realized_return, hit, evaluated_at_ms. The outcome
        columns are None for a signal not scored yet."""
        conditions, params = [], []
        if since_ms is not None:
            conditions.append("s.generated_at_ms >= ?")
            params.append(int(since_ms))
        rows = self._q(f"SELECT {', '.join(_PERFORMANCE_COLUMNS)} FROM signals s LEFT JOIN signal_outcomes o "
                       f"ON o.signal_id = s.signal_id{_where(conditions)} "
                       "ORDER BY s.generated_at_ms, s.signal_id", params)
        return [row_to_dict(_PERFORMANCE_COLUMNS, r, _SIGNAL_BOOLS + _OUTCOME_BOOLS) for r in rows]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    @abstractmethod
    def describe(self) -> str:
        """Where the data lives, without credentials: sqlite:///path or mysql://user@host:port/db."""
