"""The one feature function, shared by training (`serve_app.training.train`) and serving (FeatureEngine).

No ray, no pandas: vectorised numpy over OHLCV arrays. Every feature is price-normalised
(log-returns, ratios, oscillators, z-scores), so BTC at 50,000 and SOL at 100 produce comparable
numbers and one model serves every symbol.

Parity by construction: every indicator has a *finite* look-back. Moving averages and rolling
statistics are finite windows; the exponential averages (MACD's EMAs, ATR's Wilder smoothing) are
truncated where the remaining weight falls below `EMA_TAIL` (0.1 %) and renormalised, i.e. they are FIR
filters. So the feature row for candle t depends only on candles t-WARMUP..t, and serving on the last
WARMUP+1 candles reproduces the training row exactly (up to float summation order) - no "EMA has
converged enough" approximation. RSI is Cutler's variant (simple sums of gains/losses over the window),
which is also finite and equals the first value of Wilder's RSI.

Rows before `WARMUP` are NaN (every column), so a row is either fully valid or fully invalid.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

if TYPE_CHECKING:  # pragma: no cover
    from serve_app.store.base import Candles

# --- parameters -----------------------------------------------------------------------------------
RETURN_HORIZONS: tuple[int, ...] = (1, 3, 6, 12, 24, 48)
RSI_PERIODS: tuple[int, ...] = (6, 14, 28)
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BB_PERIOD, BB_K = 20, 2.0
ATR_PERIOD = 14
RV_PERIODS: tuple[int, ...] = (12, 48)
VOLUME_Z_PERIODS: tuple[int, ...] = (24, 72)
SMA_PERIODS: tuple[int, ...] = (10, 20, 50, 100)
HILO_PERIODS: tuple[int, ...] = (24, 72)
EMA_TAIL = 1e-3  # truncate exponential weights once the remaining mass is below this

FEATURE_NAMES: tuple[str, ...] = (
    *(f"ret_{h}" for h in RETURN_HORIZONS),
    *(f"rsi_{p}" for p in RSI_PERIODS),
    "macd", "macd_signal", "macd_hist",
    f"bb_pctb_{BB_PERIOD}", f"bb_width_{BB_PERIOD}",
    f"atr_pct_{ATR_PERIOD}",
    *(f"rv_{p}" for p in RV_PERIODS),
    f"rv_ratio_{RV_PERIODS[0]}_{RV_PERIODS[1]}",
    *(f"vol_z_{p}" for p in VOLUME_Z_PERIODS),
    "body_frac", "upper_wick_frac", "lower_wick_frac", "close_pos", "range_pct",
    *(f"dist_sma_{p}" for p in SMA_PERIODS),
    *(f"dist_high_{p}" for p in HILO_PERIODS),
    *(f"dist_low_{p}" for p in HILO_PERIODS),
)
N_FEATURES = len(FEATURE_NAMES)
# ATR as a share of the live price is one of the features: stops and sizing use the same number
ATR_PCT = FEATURE_NAMES.index(f"atr_pct_{ATR_PERIOD}")


def ema_length(alpha: float, tail: float = EMA_TAIL) -> int:
    """Number of exponential weights kept so that the dropped tail mass (1-alpha)^L is < `tail`."""
    return int(math.ceil(math.log(tail) / math.log(1.0 - alpha)))


_L_FAST = ema_length(2.0 / (MACD_FAST + 1))
_L_SLOW = ema_length(2.0 / (MACD_SLOW + 1))
_L_SIGNAL = ema_length(2.0 / (MACD_SIGNAL + 1))
_L_ATR = ema_length(1.0 / ATR_PERIOD)

# Index of the first row where each group is defined (= number of candles needed before it).
_FIRST_VALID = (
    max(RETURN_HORIZONS),
    max(RSI_PERIODS),
    (_L_SLOW - 1) + (_L_SIGNAL - 1),  # the signal line smooths the MACD line
    BB_PERIOD - 1,
    _L_ATR,  # true range needs the previous close
    max(RV_PERIODS),
    max(VOLUME_Z_PERIODS) - 1,
    max(SMA_PERIODS) - 1,
    max(HILO_PERIODS) - 1,
)
WARMUP: int = max(_FIRST_VALID)
"""Candles before the first fully valid row: row WARMUP is the first row without NaN."""

SERVING_WINDOW: int = 256
"""Candles the serving path needs (a feature row depends on the last WARMUP+1 only; the rest is margin)."""
assert SERVING_WINDOW > WARMUP


class InsufficientHistory(ValueError):
    """Fewer candles than a fully valid feature row needs."""


# --- building blocks -------------------------------------------------------------------------------
# Every helper works along the last axis (time) of an array shaped (..., n) and returns the same shape,
# NaN where undefined, so one call can compute a whole batch of symbols stacked as (B, n).
def _full(shape) -> np.ndarray:
    return np.full(shape, np.nan, dtype=np.float64)


def _rolling(x: np.ndarray, window: int, fn, **kw) -> np.ndarray:
    """fn over each trailing window ending at t (inclusive); NaN for the first window-1 rows."""
    out = _full(x.shape)
    if x.shape[-1] >= window:
        out[..., window - 1:] = fn(sliding_window_view(x, window, axis=-1), axis=-1, **kw)
    return out


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float) -> np.ndarray:
    """num/den where den != 0, `fill` where den == 0, NaN where either input is NaN."""
    out = np.full(np.broadcast(num, den).shape, fill, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    out[np.isnan(num) | np.isnan(den)] = np.nan
    return out


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """x[t-k] at t (NaN for t < k)."""
    out = _full(x.shape)
    n = x.shape[-1]
    if k < n:
        out[..., k:] = x[..., : n - k]
    return out


def ewm_fir(x: np.ndarray, alpha: float, length: int | None = None) -> np.ndarray:
    """Exponentially weighted mean with weights alpha*(1-alpha)^j, j < length, renormalised.

    A finite-impulse-response EMA: y[t] depends on x[t-length+1..t] only (NaN before that, and NaN
    for `length` rows after any NaN input). Default length: ema_length(alpha).
    """
    x = np.asarray(x, dtype=np.float64)
    if length is None:
        length = ema_length(alpha)
    w = alpha * (1.0 - alpha) ** np.arange(length, dtype=np.float64)
    w /= w.sum()
    out = _full(x.shape)
    if x.shape[-1] >= length:
        # windows run oldest..newest; the newest value gets w[0]
        out[..., length - 1:] = sliding_window_view(x, length, axis=-1) @ w[::-1]
    return out


def log_returns(close: np.ndarray, horizon: int = 1) -> np.ndarray:
    """log(close[t] / close[t-horizon]), NaN for t < horizon."""
    close = np.asarray(close, dtype=np.float64)
    out = _full(close.shape)
    if horizon < close.shape[-1]:
        with np.errstate(divide="ignore", invalid="ignore"):
            out[..., horizon:] = np.log(close[..., horizon:] / close[..., :-horizon])
    return out


RUNNING_SUM_WINDOW = 256  # from this window on, rolling_std uses running sums (O(n)) instead of every window


def rolling_std(x: np.ndarray, window: int, ddof: int = 1) -> np.ndarray:
    """Std (ddof) of each trailing `window` of x along the last axis, ending at t; NaN for the first window-1
    rows and for every window holding a non-finite value. Row t depends on x[..t] only.

    Windows shorter than RUNNING_SUM_WINDOW: numpy's std of every window, exact. Longer ones (a day of
    one-minute candles: thousands of rows): running sums of x and x^2, O(n) whatever the window; meant for
    values centred near 0 relative to their spread (log returns), where the sums do not cancel (relative
    error ~1e-13); a window of exact zeros (a flat price) gives exactly 0."""
    x = np.asarray(x, dtype=np.float64)
    if window < RUNNING_SUM_WINDOW:
        return _rolling(x, window, np.std, ddof=ddof)
    out = _full(x.shape)
    n = x.shape[-1]
    if window <= ddof or n < window:
        return out
    bad = ~np.isfinite(x)
    z = np.where(bad, 0.0, x)
    pad = [(0, 0)] * (x.ndim - 1) + [(1, 0)]

    def windows(a: np.ndarray) -> np.ndarray:
        c = np.pad(np.cumsum(a, axis=-1), pad)
        return c[..., window:] - c[..., :-window]

    w1, w2 = windows(z), windows(z * z)
    var = np.maximum(w2 - w1 * w1 / window, 0.0) / (window - ddof)
    var[windows((z != 0).astype(np.int64)) == 0] = 0.0
    out[..., window - 1:] = np.where(windows(bad.astype(np.int64)) > 0, np.nan, np.sqrt(var))
    return out


def realized_vol(close: np.ndarray, period: int) -> np.ndarray:
    """Sample std (ddof=1) of the last `period` one-candle log returns ending at t (per candle, not
    annualised). Uses closes t-period..t; NaN for t < period."""
    return rolling_std(log_returns(close, 1), period, ddof=1)


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """max(high-low, |high-prev close|, |low-prev close|); NaN at t=0 (no previous close)."""
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    prev = _shift(np.asarray(close, dtype=np.float64), 1)
    return np.maximum(high - low, np.maximum(np.abs(high - prev), np.abs(low - prev)))


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, period: int = ATR_PERIOD) -> np.ndarray:
    """Average true range in price units: Wilder smoothing (alpha = 1/period) truncated at 0.1 % tail
    weight (see module doc). NaN for the first ema_length(1/period) rows (94 for period 14)."""
    return ewm_fir(true_range(high, low, close), 1.0 / period)


def rsi(close: np.ndarray, period: int = 14) -> np.ndarray:
    """Cutler's RSI, 0..100: 100 * sum(gains) / (sum(gains) + sum(losses)) over the last `period`
    price changes (50 when the price did not move). NaN for t < period."""
    d = np.diff(np.asarray(close, dtype=np.float64), axis=-1)  # d[..., t-1] = close[t] - close[t-1]
    gains = _rolling(np.where(d > 0, d, 0.0), period, np.sum)
    losses = _rolling(np.where(d < 0, -d, 0.0), period, np.sum)
    out = _full(np.shape(close))
    out[..., 1:] = 100.0 * _safe_div(gains, gains + losses, 0.5)
    return out


# --- the feature matrix ---------------------------------------------------------------------------
def compute_features(open: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray,
                     volume: np.ndarray) -> np.ndarray:
    """Feature matrix (n, len(FEATURE_NAMES)), float64; rows < WARMUP are NaN.

    Row t uses candles t-WARMUP..t only (no look-ahead). Inputs may also be stacked (B, n) - a batch
    of equally long series - giving (B, n, F)."""
    o, h, lo, c, v = (np.asarray(a, dtype=np.float64) for a in (open, high, low, close, volume))
    if not (o.shape == h.shape == lo.shape == c.shape == v.shape) or c.ndim not in (1, 2):
        raise ValueError(f"OHLCV arrays must be 1-D (or 2-D batches) of equal shape, got "
                         f"{[a.shape for a in (o, h, lo, c, v)]}")
    n = c.shape[-1]
    if n == 0:
        return np.empty((*c.shape, N_FEATURES), dtype=np.float64)
    cols: list[np.ndarray] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        # returns over several horizons
        cols.extend(log_returns(c, k) for k in RETURN_HORIZONS)
        # oscillators
        cols.extend(rsi(c, p) for p in RSI_PERIODS)
        # MACD on raw prices (linear), normalised by the current close
        line = ewm_fir(c, 2.0 / (MACD_FAST + 1), _L_FAST) - ewm_fir(c, 2.0 / (MACD_SLOW + 1), _L_SLOW)
        signal = ewm_fir(line, 2.0 / (MACD_SIGNAL + 1), _L_SIGNAL)
        cols.extend((line / c, signal / c, (line - signal) / c))
        # Bollinger bands
        mid = _rolling(c, BB_PERIOD, np.mean)
        sd = _rolling(c, BB_PERIOD, np.std)
        cols.append(_safe_div(c - (mid - BB_K * sd), 2.0 * BB_K * sd, 0.5))
        cols.append(2.0 * BB_K * sd / mid)
        # volatility
        cols.append(atr(h, lo, c, ATR_PERIOD) / c)
        rvs = [realized_vol(c, p) for p in RV_PERIODS]
        cols.extend(rvs)
        cols.append(_safe_div(rvs[0], rvs[1], 1.0))
        # volume z-scores on log volume (scale-free in volume units)
        lv = np.log(np.maximum(v, 1e-12))
        for p in VOLUME_Z_PERIODS:
            cols.append(_safe_div(lv - _rolling(lv, p, np.mean), _rolling(lv, p, np.std), 0.0))
        # candle shape
        rng = h - lo
        cols.append(_safe_div(c - o, rng, 0.0))
        cols.append(_safe_div(h - np.maximum(o, c), rng, 0.0))
        cols.append(_safe_div(np.minimum(o, c) - lo, rng, 0.0))
        cols.append(_safe_div(c - lo, rng, 0.5))
        cols.append(np.log(h / lo))
        # distance from moving averages and from recent extremes
        cols.extend(np.log(c / _rolling(c, p, np.mean)) for p in SMA_PERIODS)
        cols.extend(np.log(c / _rolling(h, p, np.max)) for p in HILO_PERIODS)
        cols.extend(np.log(c / _rolling(lo, p, np.min)) for p in HILO_PERIODS)
    assert len(cols) == N_FEATURES
    X = np.stack(cols, axis=-1)
    X[..., : min(WARMUP, n), :] = np.nan
    return X


def _live_window(candles: "Candles", price: float) -> tuple[np.ndarray, ...]:
    price = float(price)
    if not math.isfinite(price) or price <= 0:
        raise ValueError(f"price must be a positive finite number, got {price!r}")
    n = len(candles)
    need = WARMUP + 1
    if n < need:
        raise InsufficientHistory(
            f"{candles.symbol}/{candles.timeframe}: {n} candles, need at least {need} for features")
    s = slice(n - need, n)
    o, h, lo, c, v = (np.array(a[s], dtype=np.float64) for a in
                      (candles.open, candles.high, candles.low, candles.close, candles.volume))
    c[-1] = price
    h[-1] = max(h[-1], price)
    lo[-1] = min(lo[-1], price)
    return o, h, lo, c, v


def serving_features(candles: "Candles", price: float) -> np.ndarray:
    """Feature vector (F,) for a live request.

    The latest stored candle is the current bar and `price` its live close: on a copy of the window,
    close[-1] = price, high[-1] = max(high, price), low[-1] = min(low, price). With price equal to the
    stored close this is exactly the training row of that candle. Needs at least WARMUP+1 candles
    (raises InsufficientHistory) and uses only the last WARMUP+1; SERVING_WINDOW is what a cache keeps.
    Raises ValueError for a non-positive / non-finite price."""
    return compute_features(*_live_window(candles, price))[-1]


def serving_features_batch(candles: "list[Candles]", prices: "list[float]") -> np.ndarray:
    """(B, F) for B requests in ONE vectorised compute (same rows as serving_features, one by one).
    Any invalid item raises, like serving_features; validate beforehand to isolate failures."""
    if len(candles) != len(prices):
        raise ValueError(f"{len(candles)} candle sets for {len(prices)} prices")
    if not candles:
        return np.empty((0, N_FEATURES), dtype=np.float64)
    wins = [_live_window(cs, p) for cs, p in zip(candles, prices)]
    stacked = [np.stack([w[i] for w in wins]) for i in range(5)]
    return compute_features(*stacked)[:, -1, :]


def feature_row_dict(vec: np.ndarray) -> dict[str, float | None]:
    """{feature name: value} for one row (non-finite values become None, so the dict is JSON-safe)."""
    vec = np.asarray(vec, dtype=np.float64).reshape(-1)
    if vec.shape[0] != N_FEATURES:
        raise ValueError(f"expected {N_FEATURES} features, got {vec.shape[0]}")
    return {name: (float(x) if math.isfinite(x) else None) for name, x in zip(FEATURE_NAMES, vec.tolist())}
