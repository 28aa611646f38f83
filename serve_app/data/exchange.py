"""Candles from an exchange through ccxt: paging, pacing, retries, and storing only complete candles.

The exchange is anything with `fetch_ohlcv(symbol, timeframe, since=None, limit=None)`, `rateLimit` (ms)
and optionally `milliseconds()`; `build_exchange` makes a ccxt exchange with its own rate limiter off and
`Throttle` paces the calls here, so the same code runs against a fake exchange and a fake clock in tests.
ccxt is imported inside the functions that need it (the toolkit extra).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from serve_app.core.timeutil import DAY_MS, timeframe_ms
from serve_app.data.candle_io import CandleValidator, Validated, upsert_new
from serve_app.store import Store

DEFAULT_LIMIT = 1000
DEFAULT_RETRIES = 5


class IngestError(Exception):
    """Fetching from the exchange failed for good (rejected request, or network errors past the retries)."""


class Throttle:
    """At least `interval_s` between the starts of consecutive calls."""

    def __init__(self, interval_s: float, sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        self.interval_s, self.sleep, self.clock = interval_s, sleep, clock
        self._last: float | None = None

    def wait(self) -> None:
        if self._last is not None:
            pause = self._last + self.interval_s - self.clock()
            if pause > 0:
                self.sleep(pause)
        self._last = self.clock()


class CandleFeed:
    """The complete candles of one market, page by page, from `since_ms` up to now.

    Each call is throttled to the exchange's `rateLimit`; a ccxt.NetworkError (timeouts, exchange
    unavailable, rate limited) is retried up to `max_retries` times with exponential backoff
    (`backoff_s`, doubling); any other ccxt error (bad symbol, unsupported timeframe) is final.
    The candle still in progress (open_time + timeframe > now) is never returned."""

    def __init__(self, exchange: Any, timeframe: str, *, limit: int = DEFAULT_LIMIT,
                 max_retries: int = DEFAULT_RETRIES, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.exchange, self.timeframe, self.limit = exchange, timeframe, limit
        self.step = timeframe_ms(timeframe)
        self.max_retries, self.backoff_s, self.sleep = max_retries, backoff_s, sleep
        self.throttle = Throttle(float(getattr(exchange, "rateLimit", 0) or 0) / 1000.0, sleep, clock)
        self.name = str(getattr(exchange, "id", type(exchange).__name__))

    def now_ms(self) -> int:
        """The exchange's clock when it has one (ccxt's `milliseconds()`), else this machine's."""
        clock = getattr(self.exchange, "milliseconds", None)
        return int(clock()) if callable(clock) else int(time.time() * 1000)

    def pages(self, market: str, since_ms: int) -> Iterator[list[Sequence[Any]]]:
        cursor = int(since_ms)
        while True:
            now = self.now_ms()
            if cursor + self.step > now:  # the next candle is not complete yet
                return
            # from the cursor on, complete candles only; rows without a usable time go to the validator
            complete = [r for r in self._fetch(market, cursor)
                        if (t := _open_time(r)) is None or cursor <= t <= now - self.step]
            times = [t for t in map(_open_time, complete) if t is not None]
            if not times:
                return
            yield complete
            cursor = max(times) + self.step

    def _fetch(self, market: str, since_ms: int) -> list[Sequence[Any]]:
        import ccxt

        for attempt in range(self.max_retries + 1):
            self.throttle.wait()
            try:
                return list(self.exchange.fetch_ohlcv(market, self.timeframe, since=since_ms, limit=self.limit))
            except ccxt.NetworkError as exc:
                if attempt == self.max_retries:
                    raise IngestError(f"{self.name}: {market} {self.timeframe}: network error, gave up after "
                                      f"{attempt + 1} attempts (--max-retries {self.max_retries}): "
                                      f"{type(exc).__name__}: {exc}") from None
                self.sleep(self.backoff_s * 2 ** attempt)
            except ccxt.BaseError as exc:
                raise IngestError(f"{self.name} rejected {market} {self.timeframe}: "
                                  f"{type(exc).__name__}: {exc}") from None
        raise AssertionError("unreachable")


def _open_time(row: Any) -> int | None:
    """A fetched row's open time when it has a usable one (anything else is left to the validator)."""
    if isinstance(row, (list, tuple)) and row and isinstance(row[0], (int, float)) and not isinstance(row[0], bool):
        return int(row[0])
    return None


@dataclass
class IngestResult:
    symbol: str
    market: str
    since_ms: int
    fetched: int
    new: int
    checked: Validated


def resume_from(store: Store, symbol: str, timeframe: str, days: int, now_ms: int) -> int:
    """The candle after the newest stored one; with none stored, `days` back from now (on the grid)."""
    step = timeframe_ms(timeframe)
    last = store.load_candles(symbol, timeframe, limit=1)
    if len(last):
        return int(last.open_time[-1]) + step
    start = now_ms - days * DAY_MS
    return start - start % step


def ingest_symbol(store: Store, feed: CandleFeed, symbol: str, market: str, since_ms: int,
                  progress: Callable[[int], Any] | None = None) -> IngestResult:
    """Fetch `market` from `since_ms` and upsert the valid complete candles under `symbol`, page by page
    (an interrupted run keeps what it stored; the next run resumes after it)."""
    validator = CandleValidator(feed.timeframe, "index")
    fetched = new = 0
    for page in feed.pages(market, since_ms):
        rows = [row for i, r in enumerate(page) if (row := validator.add(fetched + i, r)) is not None]
        fetched += len(page)
        new += upsert_new(store, symbol, feed.timeframe, rows)
        if progress is not None:
            progress(len(page))
    return IngestResult(symbol, market, since_ms, fetched, new, validator.result())


def build_exchange(exchange_id: str) -> Any:
    """The ccxt exchange `exchange_id`, its own rate limiter off (CandleFeed throttles)."""
    import ccxt

    if exchange_id not in ccxt.exchanges:
        raise IngestError(f"unknown exchange {exchange_id!r} (not a ccxt exchange id, e.g. binance, kraken, "
                          "coinbase, okx, bybit)")
    return getattr(ccxt, exchange_id)({"enableRateLimit": False})
