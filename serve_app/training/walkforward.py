"""Walk-forward evaluation of the model family (no ray, no CLI; `signalgen evaluate` drives it).

The valid candles of every symbol are placed on one time grid (the union of their open times). The last
`folds * test_candles` grid points are cut into `folds` consecutive test windows; each fold trains on the
`train_candles` grid points that end `purge` candles before its test window (a rolling window, never
shuffled). Inside the training window, the last `val_fraction` (again after a purge gap) is the
validation slice that train.py uses for early stopping and the temperature. Besides the purge gap, a row
is only used for fitting when its label's end (the candle `horizon` ahead) opens before the next
segment starts, which also holds across gaps in the data.

Each fold fits exactly what serve_app.training.train fits (`fit_booster`), scores its test rows (accuracy, log-loss,
per-class precision/recall, multiclass MCC, confusion matrix) against the baselines of train.py
(training-window majority class, momentum sign), and the test rows of all folds are pooled into the
headline numbers and a calibration table. The pooled out-of-sample probabilities are what the backtest
trades on.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from serve_app.training.train import (SymbolData, Split, _stack, baseline_metrics, build_symbol,
                                      classification_report, directional_hit_rate, fit_booster, log_loss,
                                      size_warnings)
from serve_app.core.features import ATR_PCT
from serve_app.core.labels import CLASSES, DEFAULT_HORIZON, DEFAULT_K, DEFAULT_VOL_PERIOD
from serve_app.core.timeutil import iso_minute
from serve_app.core.model import calibrate

CALIBRATION_EDGES = (1 / 3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # max of 3 probabilities is >= 1/3


@dataclass(frozen=True)
class Fold:
    """Grid positions (into the sorted unique open times) of one fold, half-open [start, end)."""

    index: int
    fit: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]


@dataclass
class OutOfSample:
    """Every test row of every fold, in fold order: which symbol/candle, its label and prediction."""

    symbol: np.ndarray  # index into WalkForwardResult.symbols
    candle: np.ndarray  # row index into that symbol's candles
    open_time: np.ndarray
    fold: np.ndarray
    y: np.ndarray
    proba: np.ndarray  # (n, 3) calibrated, CLASSES order
    atr_pct: np.ndarray  # the feature the service sizes and stops with
    # the naive forecasts each row is compared with, fitted on the same fold's training window:
    prior_proba: np.ndarray | None = None      # the class frequencies
    momentum_proba: np.ndarray | None = None   # the class frequencies given the sign of the last-horizon return


@dataclass
class WalkForwardResult:
    symbols: list[str]
    config: dict[str, Any]
    folds: list[dict[str, Any]]
    pooled: dict[str, Any]
    oos: OutOfSample


# --- metrics ---------------------------------------------------------------------------------------
def matthews_corrcoef(confusion: np.ndarray) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K) of a confusion matrix (rows true, columns
    predicted): 1 perfect, 0 no better than chance or a constant prediction, < 0 worse."""
    cm = np.asarray(confusion, dtype=np.float64)
    n, correct = cm.sum(), np.trace(cm)
    true_k, pred_k = cm.sum(axis=1), cm.sum(axis=0)
    den = np.sqrt(n * n - pred_k @ pred_k) * np.sqrt(n * n - true_k @ true_k)
    return float((correct * n - true_k @ pred_k) / den) if den > 0 else 0.0


def calibration_table(y: np.ndarray, proba: np.ndarray,
                      edges: Sequence[float] = CALIBRATION_EDGES) -> list[dict[str, Any]]:
    """Reliability of the top-class probability: per confidence bucket, the mean predicted probability
    of the predicted class vs how often that class was right, and the row count (empty buckets omitted)."""
    conf = proba.max(axis=1)
    hit = proba.argmax(axis=1) == y
    bucket = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        m = bucket == b
        if m.any():
            rows.append({"bucket": f"{edges[b]:.2f}-{edges[b + 1]:.2f}", "mean_predicted": float(conf[m].mean()),
                         "observed": float(hit[m].mean()), "count": int(m.sum())})
    return rows


def expected_calibration_error(table: list[dict[str, Any]]) -> float:
    n = sum(r["count"] for r in table)
    return float(sum(r["count"] * abs(r["mean_predicted"] - r["observed"]) for r in table) / n) if n else float("nan")


def score(y: np.ndarray, proba: np.ndarray, fwd_sign: np.ndarray) -> dict[str, Any]:
    """Out-of-sample metrics of calibrated probabilities (train.py's report plus MCC)."""
    pred = proba.argmax(axis=1)
    out = classification_report(y, pred)
    out["log_loss"] = log_loss(y, proba)
    out["mcc"] = matthews_corrcoef(np.asarray(out["confusion_matrix"]["counts"]))
    out["directional"] = directional_hit_rate(pred, fwd_sign)
    return out


def _pool_baselines(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Baselines over all test rows: every baseline number is a mean over rows (or over up/down calls),
    so the pooled value is the fold values weighted by their row (call) counts."""
    def wmean(values: list[float | None], weights: list[int]) -> float | None:
        pairs = [(v, w) for v, w in zip(values, weights) if v is not None and w > 0]
        total = sum(w for _, w in pairs)
        return sum(v * w for v, w in pairs) / total if total else None

    n = [f["n_test"] for f in folds]
    maj = [f["baselines"]["majority"] for f in folds]
    mom = [f["baselines"]["momentum"] for f in folds]
    calls = [m["directional"]["calls"] for m in mom]
    return {
        "majority": {"class": "training-window majority, per fold",
                     "classes_by_fold": [m["class"] for m in maj],
                     "accuracy": wmean([m["accuracy"] for m in maj], n),
                     "log_loss_train_prior": wmean([m["log_loss_train_prior"] for m in maj], n)},
        "momentum": {"rule": mom[0]["rule"], "accuracy": wmean([m["accuracy"] for m in mom], n),
                     "directional": {"calls": sum(calls),
                                     "hit_rate": wmean([m["directional"]["hit_rate"] for m in mom], calls)}},
    }


# --- folds -----------------------------------------------------------------------------------------
def make_folds(n_times: int, folds: int, train_candles: int, test_candles: int | None, purge: int,
               val_fraction: float = 0.15) -> list[Fold]:
    """Rolling windows over a grid of `n_times` points; test windows tile the end of the grid.
    test_candles=None: the test windows share everything after the first training window."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if test_candles is None:
        test_candles = (n_times - train_candles - purge) // folds
    val = max(1, int(round(train_candles * val_fraction)))
    first_test = n_times - folds * test_candles
    if test_candles < 1 or train_candles - val - purge < 1 or first_test - purge - train_candles < 0:
        raise ValueError(
            f"{n_times} candles cannot hold {folds} folds of {train_candles} training + {purge} purge + "
            f"{test_candles} test candles (with {val} validation + {purge} purge inside the training window); "
            f"use fewer folds or smaller windows")
    out = []
    for f in range(folds):
        s = first_test + f * test_candles
        train_end = s - purge
        out.append(Fold(f, fit=(train_end - train_candles, train_end - val - purge),
                        val=(train_end - val, train_end), test=(s, s + test_candles)))
    return out


def _segment(d: SymbolData, label_end: np.ndarray, valid: np.ndarray, times: np.ndarray,
             span: tuple[int, int], next_start: int | None) -> np.ndarray:
    """Valid rows of `d` opening inside the grid span; for fitting segments, only rows whose label ends
    before the next segment's first candle opens."""
    lo, hi = times[span[0]], times[span[1] - 1]
    m = valid & (d.open_time >= lo) & (d.open_time <= hi)
    if next_start is not None:
        m &= label_end < times[next_start]
    return np.flatnonzero(m)


def momentum_forecast(y_train: np.ndarray, mom_train: np.ndarray, mom: np.ndarray) -> np.ndarray:
    """A naive probabilistic forecast: the training window's class frequencies among rows whose last-horizon
    return had the same sign (up vs not up), one count added to every class."""
    out = np.empty((mom.size, len(CLASSES)))
    for up in (True, False):
        counts = np.bincount(y_train[(mom_train > 0) == up], minlength=len(CLASSES)).astype(np.float64) + 1.0
        out[(mom > 0) == up] = counts / counts.sum()
    return out


# --- the evaluation --------------------------------------------------------------------------------
def walk_forward(candles: Sequence[Any], horizon: int = DEFAULT_HORIZON, k: float = DEFAULT_K,
                 vol_period: int = DEFAULT_VOL_PERIOD, folds: int = 5,
                 train_candles: int | None = None, train_fraction: float = 0.4, test_candles: int | None = None,
                 test_fraction: float | None = None, val_fraction: float = 0.15, purge: int | None = None,
                 n_estimators: int = 300, early_stopping_rounds: int = 40, params: dict[str, Any] | None = None,
                 seed: int = 0, shuffle_labels: int | None = None, progress: bool = False) -> WalkForwardResult:
    """Walk-forward evaluation over `candles` (one serve_app.store.Candles per symbol).

    Window sizes are in candles (grid points), or fractions of the grid: train_fraction for the
    training window, test_fraction for each test window (default: the folds share what is left).
    `shuffle_labels=seed` permutes each symbol's labels in time first (the leakage control: the scores
    must then drop to chance)."""
    purge = horizon if purge is None else int(purge)
    if purge < horizon:
        raise ValueError(f"purge ({purge}) must be >= the label horizon ({horizon})")
    datas, valids, label_ends = [], [], []
    rng = np.random.default_rng(shuffle_labels) if shuffle_labels is not None else None
    for c in candles:
        d = build_symbol(c, horizon, k, vol_period)
        valid = d.valid()
        if not valid.any():
            continue
        if rng is not None:
            y = d.y.copy()
            y[valid] = rng.permutation(y[valid])
            d = dataclasses.replace(d, y=y)
        end = np.full(d.open_time.shape, np.iinfo(np.int64).max)
        end[:-horizon] = d.open_time[horizon:]
        datas.append(d)
        valids.append(valid)
        label_ends.append(end)
    if not datas:
        raise ValueError("no symbol has enough candles for a valid feature + label row")
    times = np.unique(np.concatenate([d.open_time[v] for d, v in zip(datas, valids)]))
    n_train = train_candles if train_candles is not None else int(round(times.size * train_fraction))
    n_test = test_candles if test_candles is not None else (
        int(round(times.size * test_fraction)) if test_fraction is not None else None)
    plan = make_folds(times.size, folds, n_train, n_test, purge, val_fraction)

    fold_reports: list[dict[str, Any]] = []
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("symbol", "candle", "open_time", "fold", "y",
                                                              "proba", "atr_pct", "fwd", "prior_proba",
                                                              "momentum_proba")}
    fold_rows: list[tuple[int, int]] = []   # (fit, calibration) rows of each fold
    bar = tqdm(plan, desc="walk-forward", unit="fold", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for fold in bar:
        for d, v, e in zip(datas, valids, label_ends):
            d.split = Split(train=_segment(d, e, v, times, fold.fit, fold.val[0]),
                            val=_segment(d, e, v, times, fold.val, fold.test[0]),
                            test=_segment(d, e, v, times, fold.test, None))
        Xtr, ytr, mom_tr, _, _ = _stack(datas, "train")
        Xstop, ystop, _, _, _ = _stack(datas, "stop")
        Xcal, ycal, _, _, _ = _stack(datas, "calib")
        Xte, yte, mom_te, fwd_te, sym_te = _stack(datas, "test")
        if min(ytr.size, ystop.size, ycal.size, yte.size) == 0:
            raise ValueError(f"fold {fold.index}: empty segment (fit {ytr.size}, validation {ystop.size} + "
                             f"{ycal.size}, test {yte.size} rows)")
        fit = fit_booster(Xtr, ytr, Xstop, ystop, Xcal, ycal, n_estimators=n_estimators,
                          early_stopping_rounds=early_stopping_rounds, params=params, seed=seed)
        fold_rows.append((int(ytr.size), int(ycal.size)))
        proba = calibrate(fit.booster.inplace_predict(Xte), fit.temperature, fit.prior)
        report = {
            "fold": fold.index,
            "windows_utc": {name: [iso_minute(times[a]), iso_minute(times[b - 1])]
                            for name, (a, b) in (("fit", fold.fit), ("val", fold.val), ("test", fold.test))},
            "n_fit": int(ytr.size), "n_val": int(ystop.size + ycal.size), "n_calibration": int(ycal.size),
            "n_test": int(yte.size), "calibration_kept": fit.calibration["kept"],
            "calibration_choice": fit.calibration["choice"],
            "trees": fit.best_iteration + 1, "temperature": fit.temperature,
            "metrics": score(yte, proba, fwd_te),
            "baselines": baseline_metrics(ytr, yte, mom_te, fwd_te, horizon),
        }
        fold_reports.append(report)
        bar.set_postfix_str(f"acc {report['metrics']['accuracy']:.3f} "
                            f"(majority {report['baselines']['majority']['accuracy']:.3f})")
        candle_idx = np.concatenate([d.split.test for d in datas])
        parts["symbol"].append(sym_te)
        parts["candle"].append(candle_idx)
        parts["open_time"].append(np.concatenate([d.open_time[d.split.test] for d in datas]))
        parts["fold"].append(np.full(yte.size, fold.index, dtype=np.int32))
        parts["y"].append(yte)
        parts["proba"].append(proba)
        parts["atr_pct"].append(Xte[:, ATR_PCT])
        parts["fwd"].append(fwd_te)
        parts["prior_proba"].append(np.tile(fit.prior, (yte.size, 1)))
        parts["momentum_proba"].append(momentum_forecast(ytr, mom_tr, mom_te))
    bar.close()

    cat = {key: np.concatenate(v) for key, v in parts.items()}
    pooled = score(cat["y"], cat["proba"], cat["fwd"])
    pooled["n_test"] = int(cat["y"].size)
    pooled["class_distribution"] = {c: int(np.sum(cat["y"] == i)) for i, c in enumerate(CLASSES)}
    table = calibration_table(cat["y"], cat["proba"])
    pooled["calibration"] = {"table": table, "expected_calibration_error": expected_calibration_error(table)}
    pooled["baselines"] = _pool_baselines(fold_reports)
    config = {"horizon": horizon, "k": k, "vol_period": vol_period, "folds": folds, "train_candles": n_train,
              "test_candles": plan[0].test[1] - plan[0].test[0], "purge": purge, "val_fraction": val_fraction,
              "n_estimators": n_estimators, "early_stopping_rounds": early_stopping_rounds, "seed": seed,
              "shuffled_labels": shuffle_labels is not None, "grid_candles": int(times.size),
              "warnings": size_warnings([f for f, _ in fold_rows], [c for _, c in fold_rows]),
              "oos_window_utc": [iso_minute(times[plan[0].test[0]]), iso_minute(times[plan[-1].test[1] - 1])]}
    oos = OutOfSample(symbol=cat["symbol"], candle=cat["candle"], open_time=cat["open_time"], fold=cat["fold"],
                      y=cat["y"], proba=cat["proba"], atr_pct=cat["atr_pct"], prior_proba=cat["prior_proba"],
                      momentum_proba=cat["momentum_proba"])
    return WalkForwardResult([d.symbol for d in datas], config, fold_reports, pooled, oos)
