"""The data layer: one SQL schema, two backends (MySQL via pymysql, embedded SQLite by default).

    from serve_app.store import open_store
    with open_store() as store:          # MySQL when MYSQL_HOST is set, else the SQLite file
        candles = store.load_candles("BTC", "1h", limit=500)

No ray import anywhere in this package.
"""
from __future__ import annotations

from serve_app.settings import StoreSettings
from serve_app.store.base import (
    OUTCOME_COLUMNS, SIGNAL_COLUMNS, Candles, NewsItem, Store, StoreError, StoreUnavailable,
)

__all__ = [
    "OUTCOME_COLUMNS", "SIGNAL_COLUMNS", "Candles", "NewsItem", "Store", "StoreError",
    "StoreUnavailable", "StoreSettings", "open_store",
]


def open_store(settings: StoreSettings | None = None, migrate: bool = True) -> Store:
    """The Store for `settings` (default: StoreSettings.from_env()), with the schema applied unless
    `migrate` is False; it reads and writes the candles and news of `settings.exchange`/`quote` only.
    Raises StoreUnavailable when the database cannot be reached."""
    settings = settings or StoreSettings.from_env()
    if settings.backend == "mysql":
        from serve_app.store.mysql_store import MySQLStore

        store: Store = MySQLStore(settings.mysql_host or "", settings.mysql_port, settings.mysql_user,
                                  settings.mysql_password, settings.mysql_database,
                                  exchange=settings.exchange, quote=settings.quote)
    else:
        from serve_app.store.sqlite_store import SQLiteStore

        store = SQLiteStore(settings.sqlite_path, exchange=settings.exchange, quote=settings.quote)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store
