"""`signalgen import` / `ingest` into a real MariaDB/MySQL store (the `mysql_settings` database from
tests/conftest.py; no Ray): the valid rows are stored, the file's candles load back unchanged, a rerun
adds nothing, and "new" is counted right on this backend."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve_app.settings import StoreSettings
from serve_app.store import Store
from serve_app.cli import ingest
from serve_app.data import candle_io
from tests.store_contract import T0, candle_rows
from tests.unit.test_ingest import HEADER, NEWS_HEADER, FakeClock, FakeExchange, csv_line, ingest_args, write

pytestmark = pytest.mark.mysql


@pytest.fixture
def store(mysql_store: Store) -> Store:
    return mysql_store


def test_csv_import_stores_the_valid_rows_once(store: Store, tmp_path: Path) -> None:
    rows = candle_rows(40)
    lines = [HEADER, *map(csv_line, rows[:25]), csv_line((rows[3][0], 1, 2, 0.5, 1, 1)),
             csv_line((rows[25][0], 0, 2, 0.5, 1, 1)), *map(csv_line, rows[27:])]
    path = write(tmp_path / "btc.csv", lines)
    valid = rows[:25] + rows[27:]

    first = candle_io.import_candles(store, path, "BTC", "1h")
    assert [(b.where, b.reason) for b in first.checked.bad] == [(27, "duplicate"), (28, "non_positive_price")]
    assert (first.written, first.new, first.exit_code) == (len(valid), len(valid), 0)
    assert store.load_candles("BTC", "1h").to_rows() == valid

    again = candle_io.import_candles(store, path, "BTC", "1h")
    assert (again.written, again.new) == (len(valid), 0)
    assert store.load_candles("BTC", "1h").to_rows() == valid


def test_json_import_overlapping_a_csv_import_counts_only_new_rows(store: Store, tmp_path: Path) -> None:
    rows = candle_rows(30)
    candle_io.import_candles(store, write(tmp_path / "a.csv", [HEADER, *map(csv_line, rows[:20])]), "ETH", "1h")
    path = tmp_path / "b.json"
    path.write_text(json.dumps([list(r) for r in rows[10:]]))
    result = candle_io.import_candles(store, path, "ETH", "1h")
    assert (result.written, result.new) == (20, 10)
    assert store.load_candles("ETH", "1h").to_rows() == rows


def test_news_import_is_idempotent(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path / "news.csv", [NEWS_HEADER, f"{T0},BTC,wire,0.5,BTC up", f"{T0},ETH,wire,-0.25,ETH down",
                                         f"{T0},ETH,wire,-0.25,ETH down", f"{T0},SOL,wire,-2,off scale"])
    first = candle_io.import_news(store, path)
    assert (first.written, first.new, len(first.checked.bad)) == (2, 2, 2)
    assert candle_io.import_news(store, path).new == 0
    assert [(n.symbol, n.score, n.headline) for n in store.load_news(0)] == [
        ("BTC", 0.5, "BTC up"), ("ETH", -0.25, "ETH down")]


def test_ingest_into_mysql_then_rerun_adds_nothing(store: Store, mysql_settings: StoreSettings,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    for name, value in (("MYSQL_HOST", mysql_settings.mysql_host), ("MYSQL_PORT", str(mysql_settings.mysql_port)),
                        ("MYSQL_USER", mysql_settings.mysql_user), ("MYSQL_PASSWORD", mysql_settings.mysql_password),
                        ("MYSQL_DATABASE", mysql_settings.mysql_database)):
        monkeypatch.setenv(name, value or "")
    clock = FakeClock()
    exchange = FakeExchange(candle_rows(50), clock)
    args = ingest_args("--symbols", "BTC", "--since", str(T0), "--limit", "20")
    assert ingest.run_ingest(args, exchange, sleep=clock.sleep, clock=clock) == 0
    assert ingest.run_ingest(args, exchange, sleep=clock.sleep, clock=clock) == 0
    out = capsys.readouterr().out
    assert "fetched 49, stored new 49," in out and "fetched 49, stored new 0," in out
    assert mysql_settings.describe() in out
    assert store.load_candles("BTC", "1h").to_rows() == candle_rows(49)
