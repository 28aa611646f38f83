"""Market context core: decayed sentiment, momentum against BTC, breadth and regimes."""
from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.records import StageError
from serve_app.core.market import (MarketConfig, build_snapshot, compute_contexts, decayed_sentiment,
                                   efficiency_ratio)
from serve_app.store.base import NewsItem

H = 3_600_000
NOW = 1_800_000_000_000


def test_decayed_sentiment_weights_recent_news_more():
    times = np.array([NOW - 24 * H, NOW - 1 * H])
    s, n = decayed_sentiment(times, np.array([-1.0, 1.0]), NOW, half_life_hours=12, lookback_hours=72)
    w_old, w_new = 0.5 ** 2, 0.5 ** (1 / 12)
    assert n == 2 and s == pytest.approx((w_new - w_old) / (w_new + w_old))
    # future news and news past the lookback are ignored
    s2, n2 = decayed_sentiment(np.array([NOW + H, NOW - 100 * H]), np.array([1.0, 1.0]), NOW, 12, 72)
    assert (s2, n2) == (0.0, 0)


def test_efficiency_ratio():
    assert efficiency_ratio(np.array([1.0, 2, 3, 4])) == pytest.approx(1.0)
    assert efficiency_ratio(np.array([1.0, 2, 1, 2, 1])) == pytest.approx(0.0)


def _snapshot(cfg, news=()):
    rng = np.random.default_rng(0)
    n = 500
    chop = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    closes = {
        "BTC": 50_000 * np.exp(np.cumsum(np.full(n, 0.001))),  # steady uptrend
        "SOL": chop,
        "ETH": 3000 * np.exp(np.cumsum(np.full(n, -0.001))),  # steady downtrend
    }
    return build_snapshot(closes, list(news), cfg, NOW), closes


def test_contexts_momentum_breadth_regime():
    cfg = MarketConfig(momentum_lookback=24, vol_lookback=48)
    news = [NewsItem("SOL", NOW - H, "t", 0.8, "good"), NewsItem("BTC", NOW - H, "t", -0.2, "meh")]
    snap, closes = _snapshot(cfg, news)
    btc, sol, eth = compute_contexts(["BTC", "SOL", "ETH"],
                                     [closes["BTC"][-1], closes["SOL"][-1], closes["ETH"][-1]], [NOW] * 3, snap, cfg)
    assert btc.momentum == pytest.approx(0.024, rel=1e-6)  # BTC: its own 24-candle log return
    assert eth.momentum == pytest.approx(-0.048, rel=1e-6)  # ETH relative to BTC
    sol_up = closes["SOL"][-1] > closes["SOL"][-25]
    assert btc.breadth == pytest.approx((1 + sol_up) / 3)  # BTC up, ETH down, SOL by its own path
    assert btc.regime == "trending" and eth.regime == "trending"
    assert sol.regime in ("ranging", "volatile")
    assert sol.sentiment > btc.sentiment and -1 <= sol.sentiment <= 1
    assert sol.news_count == 1


def test_volatile_regime_when_live_price_jumps():
    cfg = MarketConfig(vol_lookback=48, volatile_percentile=0.85)
    snap, closes = _snapshot(cfg)
    (ctx,) = compute_contexts(["SOL"], [closes["SOL"][-1] * 1.25], [NOW], snap, cfg)
    assert ctx.regime == "volatile"


def test_unknown_symbol():
    cfg = MarketConfig()
    snap, _ = _snapshot(cfg)
    (ctx,) = compute_contexts(["NOPE"], [1.0], [NOW], snap, cfg)
    assert isinstance(ctx, StageError) and ctx.code == "unknown_symbol" and "NOPE" in ctx.message


def test_the_threshold_of_a_window_from_vols_computed_once_is_the_same():
    """The backtest computes each symbol's rolling volatility once and takes the percentile over each
    candle's window: exactly what rolling_vol_threshold of that window's closes gives."""
    from serve_app.core.market import realised_vols, rolling_vol_threshold, vol_threshold_in

    rng = np.random.default_rng(5)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 3000)))
    vols = realised_vols(closes, 48)
    for first, last in ((0, 2999), (0, 40), (0, 49), (0, 50), (2000, 2999), (1500, 1999), (2950, 2999)):
        assert vol_threshold_in(vols, first, last, 48, 0.85) == rolling_vol_threshold(closes[first:last + 1], 48,
                                                                                      0.85)
    assert vol_threshold_in(vols, 2960, 2999, 48, 0.85) == float("inf")   # 39 returns: not enough
