"""The shared feature function: shapes, warm-up, scale invariance, known values, no look-ahead, and
the training/serving parity that the whole service relies on."""
from __future__ import annotations

import math

import numpy as np
import pytest

from serve_app.core import features as F
from serve_app.core.features import (FEATURE_NAMES, SERVING_WINDOW, WARMUP, InsufficientHistory, atr,
                                     compute_features, ewm_fir, feature_row_dict, realized_vol, rsi,
                                     serving_features, serving_features_batch)
from serve_app.store.base import Candles
from serve_app.data.sample import sample_candles

SYMBOLS = ("BTC", "ETH", "SOL", "BNB", "XRP", "ADA", "DOGE", "AVAX")


def _feats(c: Candles) -> np.ndarray:
    return compute_features(c.open, c.high, c.low, c.close, c.volume)


def _prefix(c: Candles, t: int) -> Candles:
    """Candles 0..t inclusive (what the store holds when candle t is the current bar)."""
    s = slice(0, t + 1)
    return Candles(c.symbol, c.timeframe, c.open_time[s], c.open[s], c.high[s], c.low[s], c.close[s], c.volume[s])


@pytest.fixture(scope="module")
def btc() -> Candles:
    return sample_candles("BTC", n=1000)


def _random_walk(n: int = 600, seed: int = 1, p0: float = 100.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    c = p0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.r_[p0, c[:-1]]
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.004, n)))
    lo = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.004, n)))
    v = rng.lognormal(5, 0.7, n)
    return o, h, lo, c, v


def test_names_and_constants():
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == F.N_FEATURES
    assert 0 < WARMUP < SERVING_WINDOW
    assert all(isinstance(n, str) and n for n in FEATURE_NAMES)


@pytest.mark.parametrize("symbol", SYMBOLS)
def test_shape_dtype_and_warmup(symbol):
    c = sample_candles(symbol, n=600)
    X = _feats(c)
    assert X.shape == (600, len(FEATURE_NAMES)) and X.dtype == np.float64
    assert np.isnan(X[:WARMUP]).all(), "rows before WARMUP are NaN"
    assert np.isfinite(X[WARMUP:]).all(), "no NaN/inf from WARMUP on"


def test_short_and_empty_inputs():
    o, h, lo, c, v = _random_walk(50)
    X = compute_features(o, h, lo, c, v)
    assert X.shape == (50, len(FEATURE_NAMES)) and np.isnan(X).all()
    assert compute_features(*(np.empty(0),) * 5).shape == (0, len(FEATURE_NAMES))
    with pytest.raises(ValueError):
        compute_features(o, h, lo, c[:-1], v)


def test_warmup_is_exact_finite_lookback():
    """Row t depends on candle t-WARMUP (so WARMUP cannot be smaller) and not on t-WARMUP-1
    (finite windows: this is what makes serving parity exact)."""
    o, h, lo, c, v = _random_walk(400)
    t = 300
    base = compute_features(o, h, lo, c, v)[t]
    for j, expect_change in ((t - WARMUP, True), (t - WARMUP - 1, False), (0, False)):
        o2, h2, lo2, c2, v2 = (a.copy() for a in (o, h, lo, c, v))
        c2[j] *= 1.05
        h2[j] = max(h2[j], c2[j])
        v2[j] *= 3.0
        row = compute_features(o2, h2, lo2, c2, v2)[t]
        assert (not np.array_equal(row, base)) == expect_change, j


def test_scale_invariance(btc):
    X = _feats(btc)
    k = 1000.0
    Xs = compute_features(btc.open * k, btc.high * k, btc.low * k, btc.close * k, btc.volume * 7.0)
    np.testing.assert_allclose(Xs[WARMUP:], X[WARMUP:], rtol=1e-9, atol=1e-12)


def test_same_features_for_btc_and_sol_scaled_paths():
    # the same relative path at 50,000 and at 100 gives the same features
    o, h, lo, c, v = _random_walk(400, p0=1.0)
    a = compute_features(o * 50_000, h * 50_000, lo * 50_000, c * 50_000, v)
    b = compute_features(o * 100, h * 100, lo * 100, c * 100, v * 500)
    np.testing.assert_allclose(a[WARMUP:], b[WARMUP:], rtol=1e-9, atol=1e-12)


def test_rsi_known_value():
    # 15 closes -> 14 changes: gains sum 3.34, losses sum 1.40  =>  RSI = 100 * 3.34 / 4.74
    closes = np.array([44.34, 44.09, 44.15, 43.61, 44.33, 44.83, 45.10, 45.42, 45.84, 46.08,
                       45.89, 46.03, 45.61, 46.28, 46.28])
    r = rsi(closes, 14)
    assert np.isnan(r[:14]).all()
    assert r[14] == pytest.approx(100 * 3.34 / 4.74, abs=1e-9)  # 70.4641...
    assert rsi(np.arange(1.0, 31.0), 14)[-1] == pytest.approx(100.0)
    assert rsi(np.arange(30.0, 0.0, -1.0), 14)[-1] == pytest.approx(0.0)
    assert rsi(np.full(30, 5.0), 14)[-1] == pytest.approx(50.0)
    # alternating +1/-1 changes: equal gains and losses
    assert rsi(np.array([10.0, 11.0] * 10), 6)[-1] == pytest.approx(50.0)


def test_rsi_columns_match_helper(btc):
    X = _feats(btc)
    i = FEATURE_NAMES.index("rsi_14")
    np.testing.assert_allclose(X[WARMUP:, i], rsi(btc.close, 14)[WARMUP:], rtol=0, atol=1e-12)


def test_atr_and_realized_vol_known_values():
    n = 200
    mid = np.full(n, 100.0)
    # every candle spans 99..101 and closes at 100: true range 2, ATR 2 (in price units)
    a = atr(mid + 1, mid - 1, mid, 14)
    assert np.isnan(a[: F.ema_length(1 / 14)]).all()
    np.testing.assert_allclose(a[F.ema_length(1 / 14):], 2.0, rtol=1e-12)
    # alternating log returns +r/-r: sample std over an even window = r * sqrt(p/(p-1))
    r = 0.01
    close = 100 * np.exp(np.cumsum(np.r_[0.0, np.tile([r, -r], 50)]))
    rv = realized_vol(close, 12)
    assert np.isnan(rv[:12]).all()
    assert rv[50] == pytest.approx(r * math.sqrt(12 / 11), rel=1e-9)


def test_ewm_fir_is_a_close_ema():
    c = _random_walk(500)[3]
    alpha = 2 / 27
    ref = np.empty_like(c)
    ref[0] = c[0]
    for i in range(1, c.size):  # the classic recursive EMA
        ref[i] = alpha * c[i] + (1 - alpha) * ref[i - 1]
    fir = ewm_fir(c, alpha)
    np.testing.assert_allclose(fir[200:], ref[200:], rtol=2e-3)


def test_no_look_ahead(btc):
    X = _feats(btc)
    rng = np.random.default_rng(7)
    for t in (WARMUP, 400, 777):
        o, h, lo, c, v = (a.copy() for a in (btc.open, btc.high, btc.low, btc.close, btc.volume))
        m = slice(t + 1, None)
        c[m] *= np.exp(rng.normal(0, 0.05, c[m].size))
        h[m] = np.maximum(h[m], c[m]) * 1.01
        lo[m] = np.minimum(lo[m], c[m]) * 0.99
        v[m] *= 10
        X2 = compute_features(o, h, lo, c, v)
        np.testing.assert_array_equal(X2[: t + 1], X[: t + 1])
        assert not np.allclose(X2[t + 1:], X[t + 1:], equal_nan=True)


# --- the parity test: serving == training -----------------------------------------------------------
@pytest.mark.parametrize("symbol", ["BTC", "SOL", "DOGE"])
def test_serving_training_parity(symbol):
    c = sample_candles(symbol)  # the default 2160 hourly candles
    X = _feats(c)
    n = len(c)
    for t in (WARMUP, WARMUP + 1, SERVING_WINDOW - 1, SERVING_WINDOW, 1000, 1500, n - 1):
        history = _prefix(c, t)
        served = serving_features(history.tail(SERVING_WINDOW), float(c.close[t]))
        np.testing.assert_allclose(served, X[t], rtol=1e-9, atol=1e-12, err_msg=f"{symbol} t={t}")
        # also from the full history and from the bare minimum of WARMUP+1 candles
        np.testing.assert_allclose(serving_features(history, float(c.close[t])), X[t], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(serving_features(history.tail(WARMUP + 1), float(c.close[t])), X[t],
                                   rtol=1e-9, atol=1e-12)


def test_serving_batch_equals_single():
    cs = [sample_candles(s, n=SERVING_WINDOW) for s in SYMBOLS]
    prices = [float(c.close[-1]) * f for c, f in zip(cs, (1.0, 1.01, 0.98, 1.0, 1.2, 0.9, 1.0, 1.03))]
    batch = serving_features_batch(cs, prices)
    assert batch.shape == (len(cs), len(FEATURE_NAMES))
    for i, (c, p) in enumerate(zip(cs, prices)):
        np.testing.assert_allclose(batch[i], serving_features(c, p), rtol=1e-9, atol=1e-12)
    assert serving_features_batch([], []).shape == (0, len(FEATURE_NAMES))


def test_live_price_updates_current_bar(btc):
    w = btc.tail(SERVING_WINDOW)
    price = float(w.high[-1]) * 1.02  # above the bar's high: it becomes the new high
    o, h, lo, c, v = (np.array(a, dtype=np.float64) for a in (w.open, w.high, w.low, w.close, w.volume))
    c[-1], h[-1] = price, price
    expected = compute_features(o, h, lo, c, v)[-1]
    got = serving_features(w, price)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert feature_row_dict(got)["close_pos"] == pytest.approx(1.0)
    assert not np.array_equal(got, _feats(w)[-1])
    # the stored candles were not modified
    np.testing.assert_array_equal(w.high, btc.tail(SERVING_WINDOW).high)
    # below the low: it becomes the new low
    low_price = float(w.low[-1]) * 0.97
    assert feature_row_dict(serving_features(w, low_price))["close_pos"] == pytest.approx(0.0)


def test_serving_input_errors(btc):
    with pytest.raises(InsufficientHistory):
        serving_features(btc.tail(WARMUP), 100.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            serving_features(btc, bad)


def test_feature_row_dict(btc):
    row = serving_features(btc, float(btc.close[-1]))
    d = feature_row_dict(row)
    assert list(d) == list(FEATURE_NAMES)
    assert all(isinstance(x, float) for x in d.values())
    assert feature_row_dict(np.full(len(FEATURE_NAMES), np.nan))["ret_1"] is None
    with pytest.raises(ValueError):
        feature_row_dict(np.zeros(3))


def test_degenerate_candles_are_finite():
    # a market that does not move at all (zero range, zero volume): no division blow-ups
    n = 300
    p = np.full(n, 42.0)
    X = compute_features(p, p, p, p, np.zeros(n))
    assert np.isfinite(X[WARMUP:]).all()
    d = feature_row_dict(X[-1])
    assert d["rsi_14"] == 50.0 and d["close_pos"] == 0.5 and d["bb_pctb_20"] == 0.5 and d["ret_1"] == 0.0
