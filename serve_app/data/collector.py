"""Keeping market data fresh: `signalgen collect` (serve_app/cli/collect.py) runs `collect_once` once, or
`run_loop` every interval.

For one market data source (exchange, quote) and every symbol x timeframe, one tick fetches through ccxt only
the complete candles missing after the newest stored one (an empty series starts at the backfill time), at
most `max_candles` per series, and stores them under that source: the same fetching and storing as
`signalgen ingest` (CandleFeed, ingest_symbol in serve_app/data/exchange.py). Which candle is still open is
decided by the exchange's clock (its server time). Reruns add nothing twice (candles are upserted on their
key), and a series that fails is named and does not stop the others. With a news file configured, each tick
also imports it (idempotent, as `signalgen import news`).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from serve_app.core.timeutil import DAY_MS, iso_utc
from serve_app.data.candle_io import import_news
from serve_app.data.exchange import (
    DEFAULT_LIMIT, CandleFeed, Caller, IngestError, IngestResult, ingest_symbol, resume_from,
)
from serve_app.store import Store, StoreError

DEFAULT_MAX_CANDLES = 1000
DEFAULT_BACKFILL_DAYS = 30
DEFAULT_RETRIES = 3
DEFAULT_INTERVAL_S = 60.0


@dataclass(frozen=True)
class CollectPlan:
    """What one tick collects, and how."""

    exchange: str
    quote: str
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    max_candles: int = DEFAULT_MAX_CANDLES  # per symbol x timeframe and tick
    since_ms: int | None = None  # where an empty series starts; None: DEFAULT_BACKFILL_DAYS before now
    page_limit: int = DEFAULT_LIMIT  # candles asked for per request
    max_retries: int = DEFAULT_RETRIES  # of a request after a network error
    backoff_s: float = 1.0  # before the first retry; doubling
    news_file: Path | None = None

    @property
    def source(self) -> str:
        return f"{self.exchange}/{self.quote}"


@dataclass
class SeriesOutcome:
    """One symbol x timeframe of a tick: what it stored, or why it failed."""

    market: str
    timeframe: str
    result: IngestResult | None = None
    error: str | None = None  # the whole failure line: "BTC/USDT 1m: DDoSProtection after 4 tries: ..."
    network: bool = False  # failed on network errors (the exchange unreachable), not a refusal

    @property
    def name(self) -> str:
        return f"{self.market} {self.timeframe}"

    def line(self, max_candles: int) -> str:
        if self.error is not None:
            return f"FAILED {self.error}"
        r = self.result
        assert r is not None
        if r.last_open_ms is None:
            return f"{self.name}: up to date (no complete candle from {iso_utc(r.since_ms)} on yet)"
        text = f"{self.name}: {r.new} new (fetched {r.fetched}, {iso_utc(r.since_ms)} .. {iso_utc(r.last_open_ms)})"
        if r.checked.bad:
            text += f", {len(r.checked.bad)} bad rows skipped"
        if r.checked.gaps:
            text += f", {len(r.checked.gaps)} gaps ({r.checked.missing_candles} candles missing at the exchange)"
        if r.bounded:
            text += f"; more to fetch (at most {max_candles} a run: --max-candles)"
        return text


@dataclass
class TickReport:
    """One tick: every series' outcome, or why none could run."""

    plan: CollectPlan
    series: list[SeriesOutcome] = field(default_factory=list)
    unreachable: str | None = None  # the exchange's markets or clock could not be read: nothing was fetched
    news: str | None = None  # the news file's line
    news_failed: bool = False
    stopped: bool = False  # a stop was asked for before every series ran

    @property
    def failed(self) -> list[SeriesOutcome]:
        return [o for o in self.series if o.error is not None]

    @property
    def new(self) -> int:
        return sum(o.result.new for o in self.series if o.result is not None)

    @property
    def exit_code(self) -> int:
        """0 every series fetched; 1 some failed (or the news file); 2 the exchange unreachable for all."""
        if self.unreachable is not None or (self.series and all(o.network for o in self.series)):
            return 2
        return 1 if self.failed or self.news_failed else 0

    def summary(self) -> str:
        failed = self.failed
        text = (f"{self.plan.source}: {len(self.series)} series, {self.new} new candles, {len(failed)} failed"
                + (f" ({', '.join(o.name for o in failed)})" if failed else ""))
        if self.unreachable is not None:
            text = f"{self.plan.source}: nothing fetched: {self.unreachable}"
        return text + (" [stopped]" if self.stopped else "")


def collect_once(store: Store, exchange: Any, plan: CollectPlan, *,
                 on_series: Callable[[SeriesOutcome], Any] = lambda outcome: None,
                 stop: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> TickReport:
    """One tick into `store` (opened for plan.exchange/quote) from `exchange` (a ccxt exchange: build_exchange).
    `on_series` is called after each series; `stop()` is asked before each (then the tick ends early)."""
    if store.source != (plan.exchange, plan.quote):
        raise ValueError(f"the store is opened for {'/'.join(store.source)}, the plan collects {plan.source}")
    report = TickReport(plan)
    call = Caller(exchange, max_retries=plan.max_retries, backoff_s=plan.backoff_s, sleep=sleep, clock=clock)
    try:
        call(f"{call.name} markets", exchange.load_markets)
        now = call.now_ms()  # one clock for the tick: a candle closing meanwhile is the next tick's
    except IngestError as exc:
        report.unreachable = str(exc)
        return report
    start = plan.since_ms if plan.since_ms is not None else now - DEFAULT_BACKFILL_DAYS * DAY_MS
    markets = getattr(exchange, "markets", None) or {}
    for timeframe in plan.timeframes:
        feed = CandleFeed(exchange, timeframe, limit=plan.page_limit, max_retries=plan.max_retries,
                          backoff_s=plan.backoff_s, sleep=sleep, clock=clock, now_ms=lambda: now)
        for symbol in plan.symbols:
            if stop():
                report.stopped = True
                return report
            outcome = SeriesOutcome(f"{symbol}/{plan.quote}", timeframe)
            if outcome.market not in markets:
                outcome.error = f"{outcome.name}: BadSymbol: {call.name} has no market {outcome.market}"
            else:
                try:
                    since = resume_from(store, symbol, timeframe, start)
                    outcome.result = ingest_symbol(store, feed, symbol, outcome.market, since,
                                                   max_candles=plan.max_candles)
                except IngestError as exc:
                    outcome.error, outcome.network = str(exc), exc.network
                except StoreError as exc:
                    outcome.error = f"{outcome.name}: {type(exc).__name__}: {exc}"
            report.series.append(outcome)
            on_series(outcome)
    if plan.news_file is not None:
        _collect_news(store, plan.news_file, report)
    return report


def _collect_news(store: Store, path: Path, report: TickReport) -> None:
    """The news file into the store (idempotent: only new items are added)."""
    try:
        result = import_news(store, path)
    except (ValueError, StoreError) as exc:  # InputFileError is a ValueError
        report.news, report.news_failed = f"news {path}: FAILED {exc}", True
        return
    bad = len(result.checked.bad)
    report.news = f"news {path}: {result.new} new ({result.checked.read} rows read, {bad} bad rows skipped)"


def run_loop(tick: Callable[[], int], interval_s: float, stop: threading.Event,
             clock: Callable[[], float] = time.monotonic) -> tuple[int, int]:
    """`tick()` every `interval_s` (from the start of one to the start of the next; one that overran is
    followed at once) until `stop` is set. One tick at a time: the next starts only after the previous
    returned. Returns (ticks run, the last tick's exit code)."""
    ticks, code = 0, 0
    while not stop.is_set():
        started = clock()
        code = tick()
        ticks += 1
        stop.wait(max(0.0, started + interval_s - clock()))
    return ticks, code
