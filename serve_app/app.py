"""The app builder: typed args (pydantic) → the bound seven-deployment graph.

import_path: serve_app.app:build_app. Serve validates the config's `args` against AppArgs (serve_app/config.py,
the builder's annotation); deployment options (replicas, autoscaling, CPUs, health checks) live in the serve
config.
"""
from __future__ import annotations

from serve_app.config import AppArgs
from serve_app.deployments.analytics import Analytics
from serve_app.deployments.feature_engine import FeatureEngine
from serve_app.deployments.market_context import MarketContext
from serve_app.deployments.ml_engine import MLEngine
from serve_app.deployments.orchestrator import Orchestrator
from serve_app.deployments.portfolio import Portfolio
from serve_app.deployments.risk_manager import RiskManager


def build_app(args: AppArgs | dict | None = None):
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    source = a.market_source.model_dump()  # the stages that read the store read this source's market data
    features = FeatureEngine.bind(timeframe=a.timeframe, refresh_interval_s=a.refresh_interval_s,
                                  max_data_age_s=a.risk.max_data_age_s, symbols=a.symbols, market_source=source)
    market = MarketContext.bind(config=a.market.model_dump(), timeframe=a.timeframe,
                                refresh_interval_s=a.refresh_interval_s, history=a.market_history,
                                market_source=source)
    ml = MLEngine.bind(model_root=a.model_root)
    portfolio = Portfolio.bind(trade=a.trade.model_dump(), config=a.portfolio.model_dump())
    risk = RiskManager.bind(trade=a.trade.model_dump(), config=a.risk.model_dump())
    analytics = Analytics.bind(timeframe=a.timeframe, flush_interval_s=a.analytics.flush_interval_s,
                               outcome_horizon_candles=a.analytics.outcome_horizon_candles,
                               spill_dir=a.analytics.spill_dir, store_retry_s=a.analytics.store_retry_s,
                               market_source=source)
    return Orchestrator.bind(features, market, ml, portfolio, risk, analytics, timeframe=a.timeframe,
                             max_batch_size=a.pipeline_max_batch_size,
                             max_in_flight=a.pipeline_max_in_flight,
                             stage_timeout_s=a.stage_timeout_s, replacement_wait_s=a.replacement_wait_s)
