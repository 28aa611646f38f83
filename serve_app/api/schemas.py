"""The HTTP contract: request and response schemas (pydantic 2) and how a finished request becomes its HTTP
answer. Only the ingress imports this package; the core knows nothing of HTTP."""
from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.core.records import ErrorCode, Signal, StageError

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


# Why a request got no signal (core.records.ErrorCode) -> its HTTP status
ERROR_STATUS = {ErrorCode.UNKNOWN_SYMBOL: 404, ErrorCode.INSUFFICIENT_HISTORY: 404, ErrorCode.STORE_UNAVAILABLE: 503}


def http_result(result: Signal | StageError) -> tuple[int, dict[str, Any]]:
    """(status, body) for one request of a finished batch."""
    if isinstance(result, StageError):
        return ERROR_STATUS.get(result.code, 500), {"detail": result.message or result.code, "error": result.code}
    return 200, result.response()
