"""Train the signal model: candles from the store -> features/labels -> time-ordered split -> XGBoost
-> the calibration choice (raw / softened towards the prior / the prior) -> out-of-sample evaluation
against baselines -> registry (`signalgen train`, serve_app/cli/train.py).

The split is by time within each symbol and never shuffled: train = the early part, validation next (its
first half for early stopping, its second for the calibration choice), test = the last `test_fraction`.
Consecutive segments are separated by a purge gap of `purge` >= horizon candles, so no training label
(which looks `horizon` candles ahead) overlaps a validation/test candle. No ray import.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xgboost as xgb
from scipy.optimize import minimize_scalar
from tqdm import tqdm

from serve_app.training import registry
from serve_app import settings
from serve_app.core.features import FEATURE_NAMES, SERVING_WINDOW, WARMUP, compute_features, log_returns
from serve_app.core.timeutil import iso_minute, timeframe_ms
from serve_app.core.labels import CLASSES, DEFAULT_K, DEFAULT_VOL_PERIOD, DOWN, UP, derive_label_spec, make_labels
from serve_app.core.model import calibrate
from serve_app.data.sample import sample_symbols

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "multi:softprob",
    "num_class": len(CLASSES),
    "tree_method": "hist",
    "max_depth": 4,
    "eta": 0.05,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "min_child_weight": 10,
    "lambda": 1.0,
    "max_bin": 256,
    "eval_metric": "mlogloss",
    "nthread": 2,
}


# --- dataset ---------------------------------------------------------------------------------------
@dataclass
class Split:
    """Row indices (into one symbol's candle arrays) of each segment, ascending in time. The validation
    segment has two halves: the earlier one stops the boosting (`stop`), the later one fits the calibration
    (`calib`); each is held out from what the other fits."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def stop(self) -> np.ndarray:
        return self.val[: self.val.size - self.val.size // 2]

    @property
    def calib(self) -> np.ndarray:
        return self.val[self.val.size - self.val.size // 2:]


def time_split(valid_idx: np.ndarray, test_fraction: float, val_fraction: float, purge: int) -> Split:
    """Split the candle indices of valid rows by time: [train] purge [val] purge [test].

    Fractions are of the valid span (in candles). `purge` candles are dropped before val and before
    test, so max(train) + purge < min(val) and max(val) + purge < min(test). Never shuffles."""
    if not (0 < test_fraction < 1 and 0 < val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(f"need 0 < test_fraction, val_fraction and their sum < 1 "
                         f"(got {test_fraction}, {val_fraction})")
    if purge < 0:
        raise ValueError(f"purge must be >= 0, got {purge}")
    v = np.sort(np.asarray(valid_idx, dtype=np.int64))
    empty = np.empty(0, dtype=np.int64)
    if v.size == 0:
        return Split(empty, empty, empty)
    first, last = int(v[0]), int(v[-1])
    span = last - first + 1
    test_start = last + 1 - max(1, int(round(span * test_fraction)))
    val_end = test_start - purge  # exclusive
    val_start = val_end - max(1, int(round(span * val_fraction)))
    train_end = val_start - purge  # exclusive
    return Split(train=v[v < train_end], val=v[(v >= val_start) & (v < val_end)], test=v[v >= test_start])


@dataclass
class SymbolData:
    symbol: str
    open_time: np.ndarray
    X: np.ndarray
    y: np.ndarray
    momentum: np.ndarray  # log return over the last `horizon` candles (baseline input)
    fwd_sign: np.ndarray  # sign of the forward return (directional hit rate)
    split: Split = field(default_factory=lambda: Split(*(np.empty(0, np.int64),) * 3))

    def valid(self) -> np.ndarray:
        """Rows usable for fitting and scoring: every feature finite (past the warm-up), a label (its
        horizon inside the data) and a momentum baseline value."""
        return np.isfinite(self.X).all(axis=1) & (self.y >= 0) & np.isfinite(self.momentum)


def build_symbol(candles, horizon: int, k: float, vol_period: int) -> SymbolData:
    X = compute_features(candles.open, candles.high, candles.low, candles.close, candles.volume)
    y = make_labels(candles.close, horizon=horizon, k=k, vol_period=vol_period)
    c = np.asarray(candles.close, dtype=np.float64)
    fwd = np.full(c.shape[0], np.nan)
    if c.shape[0] > horizon:
        fwd[:-horizon] = np.sign(c[horizon:] - c[:-horizon])
    return SymbolData(candles.symbol, np.asarray(candles.open_time, dtype=np.int64), X, y,
                      log_returns(c, horizon), fwd)


def _stack(datas: Sequence[SymbolData], part: str) -> tuple[np.ndarray, ...]:
    Xs, ys, moms, fwds, syms = [], [], [], [], []
    for i, d in enumerate(datas):
        idx = getattr(d.split, part)
        Xs.append(d.X[idx])
        ys.append(d.y[idx])
        moms.append(d.momentum[idx])
        fwds.append(d.fwd_sign[idx])
        syms.append(np.full(idx.size, i, dtype=np.int32))
    F = len(FEATURE_NAMES)
    cat = lambda a, shape: np.concatenate(a) if a else np.empty(shape)  # noqa: E731
    return (cat(Xs, (0, F)), cat(ys, (0,)).astype(np.int64), cat(moms, (0,)), cat(fwds, (0,)),
            cat(syms, (0,)).astype(np.int32))


# --- metrics ---------------------------------------------------------------------------------------
def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    if y.size == 0:
        return float("nan")
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], 1e-15, 1.0))))


def classification_report(y: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    per_class = {}
    for c, name in enumerate(CLASSES):
        tp = int(np.sum((pred == c) & (y == c)))
        npred, ntrue = int(np.sum(pred == c)), int(np.sum(y == c))
        prec = tp / npred if npred else None
        rec = tp / ntrue if ntrue else None
        f1 = (2 * prec * rec / (prec + rec)) if prec and rec else (0.0 if prec is not None and rec is not None else None)
        per_class[name] = {"precision": prec, "recall": rec, "f1": f1, "support": ntrue, "predicted": npred}
    cm = np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64)
    if y.size:
        np.add.at(cm, (y, pred), 1)
    recalls = [v["recall"] for v in per_class.values() if v["recall"] is not None]
    return {
        "accuracy": float(np.mean(pred == y)) if y.size else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "per_class": per_class,
        "confusion_matrix": {"rows_true_cols_pred": list(CLASSES), "counts": cm.tolist()},
    }


def directional_hit_rate(pred: np.ndarray, fwd_sign: np.ndarray) -> dict[str, Any]:
    """Among rows called up/down: fraction whose forward return has the called sign."""
    called = (pred == UP) | (pred == DOWN)
    n = int(called.sum())
    if n == 0:
        return {"calls": 0, "hit_rate": None}
    want = np.where(pred[called] == UP, 1.0, -1.0)
    return {"calls": n, "hit_rate": float(np.mean(fwd_sign[called] == want))}


T_PRIOR = 1e4   # the largest temperature: the rows are the training prior but for 1e-4 of the trees' log-odds


def fit_temperature(y: np.ndarray, p: np.ndarray, prior: np.ndarray | None = None) -> float:
    """T in [1, T_PRIOR] minimising the log-loss of calibrate(p, T, prior) on (y, p): calibration only pulls
    the trees' probabilities towards the prior (T = 1 leaves them alone; at T_PRIOR they are the prior),
    never sharpens them - a sharpening fitted on a few hundred rows is the likeliest to hurt out of sample.
    1.0 when there is nothing to fit or no T does better than leaving p alone."""
    if y.size == 0:
        return 1.0
    res = minimize_scalar(lambda lt: log_loss(y, calibrate(p, math.exp(lt), prior)),
                          bounds=(0.0, math.log(T_PRIOR)), method="bounded", options={"xatol": 1e-4})
    t = float(math.exp(res.x))
    return t if log_loss(y, calibrate(p, t, prior)) < log_loss(y, calibrate(p, 1.0, prior)) else 1.0


MIN_TRAIN_ROWS = 500    # below: a warning that the model fits on too few rows to mean much
MIN_CALIB_ROWS = 200    # below: a warning that the temperature is fitted on too few rows


def class_prior(y: np.ndarray) -> np.ndarray:
    """Class frequencies of `y` (each at least one count: a class never seen still gets a little mass)."""
    counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64) + 1.0
    return counts / counts.sum()


def calibration(y: np.ndarray, p: np.ndarray, prior: np.ndarray) -> dict[str, Any]:
    """What the model serves, chosen on the calibration slice - rows the trees never saw - by held-out
    log-loss among: the trees' raw probabilities, the temperature-calibrated ones (each half of the slice
    scored with the temperature fitted on the other half: cross-fitting, so no row is scored with a
    temperature fitted on it) and the training prior itself (fitted on no row of the slice). "raw" serves
    T = 1, "calibrated" the temperature fitted on the whole slice, "prior" T_PRIOR: a model that does not
    beat the class frequencies on rows it never saw serves the class frequencies."""
    raw = log_loss(y, p)
    scores = {"raw": raw, "prior": log_loss(y, np.tile(prior, (y.size, 1))) if y.size else raw}
    half = y.size // 2
    t = 1.0
    if half >= 2:
        cross = np.empty_like(p)
        for fit_on, score_on in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
            cross[score_on] = calibrate(p[score_on], fit_temperature(y[fit_on], p[fit_on], prior), prior)
        t = fit_temperature(y, p, prior)
        if t != 1.0:
            scores["calibrated"] = log_loss(y, cross)
    choice = min(scores, key=lambda name: (scores[name], name != "raw"))  # a tie keeps the raw probabilities
    temperature = {"raw": 1.0, "calibrated": t, "prior": T_PRIOR}[choice]
    return {"choice": choice, "temperature": temperature, "fitted_temperature": t, "kept": choice != "raw",
            "prior": prior.tolist(), "rows": int(y.size), "log_loss": scores,
            "log_loss_raw": raw, "log_loss_calibrated": scores.get("calibrated", raw)}


def size_warnings(n_train: Sequence[int] | int, n_calib: Sequence[int] | int, where: str = "") -> list[str]:
    """Warnings, with their thresholds, when a model fits or calibrates on too few rows; given the row counts
    of several walk-forward folds, one warning per kind for all the folds it concerns."""
    n_train = [n_train] if isinstance(n_train, int) else list(n_train)
    n_calib = [n_calib] if isinstance(n_calib, int) else list(n_calib)
    out = []
    for counts, least, verb, why in ((n_train, MIN_TRAIN_ROWS, "train", "too few for the metrics to mean much"),
                                     (n_calib, MIN_CALIB_ROWS, "calibrate", "the calibration is noisy")):
        few = [i for i, n in enumerate(counts) if n < least]
        if not few:
            continue
        rows = sorted({counts[i] for i in few})
        rows_text = str(rows[0]) if len(rows) == 1 else f"{rows[0]}-{rows[-1]}"
        if len(counts) == 1:
            who = f"{verb}s"
        elif len(few) == len(counts):
            who = f"every fold ({len(counts)}) {verb}s"
        else:
            who = f"fold{'s' * (len(few) > 1)} {', '.join(map(str, few))} of {len(counts)} {verb}{'s' * (len(few) == 1)}"
        out.append(f"{where}{who} on {rows_text} rows (< {least}): {why}")
    return out


def baseline_metrics(y_train: np.ndarray, y: np.ndarray, momentum: np.ndarray, fwd_sign: np.ndarray,
                     horizon: int) -> dict[str, Any]:
    """Out-of-sample scores of the naive rules on (y, momentum, fwd_sign): the training window's majority
    class (and its class prior as a probabilistic forecast) and the sign of the last `horizon`-candle return."""
    prior = np.bincount(y_train, minlength=len(CLASSES)) / max(y_train.size, 1)
    majority = int(prior.argmax())
    mom_pred = np.where(momentum > 0, UP, DOWN)
    return {
        "majority": {"class": CLASSES[majority], "accuracy": float(np.mean(y == majority)) if y.size else float("nan"),
                     "log_loss_train_prior": log_loss(y, np.tile(prior, (y.size, 1)))},
        "momentum": {"rule": f"up if the last {horizon}-candle return > 0 else down",
                     "accuracy": float(np.mean(mom_pred == y)) if y.size else float("nan"),
                     "directional": directional_hit_rate(mom_pred, fwd_sign)},
    }


class _ProgressCallback(xgb.callback.TrainingCallback):
    def __init__(self, bar: tqdm):
        super().__init__()
        self.bar = bar
        self.rounds = 0

    def after_iteration(self, model, epoch, evals_log) -> bool:
        self.rounds += 1
        self.bar.update(1)
        val = evals_log.get("val", {}).get("mlogloss")
        if val and self.rounds % 10 == 0:
            self.bar.set_postfix_str(f"val mlogloss {val[-1]:.4f}")
        return False


# --- fitting ---------------------------------------------------------------------------------------
@dataclass
class FittedBooster:
    booster: xgb.Booster  # trimmed to the best validation round
    params: dict[str, Any]
    best_iteration: int
    rounds_run: int
    temperature: float    # 1.0: raw probabilities; T_PRIOR: the prior (see calibration())
    prior: np.ndarray     # the training window's class frequencies, what calibration pulls towards
    calibration: dict[str, Any]


def fit_booster(Xtr: np.ndarray, ytr: np.ndarray, Xstop: np.ndarray, ystop: np.ndarray, Xcal: np.ndarray,
                ycal: np.ndarray, n_estimators: int = 500, early_stopping_rounds: int = 40,
                params: dict[str, Any] | None = None, seed: int = 0,
                callbacks: Sequence[xgb.callback.TrainingCallback] = ()) -> FittedBooster:
    """The model family: XGBoost (DEFAULT_PARAMS updated with `params`) early-stopped on the `stop` rows and
    cut at the best round, then calibrated towards the training prior on the `cal` rows (see calibration())."""
    p = dict(DEFAULT_PARAMS)
    p.update(params or {})
    p["seed"] = seed
    dtrain = xgb.DMatrix(Xtr, label=ytr, feature_names=list(FEATURE_NAMES))
    dstop = xgb.DMatrix(Xstop, label=ystop, feature_names=list(FEATURE_NAMES))
    booster = xgb.train(p, dtrain, num_boost_round=n_estimators, evals=[(dstop, "val")],
                        early_stopping_rounds=early_stopping_rounds, callbacks=list(callbacks), verbose_eval=False)
    rounds_run = booster.num_boosted_rounds()
    best_iteration = int(getattr(booster, "best_iteration", rounds_run - 1))
    booster = booster[: best_iteration + 1]  # keep the trees up to the best validation round only
    prior = class_prior(ytr)
    cal = calibration(ycal, booster.inplace_predict(Xcal), prior)
    return FittedBooster(booster, p, best_iteration, rounds_run, cal["temperature"], prior, cal)


# --- training --------------------------------------------------------------------------------------
def train(store, symbols: Sequence[str] | None = None, timeframe: str = settings.DEFAULT_TIMEFRAME,
          horizon: int | None = None, k: float = DEFAULT_K,
          vol_period: int | None = None, test_fraction: float = 0.2,
          val_fraction: float = 0.15, purge: int | None = None, n_estimators: int = 500,
          early_stopping_rounds: int = 40, params: dict[str, Any] | None = None, set_current: bool = True,
          root: str | Path | None = None, progress: bool = False, seed: int = 0,
          min_candles: int | None = None) -> Path:
    """Train, evaluate and register a model; returns the new version directory.

    `store` needs load_candles(symbol, timeframe) and list_symbols(timeframe) (serve_app.store.Store).
    symbols=None trains on every symbol the store has for `timeframe`. horizon / vol_period None: derived
    from the timeframe and the data (core.labels.derive_label_spec), the reasons kept in the metadata."""
    t0 = time.perf_counter()
    if symbols is None:
        symbols = list(store.list_symbols(timeframe))
    symbols = [s.strip() for s in symbols if s and s.strip()]
    if not symbols:
        held = getattr(store, "list_timeframes", lambda: [])()
        raise ValueError(f"no {timeframe} candles to train on"
                         + (f"; the store holds: {', '.join(held)} (use --timeframe)" if held
                            else " (the store holds no candles: seed or import some)"))

    bar = tqdm(total=len(symbols) + n_estimators + 2, desc="train", unit="step", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    loaded = {}
    for sym in symbols:
        bar.set_description(f"load {sym}")
        loaded[sym] = store.load_candles(sym, timeframe)
        bar.update(1)
    derived, label_notes = derive_label_spec(timeframe_ms(timeframe), [c.close for c in loaded.values()], k=k)
    horizon = int(derived["horizon"]) if horizon is None else int(horizon)
    if vol_period is None:  # 12 horizons (at least the default): of the horizon given, else the derived one
        vol_period = int(derived["vol_period"]) if horizon == derived["horizon"] else \
            max(DEFAULT_VOL_PERIOD, 12 * horizon)
    vol_period = int(vol_period)
    purge = horizon if purge is None else int(purge)
    if purge < horizon:
        bar.close()
        raise ValueError(f"purge ({purge}) must be >= horizon ({horizon}): a training label looks "
                         f"{horizon} candles ahead")
    min_candles = min_candles if min_candles is not None else WARMUP + max(horizon, vol_period) + 200
    datas: list[SymbolData] = []
    skipped: dict[str, str] = {}
    for sym, candles in loaded.items():
        if len(candles) < min_candles:
            skipped[sym] = f"{len(candles)} candles < {min_candles}"
        else:
            d = build_symbol(candles, horizon, k, vol_period)
            valid = np.flatnonzero(d.valid())
            d.split = time_split(valid, test_fraction, val_fraction, purge)
            datas.append(d)
    if not datas:
        bar.close()
        raise ValueError(f"not enough candles to train ({timeframe}): {skipped}")

    Xtr, ytr, _, _, _ = _stack(datas, "train")
    Xva, yva, _, _, _ = _stack(datas, "val")
    Xstop, ystop, _, _, _ = _stack(datas, "stop")
    Xcal, ycal, _, _, _ = _stack(datas, "calib")
    Xte, yte, mom_te, fwd_te, sym_te = _stack(datas, "test")
    if min(ytr.size, yva.size, yte.size) == 0:
        bar.close()
        raise ValueError(f"empty segment after split: n_train={ytr.size} n_val={yva.size} n_test={yte.size}")

    bar.set_description("boost")
    cb = _ProgressCallback(bar)
    warnings = size_warnings(int(ytr.size), int(ycal.size))
    fit = fit_booster(Xtr, ytr, Xstop, ystop, Xcal, ycal, n_estimators=n_estimators,
                      early_stopping_rounds=early_stopping_rounds,
                      params=params, seed=seed, callbacks=[cb])
    bar.update(n_estimators - fit.rounds_run)
    booster, temperature = fit.booster, fit.temperature
    bar.update(1)

    bar.set_description("evaluate")
    p_raw = booster.inplace_predict(Xte)
    p_te = calibrate(p_raw, temperature, fit.prior)
    pred = p_te.argmax(axis=1)
    metrics = classification_report(yte, pred)
    metrics["log_loss"] = log_loss(yte, p_te)
    metrics["log_loss_uncalibrated"] = log_loss(yte, p_raw)
    metrics["calibration"] = fit.calibration
    metrics["directional"] = directional_hit_rate(pred, fwd_te)
    metrics["per_symbol_accuracy"] = {d.symbol: float(np.mean(pred[sym_te == i] == yte[sym_te == i]))
                                      for i, d in enumerate(datas) if np.any(sym_te == i)}
    metrics["test_class_distribution"] = {c: int(np.sum(yte == i)) for i, c in enumerate(CLASSES)}

    baselines = baseline_metrics(ytr, yte, mom_te, fwd_te, horizon)
    bar.update(1)
    bar.close()

    def window(part: str) -> dict[str, list[int]]:
        out = {}
        for d in datas:
            idx = getattr(d.split, part)
            if idx.size:
                out[d.symbol] = [int(d.open_time[idx[0]]), int(d.open_time[idx[-1]])]
        return out

    created = _dt.datetime.now(_dt.timezone.utc)
    raw_model = bytes(booster.save_raw("ubj"))
    version = registry.unique_version(raw_model, root, created)
    metadata = {
        "version": version,
        "created_at": created.isoformat(timespec="milliseconds"),
        "feature_names": list(FEATURE_NAMES),
        "classes": list(CLASSES),
        "label": {"horizon": horizon, "k": k, "vol_period": vol_period},
        "label_notes": label_notes,
        "features": {"warmup": WARMUP, "serving_window": SERVING_WINDOW, "n_features": len(FEATURE_NAMES)},
        "timeframe": timeframe,
        "symbols": [d.symbol for d in datas],
        "skipped_symbols": skipped,
        "data_source": getattr(store, "backend", type(store).__name__),
        # the symbols whose candles are the SYNTHETIC sample: the ML engine flags such a model (/health, the
        # signalgen_model_synthetic metric, an alert on Kubernetes)
        "synthetic_symbols": sample_symbols(store, [d.symbol for d in datas], timeframe),
        "split": {"method": "time-ordered per symbol, never shuffled", "test_fraction": test_fraction,
                  "val_fraction": val_fraction, "purge_candles": purge},
        "training_window": window("train"),
        "validation_window": window("val"),
        "test_window": window("test"),
        "n_train": int(ytr.size), "n_val": int(yva.size), "n_test": int(yte.size),
        "temperature": temperature,
        "calibration_prior": fit.prior.tolist(),
        "warnings": warnings,
        "xgboost": {"version": xgb.__version__, "params": fit.params, "best_iteration": fit.best_iteration,
                    "n_trees_rounds": fit.best_iteration + 1, "rounds_run": fit.rounds_run},
        "metrics": metrics,
        "baselines": baselines,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    report = {k_: metadata[k_] for k_ in ("version", "created_at", "timeframe", "symbols", "label", "split",
                                          "training_window", "validation_window", "test_window", "n_train",
                                          "n_val", "n_test", "temperature", "metrics", "baselines",
                                          "train_seconds")}
    text = format_report(metadata)
    vdir = registry.save_version(booster, metadata, root=root, extra_files={
        "report.json": json.dumps(report, indent=2, default=registry._json_default) + "\n",
        "report.txt": text,
    })
    if set_current:
        registry.set_current(vdir.name, root=root)
    return vdir


def calibration_line(cal: dict[str, Any]) -> str:
    """One line saying what the model serves - raw, calibrated or prior probabilities - and why."""
    scores = cal.get("log_loss") or {"raw": cal["log_loss_raw"], "calibrated": cal["log_loss_calibrated"]}
    names = {"raw": "raw", "calibrated": f"calibrated (T {cal['fitted_temperature']:.3f}, cross-fitted)",
             "prior": "prior"}
    check = (f"held-out log-loss on {cal['rows']} calibration rows: "
             + ", ".join(f"{names[k]} {v:.4f}" for k, v in scores.items()))
    choice = cal.get("choice", "calibrated" if cal["kept"] else "raw")
    what = {"raw": "not kept, the trees' raw probabilities are served",
            "calibrated": f"kept, temperature {cal['temperature']:.3f} towards the training prior",
            "prior": "the trees do not beat the class frequencies on rows they never saw: the training prior "
                     "is served (a model with no skill)"}[choice]
    return f"calibration: {what} ({check})"


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def format_report(m: dict[str, Any]) -> str:
    met, base = m["metrics"], m["baselines"]
    tw = m["test_window"]
    t_start = min((v[0] for v in tw.values()), default=None)
    t_end = max((v[1] for v in tw.values()), default=None)
    lab = m["label"]
    lines = [
        f"model {m['version']}  ({m['timeframe']}, {len(m['symbols'])} symbol{'s' * (len(m['symbols']) != 1)}: "
        f"{','.join(m['symbols'])})",
        f"label: {lab['horizon']}-candle forward return vs {lab['k']} x vol({lab['vol_period']}) x sqrt(h)",
        f"rows: train {m['n_train']}  val {m['n_val']}  test {m['n_test']}  (purge {m['split']['purge_candles']} "
        f"candles; test {iso_minute(t_start)} .. {iso_minute(t_end)} UTC)",
        f"trees: {m['xgboost']['n_trees_rounds']} round{'s' * (m['xgboost']['n_trees_rounds'] != 1)} "
        f"(early-stopped on the first half of validation)",
        calibration_line(m["metrics"]["calibration"]),
        "",
        f"{'out-of-sample (test)':<32}{'accuracy':>9}{'log-loss':>10}  dir.hit-rate",
        f"{'  model':<32}{_f(met['accuracy']):>9}{_f(met['log_loss']):>10}  "
        f"{_f(met['directional']['hit_rate'])} ({met['directional']['calls']} up/down calls)",
        f"{'  majority class (' + base['majority']['class'] + ')':<32}{_f(base['majority']['accuracy']):>9}"
        f"{_f(base['majority']['log_loss_train_prior']):>10}  -",
        f"{'  momentum sign (' + str(m['label']['horizon']) + '-candle)':<32}{_f(base['momentum']['accuracy']):>9}"
        f"{'-':>10}  {_f(base['momentum']['directional']['hit_rate'])}",
        "",
        "per class      precision  recall  support",
    ]
    for name, v in met["per_class"].items():
        lines.append(f"  {name:<12} {_f(v['precision']):>9}  {_f(v['recall']):>6}  {v['support']:>7}")
    lines.append(f"balanced accuracy {_f(met['balanced_accuracy'])}; uncalibrated log-loss "
                 f"{_f(met['log_loss_uncalibrated'])}; trained in {m['train_seconds']} s")
    if m.get("skipped_symbols"):
        lines.append(f"skipped: {m['skipped_symbols']}")
    lines += [f"label: {note}" for note in m.get("label_notes", [])]
    lines += [f"WARNING: {w}" for w in m.get("warnings", [])]
    return "\n".join(lines) + "\n"
