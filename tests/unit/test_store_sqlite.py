"""SQLite backend (a real file in tmp_path), the synthetic sample data, and the store CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from serve_app.core.features import realized_vol
from serve_app.settings import PROJECT_ROOT, StoreSettings
from serve_app.store import StoreError, StoreUnavailable, open_store
from serve_app.core.timeutil import HOUR_MS, timeframe_ms
from serve_app.data.sample import NEWS_PREFIX, SAMPLE_SOURCE, SAMPLE_SYMBOLS, sample_candles, sample_news
from serve_app.store.sqlite_store import SQLiteStore
from tests.store_contract import T0, StoreContract, candle_rows, make_signal, store_opener


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(StoreSettings.from_env({"SIGNAL_DB_PATH": str(tmp_path / "nested" / "dir" / "store.sqlite")}))
    assert isinstance(s, SQLiteStore)
    yield s
    s.close()


@pytest.fixture
def same_database(store: SQLiteStore) -> Iterator:
    def open_(exchange: str, quote: str) -> SQLiteStore:
        other = SQLiteStore(store.path, exchange=exchange, quote=quote)
        other.migrate()
        return other

    with store_opener(open_) as opener:
        yield opener


@pytest.fixture
def new_database(tmp_path: Path) -> Iterator:
    with store_opener(lambda exchange, quote: SQLiteStore(tmp_path / "new.sqlite", exchange=exchange,
                                                          quote=quote)) as opener:
        yield opener


class TestSQLiteContract(StoreContract):
    pass


# ---- SQLite specifics --------------------------------------------------------------------------------

def test_file_in_wal_mode_with_parent_dirs_created(store: SQLiteStore, tmp_path: Path) -> None:
    assert store.path == tmp_path / "nested" / "dir" / "store.sqlite" and store.path.exists()
    assert store.journal_mode() == "wal"
    assert store.describe() == f"sqlite:///{store.path}"


def test_data_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "persist.sqlite"
    with SQLiteStore(path) as first:
        first.migrate()
        first.insert_signals([make_signal("keep", T0)])
    with SQLiteStore(path) as second:
        second.migrate()
        assert [s["signal_id"] for s in second.load_signals()] == ["keep"]


def test_unopenable_path_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a_directory").mkdir()
    with pytest.raises(StoreUnavailable, match="a_directory"):
        SQLiteStore(tmp_path / "a_directory").migrate()


def test_closed_store_raises(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "x.sqlite")
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.ping()


def test_usable_from_another_thread(store: SQLiteStore) -> None:
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.upsert_candles("BTC", "1h", candle_rows(5))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=write)
    worker.start()
    worker.join()
    assert not errors and len(store.load_candles("BTC", "1h")) == 5


def test_second_connection_sees_committed_writes(store: SQLiteStore) -> None:
    with SQLiteStore(store.path) as reader:
        store.insert_signals([make_signal("a", T0)])
        assert reader.count_signals() == 1


def test_memory_database(tmp_path: Path) -> None:
    with SQLiteStore(":memory:") as s:
        s.migrate()
        s.upsert_candles("BTC", "1h", candle_rows(2))
        assert len(s.load_candles("BTC", "1h")) == 2


# ---- synthetic sample data (pure functions) -------------------------------------------------------

def test_sample_candles_are_deterministic_and_end_exactly_at_the_sample_price() -> None:
    for symbol, final in SAMPLE_SYMBOLS.items():
        a, b = sample_candles(symbol, end_ms=T0), sample_candles(symbol, end_ms=T0)
        assert len(a) == 2160 and a.close[-1] == final
        for field in ("open_time", "open", "high", "low", "close", "volume"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (symbol, field)


def test_sample_values_do_not_depend_on_the_anchor_time() -> None:
    a = sample_candles("ETH", n=300, end_ms=T0)
    b = sample_candles("ETH", n=300, end_ms=T0 + 7 * HOUR_MS + 123)  # floored to the hour
    assert np.array_equal(a.close, b.close) and np.array_equal(a.volume, b.volume)
    assert b.open_time[-1] == T0 + 7 * HOUR_MS
    assert np.array_equal(b.open_time - a.open_time, np.full(300, 7 * HOUR_MS))


def test_sample_default_anchor_is_the_current_bar() -> None:
    c = sample_candles("BTC", n=10)
    now = int(time.time() * 1000)
    assert now - HOUR_MS < c.open_time[-1] <= now and c.open_time[-1] % HOUR_MS == 0
    assert np.all(np.diff(c.open_time) == HOUR_MS)


def test_sample_newest_candles_do_not_depend_on_n() -> None:
    short, long = sample_candles("SOL", n=200, end_ms=T0), sample_candles("SOL", n=2160, end_ms=T0)
    assert np.array_equal(short.close, long.close[-200:])
    assert np.array_equal(short.high, long.high[-200:])


@pytest.mark.parametrize("symbol", list(SAMPLE_SYMBOLS))
def test_sample_ohlc_is_consistent(symbol: str) -> None:
    c = sample_candles(symbol, end_ms=T0)
    assert np.all(c.low > 0) and np.all(c.volume > 0)
    assert np.all(c.low <= np.minimum(c.open, c.close))
    assert np.all(np.maximum(c.open, c.close) <= c.high)
    assert np.array_equal(c.open[1:], c.close[:-1])  # open of t = close of t-1


def test_sample_has_learnable_structure() -> None:
    candles = {s: sample_candles(s, end_ms=T0) for s in SAMPLE_SYMBOLS}
    returns = {s: np.diff(np.log(c.close)) for s, c in candles.items()}
    btc = returns["BTC"]
    after_big, after_moderate = [], []
    for symbol, r in returns.items():
        c = candles[symbol]
        assert np.corrcoef(r, btc)[0, 1] > 0.5, symbol  # common market factor
        assert np.corrcoef(np.abs(r), c.volume[1:])[0, 1] > 0.3, symbol  # volume ~ |return|
        assert np.corrcoef(np.abs(r[:-1]), np.abs(r[1:]))[0, 1] > 0.1, symbol  # volatility clustering
        r4 = np.add.reduceat(r, np.arange(0, r.size, 4))[:-1]  # consecutive 4-candle returns
        assert np.corrcoef(r4[:-1], r4[1:])[0, 1] > 0.1, symbol  # momentum over hours
        assert 0.3 < c.low.min() / c.close[-1] and c.high.max() / c.close[-1] < 3.0, symbol  # no absurd path
        # the next 4 candles after a move, in its direction, in units of the trailing volatility
        log_close, vol = np.log(c.close), realized_vol(c.close, 48)
        t = np.arange(48, len(c) - 4)
        move = (log_close[t] - log_close[t - 1]) / vol[t - 1]
        after = np.sign(move) * (log_close[t + 4] - log_close[t]) / vol[t - 1]
        after_big.append(after[np.abs(move) > 3])
        after_moderate.append(after[(np.abs(move) > 1) & (np.abs(move) < 2)])
    assert np.mean(np.concatenate(after_moderate)) > 0.2  # moderate moves continue
    assert np.mean(np.concatenate(after_big)) < 0.0  # very large moves partly snap back (overshoot)
    vol = np.std(btc) * np.sqrt(24 * 365)
    assert 0.2 < vol < 1.5  # a crypto-like annualised volatility


def test_sample_other_timeframes() -> None:
    c = sample_candles("BTC", n=50, end_ms=T0, timeframe="4h")
    assert c.timeframe == "4h" and np.all(np.diff(c.open_time) == 4 * HOUR_MS) and c.close[-1] == 50000.0
    assert timeframe_ms("15m") == 900_000 and timeframe_ms("1d") == 24 * HOUR_MS
    with pytest.raises(ValueError):
        timeframe_ms("1x")
    with pytest.raises(ValueError):
        sample_candles("NOPE")


def test_sample_news_is_deterministic_labelled_and_bounded() -> None:
    a, b = sample_news(["BTC", "ETH"], end_ms=T0, days=10), sample_news(["BTC", "ETH"], end_ms=T0, days=10)
    assert a == b and len(a) >= 2 * 10 * 2
    assert all(item.source == SAMPLE_SOURCE and item.headline.startswith(NEWS_PREFIX) for item in a)
    assert all("synthetic" in item.headline.lower() for item in a)
    assert all(-1.0 <= item.score <= 1.0 for item in a)
    assert all(T0 - 10 * 24 * HOUR_MS < item.published_at <= T0 for item in a)
    assert [i.published_at for i in a] == sorted(i.published_at for i in a)


def test_sample_news_scores_follow_recent_returns() -> None:
    news = sample_news(list(SAMPLE_SYMBOLS), end_ms=T0, days=30)
    trailing, scores = [], []
    for symbol in SAMPLE_SYMBOLS:
        c = sample_candles(symbol, end_ms=T0)
        log_close = np.log(c.close)
        for item in (n for n in news if n.symbol == symbol):
            i = int(np.searchsorted(c.open_time, item.published_at - HOUR_MS, side="right")) - 1
            trailing.append(log_close[i] - log_close[i - 24])
            scores.append(item.score)
    assert np.corrcoef(trailing, scores)[0, 1] > 0.4


# ---- the CLI -------------------------------------------------------------------------------------------

def run_cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MYSQL_")}
    env["SIGNAL_DB_PATH"] = str(db)
    return subprocess.run([sys.executable, "-m", "serve_app.cli", "store", *args], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cli_seed_if_missing_or_stale_then_info(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite"
    first = run_cli(db, "seed", "--if-missing-or-stale", "--symbols", "BTC,ETH", "--candles", "48")
    assert first.returncode == 0, first.stderr
    assert f"sqlite:///{db}" in first.stdout and "96 candle rows" in first.stdout
    second = run_cli(db, "seed", "--if-missing-or-stale", "--symbols", "BTC,ETH", "--candles", "48")
    assert second.returncode == 0 and "nothing to do" in second.stdout
    third = run_cli(db, "seed", "--if-missing-or-stale", "--symbols", "BTC,SOL", "--candles", "48")
    assert third.returncode == 0 and "(SOL)" in third.stdout

    info = run_cli(db, "info")
    assert info.returncode == 0, info.stderr
    assert "candles: 3 series (symbol x timeframe)" in info.stdout and "signals: 0" in info.stdout
    rows = {line.split()[0]: line.split() for line in info.stdout.splitlines() if line.startswith("  ")}
    assert set(rows) >= {"BTC", "ETH", "SOL"}
    assert rows["BTC"][1:3] == ["1h", "48"] and rows["BTC"][-1] == "fresh"   # timeframe, count, freshness
    assert "1h candles: the SYNTHETIC sample" in info.stdout


def test_cli_reanchors_a_stale_sample(tmp_path: Path) -> None:
    db = tmp_path / "stale.sqlite"
    with SQLiteStore(db) as s:
        from serve_app.data.sample import seed_store
        seed_store(s, ["BTC", "ETH"], n=48, end_ms=T0)  # long ago
    result = run_cli(db, "seed", "--if-missing-or-stale", "--symbols", "BTC", "--candles", "48")
    assert result.returncode == 0, result.stderr
    assert "BTC,ETH" in result.stdout and "removed" in result.stdout
    with SQLiteStore(db) as s:
        for symbol in ("BTC", "ETH"):
            c = s.load_candles(symbol, "1h")
            assert len(c) == 48 and c.open_time[-1] > T0 and c.close[-1] == SAMPLE_SYMBOLS[symbol]


def test_cli_refuses_to_mix_the_sample_into_other_data(tmp_path: Path) -> None:
    db = tmp_path / "real.sqlite"
    with SQLiteStore(db) as s:
        s.migrate()
        s.upsert_candles("BTC", "1h", candle_rows(3))  # "imported" data
    assert run_cli(db, "seed").returncode == 1
    lenient = run_cli(db, "seed", "--if-missing-or-stale")
    assert lenient.returncode == 0 and "leaving it alone" in lenient.stdout
    with SQLiteStore(db) as s:
        assert len(s.load_candles("BTC", "1h")) == 3


def test_cli_migrate(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "m.sqlite", "migrate")
    assert result.returncode == 0 and "versions [1, 2]" in result.stdout
