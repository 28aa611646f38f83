"""The whole toolkit workflow through `signalgen` against a real MariaDB (the embedded-store path is covered
by the unit tests): import candles and news from files, train, evaluate, list/promote/rollback, report."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from serve_app.cli import main
from serve_app.settings import StoreSettings
from serve_app.store import Store
from serve_app.data.sample import seed_store
from tests.store_contract import make_signal

pytestmark = pytest.mark.mysql

SYMBOLS = ("BTC", "ETH")
CANDLES = 4320  # 180 days: enough rows for two symbols' walk-forward folds to show the sample's planted edge


@pytest.fixture
def mysql_env(mysql_settings: StoreSettings, mysql_store: Store, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's environment points at the test database (emptied) and a fresh model registry."""
    s = mysql_settings
    for key, value in {"MYSQL_HOST": s.mysql_host, "MYSQL_PORT": str(s.mysql_port), "MYSQL_USER": s.mysql_user,
                       "MYSQL_PASSWORD": s.mysql_password, "MYSQL_DATABASE": s.mysql_database,
                       "MODEL_DIR": str(tmp_path / "models")}.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def export_sample(tmp_path: Path) -> dict[str, Path]:
    """The synthetic sample written as exchange-style CSV files (epoch seconds), one per symbol."""
    from serve_app.settings import StoreSettings as Settings
    from serve_app.store import open_store

    with open_store(Settings.from_env({"SIGNAL_DB_PATH": str(tmp_path / "sample.sqlite")})) as sample:
        seed_store(sample, symbols=SYMBOLS, n=CANDLES)
        files = {}
        for symbol in SYMBOLS:
            files[symbol] = path = tmp_path / f"{symbol}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["timestamp", "open", "high", "low", "close", "volume"])
                w.writerows([r[0] // 1000, *r[1:]] for r in sample.load_candles(symbol, "1h").to_rows())
    return files


def test_import_train_evaluate_promote_report_on_mariadb(mysql_env: Path, mysql_store: Store,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    tmp = mysql_env
    for symbol, path in export_sample(tmp).items():
        assert main(["import", "candles", str(path), "--symbol", symbol]) == 0
        assert main(["import", "candles", str(path), "--symbol", symbol]) == 0  # idempotent
    assert mysql_store.list_symbols("1h") == list(SYMBOLS)
    assert len(mysql_store.load_candles("BTC", "1h")) == CANDLES
    news = tmp / "news.csv"
    news.write_text("published_at,symbol,source,score,headline\n"
                    "2026-01-02T10:00:00Z,BTC,wire,0.4,ETF inflows\n"
                    "2026-01-02T11:00:00Z,ETH,wire,-0.2,upgrade delayed\n")
    assert main(["import", "news", str(news)]) == 0
    assert len(mysql_store.load_news(0)) == 2

    assert main(["train", "--if-missing", "--quiet", "--n-estimators", "30"]) == 0
    assert main(["train", "--quiet", "--n-estimators", "60"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    first, second = (v["version"] for v in listing["versions"])
    assert listing["current"] == first
    assert main(["models", "promote", second, "--no-deploy"]) == 2   # the gate: not evaluated yet
    out = tmp / "eval"
    assert main(["evaluate", "--quiet", "--folds", "2", "--model-version", second,
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"calibration.png", "confusion.png", "equity.png", "report.md"} <= {p.name for p in out.iterdir()}
    assert metrics["symbols"] == list(SYMBOLS) and len(metrics["folds"]) == 2
    assert metrics["pooled"]["n_test"] > 0 and 0 <= metrics["pooled"]["accuracy"] <= 1
    # the sample's planted structure is an edge; the serving version was compared on the same rows
    assert metrics["verdict"]["verdict"] == "edge" and metrics["verdict"]["vs_serving"]["version"] == first

    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert next(v for v in listing["versions"] if v["version"] == second)["evaluation"], "evaluate attached it"
    assert main(["models", "promote", second, "--no-deploy"]) == 0
    assert main(["models", "rollback", "--no-deploy"]) == 0
    capsys.readouterr()
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["current"] == first

    # two past signals; each is scored against the close of the candle opening 4 candles after it
    candles = mysql_store.load_candles("BTC", "1h")
    t, price = int(candles.open_time[-40]), float(candles.close[-41])
    buy = make_signal("mysql-buy", t, action="BUY", price=price, confidence=0.62)
    sell = make_signal("mysql-sell", t + 3_600_000, action="SELL", price=price, confidence=0.55)
    mysql_store.insert_signals([buy, sell])
    capsys.readouterr()
    assert main(["report", "--json", "--horizon-candles", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"]["signals"] == 2 and report["overall"]["scored"] == 2
    assert report["by_action"]["BUY"]["hits"] == int(float(candles.close[-36]) > price)
    assert report["by_action"]["SELL"]["hits"] == int(float(candles.close[-35]) < price)
    assert main(["report", "--plot", "--out", str(tmp / "report"), "--no-score"]) == 0
    assert any(p.suffix == ".png" for p in (tmp / "report").iterdir())
