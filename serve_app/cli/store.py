"""`signalgen store`: the store's schema, the synthetic sample and what the store holds (backend from the
environment: MySQL when MYSQL_HOST is set, else SQLite).

    signalgen store migrate
    signalgen store seed [--if-missing-or-stale] [--symbols BTC,ETH] [--candles N] [--force]
    signalgen store info

`seed` writes the deterministic SYNTHETIC sample (see serve_app.data.sample), anchored so that
the newest candle is the current bar. With --if-missing-or-stale it does nothing while the sample is
fresh, re-anchors it to now when it is stale, and adds requested symbols that are missing. It never
overwrites data that is not the sample (imported data) unless --force is given.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from serve_app.settings import DEFAULT_TIMEFRAME, StoreSettings
from serve_app.store import Store, StoreError, open_store
from serve_app.core.timeutil import HOUR_MS, iso_utc, timeframe_ms
from serve_app.data.sample import (
    SAMPLE_SOURCE, SAMPLE_SYMBOLS, holds_sample_data, sample_is_stale, seed_store,
)


def _symbols(text: str | None) -> list[str]:
    if not text:
        return list(SAMPLE_SYMBOLS)
    symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
    unknown = [s for s in symbols if s not in SAMPLE_SYMBOLS]
    if unknown:
        raise SystemExit(f"no synthetic sample for {', '.join(unknown)}; known: {', '.join(SAMPLE_SYMBOLS)}")
    return symbols


def _report(where: str, summary: dict[str, Any]) -> None:
    rows, deleted = summary["rows"], summary["deleted"]
    print(f"seeded {where} with SYNTHETIC sample data: {len(summary['symbols'])} symbols "
          f"({','.join(summary['symbols'])}) x {summary['candles_per_symbol']} {summary['timeframe']} candles "
          f"ending {summary['end_time']}; {rows['candles']} candle rows written, "
          f"{rows['news_sentiment']} new news rows"
          + (f"; removed {deleted['candles']} old candles and {deleted['news_sentiment']} old sample news"
             if any(deleted.values()) else ""))


def cmd_seed(store: Store, where: str, args: argparse.Namespace) -> int:
    symbols, tf, n = _symbols(args.symbols), args.timeframe, args.candles
    present = store.list_symbols(tf)
    is_sample = holds_sample_data(store, tf)
    if args.if_missing_or_stale:
        stale = sample_is_stale(store, tf, max_age_ms=int(args.max_age_hours * HOUR_MS))
        missing = [s for s in symbols if s not in present]
        if not stale and not missing:
            print(f"{where}: sample data present and fresh; nothing to do")
            return 0
        if not is_sample and not args.force:
            print(f"{where}: holds data that is not the synthetic sample; leaving it alone (use --force)")
            return 0
        if stale:  # re-anchor everything that is there, plus what was asked for, to now
            summary = seed_store(store, sorted(set(symbols) | set(present)), n, timeframe=tf, replace=True)
        else:  # fresh: add the missing symbols on the same time grid as BTC
            end = int(store.load_candles("BTC", tf, limit=1).open_time[-1])
            summary = seed_store(store, missing, n, end_ms=end, timeframe=tf)
    else:
        if not is_sample and not args.force:
            print(f"{where}: holds data that is not the synthetic sample; refusing to mix the sample "
                  "into it (use --force)", file=sys.stderr)
            return 1
        summary = seed_store(store, symbols, n, timeframe=tf, replace=is_sample)
    _report(where, summary)
    return 0


def cmd_migrate(store: Store, where: str, args: argparse.Namespace) -> int:
    store.migrate()
    versions = getattr(store, "applied_versions", lambda: [])()
    print(f"{where}: schema up to date (versions {versions})")
    return 0


def cmd_info(store: Store, where: str, args: argparse.Namespace) -> int:
    series = store.candle_series()
    now = int(time.time() * 1000)
    print(f"store: {where} (backend {store.backend})")
    exchange, quote = store.source
    others = [f"{e}/{q} ({n} candles)" for e, q, n in store.sources() if (e, q) != store.source]
    print(f"market data: {exchange}/{quote} (SIGNAL_EXCHANGE/SIGNAL_QUOTE); the candles and news below are this "
          "source's"
          + (f"; other sources in this database: {', '.join(others)}" if others else ""))
    print(f"candles: {len(series)} series (symbol x timeframe)")
    if series:
        print(f"  {'SYMBOL':<8} {'TF':<4} {'CANDLES':>8}  {'FIRST OPEN (UTC)':<25} {'LAST OPEN (UTC)':<25} AGE")
    for s in series:
        step = timeframe_ms(s.timeframe)
        age = (now - s.last_open_ms - step) / 1000  # since the last candle closed
        fresh = "fresh" if age <= 2 * step / 1000 else f"{_duration(age)} old"
        print(f"  {s.symbol:<8} {s.timeframe:<4} {s.candles:>8}  {iso_utc(s.first_open_ms):<25} "
              f"{iso_utc(s.last_open_ms):<25} {fresh}")
    news = store.load_news(0)
    synthetic = sum(1 for item in news if item.source == SAMPLE_SOURCE)
    print(f"news: {len(news)} items ({synthetic} synthetic sample)")
    print(f"signals: {store.count_signals()}")
    tf = args.timeframe
    if any(s.timeframe == tf for s in series) and holds_sample_data(store, tf):
        stale = "; stale: re-anchor with `signalgen store seed`" if sample_is_stale(store, tf) else ""
        print(f"{tf} candles: the SYNTHETIC sample{stale}")
    return 0


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


COMMANDS = {"seed": cmd_seed, "migrate": cmd_migrate, "info": cmd_info}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("store", help="migrate the schema, seed the synthetic sample, show what is stored",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ssub = parser.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    seed = ssub.add_parser("seed", help="write the deterministic synthetic sample data")
    seed.add_argument("--if-missing-or-stale", action="store_true",
                      help="only when symbols are missing or the newest BTC candle is too old")
    seed.add_argument("--symbols", help="comma-separated, default: all sample symbols")
    seed.add_argument("--candles", type=int, default=2160, help="candles per symbol (default 2160 = 90 days)")
    seed.add_argument("--max-age-hours", type=float, default=2.0, help="staleness threshold (default 2)")
    seed.add_argument("--force", action="store_true", help="seed even if the store holds other data")
    ssub.add_parser("migrate", help="create or upgrade the schema (idempotent)")
    ssub.add_parser("info", help="symbols, candle counts and times, news and signal counts")
    for command in ssub.choices.values():
        command.add_argument("--timeframe", default=DEFAULT_TIMEFRAME)
        command.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = StoreSettings.from_env()
    except ValueError as exc:  # SIGNAL_EXCHANGE / SIGNAL_QUOTE malformed
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = settings.describe()
    try:
        with open_store(settings) as store:
            return COMMANDS[args.store_command](store, where, args)
    except StoreError as exc:
        print(f"error: {where}: {exc}", file=sys.stderr)
        return 2
