"""Leakage controls: (a) labels shuffled in time score at chance while the real ones beat it; (b) the
causality check passes the serving feature function and names a column that peeks ahead - and
`signalgen evaluate` refuses to run with such a feature function."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from serve_app.training.walkforward import walk_forward
from serve_app.core.features import FEATURE_NAMES, compute_features
from serve_app.settings import StoreSettings
from serve_app.store import open_store
from serve_app.data.sample import sample_candles, seed_store
from serve_app.cli import evaluate
from serve_app.training.leakage import check_causality, cut_points

SYMBOLS = ["ETH", "SOL"]
END_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def candles():
    return [sample_candles(s, 2160, end_ms=END_MS) for s in SYMBOLS]


def peeking(o, h, lo, c, v):
    """compute_features plus a column built from the NEXT candle's close."""
    nxt = np.full(c.shape, np.nan)
    nxt[:-1] = c[1:] / c[:-1]
    return np.column_stack([compute_features(o, h, lo, c, v), nxt])


def shifted_rsi(o, h, lo, c, v):
    """compute_features with rsi_14 shifted one candle back in time (row t shows rsi at t+1)."""
    X = compute_features(o, h, lo, c, v)
    j = FEATURE_NAMES.index("rsi_14")
    X[:-1, j] = X[1:, j].copy()
    return X


# --- (b) causality check ---------------------------------------------------------------------------
def test_serving_feature_function_is_causal(candles):
    report = check_causality(compute_features, candles[0].tail(400))
    assert report.ok, report.describe()
    assert len(report.cut_points) >= 20 and report.n_candles == 400


def test_feature_reading_the_next_close_is_flagged(candles):
    report = check_causality(peeking, candles[0].tail(400), names=[*FEATURE_NAMES, "next_close_ratio"])
    assert not report.ok
    assert list(report.columns) == ["next_close_ratio"]
    assert "next_close_ratio" in report.describe()


def test_column_shifted_backwards_is_flagged_by_name(candles):
    report = check_causality(shifted_rsi, candles[1].tail(400))
    assert list(report.columns) == ["rsi_14"]  # only the shifted column, no false positives


def test_unnamed_extra_columns_get_an_index_name(candles):
    report = check_causality(peeking, candles[0].tail(300))
    assert list(report.columns) == [f"col_{len(FEATURE_NAMES)}"]


def test_cut_points_cover_the_end_and_stay_in_range():
    pts = cut_points(500, count=10, first=100)
    assert pts[0] == 100 and pts[-1] == 498 and 497 in pts
    assert all(100 <= t <= 498 for t in pts) and pts == sorted(set(pts))
    assert cut_points(50, first=100) == []


# --- (a) shuffled labels ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_and_shuffled(candles):
    kw = dict(folds=3, n_estimators=60, early_stopping_rounds=20)
    return walk_forward(candles, **kw), walk_forward(candles, shuffle_labels=7, **kw)


def test_labels_shuffled_in_time_score_at_chance(real_and_shuffled):
    _, shuffled = real_and_shuffled
    p = shuffled.pooled
    assert shuffled.config["shuffled_labels"] is True
    # ~3000 pooled rows: the chance band of accuracy and MCC is a few hundredths wide
    assert abs(p["accuracy"] - p["baselines"]["majority"]["accuracy"]) < 0.04
    assert abs(p["mcc"]) < 0.06
    assert p["log_loss"] > p["baselines"]["majority"]["log_loss_train_prior"] - 0.01


def test_real_labels_beat_chance_on_the_sample(real_and_shuffled):
    real, shuffled = real_and_shuffled
    p = real.pooled
    assert p["n_test"] == shuffled.pooled["n_test"]  # same rows, only the labels differ
    assert p["accuracy"] > p["baselines"]["majority"]["accuracy"] + 0.03
    assert p["mcc"] > 0.06 and p["mcc"] > shuffled.pooled["mcc"] + 0.05
    assert p["log_loss"] < p["baselines"]["majority"]["log_loss_train_prior"]


# --- the CLI gate ----------------------------------------------------------------------------------
def _args(**kw) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    evaluate.register(ap.add_subparsers(dest="command"))
    argv = ["evaluate", "--quiet"]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return ap.parse_args(argv)


def test_evaluate_refuses_a_leaking_feature_function(tmp_path, monkeypatch, capsys):
    db = tmp_path / "candles.sqlite"
    store = open_store(StoreSettings.from_env({"SIGNAL_DB_PATH": str(db)}))
    seed_store(store, symbols=SYMBOLS[:1], n=500)
    store.close()
    monkeypatch.delenv("MYSQL_HOST", raising=False)
    monkeypatch.setenv("SIGNAL_DB_PATH", str(db))
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    out = tmp_path / "report"
    rc = evaluate.run(_args(out=out), feature_fn=shifted_rsi)
    err = capsys.readouterr().err
    assert rc == 2
    assert "rsi_14" in err and "look-ahead" in err and "Traceback" not in err
    assert not out.exists()  # refused before any work
