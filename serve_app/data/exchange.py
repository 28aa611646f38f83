"""Candles from an exchange through ccxt: paging, pacing, retries, and storing only complete candles.

The exchange is anything with `fetch_ohlcv(symbol, timeframe, since=None, limit=None)`, `rateLimit` (ms)
and optionally `milliseconds()`. `build_exchange` makes a ccxt exchange that paces its own calls (ccxt's
rate limiter, `enableRateLimit`); an exchange object without it (a test double) is paced here by `Throttle`.
Errors are retried here in both cases: ccxt.NetworkError (timeouts, exchange unavailable, rate limited) with
exponential backoff, a bounded number of times; every other ccxt error is final. Both `signalgen ingest` and
`signalgen collect` (serve_app/data/collector.py) fetch through `CandleFeed` and store through `ingest_symbol`.
ccxt is imported inside the functions that need it (the toolkit extra).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar
from urllib.parse import urlsplit

from serve_app.core.timeutil import timeframe_ms
from serve_app.data.candle_io import CandleValidator, Validated, upsert_new
from serve_app.store import Store

DEFAULT_LIMIT = 1000
DEFAULT_RETRIES = 5
EXCHANGE_URL_ENV = "SIGNAL_EXCHANGE_URL"

T = TypeVar("T")


class IngestError(Exception):
    """Fetching from the exchange failed for good: a rejected request, or network errors past the retries.
    `error` is the ccxt error's name (e.g. "DDoSProtection"), `tries` how many calls were made, `network`
    whether it was a network error (the exchange unreachable, rather than refusing the request)."""

    def __init__(self, message: str, error: str = "", tries: int = 1, network: bool = False) -> None:
        super().__init__(message)
        self.error, self.tries, self.network = error, tries, network


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


def _first_line(exc: BaseException, width: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= width else text[:width - 3] + "..."


class Caller:
    """Calls the exchange: paced (unless ccxt paces itself), a ccxt.NetworkError retried up to
    `max_retries` times with exponential backoff (`backoff_s`, doubling), any other ccxt error final.
    Raises IngestError naming what was asked (`what`), the error and the number of tries."""

    def __init__(self, exchange: Any, *, max_retries: int = DEFAULT_RETRIES, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.exchange, self.max_retries, self.backoff_s, self.sleep = exchange, max_retries, backoff_s, sleep
        paced_by_ccxt = bool(getattr(exchange, "enableRateLimit", False))
        interval = 0.0 if paced_by_ccxt else float(getattr(exchange, "rateLimit", 0) or 0) / 1000.0
        self.throttle = Throttle(interval, sleep, clock)
        self.name = str(getattr(exchange, "id", type(exchange).__name__))

    def __call__(self, what: str, call: Callable[[], T]) -> T:
        import ccxt

        for attempt in range(1, self.max_retries + 2):
            self.throttle.wait()
            try:
                return call()
            except ccxt.NetworkError as exc:
                if attempt > self.max_retries:
                    raise IngestError(f"{what}: {type(exc).__name__} after {attempt} tries: {_first_line(exc)}",
                                      type(exc).__name__, attempt, network=True) from None
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
            except ccxt.BaseError as exc:
                raise IngestError(f"{what}: {type(exc).__name__}: {_first_line(exc)}", type(exc).__name__,
                                  attempt) from None
        raise AssertionError("unreachable")

    def now_ms(self) -> int:
        """The exchange's clock: its server time when ccxt can fetch it (`fetchTime`), so that which candle
        is still open is decided by the exchange's clock and not this machine's; else ccxt's
        `milliseconds()` (this machine's clock)."""
        has = getattr(self.exchange, "has", None) or {}
        if has.get("fetchTime"):
            server = self(f"{self.name} server time", self.exchange.fetch_time)
            if isinstance(server, (int, float)) and server > 0:
                return int(server)
        clock = getattr(self.exchange, "milliseconds", None)
        return int(clock()) if callable(clock) else int(time.time() * 1000)


class CandleFeed:
    """The complete candles of one market, page by page, from `since_ms` up to now.

    Calls go through a `Caller` (pacing, retries). The candle still in progress (open_time + timeframe >
    now) is never returned; `now_ms` gives "now" (default: the exchange's `milliseconds()`)."""

    def __init__(self, exchange: Any, timeframe: str, *, limit: int = DEFAULT_LIMIT,
                 max_retries: int = DEFAULT_RETRIES, backoff_s: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 now_ms: Callable[[], int] | None = None) -> None:
        self.exchange, self.timeframe, self.limit = exchange, timeframe, limit
        self.step = timeframe_ms(timeframe)
        self.call = Caller(exchange, max_retries=max_retries, backoff_s=backoff_s, sleep=sleep, clock=clock)
        self.name = self.call.name
        self._now_ms = now_ms

    def now_ms(self) -> int:
        """`now_ms()` if given, else the exchange's `milliseconds()` when it has one, else this machine's."""
        if self._now_ms is not None:
            return int(self._now_ms())
        clock = getattr(self.exchange, "milliseconds", None)
        return int(clock()) if callable(clock) else int(time.time() * 1000)

    def pages(self, market: str, since_ms: int, max_candles: int | None = None) -> Iterator[list[Sequence[Any]]]:
        """Pages of complete candles from `since_ms`; at most `max_candles` rows in all when given."""
        cursor, left = int(since_ms), max_candles
        while left is None or left > 0:
            now = self.now_ms()
            if cursor + self.step > now:  # the next candle is not complete yet
                return
            limit = self.limit if left is None else min(self.limit, left)
            # from the cursor on, complete candles only; rows without a usable time go to the validator
            complete = [r for r in self._fetch(market, cursor, limit)
                        if (t := _open_time(r)) is None or cursor <= t <= now - self.step][:limit]
            times = [t for t in map(_open_time, complete) if t is not None]
            if not times:
                return
            yield complete
            cursor = max(times) + self.step
            if left is not None:
                left -= len(complete)

    def _fetch(self, market: str, since_ms: int, limit: int) -> list[Sequence[Any]]:
        return list(self.call(f"{market} {self.timeframe}", lambda: self.exchange.fetch_ohlcv(
            market, self.timeframe, since=since_ms, limit=limit)))


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
    last_open_ms: int | None = None  # the newest complete candle fetched
    bounded: bool = False  # stopped at max_candles: there may be more to fetch


def resume_from(store: Store, symbol: str, timeframe: str, start_ms: int) -> int:
    """The candle after the newest stored one; with none stored, `start_ms` (floored to the grid)."""
    step = timeframe_ms(timeframe)
    last = store.load_candles(symbol, timeframe, limit=1)
    if len(last):
        return int(last.open_time[-1]) + step
    return int(start_ms) - int(start_ms) % step


def ingest_symbol(store: Store, feed: CandleFeed, symbol: str, market: str, since_ms: int,
                  progress: Callable[[int], Any] | None = None, max_candles: int | None = None) -> IngestResult:
    """Fetch `market` from `since_ms` (at most `max_candles`) and upsert the valid complete candles under
    `symbol`, page by page (an interrupted run keeps what it stored; the next run resumes after it)."""
    validator = CandleValidator(feed.timeframe, "index")
    fetched = new = 0
    last: int | None = None
    for page in feed.pages(market, since_ms, max_candles):
        rows = [row for i, r in enumerate(page) if (row := validator.add(fetched + i, r)) is not None]
        fetched += len(page)
        new += upsert_new(store, symbol, feed.timeframe, rows)
        last = max([last or 0, *(t for t in map(_open_time, page) if t is not None)])
        if progress is not None:
            progress(len(page))
    bounded = max_candles is not None and fetched >= max_candles
    return IngestResult(symbol, market, since_ms, fetched, new, validator.result(), last, bounded)


def build_exchange(exchange_id: str, url: str | None = None, timeout_ms: int | None = None) -> Any:
    """The ccxt exchange `exchange_id` for public market data: its own rate limiter on, spot markets only
    (where it loads several market types), a body that is not JSON an error (ccxt would take it for an
    empty answer), and with `url` every API address moved to that base URL (a proxy, or a test's fake
    exchange): https://api.binance.com/api/v3 becomes <url>/api/v3."""
    import ccxt

    if exchange_id not in ccxt.exchanges:
        raise IngestError(f"unknown exchange {exchange_id!r} (not a ccxt exchange id, e.g. binance, kraken, "
                          "coinbase, okx, bybit)")
    config: dict[str, Any] = {"enableRateLimit": True}
    if timeout_ms is not None:
        config["timeout"] = int(timeout_ms)
    exchange = getattr(ccxt, exchange_id)(config)
    markets = exchange.options.get("fetchMarkets") if isinstance(exchange.options, dict) else None
    if isinstance(markets, dict) and "spot" in (markets.get("types") or []):
        markets["types"] = ["spot"]
    elif isinstance(markets, list) and "spot" in markets:
        exchange.options["fetchMarkets"] = ["spot"]
    if url:
        exchange.urls["api"] = rebase_urls(exchange.urls["api"], url)
    exchange.on_rest_response = _json_checked(exchange, exchange.on_rest_response)
    return exchange


def rebase_urls(api: Any, base: str) -> Any:
    """`api` (ccxt's urls['api']: a URL, or dicts of them) with each URL's scheme and host replaced by
    `base`'s (a path in `base` goes in front of the URL's own path)."""
    if isinstance(api, dict):
        return {key: rebase_urls(value, base) for key, value in api.items()}
    if not isinstance(api, str) or "://" not in api:
        return api
    target = urlsplit(base.rstrip("/"))
    if not target.scheme or not target.netloc:
        raise IngestError(f"exchange URL {base!r} is not a base URL like http://127.0.0.1:8080")
    path = urlsplit(api.replace("{hostname}", "host")).path
    return f"{target.scheme}://{target.netloc}{target.path}{path}"


def _json_checked(exchange: Any, on_rest_response: Callable[..., Any]) -> Callable[..., Any]:
    """ccxt's response hook, plus: a successful answer that claims JSON (or looks like it) but does not parse
    raises ccxt.BadResponse. (ccxt itself would hand such a body on as text, and fetch_ohlcv would make an
    empty list of it: "no candles", silently.)"""
    import ccxt

    def check(code: int, reason: str, url: str, method: str, headers: Any, body: Any, *rest: Any) -> Any:
        body = on_rest_response(code, reason, url, method, headers, body, *rest)
        if 200 <= int(code or 0) < 300 and isinstance(body, str) and body.strip():
            ctype = str((headers or {}).get("Content-Type", ""))
            if "json" in ctype or body.lstrip()[:1] in ("[", "{"):
                try:
                    json.loads(body)
                except ValueError:
                    raise ccxt.BadResponse(f"{exchange.id} {method} {url} {code}: the body is not valid JSON "
                                           f"({len(body)} bytes: {body[:60]!r}...)") from None
        return body

    return check
