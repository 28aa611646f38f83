"""`signalgen report` and the performance summary it prints: scoring once, hand-checked hit rates and
confidence-bucket calibration, --json, --since, --plot, --url, and the empty store."""
from __future__ import annotations

import argparse
import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from serve_app.core.analytics import score_pending, summarize
from serve_app.settings import StoreSettings
from serve_app.store import Store, open_store
from serve_app.core.timeutil import HOUR_MS
from serve_app.cli import report
from serve_app.config import AppArgs
from tests.store_contract import make_signal

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
N_CANDLES = 12


def sol(i: int) -> float:  # rising
    return 100.0 + i


def btc(i: int) -> float:  # falling
    return 200.0 - i


def eth(i: int) -> float:  # flat
    return 50.0


SERIES = {"SOL": sol, "BTC": btc, "ETH": eth}
# (id, symbol, action, confidence, candle index the signal is generated at); horizon 4 candles of 1h
SIGNALS = [
    ("s1", "SOL", "BUY", 0.72, 0),   # rose: hit
    ("s2", "SOL", "BUY", 0.75, 1),   # rose: hit
    ("s3", "SOL", "SELL", 0.55, 2),  # rose: miss
    ("s4", "BTC", "SELL", 0.65, 0),  # fell: hit
    ("s5", "BTC", "BUY", 0.58, 1),   # fell: miss
    ("s6", "BTC", "HOLD", 0.45, 2),  # moved 2%: miss
    ("s7", "ETH", "HOLD", 0.41, 2),  # flat: hit
    ("s8", "SOL", "BUY", 0.93, 10),  # its exit candle (index 14) is not in the store: never scored
]
SCORABLE = 7


def _exit_return(sym: str, i: int) -> float:
    return math.log(SERIES[sym](i + 4) / SERIES[sym](i))


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    path = tmp_path / "report.sqlite"
    monkeypatch.setenv("SIGNAL_DB_PATH", str(path))
    monkeypatch.delenv("MYSQL_HOST", raising=False)
    store = open_store(StoreSettings.from_env({"SIGNAL_DB_PATH": str(path)}))
    yield store
    store.close()


@pytest.fixture
def seeded(db: Store) -> Store:
    for sym, f in SERIES.items():
        db.upsert_candles(sym, "1h", [(T0 + i * HOUR_MS, f(i), f(i) + 1, f(i) - 1, f(i), 10.0)
                                      for i in range(N_CANDLES)])
    db.insert_signals([make_signal(sid, T0 + i * HOUR_MS, sym, action=a, confidence=c, price=SERIES[sym](i))
                       for sid, sym, a, c, i in SIGNALS])
    return db


def cli(*argv: str) -> int:
    ap = argparse.ArgumentParser()
    report.register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(["report", *argv])
    return args.func(args)


def json_report(capsys: pytest.CaptureFixture, *argv: str) -> dict[str, Any]:
    capsys.readouterr()
    assert cli("--json", "--quiet", "--horizon-candles", "4", "--timeframe", "1h", *argv) == 0
    return json.loads(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------- numbers
def test_hit_rates_returns_and_calibration_match_a_hand_count(seeded: Store, capsys) -> None:
    s = json_report(capsys)
    o = s["overall"]
    assert (o["signals"], o["scored"], o["hits"]) == (8, SCORABLE, 4)
    assert o["hit_rate"] == pytest.approx(4 / 7)
    directional = [_exit_return("SOL", 0), _exit_return("SOL", 1), -_exit_return("SOL", 2),
                   -_exit_return("BTC", 0), _exit_return("BTC", 1)]
    assert o["directional"] == 5
    assert o["avg_return"] == pytest.approx(sum(directional) / 5)
    assert o["total_return"] == pytest.approx(sum(directional))
    assert o["mean_confidence"] == pytest.approx((0.72 + 0.75 + 0.55 + 0.65 + 0.58 + 0.45 + 0.41) / 7)

    assert s["by_symbol"]["SOL"]["hit_rate"] == pytest.approx(2 / 3)
    assert s["by_symbol"]["SOL"]["scored"] == 3 and s["by_symbol"]["SOL"]["signals"] == 4
    assert s["by_symbol"]["BTC"]["hit_rate"] == pytest.approx(1 / 3)
    assert s["by_symbol"]["ETH"]["hit_rate"] == 1.0 and s["by_symbol"]["ETH"]["avg_return"] is None
    assert s["by_action"]["HOLD"]["hit_rate"] == 0.5 and s["by_action"]["SELL"]["hit_rate"] == 0.5
    assert s["by_action"]["BUY"]["hits"] == 2 and s["by_action"]["BUY"]["scored"] == 3

    b = s["by_confidence"]
    assert list(b) == ["0.4-0.5", "0.5-0.6", "0.6-0.7", "0.7-0.8", "0.9-1.0"]
    expected = {"0.4-0.5": (0.5, 0.43, 2), "0.5-0.6": (0.0, 0.565, 2), "0.6-0.7": (1.0, 0.65, 1),
                "0.7-0.8": (1.0, 0.735, 2)}
    for key, (hit_rate, conf, n) in expected.items():
        assert (b[key]["hit_rate"], b[key]["scored"]) == (pytest.approx(hit_rate), n)
        assert b[key]["mean_confidence"] == pytest.approx(conf)
        assert b[key]["calibration_gap"] == pytest.approx(hit_rate - conf)
        assert b[key]["lower"] == pytest.approx(float(key[:3])) and b[key]["upper"] == pytest.approx(float(key[4:]))
    assert b["0.9-1.0"]["signals"] == 1 and b["0.9-1.0"]["scored"] == 0 and b["0.9-1.0"]["hit_rate"] is None
    ece = sum(n * abs(h - c) for h, c, n in expected.values()) / 7
    assert s["calibration_error"] == pytest.approx(ece)
    assert s["by_day"]["2024-01-01"]["signals"] == 8
    assert (s["first_signal_ms"], s["last_signal_ms"]) == (T0, T0 + 10 * HOUR_MS)
    assert s["horizon_candles"] == 4 and s["horizon_ms"] == 4 * HOUR_MS


def test_confidence_one_falls_in_the_last_bucket_and_empty_rows_summarise() -> None:
    s = summarize([{"symbol": "X", "action": "BUY", "confidence": 1.0, "realized_return": 0.01, "hit": True},
                   {"symbol": "X", "action": "BUY", "confidence": 0.6, "realized_return": None, "hit": None}])
    assert set(s["by_confidence"]) == {"0.9-1.0", "0.6-0.7"}
    assert s["by_day"] == {} and s["first_signal_ms"] is None
    empty = summarize([])
    assert empty["overall"]["signals"] == 0 and empty["overall"]["hit_rate"] is None
    assert empty["calibration_error"] is None and empty["by_confidence"] == {}


# ------------------------------------------------------------------------------------------- scoring
def test_scoring_writes_each_outcome_once(seeded: Store, capsys) -> None:
    first = json_report(capsys)
    assert first["outcomes_written"] == SCORABLE
    rows = {r["signal_id"]: r for r in seeded.load_performance_rows()}
    assert rows["s1"]["hit"] is True and rows["s1"]["horizon_candles"] == 4
    assert rows["s1"]["exit_price"] == sol(4) and rows["s8"]["realized_return"] is None
    assert json_report(capsys)["outcomes_written"] == 0  # rerun: nothing new to score
    assert len(seeded.signals_without_outcome(T0 + 100 * HOUR_MS)) == 1  # only s8 waits


def test_no_score_reports_without_writing(seeded: Store, capsys) -> None:
    s = json_report(capsys, "--no-score")
    assert s["overall"]["signals"] == 8 and s["overall"]["scored"] == 0 and s["outcomes_written"] is None
    assert all(r["realized_return"] is None for r in seeded.load_performance_rows())


def test_score_pending_pages_through_everything(seeded: Store) -> None:
    assert score_pending(seeded, "1h", 4, now_ms=T0 + 100 * HOUR_MS, page=2) == SCORABLE
    assert score_pending(seeded, "1h", 4, now_ms=T0 + 100 * HOUR_MS, page=2) == 0


def test_horizon_not_passed_yet_leaves_signals_unscored(seeded: Store) -> None:
    # just before T0 + 5h the exit candle of the signals generated at T0 (it opens at T0 + 4h) is still in
    # progress: nothing is scored; at T0 + 5h it has closed, and only those two (s1, s4) are due
    assert score_pending(seeded, "1h", 4, now_ms=T0 + 5 * HOUR_MS - 1) == 0
    assert score_pending(seeded, "1h", 4, now_ms=T0 + 5 * HOUR_MS) == 2


# ------------------------------------------------------------------------------------------- output
def test_table_output(seeded: Store, capsys) -> None:
    assert cli("--quiet") == 0
    out = capsys.readouterr().out
    for section in ("By symbol", "By action", "Calibration by confidence bucket", "Calibration error"):
        assert section in out
    overall = next(line for line in out.splitlines() if line.startswith("overall"))
    assert overall.split()[1:5] == ["8", "7", "4", f"{4 / 7 * 100:.1f}%"]
    assert any(line.split()[:2] == ["0.70-0.80", "2"] for line in out.splitlines())


def test_since_filters_signals(seeded: Store, capsys) -> None:
    s = json_report(capsys, "--since", "2024-01-01T02:00")
    assert s["overall"]["signals"] == 4  # s3, s6, s7, s8
    assert set(s["by_symbol"]) == {"SOL", "BTC", "ETH"} and s["by_symbol"]["SOL"]["signals"] == 2
    assert json_report(capsys, "--since", "2024-01-02")["overall"]["signals"] == 0


def test_bad_since_is_one_line_and_exit_2(seeded: Store, capsys) -> None:
    assert cli("--since", "yesterday") == 2
    err = capsys.readouterr().err.strip()
    assert "--since" in err and "\n" not in err and "Traceback" not in err


def test_plot_writes_readable_pngs(seeded: Store, tmp_path: Path, capsys) -> None:
    import matplotlib.image as mpimg

    out = tmp_path / "plots"
    assert cli("--quiet", "--plot", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    for name in report.PLOT_FILES:
        path = out / name
        assert path.stat().st_size > 1000 and str(path) in printed
        img = mpimg.imread(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert np.ptp(img[..., :3]) > 0  # not a blank canvas


def test_empty_store_says_so_and_writes_no_plots(db: Store, tmp_path: Path, capsys) -> None:
    out = tmp_path / "plots"
    assert cli("--quiet", "--plot", "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no signals" in captured.err and "no plots" in captured.err
    assert not out.exists()
    s = json_report(capsys)
    assert s["overall"]["signals"] == 0


def test_defaults_come_from_the_serve_config(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("applications:\n  - name: other\n    import_path: x:y\n"
                   "  - name: signals\n    import_path: serve_app.app:build_app\n"
                   "    args: {timeframe: 4h, analytics: {outcome_horizon_candles: 6}}\n")
    assert report.service_defaults(cfg) == ("4h", 6)
    defaults = AppArgs()  # the app's own defaults, defined once (serve_app/config.py)
    assert report.service_defaults(tmp_path / "missing.yaml") == (defaults.timeframe,
                                                                   defaults.analytics.outcome_horizon_candles)


# ------------------------------------------------------------------------------------------- --url
@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A stand-in for GET /analytics/performance on 127.0.0.1: records what it was asked."""
    seen: dict[str, Any] = {"body": summarize([{"symbol": "SOL", "action": "BUY", "confidence": 0.7,
                                                "realized_return": 0.01, "hit": True,
                                                "generated_at_ms": T0}])}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen["path"], seen["key"] = self.path, self.headers.get("X-API-Key")
            body = json.dumps(seen["body"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SIGNAL_API_KEY", "k3y")
    seen["url"] = f"http://127.0.0.1:{server.server_port}"
    yield seen
    server.shutdown()
    server.server_close()


def test_url_reads_the_running_service(service: dict[str, Any], capsys) -> None:
    assert cli("--json", "--url", service["url"], "--since", "2024-01-01") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["overall"] == service["body"]["overall"] and s["source"].endswith("/analytics/performance?since="
                                                                               "2024-01-01T00%3A00%3A00%2B00%3A00")
    assert service["path"].startswith("/analytics/performance?since=2024-01-01") and service["key"] == "k3y"


def test_unreachable_url_is_exit_2(capsys) -> None:
    assert cli("--url", "http://127.0.0.1:1") == 2
    err = capsys.readouterr().err
    assert "127.0.0.1:1" in err and "Traceback" not in err


def test_store_options_with_url_are_refused(capsys) -> None:
    assert cli("--url", "http://127.0.0.1:1", "--no-score") == 2
    assert "--url" in capsys.readouterr().err
