"""The typed records that travel between the stages (no ray, no HTTP import).

One request's way through the graph is a `Work` record. Each stage takes a batch of them and returns new
ones with its own part filled in (`dataclasses.replace`, never mutation):

    SignalInput ─▶ FeatureEngine  Work(input, features, candle)        or Work(input, error)
                ─▶ MarketContext  MarketView                            or StageError   (in parallel)
                   MLEngine       Work(..., prediction), features dropped (not needed downstream)
                   Portfolio      Work(..., market, sizing)
                   RiskManager    Work(..., verdict)
                   ingress        Signal: the HTTP response and the stored row, built here (Signal.response,
                                  Signal.row) and nowhere else

A Work whose `error` is set passes through the later stages untouched. The records are plain frozen
dataclasses: Ray pickles them between replicas, and the same code runs in one process (LocalPipeline,
the backtest).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from serve_app.core.labels import CLASSES
from serve_app.core.timeutil import iso_ms

ACTIONS = ("BUY", "SELL", "HOLD")
REGIMES = ("trending", "ranging", "volatile")


class ErrorCode:
    """Why a request got no signal (the ingress maps each to an HTTP status)."""

    UNKNOWN_SYMBOL = "unknown_symbol"
    INSUFFICIENT_HISTORY = "insufficient_history"
    STORE_UNAVAILABLE = "store_unavailable"


@dataclass(frozen=True)
class SignalInput:
    """A validated request: base symbol, live price, as-of time, optional account equity."""

    symbol: str
    price: float
    asof_ms: int
    equity: float | None = None


@dataclass(frozen=True)
class StageError:
    code: str
    message: str


@dataclass(frozen=True)
class CandleFacts:
    """What the signal was computed from, beyond the feature vector (FeatureEngine)."""

    last_close: float
    last_open_time_ms: int
    atr: float                 # in price units, at the live price
    atr_pct: float             # ATR / price: a feature, and the volatility breaker's input
    candles_cached: int
    cache_age_s: float | None
    store_reachable: bool      # false: the store's last refresh failed, these candles are cached ones


@dataclass(frozen=True)
class MarketView:
    """MarketContext's answer for one request."""

    sentiment: float
    market_sentiment: float
    momentum: float
    breadth: float
    regime: str
    news_count: int


@dataclass(frozen=True)
class Prediction:
    probabilities: tuple[float, ...]   # in CLASSES order (down, flat, up), calibrated, summing to 1
    action: str
    confidence: float
    model_version: str


@dataclass(frozen=True)
class Sizing:
    equity: float
    notional: float            # before the risk stage's caps
    kelly_fraction: float
    vol_cap_fraction: float


@dataclass(frozen=True)
class Verdict:
    approved: bool
    stop_loss: float | None
    take_profit: float | None
    reasons: tuple[str, ...]
    size: float                # the final position, after the caps (0 when blocked or HOLD)
    notional: float
    fraction_of_equity: float
    blocked_by: tuple[str, ...] = ()   # the rules that blocked it (BLOCKS keys), for counting


@dataclass(frozen=True)
class Work:
    """One request on its way through the stages."""

    input: SignalInput
    features: np.ndarray | None = field(default=None, compare=False)
    candle: CandleFacts | None = None
    market: MarketView | None = None
    prediction: Prediction | None = None
    sizing: Sizing | None = None
    verdict: Verdict | None = None
    error: StageError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def failed(self, error: StageError) -> "Work":
        return replace(self, features=None, error=error)

    def with_(self, **parts: Any) -> "Work":
        return replace(self, **parts)


@dataclass(frozen=True)
class Signal:
    """A finished signal: the public response and the `signals` row are both built from it, here."""

    signal_id: str
    timeframe: str
    generated_at_ms: int
    work: Work

    def response(self) -> dict[str, Any]:
        w = self.work
        inp, candle, pred, sizing, verdict = w.input, w.candle, w.prediction, w.sizing, w.verdict
        return {
            "signal_id": self.signal_id,
            "symbol": inp.symbol,
            "timeframe": self.timeframe,
            "price": inp.price,
            "action": pred.action,
            "confidence": round(pred.confidence, 6),
            "probabilities": {name: round(float(p), 6) for name, p in zip(CLASSES, pred.probabilities)},
            "position": {"size": verdict.size, "notional": verdict.notional,
                         "fraction_of_equity": verdict.fraction_of_equity},
            "risk": {"approved": verdict.approved, "stop_loss": verdict.stop_loss,
                     "take_profit": verdict.take_profit, "reasons": list(verdict.reasons)},
            "market_context": asdict(w.market),
            "model_version": pred.model_version,
            "generated_at": iso_ms(self.generated_at_ms),
            "data": {
                "as_of": iso_ms(inp.asof_ms),
                "last_close": candle.last_close,
                "last_candle_open": iso_ms(candle.last_open_time_ms),
                "atr": candle.atr,
                "atr_pct": candle.atr_pct,
                "equity": sizing.equity,
                "kelly_fraction": sizing.kelly_fraction,
                "vol_cap_fraction": sizing.vol_cap_fraction,
                "candles_cached": candle.candles_cached,
                "cache_age_s": candle.cache_age_s,
                # false when the candle cache's last refresh from the store failed: the signal was then
                # computed from the candles cached before the outage (cache_age_s says how old they are)
                "store_reachable": candle.store_reachable,
                "served_from_cache": not candle.store_reachable,
            },
        }

    def row(self, response: dict[str, Any] | None = None) -> dict[str, Any]:
        """The `signals` table's columns (store.base.SIGNAL_COLUMNS); `payload` is the whole response."""
        resp = response if response is not None else self.response()
        w = self.work
        pred, verdict, market = w.prediction, w.verdict, w.market
        probs = resp["probabilities"]
        return {
            "signal_id": self.signal_id,
            "symbol": w.input.symbol,
            "timeframe": self.timeframe,
            "price": w.input.price,
            "action": pred.action,
            "confidence": resp["confidence"],
            "prob_down": probs["down"],
            "prob_flat": probs["flat"],
            "prob_up": probs["up"],
            "position_size": verdict.size,
            "position_notional": verdict.notional,
            "fraction_of_equity": verdict.fraction_of_equity,
            "approved": bool(verdict.approved),
            "stop_loss": verdict.stop_loss,
            "take_profit": verdict.take_profit,
            "reasons": json.dumps(list(verdict.reasons)),
            "sentiment": market.sentiment,
            "momentum": market.momentum,
            "regime": market.regime,
            "market_context": json.dumps(resp["market_context"]),
            "model_version": pred.model_version,
            "generated_at": resp["generated_at"],
            "generated_at_ms": self.generated_at_ms,
            "payload": json.dumps(resp, default=_json_default),
        }


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
