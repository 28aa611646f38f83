"""Portfolio deployment: probabilities + volatility → position size (fractional Kelly, vol-targeted)."""
from __future__ import annotations

import numpy as np
from ray import serve

from serve_app.core.trading import PortfolioConfig, TradeConfig, size_positions
from serve_app.schemas import CLASS_NAMES
from serve_app.stage import StageBase


def size_batch(items: list[dict], contexts: list[dict], trade: TradeConfig, cfg: PortfolioConfig) -> list[dict]:
    """Merge market context into each item and size the ones that have a prediction (ray-free)."""
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
