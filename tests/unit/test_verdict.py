"""The verdict: a moving-block bootstrap over time-ordered rows, and edge / no edge / worse than baseline from
paired per-row log-loss differences (serve_app/training/verdict.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from serve_app.training.verdict import (EDGE, MIN_EDGE, NO_EDGE, WORSE, backtest_interval, block_bootstrap_mean,
                                        block_bootstrap_sum, forecast_verdict, verdict_line)


def test_a_constant_series_has_a_zero_width_interval():
    mean, lo, hi = block_bootstrap_mean(np.full(500, 0.25), block=10)
    assert mean == lo == hi == pytest.approx(0.25)


def test_the_interval_covers_the_mean_and_shrinks_with_more_rows():
    rng = np.random.default_rng(0)
    widths = []
    for n in (400, 6400):
        x = rng.normal(1.0, 1.0, n)
        mean, lo, hi = block_bootstrap_mean(x, block=10)
        assert lo < mean < hi and lo < 1.0 < hi
        widths.append(hi - lo)
    # 16 x the rows: about a quarter of the width (1/sqrt(16))
    assert widths[1] == pytest.approx(widths[0] / 4, rel=0.35)


def test_blocks_widen_the_interval_of_autocorrelated_rows():
    """Rows that move together (an AR(1) with coefficient 0.9) carry less information than their count: a
    block bootstrap sees that, a row-by-row one (block=1) does not."""
    rng = np.random.default_rng(1)
    e = rng.normal(size=5000)
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, e.size):
        x[t] = 0.9 * x[t - 1] + e[t]
    _, lo1, hi1 = block_bootstrap_mean(x, block=1)
    _, lo50, hi50 = block_bootstrap_mean(x, block=50)
    # the long-run variance of an AR(1) is (1+phi)/(1-phi) = 19 x the iid one: about sqrt(19) = 4.4 x wider
    assert (hi50 - lo50) > 2.5 * (hi1 - lo1)


def test_the_sum_is_the_mean_scaled():
    x = np.arange(100, dtype=float)
    mean, lo, hi = block_bootstrap_mean(x, block=5, seed=3)
    total, tlo, thi = block_bootstrap_sum(x, block=5, seed=3)
    assert (total, tlo, thi) == pytest.approx((mean * 100, lo * 100, hi * 100))


def _probs(y: np.ndarray, right: float) -> np.ndarray:
    """Probability `right` on the true class, the rest shared."""
    p = np.full((y.size, 3), (1 - right) / 2)
    p[np.arange(y.size), y] = right
    return p


@pytest.fixture
def rows() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 3000)
    prior = np.full((y.size, 3), 1 / 3)
    momentum = np.full((y.size, 3), 1 / 3)
    momentum[np.arange(y.size), y] += 0.01          # a naive baseline a little better than the prior
    momentum /= momentum.sum(axis=1, keepdims=True)
    return y, np.arange(y.size), {"prior": prior, "momentum": momentum}


def test_a_model_clearly_better_than_every_baseline_is_an_edge(rows):
    y, order, baselines = rows
    v = forecast_verdict(y, _probs(y, 0.40), baselines, order, block=20)
    assert v["verdict"] == EDGE and v["best_baseline"] == "momentum"
    assert v["vs_prior"]["high"] < -MIN_EDGE and v["vs_best_baseline"]["high"] < -MIN_EDGE
    assert v["log_loss"]["model"] == pytest.approx(-math.log(0.40))


def test_the_prior_itself_has_no_edge(rows):
    y, order, baselines = rows
    v = forecast_verdict(y, baselines["prior"], {"prior": baselines["prior"]}, order, block=20)
    assert v["verdict"] == NO_EDGE and v["vs_prior"]["difference"] == 0.0
    # and next to a baseline that beats it on every row, it is worse than that baseline
    assert forecast_verdict(y, baselines["prior"], baselines, order, block=20)["verdict"] == WORSE


def test_a_sure_improvement_smaller_than_min_edge_is_no_edge(rows):
    y, order, baselines = rows
    tiny = 1 / 3 + 0.0005  # 0.0015 nats better than the prior on every row: sure, but below MIN_EDGE
    v = forecast_verdict(y, _probs(y, tiny), {"prior": baselines["prior"]}, order, block=20)
    assert v["vs_prior"]["high"] < 0 and v["vs_prior"]["high"] > -MIN_EDGE
    assert v["verdict"] == NO_EDGE


def test_a_sure_loss_smaller_than_min_edge_is_no_edge_not_worse(rows):
    y, order, baselines = rows
    v = forecast_verdict(y, _probs(y, 1 / 3 - 0.0005), {"prior": baselines["prior"]}, order, block=20)
    assert 0 < v["vs_prior"]["low"] < MIN_EDGE and v["verdict"] == NO_EDGE


def test_a_model_worse_than_the_best_baseline_is_worse(rows):
    y, order, baselines = rows
    v = forecast_verdict(y, _probs(y, 0.30), baselines, order, block=20)
    assert v["verdict"] == WORSE and v["vs_best_baseline"]["low"] > MIN_EDGE


def test_rows_are_put_in_time_order_before_the_blocks(rows):
    y, order, baselines = rows
    shuffled = np.random.default_rng(3).permutation(y.size)
    inverse = np.argsort(shuffled)
    a = forecast_verdict(y, _probs(y, 0.40), baselines, order, block=20)
    b = forecast_verdict(y[shuffled], _probs(y, 0.40)[shuffled], {k: v[shuffled] for k, v in baselines.items()},
                         inverse, block=20)
    assert a == b


def test_the_backtest_interval_and_the_line():
    rng = np.random.default_rng(4)
    hold = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 2000)))
    strategy = hold * np.exp(np.arange(2000) * 0.001)   # buy-and-hold plus 0.1 % a candle
    bt = backtest_interval(strategy, hold, block=10)
    assert bt["excess"] == pytest.approx(math.expm1(1999 * 0.001))
    assert bt["low"] == pytest.approx(bt["excess"]) == pytest.approx(bt["high"])  # a constant excess
    assert bt["return"] == pytest.approx(strategy[-1] / strategy[0] - 1)
    y = np.zeros(10, dtype=int)
    v = forecast_verdict(y, _probs(y, 0.9), {"prior": np.full((10, 3), 1 / 3)}, np.arange(10), block=2)
    line = verdict_line(v, bt)
    assert line.startswith("verdict: EDGE - log-loss 0.1054 vs prior 1.0986") and line.endswith("; 10 rows")
    assert f"excess {bt['excess']:+.2%}" in line
