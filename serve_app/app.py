"""The app builder: typed args (pydantic) → the bound seven-deployment graph.

import_path: serve_app.app:build_app. Serve validates the config's `args` against AppArgs (the builder's
annotation); deployment options (replicas, autoscaling, CPUs, health checks) live in the serve config.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serve_app.analytics import Analytics
from serve_app.core.market import MarketConfig
from serve_app.core.trading import PortfolioConfig, RiskConfig, TradeConfig
from serve_app.feature_engine import FeatureEngine
from serve_app.market_context import MarketContext
from serve_app.ml_engine import MLEngine
from serve_app.orchestrator import Orchestrator
from serve_app.portfolio import Portfolio
from serve_app.risk import RiskManager


class AnalyticsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flush_interval_s: float = Field(0.5, gt=0)
    outcome_horizon_candles: int = Field(4, ge=1)
    spill_dir: str | None = Field(None, description="journal for signals the store cannot take at shutdown")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeframe: str = Field("1h", pattern=r"^\d+[mhd]$")
    symbols: list[str] | None = Field(None, description="track only these (default: every symbol in the store)")
    refresh_interval_s: float = Field(30.0, gt=0, description="candle cache refresh period")
    pipeline_max_batch_size: int = Field(64, ge=1, le=1024, description="requests per pipeline batch, at most")
    pipeline_max_in_flight: int = Field(1, ge=1, le=64,
                                        description="pipeline batches an ingress replica runs at once; a request "
                                                    "arriving while they run joins the next batch")
    stage_timeout_s: float = Field(10.0, gt=0, description="a pipeline batch waiting longer for a stage ends in 504")
    replacement_wait_s: float = Field(
        20.0, ge=0, description="a batch that lost a stage replica is retried until this long after the loss "
                                "(Serve queues it until a replacement is up); keep it below the proxy's "
                                "request_timeout_s")
    model_root: str | None = Field(None, description="model registry directory (default: MODEL_DIR or models/artifacts)")
    market_history: int = Field(1000, ge=100, description="candles per symbol kept by MarketContext")
    trade: TradeConfig = Field(default_factory=TradeConfig)
    portfolio: PortfolioConfig = Field(default_factory=PortfolioConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    market: MarketConfig = Field(default_factory=MarketConfig)
    analytics: AnalyticsArgs = Field(default_factory=AnalyticsArgs)


def build_app(args: AppArgs | dict | None = None):
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    features = FeatureEngine.bind(timeframe=a.timeframe, refresh_interval_s=a.refresh_interval_s,
                                  max_data_age_s=a.risk.max_data_age_s, symbols=a.symbols)
    market = MarketContext.bind(config=a.market.model_dump(), timeframe=a.timeframe,
                                refresh_interval_s=a.refresh_interval_s, history=a.market_history)
    ml = MLEngine.bind(model_root=a.model_root)
    portfolio = Portfolio.bind(trade=a.trade.model_dump(), config=a.portfolio.model_dump())
    risk = RiskManager.bind(trade=a.trade.model_dump(), config=a.risk.model_dump())
    analytics = Analytics.bind(timeframe=a.timeframe, flush_interval_s=a.analytics.flush_interval_s,
                               outcome_horizon_candles=a.analytics.outcome_horizon_candles,
                               spill_dir=a.analytics.spill_dir)
    return Orchestrator.bind(features, market, ml, portfolio, risk, analytics, timeframe=a.timeframe,
                             max_batch_size=a.pipeline_max_batch_size,
                             max_in_flight=a.pipeline_max_in_flight,
                             stage_timeout_s=a.stage_timeout_s, replacement_wait_s=a.replacement_wait_s)
