"""Portfolio deployment: probabilities + volatility → position size (fractional Kelly, vol-targeted)."""
from __future__ import annotations

from ray import serve

from serve_app.core.pipeline import size_batch
from serve_app.core.trading import PortfolioConfig, TradeConfig
from serve_app.stage import StageBase


@serve.deployment
class Portfolio(StageBase):
    stage = "portfolio"

    def __init__(self, trade: dict | None = None, config: dict | None = None):
        self._init_stage()
        self.trade = TradeConfig.model_validate(trade or {})
        self.cfg = PortfolioConfig.model_validate(config or {})

    async def size(self, items: list[dict], contexts: list[dict]) -> list[dict]:
        with self.timed():
            return size_batch(items, contexts, self.trade, self.cfg)

    def check_health(self) -> None:
        pass  # stateless: nothing to verify beyond the replica answering
