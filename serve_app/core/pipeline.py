"""The per-batch work of every stage as plain functions over typed records (core/records.py; no ray, no
HTTP import).

The deployments are thin adapters around these; `LocalPipeline` chains them in one process (the
plain-uvicorn and in-process benchmarks, and anyone who wants signals without Ray). A batch starts as a
list of SignalInput; each stage returns new Work records with its part filled in, and a Work that failed
carries its StageError through the later stages untouched. `finish_batch` turns the batch into Signals
(or the StageError of each request that got none).
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable

import numpy as np

from serve_app.core.cache import CandleCache
from serve_app.core.features import ATR_PCT, FEATURE_NAMES, WARMUP, serving_features, serving_features_batch
from serve_app.core.market import MarketConfig, MarketSnapshot, build_snapshot, compute_contexts
from serve_app.core.model import SignalModel
from serve_app.core.records import (CandleFacts, ErrorCode, MarketView, Prediction, Signal, SignalInput, Sizing,
                                    StageError, Work)
from serve_app.core.trading import (ExposureBook, PortfolioConfig, RiskConfig, TradeConfig, assess,
                                    decide_actions, size_positions)
from serve_app.store.base import Store, StoreError

# ------------------------------------------------------------------------------------------- features
def _candles_or_error(cache: CandleCache, symbol: str) -> tuple[Any, StageError | None]:
    candles = cache.data.get(symbol)
    if candles is None or len(candles) == 0:
        if cache.last_refresh_ok is None and cache.last_error:
            return None, StageError(ErrorCode.STORE_UNAVAILABLE,
                                    f"market data store unreachable and no cached candles: {cache.last_error}")
        return None, StageError(ErrorCode.UNKNOWN_SYMBOL, f"no candles for symbol {symbol!r}")
    if len(candles) < WARMUP + 1:
        return None, StageError(ErrorCode.INSUFFICIENT_HISTORY,
                                f"{symbol} has {len(candles)} candles, {WARMUP + 1} needed")
    return candles, None


def _with_features(cache: CandleCache, work: Work, candles: Any, vec: np.ndarray) -> Work:
    symbol, price = work.input.symbol, work.input.price
    if not np.all(np.isfinite(vec)):
        bad = [FEATURE_NAMES[i] for i in np.flatnonzero(~np.isfinite(vec))]
        return work.failed(StageError(ErrorCode.INSUFFICIENT_HISTORY,
                                      f"{symbol}: features not computable from the cached candles "
                                      f"({', '.join(bad[:5])})"))
    atr_pct = float(vec[ATR_PCT])
    return work.with_(features=vec, candle=CandleFacts(
        last_close=float(candles.close[-1]), last_open_time_ms=int(candles.open_time[-1]), atr=atr_pct * price,
        atr_pct=atr_pct, candles_cached=len(candles), cache_age_s=cache.age_s(),
        # the last refresh failed: these candles are the last ones cached, cache_age_s old
        store_reachable=cache.last_error is None))


def feature_result(cache: CandleCache, request: SignalInput) -> Work:
    """Features for one request from the candle cache; the request's price is the current bar's close."""
    work = Work(request)
    candles, err = _candles_or_error(cache, request.symbol)
    if err is not None:
        return work.failed(err)
    return _with_features(cache, work, candles, serving_features(candles, request.price))


def compute_features_batch(cache: CandleCache, requests: list[SignalInput]) -> list[Work]:
    """Every request of a batch: one vectorised feature computation for all that have enough candles."""
    out = [Work(r) for r in requests]
    valid: list[tuple[int, Any]] = []
    for i, r in enumerate(requests):
        candles, err = _candles_or_error(cache, r.symbol)
        if err is not None:
            out[i] = out[i].failed(err)
        else:
            valid.append((i, candles))
    if valid:
        X = serving_features_batch([c for _, c in valid], [requests[i].price for i, _ in valid])
        for (i, candles), vec in zip(valid, X):
            out[i] = _with_features(cache, out[i], candles, vec)
    return out


# ------------------------------------------------------------------------------------------- market
def refresh_market(cache: CandleCache, cfg: MarketConfig, previous: MarketSnapshot | None,
                   on_query: Callable[[str, float, bool], None] | None = None
                   ) -> tuple[MarketSnapshot | None, str | None]:
    """Refresh the candles, load recent news and build the market snapshot (off the request path).
    Returns (snapshot, news error). When news cannot be read, the previous snapshot is kept if there is
    one; otherwise a snapshot without news is built from the candles."""
    cache.refresh()
    now_ms = int(time.time() * 1000)
    since = now_ms - int(cfg.news_lookback_hours * 3_600_000) - 86_400_000
    t0 = time.perf_counter()
    try:
        with cache.lock:
            news = cache.store.load_news(since)
        error = None
    except StoreError as e:
        news, error = [], f"{type(e).__name__}: {e}"
    if on_query is not None:
        on_query("load_news", time.perf_counter() - t0, error is not None)
    if error is not None and previous is not None:
        return previous, error
    closes = {s: c.close for s, c in cache.data.items()}
    return (build_snapshot(closes, news, cfg, now_ms) if closes else previous), error


def market_batch(snapshot: MarketSnapshot | None, cfg: MarketConfig, requests: list[SignalInput],
                 unavailable: str = "") -> list[MarketView | StageError]:
    if snapshot is None:
        return [StageError(ErrorCode.STORE_UNAVAILABLE, f"market context has no data: {unavailable}")
                for _ in requests]
    return compute_contexts([r.symbol for r in requests], [r.price for r in requests],
                            [r.asof_ms for r in requests], snapshot, cfg)


# ------------------------------------------------------------------------------------------- ML
def predict_batch(model: SignalModel, works: list[Work]) -> tuple[list[Work], int]:
    """One inplace_predict over every Work that has features; returns the new records (features dropped:
    nothing downstream needs them) and the number of rows predicted."""
    live = [i for i, w in enumerate(works) if w.ok]
    if not live:
        return works, 0
    X = np.asarray([works[i].features for i in live], dtype=np.float32)
    probs = model.predict_proba(X)
    actions, conf = decide_actions(probs)
    out = list(works)
    for i, p, a, c in zip(live, probs, actions, conf):
        out[i] = works[i].with_(features=None, prediction=Prediction(
            probabilities=tuple(float(x) for x in p), action=a, confidence=float(c), model_version=model.version))
    return out, len(live)


# ------------------------------------------------------------------------------------------- portfolio
def size_batch(works: list[Work], contexts: list[MarketView | StageError], trade: TradeConfig,
               cfg: PortfolioConfig) -> list[Work]:
    """Attach each request's market context, and size the ones that have a prediction."""
    out: list[Work] = []
    for w, ctx in zip(works, contexts):
        if not w.ok:
            out.append(w)
        elif isinstance(ctx, StageError):
            out.append(w.failed(ctx))
        else:
            out.append(w.with_(market=ctx))
    live = [i for i, w in enumerate(out) if w.ok]
    if live:
        ws = [out[i] for i in live]
        probs = np.asarray([w.prediction.probabilities for w in ws])
        price = np.asarray([w.input.price for w in ws], dtype=np.float64)
        equity = np.asarray([w.input.equity or cfg.equity for w in ws], dtype=np.float64)
        sized = size_positions([w.prediction.action for w in ws], probs, price,
                               np.asarray([w.candle.atr for w in ws]), equity,
                               [w.market.regime for w in ws], trade, cfg)
        for j, i in enumerate(live):
            out[i] = out[i].with_(sizing=Sizing(equity=float(equity[j]), notional=float(sized["notional"][j]),
                                                kelly_fraction=float(sized["kelly"][j]),
                                                vol_cap_fraction=float(sized["vol_cap"][j])))
    return out


# ------------------------------------------------------------------------------------------- risk
def assess_batch(works: list[Work], trade: TradeConfig, cfg: RiskConfig, book: ExposureBook) -> list[Work]:
    return [w.with_(verdict=assess(w, trade, cfg, book)) if w.ok else w for w in works]


# ------------------------------------------------------------------------------------------- the end
def finish_batch(works: list[Work], timeframe: str) -> list[Signal | StageError]:
    """A Signal for every request that went through every stage, else the StageError it met."""
    now_ms = int(time.time() * 1000)
    return [Signal(uuid.uuid4().hex, timeframe, now_ms, w) if w.ok else w.error for w in works]


# ------------------------------------------------------------------------------------------- one process
class LocalPipeline:
    """Every stage in one process, no Ray: the same functions the deployments call, chained directly."""

    def __init__(self, store_factory: Callable[[], Store], model: SignalModel, timeframe: str = "1h",
                 trade: TradeConfig | None = None, portfolio: PortfolioConfig | None = None,
                 risk: RiskConfig | None = None, market: MarketConfig | None = None, market_history: int = 1000):
        self.timeframe = timeframe
        self.model = model
        self.trade, self.portfolio = trade or TradeConfig(), portfolio or PortfolioConfig()
        self.risk, self.market = risk or RiskConfig(), market or MarketConfig()
        self.book = ExposureBook(self.risk.position_ttl_s)
        self.cache = CandleCache(store_factory, timeframe, window=max(market_history, WARMUP + 1))
        self.snapshot: MarketSnapshot | None = None

    def refresh(self) -> None:
        """Candles and news into memory (call it off the request path, e.g. on a timer)."""
        self.snapshot, _ = refresh_market(self.cache, self.market, self.snapshot)

    def run(self, requests: list[SignalInput]) -> list[Signal | StageError]:
        works = compute_features_batch(self.cache, requests)
        contexts = market_batch(self.snapshot, self.market, requests, self.cache.last_error or "")
        works, _ = predict_batch(self.model, works)
        works = size_batch(works, contexts, self.trade, self.portfolio)
        works = assess_batch(works, self.trade, self.risk, self.book)
        return finish_batch(works, self.timeframe)
