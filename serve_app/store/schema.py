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
from typing import Callable, Sequence

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

# The market data source of a candle or news row (migration 2): the exchange (a ccxt id) and the quote
# currency. Every candle and news query of the store is limited to the store's own source.
SOURCE_COLUMNS: tuple[Column, ...] = (Column("exchange", "VARCHAR(32)", False), Column("quote", "VARCHAR(16)", False))
SOURCE_KEY: tuple[str, ...] = tuple(c.name for c in SOURCE_COLUMNS)

_CANDLE_COLUMNS = (Column("symbol", "VARCHAR(32)", False), Column("timeframe", "VARCHAR(8)", False),
                   Column("open_time", "BIGINT", False), Column("open", "DOUBLE", False),
                   Column("high", "DOUBLE", False), Column("low", "DOUBLE", False),
                   Column("close", "DOUBLE", False), Column("volume", "DOUBLE", False))
CANDLES_V1 = Table("candles", _CANDLE_COLUMNS, primary_key=("symbol", "timeframe", "open_time"))
CANDLES = Table("candles", SOURCE_COLUMNS + _CANDLE_COLUMNS,
                primary_key=(*SOURCE_KEY, "symbol", "timeframe", "open_time"))

# headline_hash = sha256(headline) in hex: the unique key cannot include a TEXT column on MySQL.
_NEWS_COLUMNS = (Column("symbol", "VARCHAR(32)", False), Column("published_at", "BIGINT", False),
                 Column("source", "VARCHAR(64)", False), Column("score", "DOUBLE", False),
                 Column("headline", "TEXT", False), Column("headline_hash", "CHAR(64)", False))
NEWS_SENTIMENT_V1 = Table(
    "news_sentiment", (Column("id", "AUTO_ID", False),) + _NEWS_COLUMNS,
    indexes=(Index("news_symbol_published", ("symbol", "published_at")),
             Index("news_published", ("published_at",)),
             Index("news_dedup", ("symbol", "published_at", "source", "headline_hash"), unique=True)),
)
NEWS_COLUMNS: tuple[str, ...] = (*SOURCE_KEY, *(c.name for c in _NEWS_COLUMNS))
NEWS_DEDUP = Index("news_dedup", (*SOURCE_KEY, "symbol", "published_at", "source", "headline_hash"), unique=True)
NEWS_SENTIMENT = Table(
    "news_sentiment", (Column("id", "AUTO_ID", False),) + SOURCE_COLUMNS + _NEWS_COLUMNS,
    indexes=(Index("news_symbol_published", (*SOURCE_KEY, "symbol", "published_at")),
             Index("news_published", (*SOURCE_KEY, "published_at")),
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


Statement = tuple[str, tuple]  # SQL with `?` placeholders, and its parameters


@dataclass(frozen=True)
class Migration:
    """One schema version: tables to create, and existing tables that gain the source columns (given as
    their new definition). Applying it twice changes nothing: tables are created IF NOT EXISTS, and a table
    that has the source columns already is left alone."""

    version: int
    description: str
    tables: tuple[Table, ...] = field(default=())
    add_source: tuple[Table, ...] = field(default=())

    def statements(self, dialect: "Dialect", columns: Callable[[str], set[str]],
                   source: tuple[str, str]) -> list[Statement]:
        """What brings a database at the previous version to this one. `columns(table)` is the table's
        current column names; `source` the (exchange, quote) existing rows are given."""
        out: list[Statement] = [(stmt, ()) for table in self.tables for stmt in dialect.create_table(table)]
        for table in self.add_source:
            if not set(SOURCE_KEY) <= columns(table.name):
                out += dialect.add_source_columns(table, source)
            # rows the columns were added to without their values ('' on MySQL): also after an interrupted run
            out.append((f"UPDATE {table.name} SET {SOURCE_KEY[0]} = ?, {SOURCE_KEY[1]} = ? "
                        f"WHERE {SOURCE_KEY[0]} = ''", tuple(source)))
        return out


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "candles, news_sentiment, signals, signal_outcomes",
              (CANDLES_V1, NEWS_SENTIMENT_V1, SIGNALS, SIGNAL_OUTCOMES)),
    Migration(2, "candles and news_sentiment carry their exchange and quote currency",
              add_source=(CANDLES, NEWS_SENTIMENT)),
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

    def columns_query(self) -> str:
        """The column names of the table given as the one parameter."""
        if self.name == "mysql":
            return ("SELECT COLUMN_NAME FROM information_schema.COLUMNS "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?")
        return "SELECT name FROM pragma_table_info(?)"

    def add_source_columns(self, table: Table, source: tuple[str, str]) -> list[Statement]:
        """Bring `table` from its definition without the source columns to `table` (its definition with
        them, in its primary key and indexes); existing rows get `source` (exchange, quote).

        MySQL: one ALTER TABLE (atomic) adds the columns without a default - existing rows get '', which the
        migration's UPDATE then replaces - and rebuilds the keys. SQLite cannot change a primary key, so the
        table is rebuilt: created anew under a temporary name, filled, swapped in (the store runs a
        migration's statements in one transaction there)."""
        names = table.column_names
        if self.name == "mysql":
            at = names.index(SOURCE_KEY[0])
            parts = [f"ADD COLUMN {self.column_sql(c)} " + (f"AFTER {names[at + i - 1]}" if at + i else "FIRST")
                     for i, c in enumerate(SOURCE_COLUMNS)]
            if table.primary_key:
                parts += ["DROP PRIMARY KEY", f"ADD PRIMARY KEY ({', '.join(table.primary_key)})"]
            for ix in table.indexes:
                parts += [f"DROP INDEX {ix.name}",
                          f"ADD {'UNIQUE ' if ix.unique else ''}KEY {ix.name} ({', '.join(ix.columns)})"]
            return [(f"ALTER TABLE {table.name} {', '.join(parts)}", ())]
        old = [c for c in names if c not in SOURCE_KEY]
        staging = Table(f"{table.name}__v2", table.columns, table.primary_key)
        return [*[(stmt, ()) for stmt in self.create_table(staging)],
                (f"INSERT INTO {staging.name} ({', '.join((*SOURCE_KEY, *old))}) "
                 f"SELECT ?, ?, {', '.join(old)} FROM {table.name}", tuple(source)),
                (f"DROP TABLE {table.name}", ()),
                (f"ALTER TABLE {staging.name} RENAME TO {table.name}", ()),
                *[(stmt, ()) for stmt in self.create_table(table)[1:]]]  # its indexes, under their names

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
