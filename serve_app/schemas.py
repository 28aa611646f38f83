"""Request / response / internal contracts (pydantic 2, no ray import)."""
from __future__ import annotations

import json
import math
import re
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CLASS_NAMES = ("down", "flat", "up")
SYMBOL_PATTERN = r"^[A-Z0-9]{1,15}$"
MIN_PRICE = 1e-9  # below this, price ratios underflow; no traded asset is quoted that low


class Action(str, Enum):
    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"


class SignalRequest(BaseModel):
    """Body of POST /generate_signal."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    symbol: str = Field(..., min_length=1, max_length=15, description="Base asset, e.g. SOL or BTC",
                        examples=["SOL"])
    price: float = Field(..., ge=MIN_PRICE, lt=1e9, allow_inf_nan=False,
                         description="Live price (the current bar's close) in the quote currency",
                         examples=[100.0])
    timestamp: datetime | None = Field(None, description="As-of time (ISO 8601); default: now (UTC)")
    equity: float | None = Field(None, gt=0, lt=1e13, allow_inf_nan=False,
                                 description="Account equity for sizing; default: the configured equity")

    @field_validator("symbol")
    @classmethod
    def _normalise_symbol(cls, v: str) -> str:
        if not v.isascii():  # before upper(): "ß".upper() is "SS"
            raise ValueError("symbol must be 1-15 letters or digits, e.g. SOL")
        v = v.upper()
        for suffix in ("/USDT", "-USDT", "USDT", "/USD", "-USD"):
            if v.endswith(suffix) and len(v) > len(suffix):
                v = v[: -len(suffix)]
                break
        if not v.isascii() or not re.fullmatch(SYMBOL_PATTERN, v):
            raise ValueError("symbol must be 1-15 letters or digits, e.g. SOL")
        return v

    @field_validator("price", "equity", mode="before")
    @classmethod
    def _no_booleans(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("must be a number, not true/false")
        return v


class Position(BaseModel):
    size: float = Field(..., ge=0, description="Units of the base asset")
    notional: float = Field(..., ge=0, description="size x price, quote currency")
    fraction_of_equity: float = Field(..., ge=0, le=1)


class Risk(BaseModel):
    approved: bool
    stop_loss: float | None
    take_profit: float | None
    reasons: list[str]


class MarketContextOut(BaseModel):
    sentiment: float = Field(..., ge=-1, le=1)
    market_sentiment: float = Field(..., ge=-1, le=1)
    momentum: float
    breadth: float = Field(..., ge=0, le=1)
    regime: Literal["trending", "ranging", "volatile"]
    news_count: int


class SignalResponse(BaseModel):
    signal_id: str
    symbol: str
    timeframe: str
    price: float
    action: Action
    confidence: float = Field(..., ge=0, le=1)
    probabilities: dict[str, float]
    position: Position
    risk: Risk
    market_context: MarketContextOut
    model_version: str
    generated_at: str = Field(..., description="ISO 8601, UTC")
    data: dict[str, Any] = Field(default_factory=dict,
                                 description="Inputs the signal was computed from (last candle, ATR, ...)")


class ErrorBody(BaseModel):
    detail: Any


# ---- internal contracts between stages (plain dicts travel well over Ray; these document them) ----

class FeatureResult(BaseModel):
    """FeatureEngine output for one request."""

    symbol: str
    ok: bool
    error: str | None = None  # "unknown_symbol" | "store_unavailable" | "insufficient_history"
    message: str | None = None
    features: list[float] | None = None
    last_close: float | None = None
    last_open_time_ms: int | None = None
    atr: float | None = None
    atr_pct: float | None = None
    realized_vol: float | None = None
    candles_cached: int = 0
    cache_age_s: float | None = None


def signal_record(resp: dict[str, Any], generated_at_ms: int) -> dict[str, Any]:
    """Flatten a response dict into the `signals` table's columns (see store.base.SIGNAL_COLUMNS)."""
    probs = resp["probabilities"]
    pos, risk, ctx = resp["position"], resp["risk"], resp["market_context"]
    return {
        "signal_id": resp["signal_id"],
        "symbol": resp["symbol"],
        "timeframe": resp["timeframe"],
        "price": resp["price"],
        "action": resp["action"],
        "confidence": resp["confidence"],
        "prob_down": probs["down"],
        "prob_flat": probs["flat"],
        "prob_up": probs["up"],
        "position_size": pos["size"],
        "position_notional": pos["notional"],
        "fraction_of_equity": pos["fraction_of_equity"],
        "approved": bool(risk["approved"]),
        "stop_loss": risk["stop_loss"],
        "take_profit": risk["take_profit"],
        "reasons": json.dumps(risk["reasons"]),
        "sentiment": ctx["sentiment"],
        "momentum": ctx["momentum"],
        "regime": ctx["regime"],
        "market_context": json.dumps(ctx),
        "model_version": resp["model_version"],
        "generated_at": resp["generated_at"],
        "generated_at_ms": generated_at_ms,
        "payload": json.dumps(resp, default=_json_default),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
