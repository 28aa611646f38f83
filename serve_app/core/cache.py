"""In-memory candle cache, refreshed incrementally from the store off the request path.

Used by the FeatureEngine (recent window for features) and MarketContext (closes for momentum, breadth
and the volatility regime). No ray import.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from serve_app.store.base import Candles, Store, StoreError

log = logging.getLogger(__name__)


def _merge(old: Candles, new: Candles, window: int) -> Candles:
    """Append `new` to `old`; candles of `new` replace those with the same open_time."""
    if len(new) == 0:
        return old
    keep = old.open_time < new.open_time[0]
    parts = [(getattr(old, f)[keep], getattr(new, f)) for f in ("open_time", "open", "high", "low", "close", "volume")]
    merged = Candles(old.symbol, old.timeframe, *[np.concatenate(p) for p in parts])
    return merged.tail(window)


class CandleCache:
    """Keeps the last `window` candles of every symbol in the store for one timeframe.

    `refresh()` asks the store only for candles at or after each symbol's newest cached open time
    (the current bar may have changed) and for the symbol list; it never raises: a store failure is
    recorded in `last_error` and the cache keeps serving what it has (the pipeline then marks signals
    `served_from_cache`). A store that cannot be opened is opened again at the next refresh, and an
    open MySQL store reconnects by itself, so the cache recovers when the database is back."""

    def __init__(self, store_factory: Callable[[], Store], timeframe: str, window: int,
                 symbols: list[str] | None = None,
                 on_query: Callable[[str, float, bool], None] | None = None):
        """on_query(op, seconds, failed) is told about every refresh (for the DB latency/error metrics)."""
        self._store_factory = store_factory
        self._on_query = on_query
        self._store: Store | None = None
        self.timeframe = timeframe
        self.window = window
        self.only_symbols = symbols
        self.data: dict[str, Candles] = {}
        self.lock = threading.Lock()  # serialises store access
        self.last_refresh_ok: float | None = None
        self.last_error: str | None = None
        self.refreshes = 0

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = self._store_factory()
        return self._store

    def refresh(self) -> bool:
        t0 = time.perf_counter()
        with self.lock:
            try:
                symbols = self.store.list_symbols(self.timeframe)
                if self.only_symbols:
                    symbols = [s for s in symbols if s in set(self.only_symbols)]
                for sym in symbols:
                    cur = self.data.get(sym)
                    if cur is None or len(cur) == 0:
                        self.data[sym] = self.store.load_candles(sym, self.timeframe, limit=self.window)
                    else:
                        new = self.store.load_candles(sym, self.timeframe, since_ms=int(cur.open_time[-1]))
                        self.data[sym] = _merge(cur, new, self.window)
                self.last_refresh_ok = time.time()
                self.last_error = None
                self.refreshes += 1
                ok = True
            except StoreError as e:
                # the store reconnects by itself on the next call: keep it, keep serving what is cached
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("candle cache refresh failed: %s", self.last_error)
                ok = False
            except Exception as e:  # a driver error no backend mapped: never let it kill the refresh thread
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("candle cache refresh failed unexpectedly; reopening the store next time")
                self._discard_store()
                ok = False
        if self._on_query is not None:
            self._on_query("refresh_candles", time.perf_counter() - t0, not ok)
        return ok

    def _discard_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception:  # already broken; nothing to release
                pass

    def age_s(self) -> float | None:
        return None if self.last_refresh_ok is None else time.time() - self.last_refresh_ok

    def newest_open_ms(self) -> dict[str, int]:
        return {s: int(c.open_time[-1]) for s, c in self.data.items() if len(c)}

    def start_background(self, interval_s: float) -> threading.Event:
        """Refresh every `interval_s` seconds on a daemon thread; set the returned event to stop."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.refresh()
                except Exception:  # e.g. the on_query callback: the loop must outlive any one refresh
                    log.exception("candle cache refresh loop: unexpected error")

        self._thread = threading.Thread(target=loop, name=f"candle-cache-{self.timeframe}", daemon=True)
        self._thread.start()
        return stop

    def background_alive(self) -> bool:
        t = getattr(self, "_thread", None)
        return t is not None and t.is_alive()
