"""Market context core: time-decayed news sentiment, cross-asset momentum, breadth and a regime label.

Pure numpy over a snapshot of closes and news; no ray import. One call handles a whole batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serve_app.core.features import rolling_std
from serve_app.core.records import ErrorCode, MarketView, StageError
from serve_app.store.base import NewsItem

REFERENCE_SYMBOL = "BTC"


class MarketConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelled key is an error, not a silent default
    sentiment_half_life_hours: float = Field(12.0, gt=0)
    news_lookback_hours: float = Field(72.0, gt=0)
    symbol_sentiment_weight: float = Field(0.7, ge=0, le=1, description="rest goes to market-wide news")
    momentum_lookback: int = Field(24, ge=2, description="candles")
    vol_lookback: int = Field(48, ge=5, description="candles for realised volatility")
    volatile_percentile: float = Field(0.85, gt=0, lt=1,
                                       description="realised vol above this percentile of its own history → volatile")
    trend_efficiency: float = Field(0.35, gt=0, lt=1,
                                    description="Kaufman efficiency ratio above this → trending")


@dataclass
class SymbolSeries:
    closes: np.ndarray  # the most recent closes, ascending
    vol_threshold: float  # realised vol at `volatile_percentile` over the history
    news_time_ms: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    news_score: np.ndarray = field(default_factory=lambda: np.empty(0))


@dataclass
class MarketSnapshot:
    """What the MarketContext replica keeps in memory, refreshed off the request path. Everything that
    spans all symbols (breadth, the reference return) is computed here once, so a request's cost does not
    grow with the number of tracked symbols."""

    series: dict[str, SymbolSeries]
    all_news_time_ms: np.ndarray
    all_news_score: np.ndarray
    loaded_at_ms: int
    breadth: float = 0.5  # share of symbols whose lookback return is positive
    reference_return: float | None = None  # BTC's lookback return


def _log_returns(closes: np.ndarray) -> np.ndarray:
    return np.diff(np.log(closes))


def realised_vols(closes: np.ndarray, lookback: int) -> np.ndarray:
    """vols[j]: std of the `lookback` one-candle log returns ending at return j (r[j] = log closes[j+1]/closes[j]);
    NaN for j < lookback - 1."""
    return rolling_std(_log_returns(np.asarray(closes, dtype=np.float64)), lookback, ddof=1)


def rolling_vol_threshold(closes: np.ndarray, lookback: int, percentile: float) -> float:
    """Percentile of the rolling realised volatility (std of log returns) over the whole history."""
    return vol_threshold_in(realised_vols(closes, lookback), 0, len(closes) - 1, lookback, percentile)


def vol_threshold_in(vols: np.ndarray, first: int, last: int, lookback: int, percentile: float) -> float:
    """rolling_vol_threshold(closes[first:last + 1], lookback, percentile), from vols = realised_vols(closes,
    lookback) computed once over the whole series (a replay asks this for thousands of windows)."""
    if last - first < lookback + 1:
        return float("inf")
    return float(np.quantile(vols[first + lookback - 1:last], percentile))


def build_snapshot(closes_by_symbol: dict[str, np.ndarray], news: Sequence[NewsItem], cfg: MarketConfig,
                   now_ms: int, vol_thresholds: Mapping[str, float] | None = None) -> MarketSnapshot:
    """The snapshot of these closes and news; `vol_thresholds` (per symbol, optional): each symbol's
    rolling_vol_threshold of its closes, when the caller has it already."""
    keep = max(cfg.momentum_lookback, cfg.vol_lookback) + 2
    by_symbol: dict[str, list[NewsItem]] = {}
    for item in news:
        by_symbol.setdefault(item.symbol, []).append(item)
    series = {}
    for sym, closes in closes_by_symbol.items():
        items = by_symbol.get(sym, [])
        series[sym] = SymbolSeries(
            closes=np.asarray(closes[-keep:], dtype=np.float64),
            vol_threshold=(vol_thresholds[sym] if vol_thresholds is not None and sym in vol_thresholds else
                           rolling_vol_threshold(np.asarray(closes, dtype=np.float64), cfg.vol_lookback,
                                                 cfg.volatile_percentile)),
            news_time_ms=np.array([n.published_at for n in items], dtype=np.int64),
            news_score=np.array([n.score for n in items], dtype=np.float64),
        )
    rets = {s: _lookback_return(ser.closes, cfg.momentum_lookback) for s, ser in series.items()}
    return MarketSnapshot(
        series=series,
        all_news_time_ms=np.array([n.published_at for n in news], dtype=np.int64),
        all_news_score=np.array([n.score for n in news], dtype=np.float64),
        loaded_at_ms=now_ms,
        breadth=float(np.mean([r > 0 for r in rets.values()])) if rets else 0.5,
        reference_return=rets.get(REFERENCE_SYMBOL),
    )


def decayed_sentiment(times_ms: np.ndarray, scores: np.ndarray, now_ms: int, half_life_hours: float,
                      lookback_hours: float) -> tuple[float, int]:
    """Exponentially time-decayed mean score of the news published in (now - lookback, now]."""
    age_h = (now_ms - times_ms) / 3_600_000.0
    mask = (age_h >= 0) & (age_h <= lookback_hours)
    if not mask.any():
        return 0.0, 0
    w = np.power(0.5, age_h[mask] / half_life_hours)
    return float(np.clip(np.dot(w, scores[mask]) / w.sum(), -1.0, 1.0)), int(mask.sum())


def efficiency_ratio(closes: np.ndarray) -> float:
    """|net move| / path length: 1 for a straight line, near 0 for chop."""
    path = np.abs(np.diff(closes)).sum()
    return float(abs(closes[-1] - closes[0]) / path) if path > 0 else 0.0


def _lookback_return(closes: np.ndarray, lookback: int) -> float:
    if closes.size <= lookback:
        return 0.0
    return float(math.log(closes[-1] / closes[-1 - lookback]))


def compute_contexts(symbols: Sequence[str], prices: Sequence[float], now_ms: Sequence[int],
                     snap: MarketSnapshot, cfg: MarketConfig) -> list[MarketView | StageError]:
    """Market context for each (symbol, live price, as-of time) of a batch.

    - sentiment: symbol news blended with market-wide news, time-decayed, in [-1, 1]
    - momentum: the symbol's log return over `momentum_lookback` candles minus BTC's (for BTC itself:
      its own return), with the request's price as the live close
    - breadth: share of tracked symbols whose lookback return is positive
    - regime: volatile (realised vol above its own historical percentile), trending (efficiency ratio
      above threshold), else ranging
    """
    L = cfg.momentum_lookback
    breadth, ref_ret = snap.breadth, snap.reference_return
    out = []
    for sym, price, t in zip(symbols, prices, now_ms):
        ser = snap.series.get(sym)
        if ser is None or ser.closes.size < 3:
            out.append(StageError(ErrorCode.UNKNOWN_SYMBOL, f"no market data for symbol {sym!r}"))
            continue
        closes = ser.closes.copy()
        closes[-1] = price
        own = _lookback_return(closes, L)
        momentum = own if (sym == REFERENCE_SYMBOL or ref_ret is None) else own - ref_ret
        sym_sent, n_sym = decayed_sentiment(ser.news_time_ms, ser.news_score, t, cfg.sentiment_half_life_hours,
                                            cfg.news_lookback_hours)
        mkt_sent, n_all = decayed_sentiment(snap.all_news_time_ms, snap.all_news_score, t,
                                            cfg.sentiment_half_life_hours, cfg.news_lookback_hours)
        w = cfg.symbol_sentiment_weight if n_sym else 0.0
        sentiment = float(np.clip(w * sym_sent + (1 - w) * mkt_sent, -1, 1))
        tail = closes[-(cfg.vol_lookback + 1):]
        vol = float(_log_returns(tail).std(ddof=1)) if tail.size > 2 else 0.0
        if vol > ser.vol_threshold:
            regime = "volatile"
        elif efficiency_ratio(closes[-(L + 1):]) > cfg.trend_efficiency:
            regime = "trending"
        else:
            regime = "ranging"
        out.append(MarketView(sentiment=round(sentiment, 6), market_sentiment=round(mkt_sent, 6),
                              momentum=round(momentum, 6), breadth=round(breadth, 6), regime=regime,
                              news_count=n_sym))
    return out
