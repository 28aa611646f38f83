"""`signalgen ingest` (OHLCV candles from an exchange through ccxt: serve_app/data/exchange.py) and
`signalgen import candles|news FILE` (candles or news sentiment from a file: serve_app/data/candle_io.py),
both into the configured store (MySQL when MYSQL_HOST is set, else the SQLite file). Both are idempotent:
running them again adds no row twice. `ingest` stores under its --exchange/--quote source, `import` under
SIGNAL_EXCHANGE/SIGNAL_QUOTE's. (`signalgen collect`, serve_app/cli/collect.py, keeps several series fresh
through the same fetching code.)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from serve_app.settings import (
    DEFAULT_EXCHANGE, DEFAULT_QUOTE, DEFAULT_TIMEFRAME, StoreSettings, check_exchange, check_quote,
)
from serve_app.store import Store, StoreError, open_store
from serve_app.core.timeutil import DAY_MS, iso_utc
from serve_app.data.sample import holds_sample_data
from serve_app.data.candle_io import (
    FORMATS, REASONS, ImportResult, RowError, Validated, import_candles, import_news, parse_timestamp,
)
from serve_app.data.exchange import (
    DEFAULT_LIMIT, DEFAULT_RETRIES, EXCHANGE_URL_ENV, CandleFeed, IngestError, IngestResult, build_exchange,
    ingest_symbol, resume_from,
)

DEFAULT_DAYS = 90
DEFAULT_SHOW = 20
MAX_SYMBOL = 32  # the store's symbol column


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ingest", help="pull OHLCV candles from an exchange (ccxt) into the store",
        description="Fetch complete OHLCV candles of SYMBOL/QUOTE from a ccxt exchange and upsert them into "
                    "the configured store (MYSQL_HOST set: MySQL, else SIGNAL_DB_PATH), under the source "
                    "EXCHANGE/QUOTE. Without --since it resumes after the newest stored candle, or starts --days "
                    "back. Idempotent. To keep several symbols and timeframes fresh, use `signalgen collect`.")
    add_source_options(p)
    p.add_argument("--symbols", required=True, type=_symbol_list, help="base symbols, comma-separated: BTC,ETH")
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
    c.add_argument("--timeframe", help="candle length; by default the file's own spacing. Given, it must agree "
                                       "with the file, or nothing is stored")
    c.add_argument("--format", choices=FORMATS, help="file format (default: from the extension)")
    _add_import_options(c)
    c.set_defaults(func=_cmd_import_candles)
    n = kinds.add_parser("news", help="news sentiment CSV (published_at,symbol,source,score,headline)")
    n.add_argument("file", type=Path, metavar="FILE", help="a .csv file")
    _add_import_options(n)
    n.set_defaults(func=_cmd_import_news)


def add_source_options(p: argparse.ArgumentParser) -> None:
    """--exchange, --quote (the market and the store's source) and --exchange-url."""
    p.add_argument("--exchange", type=_exchange_id, default=os.environ.get("SIGNAL_EXCHANGE") or DEFAULT_EXCHANGE,
                   help="ccxt exchange id (default: SIGNAL_EXCHANGE, else %(default)s)")
    p.add_argument("--quote", type=_quote, default=os.environ.get("SIGNAL_QUOTE") or DEFAULT_QUOTE,
                   help="quote currency of the markets (default: SIGNAL_QUOTE, else %(default)s)")
    p.add_argument("--exchange-url", default=os.environ.get(EXCHANGE_URL_ENV) or None, metavar="URL",
                   help=f"send the exchange's API calls to this base URL instead (a proxy; default: "
                        f"{EXCHANGE_URL_ENV})")


def _exchange_id(text: str) -> str:
    try:
        return check_exchange(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _quote(text: str) -> str:
    try:
        return check_quote(text.strip().upper())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        exchange = build_exchange(args.exchange, args.exchange_url)
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
        store = open_store(StoreSettings.from_env().with_source(args.exchange, args.quote))
    except (ValueError, StoreError) as exc:
        return _fail("ingest", str(exc))
    failed = []
    with store:
        print(f"ingesting {args.timeframe} candles from {feed.name} into {store.describe()} "
              f"(source {args.exchange}/{args.quote})")
        for symbol in args.symbols:
            market = f"{symbol}/{args.quote}"
            try:
                since = args.since if args.since is not None else \
                    resume_from(store, symbol, args.timeframe, feed.now_ms() - args.days * DAY_MS)
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
        line += f", gaps {len(checked.gaps)} ({_candles(checked.missing_candles)} missing)"
    print(line)
    _print_problems(checked, show)


def _cmd_import_candles(args: argparse.Namespace) -> int:
    def run(store: Store) -> ImportResult:
        result = import_candles(store, args.file, args.symbol, args.timeframe, args.format, args.strict)
        tf = result.checked.timeframe
        if holds_sample_data(store, tf) and args.symbol in store.list_symbols(tf):
            print(f"warning: {store.describe()} holds the SYNTHETIC sample for {args.symbol}; the imported "
                  "candles are mixed into it (use an empty store to keep real data apart)", file=sys.stderr)
        return result

    return _run_import(args, f"{args.symbol} candles", run)


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
    if checked.timeframe:
        print(f"timeframe: {checked.timeframe_note}")
    print(f"rows read {checked.read}: stored {result.written} (new {result.new}), skipped {len(checked.bad)}")
    skipped = checked.skipped_by_reason()
    if skipped:
        print("skipped by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(skipped.items())))
    duplicates = skipped.get("duplicate", 0)
    print(f"duplicates: {duplicates}" + (" (the first of each kept)" if duplicates else ""))
    if checked.timeframe:
        print(f"gaps: {len(checked.gaps)}" + (f" ({_candles(checked.missing_candles)} missing; the rows after them "
                                               "are stored)" if checked.gaps else ""))
    if args.strict and checked.bad:
        print(f"--strict: {len(checked.bad)} bad rows, nothing stored", file=sys.stderr)
    _print_problems(checked, args.show)
    return result.exit_code


def _candles(n: int) -> str:
    return f"{n} candle" + ("s" if n != 1 else "")


def _print_problems(checked: Validated, show: int) -> None:
    """Each bad row and gap on stderr (at most `show` of each, 0 = all)."""
    for kind, items, fmt in (
            ("bad rows", checked.bad, lambda b: f"{checked.location} {b.where}: {REASONS[b.reason]}: {b.detail}"),
            ("gaps", checked.gaps, lambda g: f"{checked.location} {g.where}: gap, {_candles(g.missing)} missing "
                                             f"before {iso_utc(g.open_time)}")):
        listed = items if show == 0 else items[:show]
        for item in listed:
            print(f"  {fmt(item)}", file=sys.stderr)
        if len(items) > len(listed):
            print(f"  ... and {len(items) - len(listed)} more {kind} (--show 0 lists all)", file=sys.stderr)
