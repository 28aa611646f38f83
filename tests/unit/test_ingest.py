"""`signalgen import` and `signalgen ingest`: file parsing and validation (serve_app.data.candle_io),
the exchange feed (pagination, throttle, retries) over an in-process fake exchange, and both commands
against a temporary SQLite store."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import ccxt
import pytest

from serve_app.settings import StoreSettings
from serve_app.store import NewsItem, Store, open_store
from serve_app.core.timeutil import HOUR_MS
from serve_app.cli import ingest
from serve_app.data import candle_io
from serve_app.data import exchange as exchange_mod
from serve_app.data.candle_io import (
    TimeframeMismatch,
    InputFileError, file_format, parse_timestamp, read_candles, read_news, upsert_new,
)
from tests.store_contract import T0, candle_rows

HEADER = "timestamp,open,high,low,close,volume"
NEWS_HEADER = "published_at,symbol,source,score,headline"


# ---- helpers -----------------------------------------------------------------------------------------

def csv_line(row: Sequence[Any]) -> str:
    return ",".join(str(v) for v in row)


def write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat()


class FakeClock:
    """A monotonic clock that only moves when slept on; records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeExchange:
    """fetch_ohlcv over a fixed hourly series whose last candle is still in progress at `now_ms`.
    Serves at most `page_cap` rows per call whatever the limit (as real exchanges do); raises the
    queued `failures` first, one per call; records (clock time, market, since, limit) per call."""

    id = "fakex"

    def __init__(self, series: list[tuple], clock: FakeClock, rate_limit_ms: int = 250,
                 markets: Sequence[str] = ("BTC/USDT", "ETH/USDT"), page_cap: int = 10_000) -> None:
        self.series, self.clock, self.rateLimit = series, clock, rate_limit_ms
        self.markets, self.page_cap = set(markets), page_cap
        self.now_ms = series[-1][0] + HOUR_MS // 2
        self.failures: list[Exception] = []
        self.calls: list[tuple[float, str, int | None, int | None]] = []

    def milliseconds(self) -> int:
        return self.now_ms

    def fetch_ohlcv(self, symbol: str, timeframe: str, since: int | None = None,
                    limit: int | None = None) -> list[list]:
        self.calls.append((self.clock.now, symbol, since, limit))
        if self.failures:
            raise self.failures.pop(0)
        if symbol not in self.markets:
            raise ccxt.BadSymbol(f"{self.id} does not have market symbol {symbol}")
        rows = [list(r) for r in self.series if since is None or r[0] >= since]
        return rows[:min(limit or 500, self.page_cap)]


@pytest.fixture
def env_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The store the commands open from the environment (a temp SQLite file), opened for checking."""
    monkeypatch.delenv("MYSQL_HOST", raising=False)
    monkeypatch.setenv("SIGNAL_DB_PATH", str(tmp_path / "cli.sqlite"))
    with open_store(StoreSettings.from_env()) as store:
        yield store


def run_cli(argv: Sequence[str]) -> int:
    """The `ingest`/`import` commands through argparse with only this module registered."""
    ap = argparse.ArgumentParser(prog="signalgen")
    ingest.register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(list(argv))
    return args.func(args)


def ingest_args(*extra: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ingest.register(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(["ingest", "--quiet", *extra])


# ---- timestamps and formats -------------------------------------------------------------------------

def test_timestamps_in_seconds_milliseconds_and_iso_agree() -> None:
    ms = T0 + 5 * HOUR_MS
    assert parse_timestamp(ms) == ms
    assert parse_timestamp(str(ms)) == ms
    assert parse_timestamp(str(ms // 1000)) == ms
    assert parse_timestamp(f"{ms // 1000}.0") == ms
    assert parse_timestamp(iso(ms)) == ms
    assert parse_timestamp(iso(ms).replace("+00:00", "Z")) == ms
    assert parse_timestamp(iso(ms).replace("+00:00", "")) == ms  # naive = UTC
    assert parse_timestamp("2024-01-01") == int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)


def test_seconds_ms_and_iso_rows_mix_in_one_csv(tmp_path: Path) -> None:
    rows = candle_rows(3)
    path = write(tmp_path / "mixed.csv", [
        HEADER, csv_line((rows[0][0] // 1000, *rows[0][1:])), csv_line(rows[1]),
        csv_line((iso(rows[2][0]), *rows[2][1:]))])
    checked = read_candles(path, "1h")
    assert checked.bad == [] and checked.rows == rows


def test_format_comes_from_extension_unless_given(tmp_path: Path) -> None:
    assert file_format(Path("a.CSV")) == "csv" and file_format(Path("a.json")) == "json"
    assert file_format(Path("a.txt"), "json") == "json"
    with pytest.raises(InputFileError, match="--format"):
        file_format(Path("a.txt"))


# ---- candle validation --------------------------------------------------------------------------------

def test_every_bad_candle_row_is_reported_with_its_csv_line(tmp_path: Path) -> None:
    good = candle_rows(12)
    t = [r[0] for r in good]
    lines = [HEADER]
    expected_bad: list[tuple[int, str]] = []

    def add(row: Sequence[Any], reason: str | None = None) -> None:
        lines.append(csv_line(row))
        if reason:
            expected_bad.append((len(lines), reason))  # the header is line 1

    add(good[0])
    add(good[1])
    add((t[1], 500, 501, 499, 500, 1), "duplicate")
    add((t[2], 100, 99, 101, 100, 1), "inconsistent_ohlc")  # high < low
    add((t[2], 105, 103, 100, 101, 1), "inconsistent_ohlc")  # open above high
    add((t[2], 0, 103, 0, 101, 1), "non_positive_price")
    add((t[2], 100, 103, -1, 101, 1), "non_positive_price")
    add((t[2], 100, 103, 99, 101, -5), "negative_volume")
    add((t[2], "abc", 103, 99, 101, 1), "not_numeric")
    add((t[2], "nan", 103, 99, 101, 1), "not_numeric")
    add((t[2], 100, 103, 99, "", 1), "missing_field")
    lines.append(f"{t[2]},100,103,99")  # a short row
    expected_bad.append((len(lines), "missing_field"))
    add((t[2] + 60_000, 100, 103, 99, 101, 1), "off_grid")
    add(("yesterday", 100, 103, 99, 101, 1), "bad_timestamp")
    add(good[2])
    lines.append("")  # blank lines are not rows
    add(good[3])
    path = write(tmp_path / "bad.csv", lines)

    checked = read_candles(path, "1h")
    assert [(b.where, b.reason) for b in checked.bad] == expected_bad
    assert checked.rows == good[:4]
    assert checked.read == len(expected_bad) + 4
    assert "line 3" in checked.bad[0].detail  # the duplicate names the first occurrence
    assert checked.skipped_by_reason()["inconsistent_ohlc"] == 2


def test_gaps_are_reported_at_the_row_after_them_and_the_rows_kept(tmp_path: Path) -> None:
    rows = candle_rows(10)
    kept = rows[:3] + rows[6:8] + rows[9:]  # 3 missing before rows[6], 1 before rows[9]
    path = write(tmp_path / "gappy.csv", [HEADER, *map(csv_line, kept)])
    checked = read_candles(path, "1h")
    assert checked.bad == [] and checked.rows == kept
    assert [(g.where, g.missing, g.open_time) for g in checked.gaps] == [(5, 3, rows[6][0]), (7, 1, rows[9][0])]
    assert checked.missing_candles == 4


def test_rows_out_of_order_are_sorted_and_other_columns_ignored(tmp_path: Path) -> None:
    rows = candle_rows(4)
    lines = ["Volume, Close ,low,HIGH,open,timestamp,extra"] + [
        csv_line((r[5], r[4], r[3], r[2], r[1], r[0], "x")) for r in reversed(rows)]
    checked = read_candles(write(tmp_path / "shuffled.csv", lines), "1h")
    assert checked.rows == rows and checked.bad == [] and checked.gaps == []


def test_grid_follows_the_timeframe(tmp_path: Path) -> None:
    """A 4h file keeps the 4h grid (a candle off it is reported); an hourly file read as 4h stores nothing."""
    four_h = 4 * HOUR_MS
    start = T0 - T0 % four_h
    rows = [(start + i * four_h, 10, 11, 9, 10, 1) for i in range(5)] + [(start + 5 * four_h + HOUR_MS, 10, 11, 9, 10, 1)]
    checked = read_candles(write(tmp_path / "4h.csv", [HEADER, *map(csv_line, rows)]), "4h")
    assert [r[0] for r in checked.rows] == [start + i * four_h for i in range(5)]
    assert [(b.where, b.reason) for b in checked.bad] == [(7, "off_grid")]
    hourly = [(start + i * HOUR_MS, 10, 11, 9, 10, 1) for i in range(5)]
    with pytest.raises(TimeframeMismatch, match="holds 1h candles .* --timeframe says 4h: nothing stored"):
        read_candles(write(tmp_path / "1h.csv", [HEADER, *map(csv_line, hourly)]), "4h")


def test_json_array_rows_are_reported_by_index(tmp_path: Path) -> None:
    rows = [list(r) for r in candle_rows(5)]
    data = [rows[0], rows[1], [rows[1][0], 1, 2, 0.5, 1, 1], [rows[2][0], 1, 0.5, 2, 1, 1], "junk",
            [rows[3][0], 1, 2], [rows[3][0], True, 2, 0.5, 1, 1], rows[3], rows[4] + [123.0, 7]]
    path = tmp_path / "freqtrade.json"
    path.write_text(json.dumps(data))
    checked = read_candles(path, "1h")
    assert checked.location == "index"
    assert [(b.where, b.reason) for b in checked.bad] == [
        (2, "duplicate"), (3, "inconsistent_ohlc"), (4, "missing_field"), (5, "missing_field"), (6, "not_numeric")]
    assert checked.rows == [tuple(r) for r in rows[:2]] + [tuple(rows[3]), tuple(rows[4])]
    assert [(g.where, g.missing) for g in checked.gaps] == [(7, 1)]


@pytest.mark.parametrize("content, message", [
    ("timestamp,open,high,low,close\n1,2,3,4,5\n", "volume"),
    ("", "header lacks"),
])
def test_csv_without_the_needed_columns_is_a_file_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(content)
    with pytest.raises(InputFileError, match=message):
        read_candles(path, "1h")


@pytest.mark.parametrize("content", ['{"a": 1}', "[[1, 2,"])
def test_json_that_is_not_an_array_is_a_file_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(InputFileError, match="c.json"):
        read_candles(path, "1h")


def test_missing_file_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot read"):
        read_candles(tmp_path / "nope.csv", "1h")


# ---- news -----------------------------------------------------------------------------------------------

def test_news_csv_rows_validated_with_line_numbers(tmp_path: Path) -> None:
    lines = [NEWS_HEADER,
             f"{iso(T0)},btc,wire,0.5,BTC rallies",
             f"{T0 // 1000},ETH,wire,-1,\"ETH falls, sharply\"",
             f"{iso(T0)},BTC,wire,0.9,BTC rallies",  # same item as line 2 (score aside)
             f"{T0},BTC,wire,1.5,too happy",
             f"{T0},BTC,wire,high,not a number",
             f"{T0},,wire,0.1,no symbol",
             "when,BTC,wire,0.1,no time",
             f"{T0},BTC,wire,0.1,",
             f"{T0},{'X' * 40},wire,0.1,long symbol",
             f"{T0 + HOUR_MS},SOL,blog,0,SOL flat"]
    checked = read_news(write(tmp_path / "news.csv", lines))
    assert [(b.where, b.reason) for b in checked.bad] == [
        (4, "duplicate"), (5, "score_out_of_range"), (6, "not_numeric"), (7, "missing_field"),
        (8, "bad_timestamp"), (9, "missing_field"), (10, "too_long")]
    assert checked.rows == [NewsItem("BTC", T0, "wire", 0.5, "BTC rallies"),
                            NewsItem("ETH", T0, "wire", -1.0, "ETH falls, sharply"),
                            NewsItem("SOL", T0 + HOUR_MS, "blog", 0.0, "SOL flat")]


# ---- storing (SQLite) -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(StoreSettings.from_env({"SIGNAL_DB_PATH": str(tmp_path / "s.sqlite")})) as s:
        yield s


def test_import_stores_the_valid_rows_and_a_rerun_adds_none(store: Store, tmp_path: Path) -> None:
    rows = candle_rows(30)
    lines = [HEADER, *map(csv_line, rows[:20]), csv_line((rows[5][0], 1, 2, 0.5, 1, 1)),
             csv_line((rows[20][0], 1, 0.5, 2, 1, 1)), *map(csv_line, rows[22:])]
    path = write(tmp_path / "btc.csv", lines)
    valid = rows[:20] + rows[22:]

    first = candle_io.import_candles(store, path, "BTC", "1h")
    assert (first.written, first.new, len(first.checked.bad), first.exit_code) == (len(valid), len(valid), 2, 0)
    assert store.load_candles("BTC", "1h").to_rows() == valid
    again = candle_io.import_candles(store, path, "BTC", "1h")
    assert (again.written, again.new) == (len(valid), 0)
    assert store.load_candles("BTC", "1h").to_rows() == valid


def test_new_counts_only_rows_not_stored_before(store: Store) -> None:
    rows = candle_rows(10)
    assert upsert_new(store, "ETH", "1h", rows[2:6]) == 4
    changed = [(r[0], r[1], r[2] + 1, r[3], r[4], r[5]) for r in rows]
    assert upsert_new(store, "ETH", "1h", changed) == 6
    assert store.load_candles("ETH", "1h").to_rows() == changed  # existing rows are overwritten
    assert upsert_new(store, "ETH", "1h", []) == 0


def test_strict_stores_nothing_when_a_row_is_bad(store: Store, tmp_path: Path) -> None:
    rows = candle_rows(5)
    path = write(tmp_path / "s.csv", [HEADER, *map(csv_line, rows), csv_line((rows[0][0], 1, 2, 1, 1, -1))])
    result = candle_io.import_candles(store, path, "BTC", "1h", strict=True)
    assert (result.written, result.new, result.exit_code) == (0, 0, 1)
    assert len(store.load_candles("BTC", "1h")) == 0


def test_exit_code_is_one_only_when_bad_rows_and_nothing_stored(store: Store, tmp_path: Path) -> None:
    all_bad = write(tmp_path / "bad.csv", [HEADER, "1,2,3", "x,1,1,1,1,1"])
    assert candle_io.import_candles(store, all_bad, "BTC", "1h").exit_code == 1
    empty = write(tmp_path / "empty.csv", [HEADER])
    assert candle_io.import_candles(store, empty, "BTC", "1h").exit_code == 0


def test_news_import_is_idempotent(store: Store, tmp_path: Path) -> None:
    path = write(tmp_path / "n.csv", [NEWS_HEADER, f"{T0},BTC,wire,0.5,up", f"{T0},ETH,wire,-0.5,down",
                                      f"{T0},ETH,wire,2,bad"])
    first = candle_io.import_news(store, path)
    assert (first.written, first.new, len(first.checked.bad), first.exit_code) == (2, 2, 1, 0)
    assert candle_io.import_news(store, path).new == 0
    assert [(n.symbol, n.score) for n in store.load_news(0)] == [("BTC", 0.5), ("ETH", -0.5)]


# ---- the import command ---------------------------------------------------------------------------------

def test_import_candles_command(env_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = candle_rows(8)
    path = write(tmp_path / "eth.csv", [HEADER, *map(csv_line, rows[:4]), csv_line((rows[4][0], 1, 2, 1, 1, -1)),
                                        *map(csv_line, rows[6:])])
    assert run_cli(["import", "candles", str(path), "--symbol", "eth"]) == 0
    out, err = capsys.readouterr()
    assert "rows read 7: stored 6 (new 6), skipped 1" in out
    assert "line 6: negative volume" in err and "line 7: gap, 2 candles missing" in err
    assert env_store.load_candles("ETH", "1h").to_rows() == rows[:4] + rows[6:]

    assert run_cli(["import", "candles", str(path), "--symbol", "ETH", "--show", "0"]) == 0
    assert "stored 6 (new 0)" in capsys.readouterr().out
    assert len(env_store.load_candles("ETH", "1h")) == 6

    assert run_cli(["import", "candles", str(path), "--symbol", "SOL", "--strict"]) == 1
    assert "nothing stored" in capsys.readouterr().err
    assert len(env_store.load_candles("SOL", "1h")) == 0


def test_import_command_errors_are_one_line_exit_2(env_store: Store, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["import", "candles", str(tmp_path / "missing.csv"), "--symbol", "BTC"]) == 2
    assert "cannot read" in capsys.readouterr().err
    odd = write(tmp_path / "c.txt", [HEADER])
    assert run_cli(["import", "candles", str(odd), "--symbol", "BTC"]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert run_cli(["import", "candles", str(odd), "--symbol", "BTC", "--format", "csv"]) == 0
    assert run_cli(["import", "candles", str(odd), "--symbol", "BTC", "--format", "csv", "--timeframe", "1x"]) == 2
    assert "unsupported timeframe" in capsys.readouterr().err


def test_import_news_command(env_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(tmp_path / "news.csv", [NEWS_HEADER, f"{T0},BTC,wire,0.25,calm", f"{T0},BTC,wire,-3,panic"])
    assert run_cli(["import", "news", str(path)]) == 0
    assert "line 3: score outside [-1, 1]" in capsys.readouterr().err
    assert [n.headline for n in env_store.load_news(0)] == ["calm"]


# ---- the exchange feed ------------------------------------------------------------------------------------

def make_feed(n: int, page_cap: int = 10_000, limit: int = 25,
              **feed_options: Any) -> tuple[FakeExchange, FakeClock, exchange_mod.CandleFeed]:
    clock = FakeClock()
    exchange = FakeExchange(candle_rows(n), clock, page_cap=page_cap)
    feed = exchange_mod.CandleFeed(exchange, "1h", limit=limit, sleep=clock.sleep, clock=clock, **feed_options)
    return exchange, clock, feed


def test_feed_paginates_honours_since_and_drops_the_incomplete_candle() -> None:
    exchange, clock, feed = make_feed(120)
    since = T0 + 10 * HOUR_MS
    pages = list(feed.pages("BTC/USDT", since))
    fetched = [tuple(r) for page in pages for r in page]
    expected = candle_rows(120)[10:119]  # the 120th candle is still in progress
    assert fetched == expected
    n_pages = -(-len(expected) // 25)
    assert len(pages) == n_pages and all(len(p) <= 25 for p in pages)
    assert [c[2] for c in exchange.calls] == [since + i * 25 * HOUR_MS for i in range(n_pages)]
    assert all(c[3] == 25 for c in exchange.calls)
    call_times = [c[0] for c in exchange.calls]
    assert all(b - a >= exchange.rateLimit / 1000 for a, b in zip(call_times, call_times[1:]))


def test_feed_follows_an_exchange_that_returns_less_than_the_limit() -> None:
    exchange, _, feed = make_feed(60, page_cap=7, limit=1000)
    fetched = [tuple(r) for page in feed.pages("BTC/USDT", T0) for r in page]
    assert fetched == candle_rows(60)[:59]
    assert len(exchange.calls) == 9  # 59 complete candles, 7 a page


def test_network_errors_are_retried_with_backoff() -> None:
    exchange, clock, feed = make_feed(30, max_retries=3, backoff_s=2.0)
    exchange.failures = [ccxt.RequestTimeout("slow"), ccxt.ExchangeNotAvailable("maintenance")]
    fetched = [tuple(r) for page in feed.pages("BTC/USDT", T0) for r in page]
    assert fetched == candle_rows(30)[:29]
    assert clock.sleeps[:2] == [2.0, 4.0]
    assert len(exchange.calls) == 4  # two failures, then two pages


def test_too_many_network_errors_fail_cleanly() -> None:
    exchange, _, feed = make_feed(30, max_retries=2)
    exchange.failures = [ccxt.NetworkError("down")] * 5
    with pytest.raises(exchange_mod.IngestError, match="BTC/USDT 1h: NetworkError after 3 tries: down"):
        list(feed.pages("BTC/USDT", T0))
    assert len(exchange.calls) == 3


def test_exchange_errors_are_not_retried() -> None:
    exchange, clock, feed = make_feed(30)
    with pytest.raises(exchange_mod.IngestError, match="DOGE/USDT"):
        list(feed.pages("DOGE/USDT", T0))
    assert len(exchange.calls) == 1 and clock.sleeps == []


# ---- the ingest command --------------------------------------------------------------------------------

def test_ingest_stores_each_symbol_and_a_rerun_adds_nothing(env_store: Store,
                                                            capsys: pytest.CaptureFixture) -> None:
    clock = FakeClock()
    exchange = FakeExchange(candle_rows(80), clock)
    args = ingest_args("--symbols", "BTC,eth", "--since", str(T0), "--limit", "30")
    assert ingest.run_ingest(args, exchange, sleep=clock.sleep, clock=clock) == 0
    out = capsys.readouterr().out
    assert "BTC (BTC/USDT) from" in out and "fetched 79, stored new 79, bad rows skipped 0" in out
    for symbol in ("BTC", "ETH"):
        assert env_store.load_candles(symbol, "1h").to_rows() == candle_rows(79)

    assert ingest.run_ingest(args, exchange, sleep=clock.sleep, clock=clock) == 0  # same --since again
    assert capsys.readouterr().out.count("fetched 79, stored new 0,") == 2
    assert len(env_store.load_candles("BTC", "1h")) == 79

    calls = len(exchange.calls)
    resume = ingest_args("--symbols", "BTC")  # no --since: after the newest stored candle
    assert ingest.run_ingest(resume, exchange, sleep=clock.sleep, clock=clock) == 0
    assert "fetched 0, stored new 0" in capsys.readouterr().out
    assert len(exchange.calls) == calls  # nothing complete to ask for


def test_ingest_resumes_after_the_stored_candles_or_starts_days_back(env_store: Store) -> None:
    clock = FakeClock()
    exchange = FakeExchange(candle_rows(24 * 5), clock)
    env_store.upsert_candles("BTC", "1h", candle_rows(100)[:50])
    assert ingest.run_ingest(ingest_args("--symbols", "BTC,ETH", "--days", "2"), exchange,
                             sleep=clock.sleep, clock=clock) == 0
    btc_since = [c[2] for c in exchange.calls if c[1] == "BTC/USDT"][0]
    eth_since = [c[2] for c in exchange.calls if c[1] == "ETH/USDT"][0]
    assert btc_since == T0 + 50 * HOUR_MS
    now = exchange.now_ms
    assert eth_since == (now - 2 * 24 * HOUR_MS) - (now - 2 * 24 * HOUR_MS) % HOUR_MS
    assert len(env_store.load_candles("BTC", "1h")) == 24 * 5 - 1


def test_ingest_reports_bad_exchange_rows_and_skips_them(env_store: Store, capsys: pytest.CaptureFixture) -> None:
    clock = FakeClock()
    series = candle_rows(10)
    series[3] = (series[3][0], 5.0, 4.0, 6.0, 5.0, 1.0)  # high < low
    exchange = FakeExchange(series, clock)
    assert ingest.run_ingest(ingest_args("--symbols", "BTC", "--since", str(T0)), exchange,
                             sleep=clock.sleep, clock=clock) == 0
    captured = capsys.readouterr()
    assert "fetched 9, stored new 8, bad rows skipped 1" in captured.out
    assert "index 3: high < low" in captured.err
    assert series[3][0] not in env_store.load_candles("BTC", "1h").open_time.tolist()


def test_ingest_failures_exit_2_and_other_symbols_still_ingest(env_store: Store,
                                                                capsys: pytest.CaptureFixture) -> None:
    clock = FakeClock()
    exchange = FakeExchange(candle_rows(10), clock)
    args = ingest_args("--symbols", "DOGE,BTC", "--since", str(T0), "--max-retries", "1")
    assert ingest.run_ingest(args, exchange, sleep=clock.sleep, clock=clock) == 2
    err = capsys.readouterr().err
    assert "DOGE: DOGE/USDT 1h: BadSymbol: fakex does not have market symbol DOGE/USDT" in err and "Traceback" not in err
    assert len(env_store.load_candles("BTC", "1h")) == 9

    exchange.failures = [ccxt.RequestTimeout("t")] * 2
    assert ingest.run_ingest(ingest_args("--symbols", "ETH", "--since", str(T0), "--max-retries", "1"),
                             exchange, sleep=clock.sleep, clock=clock) == 2
    assert "ETH: ETH/USDT 1h: RequestTimeout after 2 tries: t" in capsys.readouterr().err


def test_ingest_command_rejects_unknown_exchange_and_bad_options(env_store: Store,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["ingest", "--exchange", "no_such_exchange", "--symbols", "BTC"]) == 2
    assert "unknown exchange 'no_such_exchange'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli(["ingest", "--symbols", "BTC/USDT"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        run_cli(["ingest", "--symbols", "BTC", "--since", "last tuesday"])


def test_show_limits_the_listing_of_bad_rows(env_store: Store, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = candle_rows(3)
    path = write(tmp_path / "b.csv", [HEADER, csv_line(rows[0]), *[csv_line((rows[0][0], 1, 2, 1, 1, -1))] * 3])
    # one distinct time: the file cannot say its timeframe, so it is given
    assert run_cli(["import", "candles", str(path), "--symbol", "BTC", "--timeframe", "1h", "--show", "1"]) == 0
    err = capsys.readouterr().err
    assert "line 3: negative volume" in err and "line 4" not in err and "... and 2 more bad rows" in err


def test_importing_over_the_synthetic_sample_warns(env_store: Store, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    from serve_app.data.sample import seed_store

    seed_store(env_store, ["BTC"], n=24)
    path = write(tmp_path / "btc.csv", [HEADER, *map(csv_line, candle_rows(3))])
    assert run_cli(["import", "candles", str(path), "--symbol", "BTC"]) == 0
    assert "holds the SYNTHETIC sample for BTC" in capsys.readouterr().err
    assert run_cli(["import", "candles", str(path), "--symbol", "ETH"]) == 0  # a symbol the sample lacks
    assert "SYNTHETIC" not in capsys.readouterr().err
