"""The one SQL schema of the store, and the few places where SQLite and MySQL/MariaDB differ.

Tables are described once as data (`Table`, `Column`, `Index`); a `Dialect` renders them to DDL and
builds the dialect-specific statements (placeholders, auto-increment ids, inline vs separate indexes,
upsert syntax). Migrations are numbered; `schema_migrations` records the applied ones, so applying
the schema again is a no-op.

Portable column types used below (a dialect maps the ones that differ):
  AUTO_ID    -- surrogate integer primary key with auto-increment
  JSON_TEXT  -- JSON document stored as text (MEDIUMTEXT on MySQL, up to 16 MB)
  everything else (VARCHAR(n), BIGINT, INT, DOUBLE, BOOLEAN, TEXT) is spelled the same in both;
  SQLite maps them to its storage classes by its type-affinity rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

from serve_app.store.base import OUTCOME_COLUMNS, SIGNAL_COLUMNS


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool = True


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    unique: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    indexes: tuple[Index, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


# --------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------

SCHEMA_MIGRATIONS = Table(
    "schema_migrations",
    (Column("version", "INT", False), Column("description", "VARCHAR(255)", False),
     Column("applied_at_ms", "BIGINT", False)),
    primary_key=("version",),
)

CANDLES = Table(
    "candles",
    (Column("symbol", "VARCHAR(32)", False), Column("timeframe", "VARCHAR(8)", False),
     Column("open_time", "BIGINT", False), Column("open", "DOUBLE", False),
     Column("high", "DOUBLE", False), Column("low", "DOUBLE", False),
     Column("close", "DOUBLE", False), Column("volume", "DOUBLE", False)),
    primary_key=("symbol", "timeframe", "open_time"),
)

# headline_hash = sha256(headline) in hex: the unique key cannot include a TEXT column on MySQL.
NEWS_COLUMNS: tuple[str, ...] = ("symbol", "published_at", "source", "score", "headline", "headline_hash")
NEWS_DEDUP = Index("news_dedup", ("symbol", "published_at", "source", "headline_hash"), unique=True)
NEWS_SENTIMENT = Table(
    "news_sentiment",
    (Column("id", "AUTO_ID", False), Column("symbol", "VARCHAR(32)", False),
     Column("published_at", "BIGINT", False), Column("source", "VARCHAR(64)", False),
     Column("score", "DOUBLE", False), Column("headline", "TEXT", False),
     Column("headline_hash", "CHAR(64)", False)),
    indexes=(Index("news_symbol_published", ("symbol", "published_at")),
             Index("news_published", ("published_at",)),
             NEWS_DEDUP),
)

_SIGNAL_TYPES: dict[str, tuple[str, bool]] = {  # column -> (type, nullable)
    "signal_id": ("VARCHAR(64)", False), "symbol": ("VARCHAR(32)", False),
    "timeframe": ("VARCHAR(8)", False), "price": ("DOUBLE", False), "action": ("VARCHAR(16)", False),
    "confidence": ("DOUBLE", True), "prob_down": ("DOUBLE", True), "prob_flat": ("DOUBLE", True),
    "prob_up": ("DOUBLE", True), "position_size": ("DOUBLE", True),
    "position_notional": ("DOUBLE", True), "fraction_of_equity": ("DOUBLE", True),
    "approved": ("BOOLEAN", True), "stop_loss": ("DOUBLE", True), "take_profit": ("DOUBLE", True),
    "reasons": ("JSON_TEXT", True), "sentiment": ("DOUBLE", True), "momentum": ("DOUBLE", True),
    "regime": ("VARCHAR(32)", True), "market_context": ("JSON_TEXT", True),
    "model_version": ("VARCHAR(128)", True), "generated_at": ("VARCHAR(40)", True),
    "generated_at_ms": ("BIGINT", False), "payload": ("JSON_TEXT", True),
}
assert tuple(_SIGNAL_TYPES) == SIGNAL_COLUMNS, "signals table out of sync with base.SIGNAL_COLUMNS"
SIGNAL_JSON_COLUMNS: tuple[str, ...] = tuple(c for c, (t, _) in _SIGNAL_TYPES.items() if t == "JSON_TEXT")

SIGNALS = Table(
    "signals",
    tuple(Column(name, t, nullable) for name, (t, nullable) in _SIGNAL_TYPES.items()),
    primary_key=("signal_id",),
    indexes=(Index("signals_generated", ("generated_at_ms",)),
             Index("signals_symbol_generated", ("symbol", "generated_at_ms"))),
)

_OUTCOME_TYPES: dict[str, tuple[str, bool]] = {
    "signal_id": ("VARCHAR(64)", False), "horizon_candles": ("INT", False),
    "entry_price": ("DOUBLE", True), "exit_price": ("DOUBLE", True),
    "realized_return": ("DOUBLE", True), "hit": ("BOOLEAN", True),
    "evaluated_at_ms": ("BIGINT", False),
}
assert tuple(_OUTCOME_TYPES) == OUTCOME_COLUMNS, "signal_outcomes table out of sync with OUTCOME_COLUMNS"

SIGNAL_OUTCOMES = Table(
    "signal_outcomes",
    tuple(Column(name, t, nullable) for name, (t, nullable) in _OUTCOME_TYPES.items()),
    primary_key=("signal_id",),
)

DATA_TABLES: tuple[Table, ...] = (CANDLES, NEWS_SENTIMENT, SIGNALS, SIGNAL_OUTCOMES)


@dataclass(frozen=True)
class Migration:
    """One schema version. Its statements must be idempotent (CREATE ... IF NOT EXISTS)."""

    version: int
    description: str
    tables: tuple[Table, ...] = field(default=())

    def statements(self, dialect: "Dialect") -> list[str]:
        return [stmt for table in self.tables for stmt in dialect.create_table(table)]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "candles, news_sentiment, signals, signal_outcomes", DATA_TABLES),
)
LATEST_VERSION = MIGRATIONS[-1].version


# --------------------------------------------------------------------------------------------------
# dialects
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dialect:
    """Everything that differs between the backends' SQL."""

    name: str
    placeholder: str  # DB-API paramstyle marker: "?" (qmark) or "%s" (format)
    types: dict[str, str]  # portable type -> this dialect's spelling (only the ones that differ)
    table_options: str  # appended after the closing parenthesis of CREATE TABLE
    inline_indexes: bool  # indexes inside CREATE TABLE (MySQL) or separate CREATE INDEX IF NOT EXISTS

    def sql(self, text: str) -> str:
        """Translate a statement written with `?` placeholders to this dialect's paramstyle.
        (Statements in this package never contain a literal `?` or `%`.)"""
        return _translate(text, self.placeholder)

    def column_sql(self, column: Column) -> str:
        sql_type = self.types.get(column.type, column.type)
        not_null = " NOT NULL" if not column.nullable and "PRIMARY KEY" not in sql_type else ""
        return f"{column.name} {sql_type}{not_null}"

    def create_table(self, table: Table) -> list[str]:
        """CREATE TABLE IF NOT EXISTS (+ CREATE INDEX IF NOT EXISTS where indexes are separate)."""
        parts = [self.column_sql(c) for c in table.columns]
        if table.primary_key:
            parts.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
        if self.inline_indexes:
            parts += [f"{'UNIQUE ' if ix.unique else ''}KEY {ix.name} ({', '.join(ix.columns)})"
                      for ix in table.indexes]
        body = ",\n  ".join(parts)
        statements = [f"CREATE TABLE IF NOT EXISTS {table.name} (\n  {body}\n){self.table_options}"]
        if not self.inline_indexes:
            statements += [f"CREATE {'UNIQUE ' if ix.unique else ''}INDEX IF NOT EXISTS {ix.name} "
                           f"ON {table.name} ({', '.join(ix.columns)})" for ix in table.indexes]
        return statements

    def upsert(self, table: str, columns: Sequence[str], conflict: Sequence[str],
               update: Sequence[str] = ()) -> str:
        """INSERT one row (use with executemany for many). On a conflict on the `conflict` key:
        overwrite the `update` columns, or, when `update` is empty, keep the existing row.

        The keep-existing form is a no-op update on MySQL rather than INSERT IGNORE: IGNORE would
        also turn real errors (NOT NULL, truncation) into warnings. The affected-row count then
        counts new rows only (an unchanged duplicate counts 0 on both backends)."""
        cols = ", ".join(columns)
        marks = ", ".join([self.placeholder] * len(columns))
        head = f"INSERT INTO {table} ({cols}) VALUES ({marks})"
        if self.name == "mysql":
            sets = [f"{c} = VALUES({c})" for c in update] or [f"{conflict[0]} = {conflict[0]}"]
            return f"{head} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
        action = ("DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update)) if update \
            else "DO NOTHING"
        return f"{head} ON CONFLICT ({', '.join(conflict)}) {action}"


@lru_cache(maxsize=256)
def _translate(text: str, placeholder: str) -> str:
    return text if placeholder == "?" else text.replace("?", placeholder)


SQLITE = Dialect(
    name="sqlite", placeholder="?",
    types={"AUTO_ID": "INTEGER PRIMARY KEY AUTOINCREMENT", "JSON_TEXT": "TEXT"},
    table_options="", inline_indexes=False,
)

MYSQL = Dialect(
    name="mysql", placeholder="%s",
    types={"AUTO_ID": "BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY", "JSON_TEXT": "MEDIUMTEXT"},
    # utf8mb4 for 4-byte unicode; binary collation so that keys compare exactly like SQLite's
    # ('BTC' != 'btc'), which keeps uniqueness and lookups identical across the two backends.
    table_options=" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin", inline_indexes=True,
)

DIALECTS: dict[str, Dialect] = {d.name: d for d in (SQLITE, MYSQL)}
