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
# the label spec on hourly candles: 4 candles ahead, a flat band of 0.5 x the 48-candle volatility scaled to
# the horizon. On other timeframes derive_label_spec() keeps the horizon at 4 hours (at least one candle)
# and lengthens it when a labelled move would not pay a round trip's costs.
DEFAULT_HORIZON, DEFAULT_K, DEFAULT_VOL_PERIOD = 4, 0.5, 48
HORIZON_MS = 4 * 3_600_000
MAX_HORIZON_FACTOR = 16                 # the cost rule may lengthen the horizon up to 16 x the time default
DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS = 10.0, 5.0   # per fill; a round trip pays both twice


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


def span(ms: int) -> str:
    """A duration in its largest whole unit: 4 h, 1 d, 90 min."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms / 1000:g} s"


def round_trip_cost(fee_bps: float = DEFAULT_FEE_BPS, slippage_bps: float = DEFAULT_SLIPPAGE_BPS) -> float:
    """What a round trip costs, as a return: two fills, each paying the fee and the slippage."""
    return 2 * (fee_bps + slippage_bps) / 1e4


def derive_label_spec(timeframe_ms: int, closes: list[np.ndarray], cost: float = round_trip_cost(),
                      k: float = DEFAULT_K) -> tuple[dict[str, int | float], list[str]]:
    """The label spec for data of this timeframe, and why: the horizon is HORIZON_MS of candles (at least
    one); if a labelled move - k x the median one-candle volatility x sqrt(horizon) - would not exceed the
    round-trip `cost`, the horizon grows until it does, up to MAX_HORIZON_FACTOR times (and the notes say
    that it still does not, when it does not). The volatility window is 12 horizons, at least 48 candles."""
    base = max(1, round(HORIZON_MS / timeframe_ms))
    vols = [np.nanmedian(realized_vol(np.asarray(c, dtype=np.float64), DEFAULT_VOL_PERIOD)) for c in closes
            if len(c) > DEFAULT_VOL_PERIOD + 1]
    sigma = float(np.nanmedian(vols)) if vols else float("nan")
    horizon, notes = base, []

    def move(h: int) -> float:
        return k * sigma * math.sqrt(h)

    if math.isfinite(sigma) and sigma > 0:
        while move(horizon) <= cost and horizon < base * MAX_HORIZON_FACTOR:
            horizon += max(1, horizon // 4)
        horizon = min(horizon, base * MAX_HORIZON_FACTOR)
        if horizon > base:
            notes.append(f"horizon {horizon} candles instead of {base} ({span(base * timeframe_ms)}): a labelled "
                         f"move at {base} candles "
                         f"({move(base):.3%}) would not pay the round trip ({cost:.2%})")
        if move(horizon) <= cost:
            notes.append(f"a labelled move ({move(horizon):.3%} at {horizon} candles) is still below the round "
                         f"trip ({cost:.2%}): trades cannot pay their costs on this timeframe - use a longer one")
    else:
        notes.append(f"not enough candles to measure the volatility: the horizon is {base} candles "
                     f"({span(base * timeframe_ms)})")
    return {"horizon": horizon, "k": k, "vol_period": max(DEFAULT_VOL_PERIOD, 12 * horizon)}, notes
