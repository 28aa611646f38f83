"""`signalgen collect`: keep the store's market data fresh from an exchange (serve_app/data/collector.py).

    signalgen collect [--exchange ID] [--quote Q] [--symbols BTC,ETH,SOL] [--timeframes 1h,1m]
                      [--max-candles N] [--since ISO] [--loop [--interval SECONDS]] [--quiet]

Defaults from the environment: SIGNAL_EXCHANGE, SIGNAL_QUOTE, SIGNAL_SYMBOLS, SIGNAL_TIMEFRAMES,
SIGNAL_EXCHANGE_URL, SIGNAL_NEWS_FILE. One line per series on stderr (failures even with --quiet), one summary
line per run on stdout. Exit code: 0 every series fetched, 1 some failed (each named), 2 the exchange
unreachable for all of them, the store unreachable, or bad arguments. With --loop: a run every --interval
seconds until SIGINT/SIGTERM (never two at once); the exit code is the last run's.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from serve_app.cli.ingest import _fail, _non_negative, _positive, _since, _symbol_list, add_source_options
from serve_app.core.timeutil import iso_utc, timeframe_ms
from serve_app.data.collector import (
    DEFAULT_BACKFILL_DAYS, DEFAULT_INTERVAL_S, DEFAULT_MAX_CANDLES, DEFAULT_RETRIES, CollectPlan, SeriesOutcome,
    collect_once, run_loop,
)
from serve_app.data.exchange import DEFAULT_LIMIT, IngestError, build_exchange
from serve_app.settings import DEFAULT_TIMEFRAME, StoreSettings
from serve_app.store import StoreError, open_store


def _timeframes(text: str) -> list[str]:
    timeframes = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not timeframes:
        raise argparse.ArgumentTypeError("no timeframe given")
    for tf in timeframes:
        try:
            timeframe_ms(tf)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return timeframes


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not > 0")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    env = os.environ
    p = sub.add_parser(
        "collect", help="keep market data fresh: fetch the candles each series is missing (ccxt)",
        description="For every symbol x timeframe of the source EXCHANGE/QUOTE, fetch the complete candles "
                    "missing after the newest stored one (an empty series from --since) and store them under "
                    "that source. Bounded (--max-candles a series and run), idempotent. Exit 0: every series "
                    "fetched; 1: some failed (named); 2: exchange or store unreachable, bad arguments.")
    add_source_options(p)
    p.add_argument("--symbols", type=_symbol_list, default=env.get("SIGNAL_SYMBOLS") or None,
                   help="base symbols, comma-separated: BTC,ETH,SOL (default: SIGNAL_SYMBOLS)")
    p.add_argument("--timeframes", type=_timeframes, default=env.get("SIGNAL_TIMEFRAMES") or DEFAULT_TIMEFRAME,
                   help="comma-separated: 1h,1m (default: SIGNAL_TIMEFRAMES, else %(default)s)")
    p.add_argument("--max-candles", type=_positive, default=DEFAULT_MAX_CANDLES, metavar="N",
                   help="at most N candles per series and run; the next run goes on (default: %(default)s)")
    p.add_argument("--since", type=_since, metavar="ISO",
                   help=f"where an empty series starts: ISO date/time (UTC) or epoch ms (default: "
                        f"{DEFAULT_BACKFILL_DAYS} days before now)")
    p.add_argument("--loop", action="store_true", help="run again every --interval until SIGINT/SIGTERM")
    p.add_argument("--interval", type=_seconds, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                   help="with --loop: from the start of one run to the start of the next (default: %(default)s)")
    p.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT, help="candles per request (default: %(default)s)")
    p.add_argument("--max-retries", type=_non_negative, default=DEFAULT_RETRIES,
                   help="retries of a request after a network error or rate limit (default: %(default)s)")
    p.add_argument("--retry-backoff", type=_seconds, default=1.0, metavar="SECONDS",
                   help="wait before the first retry, doubling for each next one (default: %(default)s)")
    p.add_argument("--news", type=Path, default=env.get("SIGNAL_NEWS_FILE") or None, metavar="FILE",
                   help="also import this news CSV each run, as `import news` (default: SIGNAL_NEWS_FILE)")
    p.add_argument("--quiet", action="store_true", help="no line per series (failures are still printed)")
    p.set_defaults(func=_cmd_collect)


def _cmd_collect(args: argparse.Namespace) -> int:
    if not args.symbols:
        return _fail("collect", "no symbols: give --symbols BTC,ETH or set SIGNAL_SYMBOLS")
    try:
        exchange = build_exchange(args.exchange, args.exchange_url)
    except IngestError as exc:
        return _fail("collect", str(exc))
    unsupported = [tf for tf in args.timeframes if tf not in (getattr(exchange, "timeframes", None) or {})]
    if unsupported:
        return _fail("collect", f"{args.exchange} has no {', '.join(unsupported)} candles; it has "
                                f"{', '.join(exchange.timeframes or {})}")
    plan = CollectPlan(args.exchange, args.quote, tuple(args.symbols), tuple(args.timeframes),
                       max_candles=args.max_candles, since_ms=args.since, page_limit=args.limit,
                       max_retries=args.max_retries, backoff_s=args.retry_backoff, news_file=args.news)
    try:
        settings = StoreSettings.from_env().with_source(args.exchange, args.quote)
    except ValueError as exc:  # e.g. a malformed SIGNAL_EXCHANGE while --exchange is given
        return _fail("collect", str(exc))
    stop = threading.Event()
    if not args.loop:
        return _tick(settings, exchange, plan, args, stop)
    received: list[str] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        print(f"signalgen collect: {received[-1]}: stopping after the current series", file=sys.stderr, flush=True)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        ticks, code = run_loop(lambda: _tick(settings, exchange, plan, args, stop), args.interval, stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(f"stopped by {received[0] if received else 'request'} after {ticks} runs", file=sys.stderr)
    return code


def _tick(settings: StoreSettings, exchange: Any, plan: CollectPlan, args: argparse.Namespace,
          stop: threading.Event) -> int:
    """One run: open the store, collect, print; the exit code."""
    def line(outcome: SeriesOutcome) -> None:
        if outcome.error is not None or not args.quiet:
            print(outcome.line(plan.max_candles), file=sys.stderr, flush=True)

    where = settings.describe()
    try:
        with open_store(settings) as store:
            report = collect_once(store, exchange, plan, on_series=line, stop=stop.is_set, sleep=stop.wait)
    except StoreError as exc:
        _fail("collect", f"store {where} unreachable: {exc}")
        return 2
    if report.unreachable is not None:
        at = f" at {args.exchange_url}" if args.exchange_url else ""
        _fail("collect", f"exchange {plan.exchange}{at} unreachable, nothing fetched: {report.unreachable}")
    if report.news is not None:
        print(report.news, file=sys.stderr if report.news_failed else sys.stdout, flush=True)
    print(f"{iso_utc(int(time.time() * 1000))} collect into {where}: {report.summary()}", flush=True)
    return report.exit_code
