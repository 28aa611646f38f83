"""Training labels: the direction of the forward return, relative to the symbol's own volatility.

label[t] compares the forward log return log(close[t+horizon] / close[t]) with a threshold
k * sigma_t * sqrt(horizon), where sigma_t is the std of one-candle log returns over the `vol_period`
candles ending at t (past data only). Scaling by volatility keeps the classes comparable across
symbols and regimes. The only future information used is the forward return itself.
"""
from __future__ import annotations

import math

import numpy as np

from serve_app.core.features import realized_vol

CLASSES: tuple[str, ...] = ("down", "flat", "up")
DOWN, FLAT, UP = 0, 1, 2
UNDEFINED = -1
# the default label spec: 4 candles ahead, a flat band of 0.5 x the 48-candle volatility scaled to the horizon
DEFAULT_HORIZON, DEFAULT_K, DEFAULT_VOL_PERIOD = 4, 0.5, 48


def forward_return(close: np.ndarray, horizon: int) -> np.ndarray:
    """log(close[t+horizon] / close[t]); NaN for the last `horizon` rows."""
    close = np.asarray(close, dtype=np.float64)
    out = np.full(close.shape[0], np.nan)
    if 0 < horizon < close.shape[0]:
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:-horizon] = np.log(close[horizon:] / close[:-horizon])
    return out


def label_threshold(close: np.ndarray, horizon: int = DEFAULT_HORIZON, k: float = DEFAULT_K,
                    vol_period: int = DEFAULT_VOL_PERIOD) -> np.ndarray:
    """k * realized_vol(close, vol_period)[t] * sqrt(horizon) (NaN during the volatility warm-up)."""
    return k * realized_vol(close, vol_period) * math.sqrt(horizon)


def make_labels(close: np.ndarray, horizon: int = DEFAULT_HORIZON, k: float = DEFAULT_K,
                    vol_period: int = DEFAULT_VOL_PERIOD) -> np.ndarray:
    """int8 labels: 0=down, 1=flat, 2=up, -1 where undefined (volatility warm-up: t < vol_period;
    the last `horizon` rows; non-finite prices)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if vol_period < 2:
        raise ValueError(f"vol_period must be >= 2, got {vol_period}")
    fwd = forward_return(close, horizon)
    thr = label_threshold(close, horizon, k, vol_period)
    y = np.full(fwd.shape[0], FLAT, dtype=np.int8)
    y[fwd > thr] = UP
    y[fwd < -thr] = DOWN
    y[~(np.isfinite(fwd) & np.isfinite(thr))] = UNDEFINED
    return y
