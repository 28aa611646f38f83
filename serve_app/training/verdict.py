"""Does the model have an edge? One word, from paired out-of-sample comparisons with honest intervals.

The walk-forward gives, for every out-of-sample row, the model's probability of what happened and those of
the naive forecasts fitted on the same training window: the class prior, and the class frequencies given
the sign of the last-horizon return (momentum). Per row, the log-loss difference model - baseline is paired
(same row, same label); its mean over the rows, with a moving-block bootstrap interval over time-ordered
blocks (rows close in time share overlapping labels and market moves, so rows are not independent), says:

  edge                  the model beats the prior and the best naive baseline: both intervals below
                        -MIN_EDGE (a smaller improvement, however certain, is no reason to trade on it)
  worse than baseline   the model loses to the best naive baseline: its interval above +MIN_EDGE
  no edge               anything else (the intervals straddle 0)

The backtest's excess log return over buy-and-hold gets the same kind of interval, over blocks of candles.
No ray import.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

EDGE, NO_EDGE, WORSE = "edge", "no edge", "worse than baseline"
LEVEL = 0.95
N_BOOT = 2000
MIN_EDGE = 0.002   # nats of log-loss per row (about 0.2 %): the smallest difference called an edge (or worse)


def block_bootstrap_mean(x: np.ndarray, block: int, n_boot: int = N_BOOT, level: float = LEVEL,
                         seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `x` (time-ordered) and a `level` moving-block bootstrap interval. Each
    resample is n // block blocks of `block` consecutive values, their starts drawn uniformly."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    block = int(min(max(block, 1), n))
    sums = np.convolve(x, np.ones(block), mode="valid")           # the sum of every block, by its start
    blocks = max(n // block, 1)
    starts = np.random.default_rng(seed).integers(0, sums.size, size=(n_boot, blocks))
    means = sums[starts].sum(axis=1) / (blocks * block)
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def block_bootstrap_sum(x: np.ndarray, block: int, **kw: Any) -> tuple[float, float, float]:
    """(sum, low, high): as block_bootstrap_mean, scaled to the sum of the n values."""
    mean, lo, hi = block_bootstrap_mean(x, block, **kw)
    n = np.asarray(x).size
    return mean * n, lo * n, hi * n


def row_log_loss(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(proba[np.arange(y.size), y], 1e-15, 1.0))


def compare(diff: np.ndarray, block: int) -> dict[str, float]:
    mean, lo, hi = block_bootstrap_mean(diff, block)
    return {"difference": mean, "low": lo, "high": hi}


def forecast_verdict(y: np.ndarray, proba: np.ndarray, baselines: dict[str, np.ndarray], order: np.ndarray,
                     block: int) -> dict[str, Any]:
    """The verdict on the out-of-sample rows: `baselines` maps a name to its (n, 3) probabilities (must
    include "prior"); `order` sorts the rows by time; `block` is the bootstrap block, in rows."""
    y, proba = y[order], proba[order]
    model_ll = row_log_loss(y, proba)
    base_ll = {name: row_log_loss(y, p[order]) for name, p in baselines.items()}
    best = min(base_ll, key=lambda name: base_ll[name].mean())
    vs_prior = compare(model_ll - base_ll["prior"], block)
    vs_best = compare(model_ll - base_ll[best], block)
    if vs_prior["high"] < -MIN_EDGE and vs_best["high"] < -MIN_EDGE:
        label = EDGE
    elif vs_best["low"] > MIN_EDGE:
        label = WORSE
    else:
        label = NO_EDGE
    return {"verdict": label, "rows": int(y.size), "block_rows": int(block), "level": LEVEL, "min_edge": MIN_EDGE,
            "log_loss": {"model": float(model_ll.mean()), **{n: float(v.mean()) for n, v in base_ll.items()}},
            "best_baseline": best, "vs_prior": vs_prior, "vs_best_baseline": vs_best}


def backtest_interval(strategy_equity: np.ndarray, buy_hold_equity: np.ndarray, block: int) -> dict[str, Any]:
    """The strategy's return, buy-and-hold's, and the excess with an interval: the sum of per-candle log
    return differences, bootstrapped over blocks of `block` candles, shown as simple returns."""
    s, b = np.asarray(strategy_equity, dtype=np.float64), np.asarray(buy_hold_equity, dtype=np.float64)
    excess = np.diff(np.log(s)) - np.diff(np.log(b))
    total, lo, hi = block_bootstrap_sum(excess, block)
    return {"return": float(s[-1] / s[0] - 1), "buy_and_hold": float(b[-1] / b[0] - 1),
            "excess": math.expm1(total), "low": math.expm1(lo), "high": math.expm1(hi), "block_candles": int(block),
            "level": LEVEL}


def verdict_line(v: dict[str, Any], bt: dict[str, Any] | None = None) -> str:
    """The one line `signalgen evaluate` ends with."""
    ll, best = v["log_loss"], v["best_baseline"]
    pct = int(round(v["level"] * 100))
    parts = [f"verdict: {v['verdict'].upper()} - log-loss {ll['model']:.4f} vs prior {ll['prior']:.4f} "
             f"({v['vs_prior']['difference']:+.4f}, {pct}% CI [{v['vs_prior']['low']:+.4f}, "
             f"{v['vs_prior']['high']:+.4f}])"]
    if best != "prior":
        parts.append(f"vs {best} {ll[best]:.4f} ({v['vs_best_baseline']['difference']:+.4f}, "
                     f"[{v['vs_best_baseline']['low']:+.4f}, {v['vs_best_baseline']['high']:+.4f}])")
    if bt is not None:
        parts.append(f"backtest {bt['return']:+.2%} vs buy-and-hold {bt['buy_and_hold']:+.2%} "
                     f"(excess {bt['excess']:+.2%}, {pct}% CI [{bt['low']:+.2%}, {bt['high']:+.2%}])")
    return "; ".join(parts) + f"; {v['rows']} rows"
