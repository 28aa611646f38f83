"""FeatureEngine deployment: candles (in-memory cache ◀ store) + live price → feature vector."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from ray import serve

from serve_app.core.cache import CandleCache
from serve_app.core.features import ATR_PERIOD, FEATURE_NAMES, SERVING_WINDOW, WARMUP, serving_features
from serve_app.stage import StageBase
from serve_app.store import open_store

# ATR as a share of the live price is one of the features: stops and sizing use the same number
ATR_PCT = FEATURE_NAMES.index(f"atr_pct_{ATR_PERIOD}")


def feature_result(cache: CandleCache, symbol: str, price: float) -> dict[str, Any]:
    """Features for one request from the cache (ray-free: also used by the in-process benchmark)."""
    candles = cache.data.get(symbol)
    if candles is None or len(candles) == 0:
        if cache.last_refresh_ok is None and cache.last_error:
            return {"ok": False, "error": "store_unavailable",
                    "message": f"market data store unreachable and no cached candles: {cache.last_error}"}
        return {"ok": False, "error": "unknown_symbol", "message": f"no candles for symbol {symbol!r}"}
    if len(candles) < WARMUP + 1:
        return {"ok": False, "error": "insufficient_history",
                "message": f"{symbol} has {len(candles)} candles, {WARMUP + 1} needed"}
    vec = serving_features(candles, price)
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
    }


@serve.deployment
class FeatureEngine(StageBase):
    stage = "features"

    def __init__(self, timeframe: str = "1h", refresh_interval_s: float = 30.0, max_data_age_s: float = 7200.0,
                 symbols: list[str] | None = None):
        self._init_stage()
        self.max_data_age_s = max_data_age_s
        self.cache = CandleCache(open_store, timeframe, window=max(SERVING_WINDOW, WARMUP + 1), symbols=symbols,
                                 on_query=self.record_query)
        self.cache.refresh()
        self._stop = self.cache.start_background(refresh_interval_s)

    async def compute(self, requests: list[dict]) -> list[dict]:
        """One call per pipeline batch: [{"symbol", "price", ...}] → [request + feature result]."""
        with self.timed():
            out = [{**r, **feature_result(self.cache, r["symbol"], r["price"])} for r in requests]
        now = time.time()
        for sym, t in self.cache.newest_open_ms().items():
            self.metrics.set("signalgen_data_age_seconds", now - t / 1000.0, symbol=sym)
        return out

    def health(self) -> dict[str, Any]:
        now_ms = time.time() * 1000
        newest = self.cache.newest_open_ms()
        ages = {s: round((now_ms - t) / 1000.0, 1) for s, t in newest.items()}
        reasons = []
        if not newest:
            reasons.append("no candles cached" + (f" ({self.cache.last_error})" if self.cache.last_error else ""))
        stale = sorted(s for s, a in ages.items() if a > self.max_data_age_s)
        if stale and len(stale) == len(ages):
            reasons.append(f"all market data stale (> {self.max_data_age_s:.0f} s): newest candle "
                           f"{min(ages.values()):.0f} s old")
        return {
            "ok": not reasons,
            "reasons": reasons,
            "store_reachable": self.cache.last_error is None,
            "store_error": self.cache.last_error,
            "symbols": len(newest),
            "stale_symbols": stale,
            "data_age_s": ages,
            "cache_refreshed_s_ago": None if self.cache.age_s() is None else round(self.cache.age_s(), 1),
        }

    def check_health(self) -> None:
        # Serve restarts a replica whose check fails. A restart cannot fix the database, so an unreachable
        # store is reported by GET /health (503) instead; what fails here is this replica's own machinery.
        if not self.cache.background_alive():
            raise RuntimeError("feature engine: candle refresh thread is not running")

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
