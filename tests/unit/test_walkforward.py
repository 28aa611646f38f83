"""Walk-forward evaluation: fold windows (rolling, purged, time-ordered), metrics (MCC, calibration),
pooling, and `signalgen evaluate` end to end on a small SQLite store with a registered model."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from serve_app.training import registry
from serve_app.training.train import train
from serve_app.training.walkforward import calibration_table, make_folds, matthews_corrcoef, walk_forward
from serve_app.settings import StoreSettings
from serve_app.store import open_store
from serve_app.data.sample import sample_candles, seed_store
from serve_app.cli import evaluate

SYMBOLS = ["BTC", "SOL"]
H = 3_600_000


# --- folds -----------------------------------------------------------------------------------------
def test_folds_are_rolling_purged_and_tile_the_end():
    folds = make_folds(1000, folds=4, train_candles=300, test_candles=None, purge=6, val_fraction=0.2)
    assert len(folds) == 4
    assert folds[-1].test[1] == 1000  # the last test window ends with the data
    for a, b in zip(folds, folds[1:]):
        assert a.test[1] == b.test[0]  # consecutive, non-overlapping test windows
    for f in folds:
        assert f.fit[0] >= 0
        assert f.fit[1] + 6 <= f.val[0] and f.val[1] + 6 <= f.test[0]  # purge gaps
        assert f.val[1] - f.fit[0] == 300  # rolling: the same training length every fold
        assert f.val[1] - f.val[0] == 60
        assert f.test[1] - f.test[0] == (1000 - 300 - 6) // 4


def test_folds_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match="cannot hold 5 folds"):
        make_folds(500, folds=5, train_candles=300, test_candles=50, purge=4)
    with pytest.raises(ValueError, match="folds must be"):
        make_folds(500, folds=0, train_candles=100, test_candles=10, purge=4)


# --- metrics ---------------------------------------------------------------------------------------
def test_mcc_matches_the_binary_formula_and_limits():
    tp, fn, fp, tn = 40, 10, 20, 30
    binary = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(np.array([[tn, fp], [fn, tp]])) == pytest.approx(binary)
    assert matthews_corrcoef(np.diag([5, 7, 9])) == pytest.approx(1.0)
    assert matthews_corrcoef(np.array([[0, 5, 0], [0, 9, 0], [0, 4, 0]])) == 0.0  # constant prediction
    assert matthews_corrcoef(np.array([[0, 6], [6, 0]])) == pytest.approx(-1.0)


def test_calibration_table_buckets():
    proba = np.array([[0.6, 0.3, 0.1], [0.1, 0.65, 0.25], [0.2, 0.35, 0.45], [0.05, 0.05, 0.9], [0.34, 0.33, 0.33]])
    y = np.array([0, 2, 2, 2, 1])
    table = {r["bucket"]: r for r in calibration_table(y, proba)}
    assert sum(r["count"] for r in table.values()) == 5
    assert table["0.60-0.70"]["count"] == 2 and table["0.60-0.70"]["mean_predicted"] == pytest.approx(0.625)
    assert table["0.60-0.70"]["observed"] == pytest.approx(0.5)
    assert table["0.90-1.00"]["observed"] == 1.0 and table["0.33-0.40"]["observed"] == 0.0
    assert "0.50-0.60" not in table  # empty buckets are left out


# --- the walk-forward ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def result():
    candles = [sample_candles(s, 1400, end_ms=1_700_000_000_000) for s in SYMBOLS]
    return candles, walk_forward(candles, horizon=4, folds=3, train_candles=500, purge=6, n_estimators=30,
                                 early_stopping_rounds=10)


def _utc(s: str) -> int:
    return int(datetime.strptime(s, "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc).timestamp() * 1000)


def test_training_never_sees_test_time(result):
    _, r = result
    assert r.config["purge"] == 6 and r.config["train_candles"] == 500
    for f in r.folds:
        w = {k: (_utc(a), _utc(b)) for k, (a, b) in f["windows_utc"].items()}
        assert w["fit"][1] + 6 * H < w["val"][0] and w["val"][1] + 6 * H < w["test"][0]
        rows = r.oos.open_time[r.oos.fold == f["fold"]]
        assert rows.min() >= w["test"][0] and rows.max() <= w["test"][1]
        assert f["n_test"] == rows.size and f["n_fit"] > f["n_val"] > 0
    # every out-of-sample row once, and the folds run forward in time
    keys = set(zip(r.oos.symbol.tolist(), r.oos.candle.tolist()))
    assert len(keys) == r.oos.y.size
    starts = [_utc(f["windows_utc"]["test"][0]) for f in r.folds]
    assert starts == sorted(starts)


def test_out_of_sample_rows_match_the_candles(result):
    candles, r = result
    assert r.symbols == SYMBOLS
    for i, c in enumerate(candles):
        m = r.oos.symbol == i
        assert np.array_equal(c.open_time[r.oos.candle[m]], r.oos.open_time[m])
    assert np.allclose(r.oos.proba.sum(axis=1), 1.0)
    assert np.all(r.oos.atr_pct > 0)


def test_pooled_numbers_are_the_folds_combined(result):
    _, r = result
    p, folds = r.pooled, r.folds
    n = np.array([f["n_test"] for f in folds])
    assert p["n_test"] == n.sum() == r.oos.y.size
    assert p["accuracy"] == pytest.approx(np.dot(n, [f["metrics"]["accuracy"] for f in folds]) / n.sum())
    assert p["log_loss"] == pytest.approx(np.dot(n, [f["metrics"]["log_loss"] for f in folds]) / n.sum())
    cm = sum(np.array(f["metrics"]["confusion_matrix"]["counts"]) for f in folds)
    assert cm.tolist() == p["confusion_matrix"]["counts"]
    assert p["mcc"] == pytest.approx(matthews_corrcoef(cm))
    maj = p["baselines"]["majority"]
    fold_majority = [f["baselines"]["majority"]["accuracy"] for f in folds]
    assert maj["accuracy"] == pytest.approx(np.dot(n, fold_majority) / n.sum())
    assert sum(row["count"] for row in p["calibration"]["table"]) == p["n_test"]


def test_purge_shorter_than_the_horizon_is_refused():
    c = [sample_candles("BTC", 400, end_ms=1_700_000_000_000)]
    with pytest.raises(ValueError, match="purge"):
        walk_forward(c, horizon=4, purge=2)


# --- the CLI ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    db = root / "candles.sqlite"
    store = open_store(StoreSettings.from_env({"SIGNAL_DB_PATH": str(db)}))
    seed_store(store, symbols=SYMBOLS, n=1400)
    vdir = train(store, symbols=SYMBOLS, horizon=3, n_estimators=20, early_stopping_rounds=5,
                 root=root / "models", progress=False)
    store.close()
    return root, db, vdir


def _cli(*argv: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    evaluate.register(ap.add_subparsers(dest="command"))
    return ap.parse_args(["evaluate", "--quiet", *argv])


def _use(monkeypatch, root, db):
    monkeypatch.delenv("MYSQL_HOST", raising=False)
    monkeypatch.setenv("SIGNAL_DB_PATH", str(db))
    monkeypatch.setenv("MODEL_DIR", str(root / "models"))


def test_evaluate_writes_the_report_and_attaches_the_summary(env, monkeypatch, capsys):
    root, db, vdir = env
    _use(monkeypatch, root, db)
    out = root / "report"
    rc = evaluate.run(_cli("--folds", "2", "--train-candles", "500", "--n-estimators", "20", "--out", str(out),
                           "--dpi", "40"))
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    for name in ("metrics.json", "report.md", "trades.csv", "calibration.png", "confusion.png", "equity.png"):
        assert (out / name).is_file(), name
    for png in ("calibration.png", "confusion.png", "equity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((out / "metrics.json").read_text())
    assert m["model_version"] == vdir.name
    assert m["label"]["horizon"] == 3 and m["walk_forward"]["purge"] == 3  # the version's label spec
    assert m["symbols"] == SYMBOLS and len(m["folds"]) == 2
    assert set(m["pooled"]["baselines"]) == {"majority", "momentum"}
    assert "counts" in m["pooled"]["confusion_matrix"] and m["pooled"]["calibration"]["table"]
    bt = m["backtest"]
    assert bt["config"]["fee_bps"] == 10 and bt["config"]["slippage_bps"] == 5
    for key in ("total_return", "sharpe", "sortino", "max_drawdown", "profit_factor", "hit_rate", "trades",
                "time_in_market"):
        assert key in bt["strategy"]
    assert "total_return" in bt["buy_and_hold"]
    trades = (out / "trades.csv").read_text().splitlines()
    assert len(trades) == bt["strategy"]["trades"] + 1
    report = (out / "report.md").read_text()
    assert "MCC" in report and "buy-and-hold" in report and "![equity](equity.png)" in report

    ev = registry.read_evaluation(vdir)
    assert ev["summary"]["accuracy"] == pytest.approx(m["pooled"]["accuracy"])
    assert ev["summary"]["backtest"]["trades"] == bt["strategy"]["trades"]
    assert ev["report_dir"] == str(out.resolve()) and ev["evaluated_at"] == m["evaluated_at"]
    assert len(json.dumps(ev)) < 3000  # small: headline numbers only
    assert "attached to model " + vdir.name in stdout


def test_evaluate_user_errors_exit_2(env, monkeypatch, capsys):
    root, db, _ = env
    _use(monkeypatch, root, db)
    assert evaluate.run(_cli("--model-version", "v-does-not-exist")) == 2
    assert "not found" in capsys.readouterr().err
    assert evaluate.run(_cli("--symbols", "BTC,NOPE", "--out", str(root / "x"))) == 2
    assert "NOPE" in capsys.readouterr().err
    assert evaluate.run(_cli("--folds", "3", "--train-candles", "5000", "--out", str(root / "y"))) == 2
    err = capsys.readouterr().err
    assert "cannot hold 3 folds" in err and "Traceback" not in err
