"""MarketContext deployment: time-decayed news sentiment + cross-asset momentum → regime."""
from __future__ import annotations

import threading
from typing import Any

from ray import serve

from serve_app.core.cache import CandleCache
from serve_app.core.market import MarketConfig, MarketSnapshot
from serve_app.core.pipeline import market_batch, refresh_market
from serve_app.core.records import MarketView, SignalInput, StageError
from serve_app.deployments.base import StageBase, source_store_factory


@serve.deployment
class MarketContext(StageBase):
    stage = "market_context"

    def __init__(self, *, config: dict, timeframe: str, refresh_interval_s: float, history: int,
                 market_source: dict[str, str]):
        self._init_stage()
        self.cfg = MarketConfig.model_validate(config)
        self.cache = CandleCache(source_store_factory(market_source, self.stage), timeframe, window=history, on_query=self.record_query)
        self.snapshot: MarketSnapshot | None = None
        self.news_error: str | None = None
        self._lock = threading.Lock()
        self._refresh()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(refresh_interval_s,), daemon=True)
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._refresh()

    def _refresh(self) -> None:
        snap, self.news_error = refresh_market(self.cache, self.cfg, self.snapshot, on_query=self.record_query)
        with self._lock:
            self.snapshot = snap

    async def context(self, requests: list[SignalInput]) -> list[MarketView | StageError]:
        with self.timed():
            return market_batch(self.snapshot, self.cfg, requests, self.cache.last_error or "")

    def health(self) -> dict[str, Any]:
        snap = self.snapshot
        reasons = [] if snap else ["no market snapshot loaded" + (f": {self.cache.last_error}" if self.cache.last_error else "")]
        return {"ok": not reasons, "reasons": reasons, "store_reachable": self.cache.last_error is None
                and self.news_error is None, "store_error": self.cache.last_error or self.news_error,
                "symbols": len(snap.series) if snap else 0,
                "news_items": int(snap.all_news_score.size) if snap else 0}

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("market context: refresh thread is not running")

    def __del__(self) -> None:
        if hasattr(self, "_stop"):
            self._stop.set()
