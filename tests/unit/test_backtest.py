"""Backtest mechanics on hand-made candles: fills at the next open, stop/take-profit/horizon exits (stop
first when a candle touches both, gaps fill at the open), fees and slippage, the service's risk gate and
exposure caps, and the performance numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from serve_app.training.backtest import backtest, performance
from serve_app.training.walkforward import OutOfSample
from serve_app.core.trading import RiskConfig
from serve_app.store.base import Candles

H = 3_600_000
T0 = 1_700_000_000_000
FEE, SLIP = 10.0, 5.0  # bps
f, s = FEE / 1e4, SLIP / 1e4
BUY, SELL = [0.05, 0.15, 0.80], [0.80, 0.15, 0.05]
ATR_PCT = 0.01  # price 100 -> ATR 1 -> stop 2 away, take-profit 3 away (TradeConfig defaults)


def flat_candles(symbol: str, n: int = 12, changes: dict[int, tuple[float, float, float, float]] | None = None):
    o = np.full(n, 100.0)
    h, lo, c = o.copy(), o.copy(), o.copy()
    for i, (oi, hi, li, ci) in (changes or {}).items():
        o[i], h[i], lo[i], c[i] = oi, hi, li, ci
    return Candles(symbol, "1h", T0 + H * np.arange(n, dtype=np.int64), o, h, lo, c, np.ones(n))


def oos(rows: list[tuple[int, int, list[float]]], candles: list[Candles]) -> OutOfSample:
    """rows: (symbol index, candle index, probabilities)."""
    sym = np.array([r[0] for r in rows])
    idx = np.array([r[1] for r in rows])
    return OutOfSample(symbol=sym, candle=idx, open_time=np.array([candles[i].open_time[k] for i, k in zip(sym, idx)]),
                       fold=np.zeros(len(rows), dtype=np.int32), y=np.zeros(len(rows), dtype=np.int64),
                       proba=np.array([r[2] for r in rows]), atr_pct=np.full(len(rows), ATR_PCT))


def run(candles: list[Candles], rows, **kw):
    return backtest({c.symbol: c for c in candles}, [c.symbol for c in candles], oos(rows, candles), horizon=4,
                    step_ms=H, fee_bps=FEE, slippage_bps=SLIP, **kw)


# signal at the close of candle 5 -> entry at candle 6's open (100) -> exit by candle 9's close
@pytest.mark.parametrize("probs, changes, reason, exit_px", [
    (BUY, {9: (100, 101, 100, 101)}, "horizon", 101 * (1 - s)),
    (BUY, {7: (100, 104, 99.5, 101)}, "take_profit", 103 * (1 - s)),
    (BUY, {7: (100, 104, 97, 101)}, "stop_loss", 98 * (1 - s)),  # both touched: the stop counts
    (BUY, {7: (96, 96.5, 95, 96)}, "stop_loss", 96 * (1 - s)),  # gap through the stop: filled at the open
    (SELL, {7: (100, 103, 96, 99)}, "stop_loss", 102 * (1 + s)),
    (SELL, {8: (100, 100.5, 96.5, 97)}, "take_profit", 97 * (1 + s)),
])
def test_exit_rules_and_costs(probs, changes, reason, exit_px):
    c = flat_candles("AAA", changes=changes)
    res = run([c], [(0, 5, probs)])
    assert len(res.trades) == 1
    t = res.trades[0]
    side = 1 if probs is BUY else -1
    assert t["side"] == ("long" if side > 0 else "short") and t["exit_reason"] == reason
    assert t["entry_ms"] == c.open_time[6]  # the next candle's open, not the signal candle's close
    assert t["entry"] == pytest.approx(100 * (1 + side * s))
    assert t["exit"] == pytest.approx(exit_px)
    qty = t["notional"] / t["entry"]
    fees = t["notional"] * f + qty * t["exit"] * f
    assert t["fees"] == pytest.approx(fees)
    assert t["pnl"] == pytest.approx(side * qty * (t["exit"] - t["entry"]) - fees)
    assert res.equity[-1] == pytest.approx(100_000 + t["pnl"])
    assert 0 < t["notional"] <= 0.2 * 100_000  # sized by the portfolio code, capped by risk


def test_low_confidence_signal_is_blocked_by_risk():
    res = run([flat_candles("AAA")], [(0, 5, [0.3, 0.3, 0.4])])
    assert res.trades == []
    d = res.summary["strategy"]["decisions"]
    assert d["BUY"] == 1 and d["blocked"] == 1 and d["approved"] == 0
    assert d["blocked_by"] == {"min_confidence": 1}          # counted by the risk rule that blocked it
    assert np.all(res.equity == 100_000)


def test_hold_is_not_traded():
    res = run([flat_candles("AAA")], [(0, 5, [0.2, 0.6, 0.2])])
    assert res.trades == [] and res.summary["strategy"]["decisions"]["HOLD"] == 1


def test_exposure_book_caps_simultaneous_positions():
    risk = RiskConfig(max_symbol_fraction=0.2, max_total_exposure_fraction=0.25)
    cs = [flat_candles("AAA"), flat_candles("BBB")]
    res = run(cs, [(0, 5, BUY), (1, 5, BUY)], risk=risk)
    assert len(res.trades) == 2
    assert sum(t["notional"] for t in res.trades) <= 0.25 * 100_000 + 1e-6
    assert res.trades[0]["notional"] != res.trades[1]["notional"]  # the second got what room was left


def test_one_position_per_symbol():
    res = run([flat_candles("AAA")], [(0, 5, BUY), (0, 6, BUY), (0, 7, BUY)])
    assert len(res.trades) == 1
    assert res.summary["strategy"]["decisions"]["skipped_in_trade"] == 2


def test_equity_is_the_sum_of_trade_pnl_and_buy_and_hold_pays_costs():
    changes = {7: (100, 104, 99.5, 101), 8: (101, 101, 100, 100), 12: (100, 101, 99, 100.5),
               15: (100, 110, 100, 110)}
    cs = [flat_candles("AAA", n=20, changes=changes), flat_candles("BBB", n=20)]
    res = run(cs, [(0, 5, BUY), (1, 5, SELL), (0, 10, BUY), (1, 11, SELL)])
    assert len(res.trades) == 4
    assert res.equity[-1] - 100_000 == pytest.approx(sum(t["pnl"] for t in res.trades))
    assert res.times[0] == T0 + 5 * H and res.times[-1] == T0 + 15 * H  # last signal + horizon
    # bought at the first grid candle's open (100); BBB never moves, so it loses exactly its costs
    bbb = 50_000 * (1 - f) ** 2 * (1 - s) / (1 + s)
    aaa = 50_000 * (1 - f) / (100 * (1 + s)) * 110 * (1 - s) * (1 - f)  # AAA ends at 110
    assert res.buy_hold[-1] == pytest.approx(aaa + bbb)
    st = res.summary["strategy"]
    assert st["trades"] == 4 and 0 <= st["hit_rate"] <= 1 and 0 < st["time_in_market"] <= 1
    # four trades: an annualised Sharpe/Sortino would say nothing, so there is none (from 30 trades on)
    assert st["sharpe"] is None and st["sortino"] is None and st["ratios_need_trades"] == 30


def test_performance_numbers():
    p = performance(np.array([100.0, 120.0, 90.0, 130.0]), periods_per_year=365 * 24)
    assert p["total_return"] == pytest.approx(0.3)
    assert p["max_drawdown"] == pytest.approx(0.25)
    r = np.array([0.2, -0.25, 130 / 90 - 1])
    assert p["sharpe"] == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(365 * 24))
    assert p["sortino"] == pytest.approx(r.mean() / math.sqrt(np.mean(np.minimum(r, 0) ** 2)) * math.sqrt(365 * 24))
    flat = performance(np.full(5, 100.0), periods_per_year=8760)
    assert flat["sharpe"] is None and flat["max_drawdown"] == 0 and flat["total_return"] == 0


def test_no_rows_is_an_error():
    c = flat_candles("AAA")
    empty = OutOfSample(*(np.empty(0, dtype=np.int64),) * 6, atr_pct=np.empty(0))
    with pytest.raises(ValueError, match="no out-of-sample rows"):
        backtest({"AAA": c}, ["AAA"], empty, horizon=4, step_ms=H)
