"""The per-batch work of every stage as plain functions over lists of item dicts (no ray import).

The deployments are thin adapters around these; `LocalPipeline` chains them in one process (the
plain-uvicorn and in-process benchmarks, and anyone who wants signals without Ray). An item starts as a
request {"symbol", "price", "asof_ms", "equity"} and each stage adds its keys; an item whose "ok" is false
carries "error"/"message" and passes through the later stages untouched.
"""
from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from serve_app.core.cache import CandleCache
from serve_app.core.features import ATR_PERIOD, FEATURE_NAMES, WARMUP, serving_features, serving_features_batch
from serve_app.core.market import MarketConfig, MarketSnapshot, build_snapshot, compute_contexts
from serve_app.core.model import SignalModel
from serve_app.core.trading import (ExposureBook, PortfolioConfig, RiskConfig, TradeConfig, assess,
                                    decide_actions, probabilities_dict, size_positions)
from serve_app.schemas import CLASS_NAMES, signal_record
from serve_app.store.base import Store, StoreError

# ATR as a share of the live price is one of the features: stops and sizing use the same number
ATR_PCT = FEATURE_NAMES.index(f"atr_pct_{ATR_PERIOD}")
ERROR_STATUS = {"unknown_symbol": 404, "insufficient_history": 404, "store_unavailable": 503}


# ------------------------------------------------------------------------------------------- features
def _candles_or_error(cache: CandleCache, symbol: str) -> tuple[Any, dict[str, Any] | None]:
    candles = cache.data.get(symbol)
    if candles is None or len(candles) == 0:
        if cache.last_refresh_ok is None and cache.last_error:
            return None, {"ok": False, "error": "store_unavailable",
                          "message": f"market data store unreachable and no cached candles: {cache.last_error}"}
        return None, {"ok": False, "error": "unknown_symbol", "message": f"no candles for symbol {symbol!r}"}
    if len(candles) < WARMUP + 1:
        return None, {"ok": False, "error": "insufficient_history",
                      "message": f"{symbol} has {len(candles)} candles, {WARMUP + 1} needed"}
    return candles, None


def _feature_fields(cache: CandleCache, symbol: str, candles: Any, price: float, vec: np.ndarray) -> dict[str, Any]:
    if not np.all(np.isfinite(vec)):
        bad = [FEATURE_NAMES[i] for i in np.flatnonzero(~np.isfinite(vec))]
        return {"ok": False, "error": "insufficient_history",
                "message": f"{symbol}: features not computable from the cached candles ({', '.join(bad[:5])})"}
    atr_pct = float(vec[ATR_PCT])
    return {
        "ok": True,
        "error": None,
        "features": vec.tolist(),
        "last_close": float(candles.close[-1]),
        "last_open_time_ms": int(candles.open_time[-1]),
        "atr": atr_pct * price,
        "atr_pct": atr_pct,
        "candles_cached": len(candles),
        "cache_age_s": cache.age_s(),
        # the last refresh failed: these candles are the last ones cached, cache_age_s old
        "store_reachable": cache.last_error is None,
    }


def feature_result(cache: CandleCache, symbol: str, price: float) -> dict[str, Any]:
    """Features for one request from the candle cache; the request's price is the current bar's close."""
    candles, err = _candles_or_error(cache, symbol)
    if err is not None:
        return err
    return _feature_fields(cache, symbol, candles, price, serving_features(candles, price))


def compute_features_batch(cache: CandleCache, requests: list[dict]) -> list[dict]:
    """Every request of a batch: one vectorised feature computation for all that have enough candles."""
    out: list[dict] = [dict(r) for r in requests]
    valid: list[tuple[int, Any]] = []
    for i, r in enumerate(requests):
        candles, err = _candles_or_error(cache, r["symbol"])
        if err is not None:
            out[i].update(err)
        else:
            valid.append((i, candles))
    if valid:
        X = serving_features_batch([c for _, c in valid], [requests[i]["price"] for i, _ in valid])
        for (i, candles), vec in zip(valid, X):
            r = requests[i]
            out[i].update(_feature_fields(cache, r["symbol"], candles, r["price"], vec))
    return out


# ------------------------------------------------------------------------------------------- market
def request_time_ms(r: dict) -> int:
    return int(r.get("asof_ms") or time.time() * 1000)


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


def market_batch(snapshot: MarketSnapshot | None, cfg: MarketConfig, requests: list[dict],
                 unavailable: str = "") -> list[dict]:
    if snapshot is None:
        return [{"ok": False, "error": "store_unavailable", "message": f"market context has no data: {unavailable}"}
                for _ in requests]
    return compute_contexts([r["symbol"] for r in requests], [r["price"] for r in requests],
                            [request_time_ms(r) for r in requests], snapshot, cfg)


# ------------------------------------------------------------------------------------------- ML
def predict_batch(model: SignalModel, items: list[dict]) -> int:
    """One inplace_predict over every item that has features; returns the number of rows predicted."""
    live = [it for it in items if it.get("ok")]
    if not live:
        return 0
    X = np.asarray([it["features"] for it in live], dtype=np.float32)
    probs = model.predict_proba(X)
    actions, conf = decide_actions(probs)
    for it, p, a, c in zip(live, probs, actions, conf):
        it["probabilities"] = probabilities_dict(p)
        it["action"] = a
        it["confidence"] = float(c)
        it["model_version"] = model.version
        del it["features"]  # not needed downstream
    return len(live)


# ------------------------------------------------------------------------------------------- portfolio
def size_batch(items: list[dict], contexts: list[dict], trade: TradeConfig, cfg: PortfolioConfig) -> list[dict]:
    """Merge market context into each item and size the ones that have a prediction."""
    for it, ctx in zip(items, contexts):
        it["market_context"] = ctx
        if it.get("ok") and not ctx.get("ok"):
            it.update(ok=False, error=ctx.get("error"), message=ctx.get("message"))
    live = [it for it in items if it.get("ok")]
    if live:
        probs = np.asarray([[it["probabilities"][c] for c in CLASS_NAMES] for it in live])
        price = np.asarray([it["price"] for it in live], dtype=np.float64)
        equity = np.asarray([it.get("equity") or cfg.equity for it in live], dtype=np.float64)
        sized = size_positions([it["action"] for it in live], probs, price,
                               np.asarray([it["atr"] for it in live]), equity,
                               [it["market_context"]["regime"] for it in live], trade, cfg)
        for i, it in enumerate(live):
            it["equity"] = float(equity[i])
            it["notional"] = float(sized["notional"][i])
            it["kelly_fraction"] = float(sized["kelly"][i])
            it["vol_cap_fraction"] = float(sized["vol_cap"][i])
    return items


# ------------------------------------------------------------------------------------------- risk
def assess_batch(items: list[dict], trade: TradeConfig, cfg: RiskConfig, book: ExposureBook) -> list[dict]:
    for it in items:
        if it.get("ok"):
            it.update(assess(it, trade, cfg, book))
    return items


# ------------------------------------------------------------------------------------------- response
def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_response(it: dict[str, Any], timeframe: str, now_ms: int) -> dict[str, Any]:
    """The public signal from an item that went through every stage."""
    ctx = {k: v for k, v in it["market_context"].items() if k not in ("ok", "error", "message")}
    return {
        "signal_id": uuid.uuid4().hex,
        "symbol": it["symbol"],
        "timeframe": timeframe,
        "price": it["price"],
        "action": it["action"],
        "confidence": round(it["confidence"], 6),
        "probabilities": {k: round(v, 6) for k, v in it["probabilities"].items()},
        "position": it["position"],
        "risk": it["risk"],
        "market_context": ctx,
        "model_version": it["model_version"],
        "generated_at": iso_ms(now_ms),
        "data": {
            "as_of": iso_ms(it["asof_ms"]),
            "last_close": it["last_close"],
            "last_candle_open": iso_ms(it["last_open_time_ms"]),
            "atr": it["atr"],
            "atr_pct": it["atr_pct"],
            "equity": it["equity"],
            "kelly_fraction": it.get("kelly_fraction"),
            "vol_cap_fraction": it.get("vol_cap_fraction"),
            "candles_cached": it["candles_cached"],
            "cache_age_s": it["cache_age_s"],
            # false when the candle cache's last refresh from the store failed: the signal was then
            # computed from the candles cached before the outage (cache_age_s says how old they are)
            "store_reachable": it.get("store_reachable", True),
            "served_from_cache": not it.get("store_reachable", True),
        },
    }


def finish_batch(items: list[dict], timeframe: str) -> tuple[list[tuple[int, dict]], list[dict]]:
    """(HTTP status, body) per item, and the store records of the signals to persist."""
    now_ms = int(time.time() * 1000)
    results: list[tuple[int, dict]] = []
    records: list[dict] = []
    for it in items:
        if not it.get("ok"):
            err = it.get("error") or "unknown"
            results.append((ERROR_STATUS.get(err, 500), {"detail": it.get("message") or err, "error": err}))
            continue
        resp = build_response(it, timeframe, now_ms)
        records.append(signal_record(resp, now_ms))
        results.append((200, resp))
    return results, records


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
        self.pending_records: list[dict] = []

    def refresh(self) -> None:
        """Candles and news into memory (call it off the request path, e.g. on a timer)."""
        self.snapshot, _ = refresh_market(self.cache, self.market, self.snapshot)

    def run(self, requests: list[dict]) -> list[tuple[int, dict]]:
        items = compute_features_batch(self.cache, requests)
        contexts = market_batch(self.snapshot, self.market, requests, self.cache.last_error or "")
        predict_batch(self.model, items)
        size_batch(items, contexts, self.trade, self.portfolio)
        assess_batch(items, self.trade, self.risk, self.book)
        results, records = finish_batch(items, self.timeframe)
        self.pending_records.extend(records)  # written behind by the caller (see bench/plain_app.py)
        return results
