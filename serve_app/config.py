"""The application's configuration schema (no ray import): the serve config's `args` (AppArgs, validated by
Serve against the builder's annotation) and the ML engine's `user_config` (MLUserConfig). Every default of
the service is defined here or in the core config models it nests (TradeConfig, PortfolioConfig, RiskConfig,
MarketConfig); the deployments take explicit values from the builder.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.market import MarketConfig
from serve_app.core.trading import PortfolioConfig, RiskConfig, TradeConfig
from serve_app.settings import (
    DEFAULT_EXCHANGE, DEFAULT_QUOTE, DEFAULT_TIMEFRAME, EXCHANGE_PATTERN, QUOTE_PATTERN,
)


class AnalyticsArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flush_interval_s: float = Field(0.5, gt=0, description="how often journaled signals are replayed into the store")
    outcome_horizon_candles: int = Field(4, ge=1)
    spill_dir: str | None = Field(None, description="the journal of signals the store could not take "
                                                    "(default SIGNAL_SPILL_DIR)")
    store_retry_s: float = Field(2.0, gt=0, description="after a store failure, record() journals straight "
                                                        "away for this long instead of trying the store")


class MarketSource(BaseModel):
    """The market data the service trades on: the stages read only the candles and news of this exchange and
    quote currency (what `signalgen collect --exchange --quote` stores). It overrides SIGNAL_EXCHANGE and
    SIGNAL_QUOTE in the replicas' environment."""

    model_config = ConfigDict(extra="forbid")
    exchange: str = Field(DEFAULT_EXCHANGE, pattern=EXCHANGE_PATTERN, description="a ccxt exchange id")
    quote: str = Field(DEFAULT_QUOTE, pattern=QUOTE_PATTERN, description="the quote currency, e.g. USDT")


class AppArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeframe: str = Field(DEFAULT_TIMEFRAME, pattern=r"^\d+[mhd]$")
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
    market_source: MarketSource = Field(default_factory=MarketSource)
    market_history: int = Field(1000, ge=100, description="candles per symbol kept by MarketContext")
    trade: TradeConfig = Field(default_factory=TradeConfig)
    portfolio: PortfolioConfig = Field(default_factory=PortfolioConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    market: MarketConfig = Field(default_factory=MarketConfig)
    analytics: AnalyticsArgs = Field(default_factory=AnalyticsArgs)




class MLUserConfig(BaseModel):
    """MLEngine's `user_config`: changing it makes Serve call `reconfigure` in place (a new model, new batching)."""

    model_config = ConfigDict(extra="forbid")
    model_version: str = Field("current", description="a registry version name, or `current` (CURRENT file)")
    max_batch_size: int = Field(64, ge=1, description="rows merged into one inplace_predict, at most")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="how long a partial batch waits for more")
