"""FeatureEngine deployment: candles (in-memory cache ◀ store) + live price → feature vector."""
from __future__ import annotations

import time
from typing import Any

from ray import serve

from serve_app.core.cache import CandleCache
from serve_app.core.features import SERVING_WINDOW, WARMUP
from serve_app.core.pipeline import compute_features_batch
from serve_app.core.records import SignalInput, Work
from serve_app.deployments.base import StageBase, source_store_factory

@serve.deployment
class FeatureEngine(StageBase):
    stage = "features"

    def __init__(self, *, timeframe: str, refresh_interval_s: float, max_data_age_s: float,
                 symbols: list[str] | None, market_source: dict[str, str]):
        self._init_stage()
        self.max_data_age_s = max_data_age_s
        self.cache = CandleCache(source_store_factory(market_source, self.stage), timeframe, window=max(SERVING_WINDOW, WARMUP + 1), symbols=symbols,
                                 on_query=self.record_query)
        self.cache.refresh()
        self._stop = self.cache.start_background(refresh_interval_s)

    async def compute(self, requests: list[SignalInput]) -> list[Work]:
        """One call per pipeline batch: each request with its feature vector and candle facts (or error)."""
        with self.timed():
            out = compute_features_batch(self.cache, requests)
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
