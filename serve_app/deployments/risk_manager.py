"""RiskManager deployment: ATR stops, exposure caps, circuit breakers → approved / blocked + reasons."""
from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.core.pipeline import assess_batch
from serve_app.core.records import Work
from serve_app.core.trading import ExposureBook, RiskConfig, TradeConfig
from serve_app.deployments.base import StageBase


@serve.deployment
class RiskManager(StageBase):
    stage = "risk"

    def __init__(self, *, trade: dict, config: dict):
        self._init_stage()
        self.trade = TradeConfig.model_validate(trade)
        self.cfg = RiskConfig.model_validate(config)
        self.book = ExposureBook(self.cfg.position_ttl_s)

    async def assess(self, items: list[Work]) -> list[Work]:
        with self.timed():
            return assess_batch(items, self.trade, self.cfg, self.book)

    def health(self) -> dict[str, Any]:
        return {"ok": True, "reasons": [], "open_positions": len(self.book.positions)}

    def check_health(self) -> None:
        pass  # in-memory exposure book only
