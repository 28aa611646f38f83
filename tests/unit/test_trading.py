"""Action decision, Kelly sizing with volatility targeting, and every risk check."""
from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.records import CandleFacts, Prediction, SignalInput, Sizing, Work
from serve_app.core.trading import (ExposureBook, PortfolioConfig, RiskConfig, TradeConfig, assess,
                                    decide_actions, kelly_fraction, size_positions)

TRADE = TradeConfig(stop_atr_mult=2.0, take_profit_atr_mult=3.0)
NOW = 1_800_000_000.0


def test_decide_actions():
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]])
    actions, conf = decide_actions(probs)
    assert actions == ["SELL", "HOLD", "BUY"]
    assert conf.tolist() == [0.6, 0.5, 0.7]


def test_kelly_formula():
    # win 1.5x with p=0.6, lose 1x with q=0.3: f* = 0.6 - 0.3/1.5 = 0.4
    assert kelly_fraction(np.array([0.6]), np.array([0.3]), 1.5)[0] == pytest.approx(0.4)
    assert kelly_fraction(np.array([0.2]), np.array([0.7]), 1.5)[0] == 0.0


def test_sizing_kelly_vs_volatility_cap():
    cfg = PortfolioConfig(equity=100_000, kelly_fraction=0.25, risk_per_trade=0.01, max_fraction=0.25,
                          regime_scale={"trending": 1.0, "volatile": 0.5})
    probs = np.array([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    price = np.array([100.0, 100.0, 100.0, 100.0])
    atr = np.array([0.5, 5.0, 1.0, 0.5])
    out = size_positions(["BUY", "BUY", "HOLD", "SELL"], probs, price, atr, np.full(4, 100_000.0),
                         ["trending", "volatile", "trending", "trending"], TRADE, cfg)
    kelly = 0.25 * (0.7 - 0.1 / 1.5)
    assert out["fraction"][0] == pytest.approx(kelly)  # tight stop: Kelly binds
    vol_cap = 0.01 / (2 * 5.0 / 100)  # 0.1 of equity loses 1% at a 10% stop
    assert out["fraction"][1] == pytest.approx(min(kelly, vol_cap) * 0.5)  # wide stop + volatile regime
    assert out["fraction"][2] == 0.0 and out["size"][2] == 0.0
    assert out["fraction"][3] == pytest.approx(kelly)  # SELL mirrors BUY
    assert out["size"][0] == pytest.approx(out["notional"][0] / 100.0)


def _item(**kw):
    base = dict(symbol="SOL", action="BUY", confidence=0.7, price=100.0, last_close=100.5, atr=2.0, atr_pct=0.02,
                last_open_time_ms=int(NOW * 1000) - 600_000, asof_ms=int(NOW * 1000), equity=100_000.0,
                notional=10_000.0)
    base.update(kw)
    b = base
    return Work(SignalInput(b["symbol"], b["price"], b["asof_ms"], b["equity"]),
                candle=CandleFacts(last_close=b["last_close"], last_open_time_ms=b["last_open_time_ms"],
                                   atr=b["atr"], atr_pct=b["atr_pct"], candles_cached=300, cache_age_s=1.0,
                                   store_reachable=True),
                prediction=Prediction((0.1, 0.2, 0.7), b["action"], b["confidence"], "v1"),
                sizing=Sizing(equity=b["equity"], notional=b["notional"], kelly_fraction=0.1, vol_cap_fraction=0.5))


def test_approved_buy_has_stops_on_correct_sides():
    out = assess(_item(), TRADE, RiskConfig(), ExposureBook(3600), now=NOW)
    assert out.approved and out.stop_loss == 96.0 and out.take_profit == 106.0
    assert out.size == pytest.approx(100.0) and out.notional == pytest.approx(10_000)


def test_sell_stops_mirror():
    r = assess(_item(action="SELL"), TRADE, RiskConfig(), ExposureBook(3600), now=NOW)
    assert r.stop_loss == 104.0 and r.take_profit == 94.0


def test_hold_has_no_stops_and_zero_size():
    out = assess(_item(action="HOLD"), TRADE, RiskConfig(), ExposureBook(3600), now=NOW)
    assert out.stop_loss is None and out.take_profit is None
    assert not out.approved and out.size == 0


@pytest.mark.parametrize("kw, needle", [
    ({"confidence": 0.3}, "confidence"),
    ({"atr_pct": 0.2}, "circuit breaker"),
    ({"last_open_time_ms": int(NOW * 1000) - 5 * 3600_000}, "stale data"),
    ({"price": 130.0}, "price sanity"),
    ({"notional": 0.0}, "position size is zero"),
])
def test_each_block_names_its_reason(kw, needle):
    out = assess(_item(**kw), TRADE, RiskConfig(), ExposureBook(3600), now=NOW)
    assert not out.approved
    assert out.size == 0 and out.notional == 0
    assert any(needle in r for r in out.reasons), out.reasons



@pytest.mark.parametrize("limit_s, age_s, reason", [
    (7200, 3 * 3600, "stale data: last candle opened 3 h before the signal time (limit 2 h)"),
    (8100, 3 * 3600, "stale data: last candle opened 3 h before the signal time (limit 2.25 h)"),
    (900, 1000, "stale data: last candle opened 16.67 min before the signal time (limit 15 min)"),
    (150, 157, "stale data: last candle opened 157 s before the signal time (limit 150 s)"),
])
def test_the_stale_data_reason_reads_age_and_limit_in_the_limits_unit(limit_s, age_s, reason):
    """Minute candles have limits of minutes: "0.0 h (limit 0.0 h)" would say nothing."""
    out = assess(_item(last_open_time_ms=int(NOW * 1000) - age_s * 1000), TRADE,
                 RiskConfig(max_data_age_s=limit_s), ExposureBook(3600), now=NOW)
    assert out.blocked_by == ("stale_data",) and "blocked: " + reason in out.reasons, out.reasons

def test_caps_per_symbol_and_total_exposure():
    cfg = RiskConfig(max_symbol_fraction=0.2, max_total_exposure_fraction=0.3)
    book = ExposureBook(3600)
    a = assess(_item(symbol="BTC", notional=50_000.0), TRADE, cfg, book, now=NOW)
    assert a.notional == pytest.approx(20_000) and "capped" in a.reasons[0]
    b = assess(_item(symbol="ETH", notional=15_000.0), TRADE, cfg, book, now=NOW)
    assert b.notional == pytest.approx(10_000)  # 30k total cap minus BTC's 20k
    c = assess(_item(symbol="SOL", notional=5_000.0), TRADE, cfg, book, now=NOW)
    assert not c.approved and any("total exposure" in r for r in c.reasons)
    # positions expire: an hour later the book is empty again
    d = assess(_item(symbol="SOL", notional=5_000.0), TRADE, cfg, book, now=NOW + 3601)
    assert d.approved


def test_risk_config_rejects_inconsistent_caps():
    with pytest.raises(ValueError):
        RiskConfig(max_symbol_fraction=0.5, max_total_exposure_fraction=0.3)
