"""`signalgen collect` through the real ingest path: the command, ccxt's binance client and its rate limiter,
real HTTP to a local fake of Binance's REST API (tests/fake_exchange.py), into a real store. Here SQLite;
tests/integration/test_collector_mysql.py runs the same scenarios (CollectorScenarios) on MariaDB."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from serve_app.cli import main
from serve_app.cluster import free_port
from serve_app.core.timeutil import MINUTE_MS
from serve_app.data.collector import run_loop
from serve_app.settings import PROJECT_ROOT, StoreSettings
from serve_app.store import Store, open_store
from tests.fake_exchange import FakeBinance, candle
from tests.polling import wait_for
from tests.store_contract import T0

NOW = T0 + 250 * MINUTE_MS + 30_000  # 250 one-minute candles closed since T0, the 251st in progress
FAST = ["--retry-backoff", "0.01"]  # retries still back off (0.01 s, 0.02 s, ...), only shorter


class CollectorScenarios:
    """Needs a `store_env` fixture: the environment (SIGNAL_DB_PATH or MYSQL_*) of an empty store."""

    @pytest.fixture
    def fx(self) -> Iterator[FakeBinance]:
        with FakeBinance(NOW) as fake:
            yield fake

    @pytest.fixture
    def collect(self, fx: FakeBinance, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                capsys: pytest.CaptureFixture):
        """Runs `signalgen collect --exchange-url <the fake> ARGS` in this process: (exit code, stdout, stderr)."""
        for name, value in store_env.items():
            monkeypatch.setenv(name, value)

        def run(*args: str) -> tuple[int, str, str]:
            code = main(["collect", "--exchange-url", fx.url, *FAST, *args])
            out, err = capsys.readouterr()
            return code, out, err

        return run

    @pytest.fixture
    def source(self, store_env: dict[str, str]) -> Iterator:
        """Opens the test's store for a source (exchange, quote), to look at what was stored."""
        opened: list[Store] = []

        def open_(exchange: str = "binance", quote: str = "USDT") -> Store:
            opened.append(open_store(StoreSettings.from_env(store_env).with_source(exchange, quote)))
            return opened[-1]

        yield open_
        for store in opened:
            store.close()

    # ---- backfill, incremental, idempotent, bounded ------------------------------------------------
    def test_an_empty_store_is_backfilled_page_by_page_without_the_open_candle(self, fx, collect, source) -> None:
        code, out, err = collect("--symbols", "BTC,ETH", "--timeframes", "1m", "--since", str(T0), "--limit", "100")
        assert code == 0, err
        store = source()
        for base in ("BTC", "ETH"):
            expected = fx.closed_candles(base, "USDT", "1m", T0, NOW)
            assert len(expected) == 250
            assert store.load_candles(base, "1m").to_rows() == expected  # the open candle (T0 + 250 min) is not
            pages = fx.klines_requests(f"{base}USDT")
            assert [int(q["startTime"]) for q in pages] == [T0, T0 + 100 * MINUTE_MS, T0 + 200 * MINUTE_MS]
            assert all(q["limit"] == "100" and q["interval"] == "1m" for q in pages)
            assert fx.served[(f"{base}USDT", "1m")] == [t for t, *_ in expected]  # each closed candle once
        assert "BTC/USDT 1m: 250 new (fetched 250, " in err and "ETH/USDT 1m: 250 new" in err
        assert "binance/USDT: 2 series, 500 new candles, 0 failed" in out

    def test_a_rerun_fetches_only_what_closed_since_and_adds_nothing_twice(self, fx, collect, source) -> None:
        args = ("--symbols", "BTC", "--timeframes", "1m,1h", "--since", str(T0))
        assert collect(*args)[0] == 0
        store = source()
        open_before = candle("BTC", "USDT", "1m", T0 + 250 * MINUTE_MS, NOW)  # as served while in progress
        assert len(store.load_candles("BTC", "1m")) == 250 and len(store.load_candles("BTC", "1h")) == 4

        requests = len(fx.klines_requests())
        code, out, err = collect(*args)  # nothing has closed since: nothing asked for, nothing added
        assert code == 0 and len(fx.klines_requests()) == requests
        assert "BTC/USDT 1m: up to date (no complete candle from " in err and "0 new candles" in out
        assert len(store.load_candles("BTC", "1m")) == 250

        fx.advance(5 * MINUTE_MS)
        code, out, err = collect(*args)
        assert code == 0, err
        (incremental,) = fx.klines_requests()[requests:]  # the hourly series has nothing new: not asked
        assert incremental["interval"] == "1m" and int(incremental["startTime"]) == T0 + 250 * MINUTE_MS
        assert "BTC/USDT 1m: 5 new (fetched 5, " in err
        expected = fx.closed_candles("BTC", "USDT", "1m", T0, fx.now_ms)
        assert store.load_candles("BTC", "1m").to_rows() == expected and len(expected) == 255
        t = T0 + 250 * MINUTE_MS
        (closed,) = store.load_candles("BTC", "1m", since_ms=t, until_ms=t).to_rows()
        assert closed == candle("BTC", "USDT", "1m", T0 + 250 * MINUTE_MS) != open_before  # its final values
        assert fx.served[("BTCUSDT", "1m")] == [t for t, *_ in expected]  # every candle fetched exactly once

    def test_each_run_is_bounded_and_the_next_goes_on(self, fx, collect, source) -> None:
        args = ("--symbols", "BTC", "--timeframes", "1m", "--since", str(T0), "--max-candles", "100")
        for run, new in enumerate((100, 100, 50)):
            code, out, err = collect(*args)
            assert code == 0 and f"BTC/USDT 1m: {new} new" in err, err
            assert ("more to fetch (at most 100 a run: --max-candles)" in err) == (new == 100)
            assert len(source().load_candles("BTC", "1m")) == 100 * run + new
        assert [(int(q["startTime"]), q["limit"]) for q in fx.klines_requests()] == [
            (T0, "100"), (T0 + 100 * MINUTE_MS, "100"), (T0 + 200 * MINUTE_MS, "100")]
        assert source().load_candles("BTC", "1m").to_rows() == fx.closed_candles("BTC", "USDT", "1m", T0, NOW)

    # ---- faults ------------------------------------------------------------------------------------
    def test_rate_limited_requests_are_retried_until_they_succeed(self, fx, collect, source) -> None:
        fx.fail_next("429", 2)
        code, out, err = collect("--symbols", "BTC", "--timeframes", "1m", "--since", str(T0), "--limit", "100",
                                 "--max-retries", "2")
        assert code == 0 and "FAILED" not in err, err
        assert len(fx.klines_requests()) == 3 + 2  # three pages, the first asked three times
        assert source().load_candles("BTC", "1m").to_rows() == fx.closed_candles("BTC", "USDT", "1m", T0, NOW)
        assert fx.served[("BTCUSDT", "1m")] == [t for t, *_ in fx.closed_candles("BTC", "USDT", "1m", T0, NOW)]

    def test_server_errors_past_the_retries_fail_that_series_by_name(self, fx, collect, source) -> None:
        fx.fail_next("5xx", 3, market="ETHUSDT")
        args = ("--symbols", "BTC,ETH", "--timeframes", "1m", "--since", str(T0), "--max-retries", "2")
        code, out, err = collect(*args)
        assert code == 1
        assert "FAILED ETH/USDT 1m: ExchangeNotAvailable after 3 tries: binance GET " in err and "503" in err
        assert "2 series, 250 new candles, 1 failed (ETH/USDT 1m)" in out
        assert len(fx.klines_requests("ETHUSDT")) == 3 and "Traceback" not in err
        store = source()
        assert len(store.load_candles("BTC", "1m")) == 250 and len(store.load_candles("ETH", "1m")) == 0

        code, out, err = collect(*args)  # the exchange is back: the failed series is caught up
        assert code == 0 and "ETH/USDT 1m: 250 new" in err and "BTC/USDT 1m: up to date" in err
        assert store.load_candles("ETH", "1m").to_rows() == fx.closed_candles("ETH", "USDT", "1m", T0, NOW)

    def test_a_body_that_is_not_json_fails_the_series_instead_of_looking_empty(self, fx, collect, source) -> None:
        fx.fail_next("malformed", 1, market="BTCUSDT")
        code, out, err = collect("--symbols", "BTC,ETH", "--timeframes", "1m", "--since", str(T0))
        assert code == 1
        assert "FAILED BTC/USDT 1m: BadResponse: binance GET " in err and "the body is not valid JSON" in err
        assert len(fx.klines_requests("BTCUSDT")) == 1  # a refusal, not a network error: not retried
        store = source()
        assert len(store.load_candles("BTC", "1m")) == 0 and len(store.load_candles("ETH", "1m")) == 250

    def test_an_unreachable_exchange_is_exit_2_with_a_clear_message(self, collect, source) -> None:
        closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        code, out, err = collect("--exchange-url", closed, "--symbols", "BTC", "--max-retries", "1")
        assert code == 2
        assert (f"signalgen collect: error: exchange binance at {closed} unreachable, nothing fetched: binance "
                f"markets: NetworkError after 2 tries: binance GET {closed}/api/v3/exchangeInfo") in err
        assert "Traceback" not in err and source().sources() == []

    # ---- sources -----------------------------------------------------------------------------------
    def test_two_sources_in_one_database_never_mix(self, fx, collect, source) -> None:
        assert collect("--symbols", "BTC,ETH", "--timeframes", "1m", "--since", str(T0))[0] == 0
        code, out, err = collect("--quote", "eur", "--symbols", "BTC", "--timeframes", "1m", "--since", str(T0))
        assert code == 0 and "binance/EUR: 1 series, 250 new candles" in out, err
        usdt, eur = source("binance", "USDT"), source("binance", "EUR")
        assert usdt.load_candles("BTC", "1m").to_rows() == fx.closed_candles("BTC", "USDT", "1m", T0, NOW)
        assert eur.load_candles("BTC", "1m").to_rows() == fx.closed_candles("BTC", "EUR", "1m", T0, NOW)
        assert usdt.load_candles("BTC", "1m").close[0] != eur.load_candles("BTC", "1m").close[0]
        assert (usdt.list_symbols("1m"), eur.list_symbols("1m")) == (["BTC", "ETH"], ["BTC"])
        assert usdt.sources() == [("binance", "EUR", 250), ("binance", "USDT", 500)]
        assert len(source("kraken", "EUR").load_candles("BTC", "1m")) == 0


@pytest.fixture
def store_env(tmp_path: Path) -> dict[str, str]:
    return {"SIGNAL_DB_PATH": str(tmp_path / "collect.sqlite")}


class TestCollectorSQLite(CollectorScenarios):
    pass


# ---- SQLite only: the loop, arguments, news ------------------------------------------------------------

def test_the_loop_collects_every_interval_until_sigterm(store_env: dict[str, str], tmp_path: Path) -> None:
    """The installed command as a process: it keeps collecting what closes, and stops cleanly on SIGTERM."""
    with FakeBinance(NOW) as fx, open_store(StoreSettings.from_env(store_env)) as store:
        env = {**os.environ, **store_env, "SIGNAL_EXCHANGE_URL": fx.url, "SIGNAL_SYMBOLS": "BTC",
               "SIGNAL_TIMEFRAMES": "1m"}
        log = tmp_path / "collect.log"
        with log.open("w") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "serve_app.cli", "collect", "--loop", "--interval", "0.2",
                                     "--since", str(T0), "--quiet"], env=env, cwd=PROJECT_ROOT, stdout=sink,
                                    stderr=subprocess.STDOUT)
            try:
                wait_for("the backfill", lambda: len(store.load_candles("BTC", "1m")) == 250, 60,
                         detail=log.read_text)
                fx.advance(3 * MINUTE_MS)
                wait_for("the candles closed since", lambda: len(store.load_candles("BTC", "1m")) == 253, 60,
                         detail=log.read_text)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=60) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        output = log.read_text()
        assert store.load_candles("BTC", "1m").to_rows() == fx.closed_candles("BTC", "USDT", "1m", T0, fx.now_ms)
        assert "signalgen collect: SIGTERM: stopping after the current series" in output
        runs = output.count("collect into ")
        assert runs >= 2 and f"stopped by SIGTERM after {runs} runs" in output
        assert fx.served[("BTCUSDT", "1m")] == [t for t, *_ in fx.closed_candles("BTC", "USDT", "1m", T0, fx.now_ms)]


def test_runs_never_overlap_and_the_loop_ends_on_stop() -> None:
    stop, events = threading.Event(), []

    def tick() -> int:
        events.append("start")
        if events.count("start") == 3:
            stop.set()
        events.append("end")
        return 1 if len(events) > 4 else 0

    assert run_loop(tick, 0.01, stop) == (3, 1)
    assert events == ["start", "end"] * 3


@pytest.mark.parametrize("args, message", [
    ([], "no symbols: give --symbols BTC,ETH or set SIGNAL_SYMBOLS"),
    (["--symbols", "BTC", "--timeframes", "7m"], "binance has no 7m candles; it has 1s, 1m, 3m"),
    (["--symbols", "BTC", "--exchange", "no_such_exchange"], "unknown exchange 'no_such_exchange'"),
])
def test_bad_arguments_are_exit_2(args: list[str], message: str, store_env: dict[str, str],
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SIGNAL_DB_PATH", store_env["SIGNAL_DB_PATH"])
    assert main(["collect", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--exchange", "Binance"], ["--quote", "US-D"], ["--timeframes", "1x"],
                                  ["--max-candles", "0"], ["--since", "last tuesday"]])
def test_malformed_options_are_refused_by_the_parser(args: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["collect", "--symbols", "BTC", *args])
    assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_the_environment_gives_the_defaults(store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    with FakeBinance(NOW) as fx:
        for name, value in {**store_env, "SIGNAL_EXCHANGE_URL": fx.url, "SIGNAL_QUOTE": "EUR",
                            "SIGNAL_SYMBOLS": "btc", "SIGNAL_TIMEFRAMES": "1h"}.items():
            monkeypatch.setenv(name, value)
        assert main(["collect", "--since", str(T0)]) == 0
        assert "BTC/EUR 1h: 4 new" in capsys.readouterr().err
        assert [(q["symbol"], q["interval"]) for q in fx.klines_requests()] == [("BTCEUR", "1h")]
        with open_store(StoreSettings.from_env(store_env).with_source("binance", "EUR")) as store:
            assert store.load_candles("BTC", "1h").to_rows() == fx.closed_candles("BTC", "EUR", "1h", T0, NOW)


def test_a_configured_news_file_is_imported_each_run_under_the_source(store_env: dict[str, str], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    news = tmp_path / "news.csv"
    news.write_text(f"published_at,symbol,source,score,headline\n{T0},BTC,wire,0.5,BTC up\n{T0},ETH,wire,9,bad\n")
    monkeypatch.setenv("SIGNAL_DB_PATH", store_env["SIGNAL_DB_PATH"])
    with FakeBinance(NOW) as fx:
        args = ["collect", "--exchange-url", fx.url, "--symbols", "BTC", "--news", str(news), "--since", str(T0)]
        assert main(args) == 0
        assert f"news {news}: 1 new (2 rows read, 1 bad rows skipped)" in capsys.readouterr().out
        assert main(args) == 0
        assert f"news {news}: 0 new" in capsys.readouterr().out
        news.unlink()
        assert main(args) == 1
        assert f"news {news}: FAILED" in capsys.readouterr().err
    with open_store(StoreSettings.from_env(store_env)) as usdt, \
            open_store(StoreSettings.from_env(store_env).with_source("binance", "EUR")) as eur:
        assert [(n.symbol, n.headline) for n in usdt.load_news(0)] == [("BTC", "BTC up")] and eur.load_news(0) == []


def test_a_malformed_source_in_the_environment_is_exit_2(store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SIGNAL_DB_PATH", store_env["SIGNAL_DB_PATH"])
    monkeypatch.setenv("SIGNAL_EXCHANGE", "Binance")
    assert main(["collect", "--exchange", "binance", "--symbols", "BTC"]) == 2
    assert "exchange 'Binance' is not an exchange id" in capsys.readouterr().err
    assert main(["store", "info"]) == 2
    assert "exchange 'Binance' is not an exchange id" in capsys.readouterr().err
