"""The store interface: one SQL schema, two backends (MySQL via pymysql, embedded SQLite).

No ray import here. Every query is parameterized. Times are UTC epoch milliseconds (BIGINT).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np


class StoreError(Exception):
    """Base class for store failures."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (connection refused, dropped and not recoverable now)."""


@dataclass
class Candles:
    """Columnar OHLCV for one symbol/timeframe, ascending by open_time (ms)."""

    symbol: str
    timeframe: str
    open_time: np.ndarray  # int64 ms
    open: np.ndarray  # float64
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    def tail(self, n: int) -> "Candles":
        s = slice(max(len(self) - n, 0), None)
        return Candles(self.symbol, self.timeframe, self.open_time[s], self.open[s], self.high[s],
                       self.low[s], self.close[s], self.volume[s])

    @classmethod
    def from_rows(cls, symbol: str, timeframe: str, rows: Sequence[Sequence[Any]]) -> "Candles":
        """rows: (open_time_ms, open, high, low, close, volume) tuples, ascending."""
        if len(rows) == 0:
            e = np.empty(0, dtype=np.float64)
            return cls(symbol, timeframe, np.empty(0, dtype=np.int64), e, e.copy(), e.copy(), e.copy(), e.copy())
        arr = np.asarray(rows, dtype=np.float64)
        return cls(symbol, timeframe, arr[:, 0].astype(np.int64), arr[:, 1].copy(), arr[:, 2].copy(),
                   arr[:, 3].copy(), arr[:, 4].copy(), arr[:, 5].copy())

    def to_rows(self) -> list[tuple[int, float, float, float, float, float]]:
        """The inverse of `from_rows`: (open_time_ms, open, high, low, close, volume) tuples of plain
        Python numbers, ascending — what `Store.upsert_candles` takes."""
        return list(zip(self.open_time.tolist(), self.open.tolist(), self.high.tolist(),
                        self.low.tolist(), self.close.tolist(), self.volume.tolist()))


@dataclass
class NewsItem:
    symbol: str
    published_at: int  # ms
    source: str
    score: float  # -1..1
    headline: str


# Columns of the `signals` table, in order. Every field of the response is stored; the nested
# ones flattened, lists/dicts as JSON text. `Signal.row()` in serve_app.core.records builds these dicts.
SIGNAL_COLUMNS: tuple[str, ...] = (
    "signal_id", "symbol", "timeframe", "price", "action", "confidence",
    "prob_down", "prob_flat", "prob_up",
    "position_size", "position_notional", "fraction_of_equity",
    "approved", "stop_loss", "take_profit", "reasons",
    "sentiment", "momentum", "regime", "market_context",
    "model_version", "generated_at", "generated_at_ms", "payload",
)

OUTCOME_COLUMNS: tuple[str, ...] = (
    "signal_id", "horizon_candles", "entry_price", "exit_price", "realized_return", "hit", "evaluated_at_ms",
)


@dataclass(frozen=True)
class CandleSeries:
    symbol: str
    timeframe: str
    candles: int
    first_open_ms: int
    last_open_ms: int


class Store(ABC):
    """One interface for both backends. Implementations must be safe to call from one thread at a time
    (deployments serialise access with a lock).

    Candles and news belong to a market data source, `source` = (exchange, quote): every candle and news
    method reads and writes the rows of the store's own source only (signals are not per source)."""

    backend: str
    source: tuple[str, str]

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def migrate(self) -> None:
        """Create every table/index if missing (idempotent)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the database cannot answer `SELECT 1`."""

    @abstractmethod
    def close(self) -> None: ...

    # candles
    @abstractmethod
    def upsert_candles(self, symbol: str, timeframe: str, rows: Iterable[Sequence[Any]]) -> int:
        """rows: (open_time_ms, open, high, low, close, volume). Insert or update; returns rows written."""

    @abstractmethod
    def load_candles(self, symbol: str, timeframe: str, limit: int | None = None,
                     since_ms: int | None = None, until_ms: int | None = None) -> Candles:
        """Ascending by open_time; `limit` keeps the most recent `limit` candles."""

    @abstractmethod
    def list_symbols(self, timeframe: str) -> list[str]:
        """Symbols that have candles in this timeframe, sorted."""

    @abstractmethod
    def candle_series(self) -> list[CandleSeries]:
        """Every (symbol, timeframe) the store holds candles for: how many and their first and last open."""

    def list_timeframes(self) -> list[str]:
        """The timeframes the store holds candles in, shortest first."""
        from serve_app.core.timeutil import timeframe_ms

        return sorted({s.timeframe for s in self.candle_series()}, key=timeframe_ms)

    def delete_candles(self, symbol: str, timeframe: str, before_ms: int | None = None,
                       after_ms: int | None = None) -> int:
        """Delete this symbol's candles opening before `before_ms` or after `after_ms` (both None:
        all of them); returns rows deleted. Used to re-anchor the synthetic sample."""
        raise NotImplementedError

    def sources(self) -> list[tuple[str, str, int]]:
        """Every source the database holds candles of: (exchange, quote, candles), sorted."""
        raise NotImplementedError

    # news
    @abstractmethod
    def insert_news(self, items: Iterable[NewsItem]) -> int: ...

    @abstractmethod
    def load_news(self, since_ms: int, symbols: Sequence[str] | None = None) -> list[NewsItem]:
        """News published at or after since_ms, ascending by published_at."""

    def delete_news(self, source: str, symbols: Sequence[str] | None = None) -> int:
        """Delete the news of one `source` (optionally only for `symbols`); returns rows deleted."""
        raise NotImplementedError

    # signals and outcomes
    @abstractmethod
    def insert_signals(self, records: Sequence[dict[str, Any]]) -> int:
        """Insert signal records (dicts keyed by SIGNAL_COLUMNS). Idempotent on signal_id: a record
        written twice is stored once. Returns the number of new rows."""

    @abstractmethod
    def load_signals(self, symbol: str | None = None, since_ms: int | None = None,
                     limit: int | None = None) -> list[dict[str, Any]]:
        """Ascending by generated_at_ms."""

    @abstractmethod
    def count_signals(self) -> int: ...

    @abstractmethod
    def signals_without_outcome(self, generated_before_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Signals generated before the given time that have no row in signal_outcomes yet."""

    @abstractmethod
    def insert_outcomes(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert outcome rows (dicts keyed by OUTCOME_COLUMNS); idempotent on signal_id."""

    @abstractmethod
    def load_performance_rows(self, since_ms: int | None = None) -> list[dict[str, Any]]:
        """Signals joined with their outcomes: symbol, action, confidence, approved, realized_return, hit."""
