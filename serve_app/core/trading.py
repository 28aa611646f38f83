"""Action decision, position sizing (portfolio) and risk checks: the trading core, vectorised per batch.

No ray import: the Portfolio and RiskManager deployments, the in-process benchmark and the backtest all
call these functions.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.labels import DOWN, UP
from serve_app.core.records import CandleFacts, Prediction, SignalInput, Verdict, Work


class TradeConfig(BaseModel):
    """Parameters shared by portfolio and risk so stops and sizing agree."""

    model_config = ConfigDict(extra="forbid")  # a misspelled key is an error, not a silent default
    stop_atr_mult: float = Field(2.0, gt=0, description="stop-loss distance in ATRs")
    take_profit_atr_mult: float = Field(3.0, gt=0, description="take-profit distance in ATRs")


class PortfolioConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled key is an error, not a silent default
    equity: float = Field(100_000.0, gt=0, description="default account equity (quote currency)")
    kelly_fraction: float = Field(0.25, gt=0, le=1, description="fraction of the full Kelly bet")
    risk_per_trade: float = Field(0.01, gt=0, le=0.2,
                                  description="equity lost if the stop is hit (volatility targeting)")
    max_fraction: float = Field(0.25, gt=0, le=1, description="hard cap on one position, share of equity")
    regime_scale: dict[str, float] = Field(
        default_factory=lambda: {"trending": 1.0, "ranging": 0.75, "volatile": 0.5})


class RiskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled key is an error, not a silent default
    min_confidence: float = Field(0.45, ge=0, le=1)
    max_symbol_fraction: float = Field(0.2, gt=0, le=1, description="notional cap per symbol, share of equity")
    max_total_exposure_fraction: float = Field(0.6, gt=0, le=5, description="cap on all open notional")
    max_atr_pct: float = Field(0.06, gt=0, description="volatility circuit breaker: ATR/price above this blocks")
    max_data_age_s: float = Field(8100.0, gt=0, description="last candle older than this (vs as-of time) blocks")
    max_price_deviation: float = Field(0.10, gt=0, description="|price/last_close - 1| above this blocks")
    position_ttl_s: float = Field(4 * 3600.0, gt=0, description="how long an approved position counts as exposure")

    @model_validator(mode="after")
    def _caps(self) -> "RiskConfig":
        if self.max_symbol_fraction > self.max_total_exposure_fraction:
            raise ValueError("max_symbol_fraction must not exceed max_total_exposure_fraction")
        return self


def decide_actions(probs: np.ndarray) -> tuple[list[str], np.ndarray]:
    """BUY when `up` is the most likely class, SELL when `down` is, HOLD otherwise; confidence = max prob."""
    idx = probs.argmax(axis=1)
    actions = ["BUY" if i == UP else "SELL" if i == DOWN else "HOLD" for i in idx]
    return actions, probs.max(axis=1)


def kelly_fraction(p_win: np.ndarray, p_loss: np.ndarray, payoff: float) -> np.ndarray:
    """Kelly bet for a win of `payoff` x risk with prob p_win and a loss of 1 x risk with prob p_loss
    (flat outcomes neither win nor lose): f* = p_win - p_loss / payoff, floored at 0."""
    return np.maximum(p_win - p_loss / payoff, 0.0)


def size_positions(actions: Sequence[str], probs: np.ndarray, prices: np.ndarray, atr: np.ndarray,
                   equity: np.ndarray, regimes: Sequence[str], trade: TradeConfig,
                   cfg: PortfolioConfig) -> dict[str, np.ndarray]:
    """Fractional Kelly from the probabilities and payoff ratio, capped by volatility targeting
    (risk_per_trade of equity lost at a stop k x ATR away) and max_fraction, scaled by regime."""
    is_buy = np.array([a == "BUY" for a in actions])
    is_sell = np.array([a == "SELL" for a in actions])
    p_win = np.where(is_buy, probs[:, UP], np.where(is_sell, probs[:, DOWN], 0.0))
    p_loss = np.where(is_buy, probs[:, DOWN], np.where(is_sell, probs[:, UP], 1.0))
    payoff = trade.take_profit_atr_mult / trade.stop_atr_mult
    kelly = cfg.kelly_fraction * kelly_fraction(p_win, p_loss, payoff)
    stop_pct = trade.stop_atr_mult * atr / prices
    vol_cap = np.where(stop_pct > 0, cfg.risk_per_trade / np.maximum(stop_pct, 1e-12), 0.0)
    scale = np.array([cfg.regime_scale.get(r, 1.0) for r in regimes])
    frac = np.minimum(np.minimum(kelly, vol_cap), cfg.max_fraction) * scale
    frac = np.where(is_buy | is_sell, frac, 0.0)
    notional = frac * equity
    return {"fraction": frac, "notional": notional, "size": notional / prices, "kelly": kelly, "vol_cap": vol_cap}


@dataclass
class ExposureBook:
    """Open notional per symbol from approved signals (the newest signal replaces the symbol's position),
    kept per RiskManager replica; entries expire after `ttl_s`."""

    ttl_s: float
    positions: dict[str, tuple[float, float]] = field(default_factory=dict)  # symbol -> (notional, expires_at)

    def _prune(self, now: float) -> None:
        for sym in [s for s, (_, exp) in self.positions.items() if exp <= now]:
            del self.positions[sym]

    def total_excluding(self, symbol: str, now: float) -> float:
        self._prune(now)
        return sum(n for s, (n, _) in self.positions.items() if s != symbol)

    def set(self, symbol: str, notional: float, now: float) -> None:
        if notional > 0:
            self.positions[symbol] = (notional, now + self.ttl_s)
        else:
            self.positions.pop(symbol, None)


# what can block a signal (Verdict.blocked_by), in the order assess checks them
BLOCKS = {"min_confidence": "confidence below min_confidence", "circuit_breaker": "volatility circuit breaker",
          "stale_data": "stale data", "price_sanity": "price sanity", "total_exposure": "total exposure cap reached",
          "zero_size": "position size is zero (no Kelly edge)"}


def pre_trade_blocks(inp: SignalInput, candle: CandleFacts, pred: Prediction,
                     cfg: RiskConfig) -> list[tuple[str, str]]:
    """The blocks of a BUY/SELL that depend neither on its size nor on the book: (BLOCKS key, why) of each
    failing check, in BLOCKS order; none for a HOLD. A signal they block is blocked whatever its size."""
    if pred.action == "HOLD":
        return []
    price = float(inp.price)
    age_s = (inp.asof_ms - candle.last_open_time_ms) / 1000.0
    deviation = abs(price / candle.last_close - 1)
    checks = [  # (blocks?, BLOCKS key, why)
        (pred.confidence < cfg.min_confidence, "min_confidence",
         f"confidence {pred.confidence:.3f} below minimum {cfg.min_confidence:.2f}"),
        (candle.atr_pct > cfg.max_atr_pct, "circuit_breaker",
         f"volatility circuit breaker: ATR {candle.atr_pct:.2%} of price exceeds {cfg.max_atr_pct:.2%}"),
        (age_s > cfg.max_data_age_s, "stale_data",
         f"stale data: last candle opened {_in_unit_of(age_s, cfg.max_data_age_s)} before the signal time "
         f"(limit {_in_unit_of(cfg.max_data_age_s, cfg.max_data_age_s)})"),
        (deviation > cfg.max_price_deviation, "price_sanity",
         f"price sanity: {price:g} is {deviation:.1%} from the last close "
         f"{candle.last_close:g} (limit {cfg.max_price_deviation:.0%})"),
    ]
    return [(key, why) for failed, key, why in checks if failed]


def _in_unit_of(seconds: float, limit_s: float) -> str:
    """`seconds` in the unit that reads `limit_s` best (h from 2 h, min from 10 min, else s), so that an age
    and its limit compare at a glance: "3 h (limit 2.25 h)" on hourly candles, "157 s (limit 150 s)" on
    minute candles."""
    if limit_s >= 7200:
        return f"{_trim(seconds / 3600)} h"
    if limit_s >= 600:
        return f"{_trim(seconds / 60)} min"
    return f"{seconds:.0f} s"


def _trim(x: float) -> str:
    """Up to two decimals, no trailing zeros: 3, 2.25, 16.67."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def assess(work: Work, trade: TradeConfig, cfg: RiskConfig, book: ExposureBook, now: float | None = None) -> Verdict:
    """Risk verdict for one sized signal: `work` has its input, candle facts, prediction and sizing.

    Every block names its reason; caps shrink the position and say so."""
    now = time.time() if now is None else now
    inp, candle, pred, sizing = work.input, work.candle, work.prediction, work.sizing
    action, price, atr = pred.action, float(inp.price), float(candle.atr)
    equity = float(sizing.equity)
    reasons: list[str] = []
    if action == "HOLD":
        reasons.append("hold: no directional edge (flat is the most likely class)")
        stop = tp = None
    else:
        sign = 1.0 if action == "BUY" else -1.0
        stop = price - sign * trade.stop_atr_mult * atr
        tp = price + sign * trade.take_profit_atr_mult * atr
        if stop <= 0:  # a SELL's stop is above, a BUY's below; a stop at or below zero is meaningless
            stop = price * 0.01
    blocks: list[str] = []
    for key, why in pre_trade_blocks(inp, candle, pred, cfg):
        blocks.append(key)
        reasons.append("blocked: " + why)
    notional = float(sizing.notional) if action != "HOLD" and not blocks else 0.0
    if notional > 0:
        cap = cfg.max_symbol_fraction * equity
        if notional > cap:
            reasons.append(f"capped: notional {notional:,.2f} above per-symbol cap {cap:,.2f}")
            notional = cap
        room = cfg.max_total_exposure_fraction * equity - book.total_excluding(inp.symbol, now)
        if notional > room:
            if room <= 0:
                blocks.append("total_exposure")
                reasons.append("blocked: total exposure cap reached "
                               f"({cfg.max_total_exposure_fraction:.0%} of equity)")
                notional = 0.0
            else:
                reasons.append(f"capped: total exposure leaves room for {room:,.2f}")
                notional = room
    if action != "HOLD" and not blocks and notional <= 0:
        blocks.append("zero_size")
        reasons.append("blocked: position size is zero (no Kelly edge at this payoff ratio)")
    approved = action != "HOLD" and not blocks
    if approved:
        book.set(inp.symbol, notional, now)
    size = notional / price if approved else 0.0
    return Verdict(approved=approved, stop_loss=_round_price(stop), take_profit=_round_price(tp),
                   reasons=tuple(reasons), size=size, notional=size * price,
                   fraction_of_equity=min(size * price / equity, 1.0) if equity > 0 else 0.0,
                   blocked_by=tuple(blocks))


def _round_price(x: float | None) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.8g}")
