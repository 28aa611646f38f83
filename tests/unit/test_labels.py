"""Volatility-scaled direction labels: definition, undefined rows, and no look-ahead beyond the horizon."""
from __future__ import annotations

import math

import numpy as np
import pytest

from serve_app.core.features import realized_vol
from serve_app.core.labels import (CLASSES, DEFAULT_K, DOWN, FLAT, UNDEFINED, UP, derive_label_spec, make_labels,
                                   round_trip_cost)
from serve_app.data.sample import sample_candles


def _reference_labels(close, horizon, k, vol_period):
    """Straightforward per-row definition, to check the vectorised one against."""
    n = len(close)
    lr = np.log(close[1:] / close[:-1])  # lr[i-1] = return into candle i
    out = np.full(n, -1, dtype=np.int8)
    for t in range(vol_period, n - horizon):
        sigma = np.std(lr[t - vol_period:t], ddof=1)  # the returns into candles t-vol_period+1 .. t
        thr = k * sigma * math.sqrt(horizon)
        fwd = math.log(close[t + horizon] / close[t])
        out[t] = UP if fwd > thr else DOWN if fwd < -thr else FLAT
    return out


def test_classes():
    assert CLASSES == ("down", "flat", "up")
    assert (DOWN, FLAT, UP, UNDEFINED) == (0, 1, 2, -1)


@pytest.mark.parametrize("horizon,k,vol_period", [(4, 0.5, 48), (1, 0.0, 10), (12, 1.0, 24)])
def test_matches_reference(horizon, k, vol_period):
    close = sample_candles("ETH", n=500).close
    y = make_labels(close, horizon=horizon, k=k, vol_period=vol_period)
    assert y.dtype == np.int8 and y.shape == close.shape
    np.testing.assert_array_equal(y, _reference_labels(close, horizon, k, vol_period))


def test_undefined_rows():
    close = sample_candles("BTC", n=300).close
    y = make_labels(close, horizon=4, vol_period=48)
    assert (y[:48] == -1).all(), "volatility warm-up"
    assert (y[-4:] == -1).all(), "no forward return for the last horizon rows"
    assert (y[48:-4] >= 0).all()


def test_hand_made_series():
    up = 100 * 1.01 ** np.arange(80)  # constant +1 %/candle: sigma = 0, any rise is "up"
    assert (make_labels(up, 4, 0.5, 10)[10:-4] == UP).all()
    down = 100 * 0.99 ** np.arange(80)
    assert (make_labels(down, 4, 0.5, 10)[10:-4] == DOWN).all()
    flat = np.full(80, 100.0)
    assert (make_labels(flat, 4, 0.5, 10)[10:-4] == FLAT).all()
    # alternating +-1 % then a jump: sigma ~ 1 %, thr = 0.5 * 0.01 * 2 = 1 %
    r = np.r_[0.0, np.tile([0.01, -0.01], 30)]
    close = 100 * np.exp(np.cumsum(r))
    t = 40
    c2 = close.copy()
    c2[t + 4:] *= math.exp(0.05)  # +5 % over the next 4 candles: up
    assert make_labels(c2, 4, 0.5, 10)[t] == UP
    c3 = close.copy()
    c3[t + 4:] *= math.exp(-0.05)
    assert make_labels(c3, 4, 0.5, 10)[t] == DOWN
    assert make_labels(close, 4, 0.5, 10)[t] == FLAT  # the forward return is 0


def test_no_look_ahead_beyond_horizon():
    close = sample_candles("SOL", n=400).close
    y = make_labels(close, horizon=4)
    t = 250
    c2 = close.copy()
    c2[t + 5:] *= np.exp(np.random.default_rng(3).normal(0, 0.1, c2[t + 5:].size))
    y2 = make_labels(c2, horizon=4)
    np.testing.assert_array_equal(y2[: t + 1], y[: t + 1])


def test_threshold_uses_past_only():
    # changing a past return changes sigma (and possibly the label); changing close[t+1..t+h-1]
    # (inside the horizon, but not the endpoint) never changes label[t]
    close = sample_candles("ADA", n=400).close
    t = 200
    c2 = close.copy()
    c2[t + 1:t + 4] *= 1.5
    assert make_labels(c2)[t] == make_labels(close)[t]


def test_classes_reasonably_balanced_on_sample_data():
    y = np.concatenate([make_labels(sample_candles(s).close) for s in ("BTC", "ETH", "SOL", "DOGE")])
    y = y[y >= 0]
    frac = np.bincount(y, minlength=3) / y.size
    assert (frac > 0.15).all() and (frac < 0.6).all(), frac


def test_bad_arguments():
    c = np.linspace(1, 2, 100)
    for kw in ({"horizon": 0}, {"k": -1.0}, {"vol_period": 1}):
        with pytest.raises(ValueError):
            make_labels(c, **kw)


# --- the label spec follows the timeframe and the costs -------------------------------------------------
def _walk(n: int, sigma: float, seed: int = 0) -> np.ndarray:
    return 100 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, sigma, n)))


@pytest.mark.parametrize("timeframe_ms, sigma, horizon", [
    (3_600_000, 0.01, 4),        # hourly, 1 % a candle: 0.5 x 1 % x sqrt(4) = 1 % > 0.3 % round trip
    (60_000, 0.0005, 240),       # one-minute, 0.05 %: 0.5 x 0.05 % x sqrt(240) = 0.39 % > 0.3 %
    (86_400_000, 0.03, 1),       # daily: 4 hours is less than a candle, so one candle
])
def test_the_horizon_is_four_hours_of_candles_when_a_move_pays_the_round_trip(timeframe_ms, sigma, horizon):
    spec, notes = derive_label_spec(timeframe_ms, [_walk(3000, sigma)], cost=round_trip_cost(10, 5))
    assert spec == {"horizon": horizon, "k": DEFAULT_K, "vol_period": max(48, 12 * horizon)}
    assert notes == []


def test_the_horizon_grows_until_a_labelled_move_pays_the_round_trip():
    # one-minute candles moving 0.01 %: at 240 candles a labelled move is 0.5 x 0.01 % x 15.5 = 0.077 %
    spec, notes = derive_label_spec(60_000, [_walk(20_000, 0.0001)], cost=0.003)
    sigma = float(np.nanmedian(realized_vol(_walk(20_000, 0.0001), 48)))
    assert 240 < spec["horizon"] <= 240 * 16
    assert DEFAULT_K * sigma * math.sqrt(spec["horizon"]) > 0.003       # it pays now ...
    assert DEFAULT_K * sigma * math.sqrt(spec["horizon"] * 4 / 5) <= 0.003  # ... and did not a step before
    assert spec["vol_period"] == 12 * spec["horizon"]
    assert len(notes) == 1 and notes[0].startswith(f"horizon {spec['horizon']} candles instead of 240 (4 h)")


def test_the_tool_says_so_when_no_horizon_pays_the_round_trip():
    spec, notes = derive_label_spec(60_000, [_walk(5000, 0.00001)], cost=0.003)
    assert spec["horizon"] == 240 * 16
    assert any("still below the round trip (0.30%)" in n and "use a longer one" in n for n in notes)


def test_too_few_candles_keep_the_time_default_and_say_why():
    spec, notes = derive_label_spec(3_600_000, [_walk(30, 0.01)])
    assert spec["horizon"] == 4 and notes == ["not enough candles to measure the volatility: the horizon is 4 "
                                              "candles (4 h)"]


def test_round_trip_cost_is_two_fills_of_fee_and_slippage():
    assert round_trip_cost(10, 5) == pytest.approx(0.003)
    assert round_trip_cost(0, 0) == 0.0
