"""Portfolio deployment: probabilities + volatility → position size (fractional Kelly, vol-targeted)."""
from __future__ import annotations

from ray import serve

from serve_app.core.pipeline import size_batch
from serve_app.core.records import MarketView, StageError, Work
from serve_app.core.trading import PortfolioConfig, TradeConfig
from serve_app.deployments.base import StageBase


@serve.deployment
class Portfolio(StageBase):
    stage = "portfolio"

    def __init__(self, *, trade: dict, config: dict):
        self._init_stage()
        self.trade = TradeConfig.model_validate(trade)
        self.cfg = PortfolioConfig.model_validate(config)

    async def size(self, items: list[Work], contexts: list[MarketView | StageError]) -> list[Work]:
        with self.timed():
            return size_batch(items, contexts, self.trade, self.cfg)

    def check_health(self) -> None:
        pass  # stateless: nothing to verify beyond the replica answering
