"""`signalgen ingest` (OHLCV candles from an exchange through ccxt) and `signalgen import candles|news
FILE` (candles or news sentiment from a file), both into the configured store (MySQL when MYSQL_HOST
is set, else the SQLite file). Both are idempotent: running them again adds no row twice.

The exchange is anything with `fetch_ohlcv(symbol, timeframe, since=None, limit=None)`, `rateLimit`
(ms) and optionally `milliseconds()`; the command builds a ccxt exchange with its own rate limiter
off and throttles here (`Throttle`), so the same code paces the calls in tests with a fake clock.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from serve_app.settings import DEFAULT_TIMEFRAME, StoreSettings
from serve_app.store import Store, StoreError, open_store
from serve_app.store.sample_data import DAY_MS, holds_sample_data, iso_utc, timeframe_ms
from serve_app.toolkit.candle_io import (
    FORMATS, REASONS, CandleValidator, RowError, Validated, parse_timestamp, read_candles,
    read_news, upsert_new,
)

DEFAULT_EXCHANGE = "binance"
DEFAULT_QUOTE = "USDT"
DEFAULT_DAYS = 90
DEFAULT_LIMIT = 1000
DEFAULT_RETRIES = 5
DEFAULT_SHOW = 20
MAX_SYMBOL = 32  # the store's symbol column


class IngestError(Exception):
    """Fetching from the exchange failed for good (rejected request, or network errors past the retries)."""


# --------------------------------------------------------------------------------------------------
# the exchange side
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------

@dataclass
class ImportResult:
    checked: Validated
    written: int  # valid rows upserted (0 when --strict aborted)
    new: int  # rows the store did not have before

    @property
    def exit_code(self) -> int:
        """1 when bad rows were found and nothing was stored, else 0."""
        return 1 if self.checked.bad and not self.written else 0


def import_candles(store: Store, path: str | Path, symbol: str, timeframe: str = DEFAULT_TIMEFRAME,
                   fmt: str | None = None, strict: bool = False) -> ImportResult:
    checked = read_candles(path, timeframe, fmt)
    if strict and checked.bad:
        return ImportResult(checked, 0, 0)
    return ImportResult(checked, len(checked.rows), upsert_new(store, symbol, timeframe, checked.rows))


def import_news(store: Store, path: str | Path, strict: bool = False) -> ImportResult:
    checked = read_news(path)
    if strict and checked.bad:
        return ImportResult(checked, 0, 0)
    return ImportResult(checked, len(checked.rows), store.insert_news(checked.rows))


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="pull OHLCV candles from an exchange (ccxt) into the store",
        description="Fetch complete OHLCV candles of SYMBOL/QUOTE from a ccxt exchange and upsert them into "
                    "the configured store (MYSQL_HOST set: MySQL, else SIGNAL_DB_PATH). Without --since it "
                    "resumes after the newest stored candle, or starts --days back. Idempotent.")
    p.add_argument("--exchange", default=DEFAULT_EXCHANGE, help="ccxt exchange id (default: %(default)s)")
    p.add_argument("--symbols", required=True, type=_symbol_list, help="base symbols, comma-separated: BTC,ETH")
    p.add_argument("--quote", default=DEFAULT_QUOTE, help="quote currency of the market (default: %(default)s)")
    p.add_argument("--timeframe", default=DEFAULT_TIMEFRAME, help="candle length (default: %(default)s)")
    p.add_argument("--since", type=_since, help="first candle: ISO date/time (UTC) or epoch ms "
                                                "(default: resume after the last stored candle)")
    p.add_argument("--days", type=_positive, default=DEFAULT_DAYS,
                   help="days back when nothing is stored yet and no --since (default: %(default)s)")
    p.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help="candles per call (default: %(default)s)")
    p.add_argument("--max-retries", type=_non_negative, default=DEFAULT_RETRIES,
                   help="retries of a call after a network error (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_show(p)
    p.set_defaults(func=_cmd_ingest)

    imp = sub.add_parser("import", help="load candles or news sentiment from a file into the store",
                         description="Load a file into the configured store; bad rows are reported with "
                                     "their line number (CSV) or array index (JSON) and skipped.")
    kinds = imp.add_subparsers(dest="kind", metavar="KIND", required=True)
    c = kinds.add_parser("candles", help="OHLCV from CSV (timestamp,open,high,low,close,volume) or JSON "
                                         "([[ms,o,h,l,c,v],...])")
    c.add_argument("file", type=Path, metavar="FILE", help="a .csv or .json file")
    c.add_argument("--symbol", required=True, type=_symbol, help="base symbol the candles are stored under")
    c.add_argument("--timeframe", default=DEFAULT_TIMEFRAME, help="candle length (default: %(default)s)")
    c.add_argument("--format", choices=FORMATS, help="file format (default: from the extension)")
    _add_import_options(c)
    c.set_defaults(func=_cmd_import_candles)
    n = kinds.add_parser("news", help="news sentiment CSV (published_at,symbol,source,score,headline)")
    n.add_argument("file", type=Path, metavar="FILE", help="a .csv file")
    _add_import_options(n)
    n.set_defaults(func=_cmd_import_news)


def _add_show(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", type=_non_negative, default=DEFAULT_SHOW,
                   help="list at most this many bad rows/gaps each (0: all; default: %(default)s)")


def _add_import_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true", help="store nothing if any row is bad")
    _add_show(p)


def _symbol(text: str) -> str:
    symbol = text.strip().upper()
    if not symbol or len(symbol) > MAX_SYMBOL or "/" in symbol or "," in symbol:
        raise argparse.ArgumentTypeError(f"{text!r} is not a base symbol (like BTC; the market is SYMBOL/--quote)")
    return symbol


def _symbol_list(text: str) -> list[str]:
    symbols = [_symbol(s) for s in text.split(",") if s.strip()]
    if not symbols:
        raise argparse.ArgumentTypeError("no symbol given")
    return list(dict.fromkeys(symbols))


def _since(text: str) -> int:
    try:
        return parse_timestamp(text, "--since")
    except RowError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is < 0")
    return value


def _fail(command: str, message: str) -> int:
    print(f"signalgen {command}: error: {message}", file=sys.stderr)
    return 2


def _cmd_ingest(args: argparse.Namespace) -> int:
    try:
        exchange = build_exchange(args.exchange)
    except IngestError as exc:
        return _fail("ingest", str(exc))
    return run_ingest(args, exchange)


def run_ingest(args: argparse.Namespace, exchange: Any, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic) -> int:
    """`signalgen ingest` with a given exchange object (and, in tests, a fake clock)."""
    from tqdm import tqdm

    try:
        feed = CandleFeed(exchange, args.timeframe, limit=args.limit, max_retries=args.max_retries,
                          sleep=sleep, clock=clock)
        store = open_store(StoreSettings.from_env())
    except (ValueError, StoreError) as exc:
        return _fail("ingest", str(exc))
    failed = []
    with store:
        print(f"ingesting {args.timeframe} candles from {feed.name} into {store.describe()}")
        for symbol in args.symbols:
            market = f"{symbol}/{args.quote.upper()}"
            try:
                since = args.since if args.since is not None else \
                    resume_from(store, symbol, args.timeframe, args.days, feed.now_ms())
                total = max(0, (feed.now_ms() - since) // feed.step)
                with tqdm(total=total, desc=symbol, unit="candle", disable=args.quiet, file=sys.stderr) as bar:
                    result = ingest_symbol(store, feed, symbol, market, since, bar.update)
            except (IngestError, StoreError) as exc:
                _fail("ingest", f"{symbol}: {exc}")
                failed.append(symbol)
                continue
            _print_ingest(result, args.show)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 2 if failed else 0


def _print_ingest(result: IngestResult, show: int) -> None:
    checked = result.checked
    line = (f"{result.symbol} ({result.market}) from {iso_utc(result.since_ms)}: fetched {result.fetched}, "
            f"stored new {result.new}, bad rows skipped {len(checked.bad)}")
    if checked.gaps:
        line += f", gaps {len(checked.gaps)} ({checked.missing_candles} candles missing)"
    print(line)
    _print_problems(checked, show)


def _cmd_import_candles(args: argparse.Namespace) -> int:
    def run(store: Store) -> ImportResult:
        if args.symbol in store.list_symbols(args.timeframe) and holds_sample_data(store, args.timeframe):
            print(f"warning: {store.describe()} holds the SYNTHETIC sample for {args.symbol}; the imported "
                  "candles are mixed into it (use an empty store to keep real data apart)", file=sys.stderr)
        return import_candles(store, args.file, args.symbol, args.timeframe, args.format, args.strict)

    return _run_import(args, f"{args.symbol} {args.timeframe} candles", run)


def _cmd_import_news(args: argparse.Namespace) -> int:
    return _run_import(args, "news", lambda store: import_news(store, args.file, args.strict))


def _run_import(args: argparse.Namespace, what: str, run: Callable[[Store], ImportResult]) -> int:
    try:
        with open_store(StoreSettings.from_env()) as store:
            where = store.describe()
            result = run(store)
    except (ValueError, StoreError) as exc:  # InputFileError is a ValueError
        return _fail("import", str(exc))
    checked = result.checked
    print(f"{args.file} -> {what} in {where}")
    print(f"rows read {checked.read}: stored {result.written} (new {result.new}), skipped {len(checked.bad)}")
    skipped = checked.skipped_by_reason()
    if skipped:
        print("skipped by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(skipped.items())))
    if checked.gaps:
        print(f"gaps: {len(checked.gaps)} ({checked.missing_candles} candles missing; the rows after them "
              "are stored)")
    if args.strict and checked.bad:
        print(f"--strict: {len(checked.bad)} bad rows, nothing stored", file=sys.stderr)
    _print_problems(checked, args.show)
    return result.exit_code


def _print_problems(checked: Validated, show: int) -> None:
    """Each bad row and gap on stderr (at most `show` of each, 0 = all)."""
    for kind, items, fmt in (
            ("bad rows", checked.bad, lambda b: f"{checked.location} {b.where}: {REASONS[b.reason]}: {b.detail}"),
            ("gaps", checked.gaps, lambda g: f"{checked.location} {g.where}: gap, {g.missing} candles missing "
                                             f"before {iso_utc(g.open_time)}")):
        listed = items if show == 0 else items[:show]
        for item in listed:
            print(f"  {fmt(item)}", file=sys.stderr)
        if len(items) > len(listed):
            print(f"  ... and {len(items) - len(listed)} more {kind} (--show 0 lists all)", file=sys.stderr)
