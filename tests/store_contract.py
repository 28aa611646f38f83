"""The store contract: assertions every backend must satisfy, written once.

A backend's test module subclasses `StoreContract` and provides the fixtures (tests/unit/test_store_sqlite.py,
tests/integration/test_store_mysql.py):
  store          an empty, migrated store (market data source binance/USDT)
  same_database  (exchange, quote) -> another migrated store on `store`'s database, for that source
  new_database   (exchange, quote) -> an unmigrated store on a database of its own, empty (one database per
                 test: every call opens the same one)
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from serve_app.store import OUTCOME_COLUMNS, SIGNAL_COLUMNS, NewsItem, Store
from serve_app.core.timeutil import HOUR_MS
from serve_app.data.sample import (
    SAMPLE_SOURCE, SAMPLE_SYMBOLS, holds_sample_data, sample_candles, sample_is_stale, seed_store,
)
from serve_app.store.schema import LATEST_VERSION, MIGRATIONS, SCHEMA_MIGRATIONS, SOURCE_KEY

T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS  # an hour boundary
NASTY = ["'; DROP TABLE signals; --", 'a "quoted" \'mixed\' value', "back\\slash \\' \\\" \\n end",
         "unicode: héllo wörld — 日本語 🚀🌕", "percent %s %d %% and ? marks", "NUL-free\ttab\nnewline"]


def make_signal(signal_id: str, generated_at_ms: int, symbol: str = "BTC", **overrides: Any) -> dict[str, Any]:
    """A complete signal record keyed by SIGNAL_COLUMNS, JSON columns as text (like signal_record())."""
    record: dict[str, Any] = {
        "signal_id": signal_id, "symbol": symbol, "timeframe": "1h", "price": 50000.0, "action": "BUY",
        "confidence": 0.61, "prob_down": 0.19, "prob_flat": 0.2, "prob_up": 0.61,
        "position_size": 0.02, "position_notional": 1000.0, "fraction_of_equity": 0.01,
        "approved": True, "stop_loss": 49000.0, "take_profit": 52000.0,
        "reasons": json.dumps(["momentum up", "sentiment positive"]),
        "sentiment": 0.3, "momentum": 0.01, "regime": "bull",
        "market_context": json.dumps({"regime": "bull", "btc_momentum": 0.01}),
        "model_version": "xgb-test-1", "generated_at": "2023-11-14T22:00:00+00:00",
        "generated_at_ms": generated_at_ms, "payload": json.dumps({"symbol": symbol, "action": "BUY"}),
    }
    record.update(overrides)
    assert set(record) == set(SIGNAL_COLUMNS)
    return record


def make_outcome(signal_id: str, realized_return: float, hit: bool) -> dict[str, Any]:
    row = {"signal_id": signal_id, "horizon_candles": 4, "entry_price": 100.0,
           "exit_price": 100.0 * (1 + realized_return), "realized_return": realized_return, "hit": hit,
           "evaluated_at_ms": T0 + 10 * HOUR_MS}
    assert set(row) == set(OUTCOME_COLUMNS)
    return row


def candle_rows(n: int, start: int = T0, base: float = 100.0) -> list[tuple]:
    return [(start + i * HOUR_MS, base + i, base + i + 2, base + i - 1, base + i + 1, 10.0 + i) for i in range(n)]


@contextmanager
def store_opener(open_one: Callable[[str, str], Store]) -> Iterator[Callable[[str, str], Store]]:
    """`open_one` as the contract's `same_database`/`new_database` fixture: every store it opened is closed
    at the end."""
    opened: list[Store] = []

    def open_(exchange: str, quote: str) -> Store:
        opened.append(open_one(exchange, quote))
        return opened[-1]

    try:
        yield open_
    finally:
        for store in opened:
            store.close()


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def create_version_1(store: Store) -> None:
    """The schema as it was before candles and news carried their source: migration 1 only."""
    for stmt in store.dialect.create_table(SCHEMA_MIGRATIONS):  # type: ignore[attr-defined]
        store._q(stmt, mode="execute")  # type: ignore[attr-defined]
    for stmt, params in MIGRATIONS[0].statements(store.dialect, store.table_columns, store.source):  # type: ignore
        store._q(stmt, params, "execute")  # type: ignore[attr-defined]
    store._q("INSERT INTO schema_migrations (version, description, applied_at_ms) VALUES (?, ?, ?)",  # type: ignore
             (1, MIGRATIONS[0].description, T0), "execute")


class StoreContract:
    """Backend-independent tests; needs the fixtures named in the module docstring."""

    # ---- schema ----------------------------------------------------------------------------------
    def test_migrate_twice_is_a_noop(self, store: Store) -> None:
        assert store.applied_versions() == list(range(1, LATEST_VERSION + 1))
        store.upsert_candles("BTC", "1h", candle_rows(3))
        store.migrate()
        store.migrate()
        assert store.applied_versions() == list(range(1, LATEST_VERSION + 1))
        assert len(store.load_candles("BTC", "1h")) == 3  # data untouched

    def test_ping(self, store: Store) -> None:
        store.ping()

    def test_a_database_at_version_1_migrates_in_place(self, new_database) -> None:
        old = new_database("kraken", "EUR")  # the source the existing rows are given
        create_version_1(old)
        assert old.applied_versions() == [1] and not set(SOURCE_KEY) & old.table_columns("candles")
        rows = candle_rows(6)
        old._q("INSERT INTO candles (symbol, timeframe, open_time, open, high, low, close, volume) "
               "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [("BTC", "1h", *r) for r in rows], "executemany")
        old._q("INSERT INTO news_sentiment (symbol, published_at, source, score, headline, headline_hash) "
               "VALUES (?, ?, ?, ?, ?, ?)", [("BTC", T0, "feed", 0.5, "BTC up", sha256_hex("BTC up")),
                                             ("ETH", T0 + 1, "feed", -0.5, "ETH down", sha256_hex("ETH down"))],
               "executemany")

        old.migrate()
        assert old.applied_versions() == list(range(1, LATEST_VERSION + 1))
        assert set(SOURCE_KEY) <= old.table_columns("candles")
        assert set(SOURCE_KEY) <= old.table_columns("news_sentiment")
        assert old.sources() == [("kraken", "EUR", 6)]
        assert old.load_candles("BTC", "1h").to_rows() == rows
        assert [(n.symbol, n.headline) for n in old.load_news(0)] == [("BTC", "BTC up"), ("ETH", "ETH down")]
        assert old.insert_news([NewsItem("BTC", T0, "feed", 0.5, "BTC up")]) == 0  # still the same item

        other = new_database("binance", "USDT")  # the migrated rows are kraken/EUR's, not anybody's
        other.migrate()
        assert len(other.load_candles("BTC", "1h")) == 0 and other.load_news(0) == []
        assert other.upsert_candles("BTC", "1h", rows[:2]) == 2  # the same keys under another source
        old.migrate()
        assert old.applied_versions() == list(range(1, LATEST_VERSION + 1))
        assert old.sources() == [("binance", "USDT", 2), ("kraken", "EUR", 6)]
        assert old.load_candles("BTC", "1h").to_rows() == rows

    # ---- market data sources -----------------------------------------------------------------------
    def test_two_sources_in_one_database_never_mix(self, store: Store, same_database) -> None:
        assert store.source == ("binance", "USDT")
        kraken = same_database("kraken", "EUR")
        ours, theirs = candle_rows(5), candle_rows(3, base=40.0)
        store.upsert_candles("BTC", "1h", ours)
        kraken.upsert_candles("BTC", "1h", theirs)  # the same symbol, timeframe and open times
        kraken.upsert_candles("ETH", "4h", candle_rows(2))
        assert store.load_candles("BTC", "1h").to_rows() == ours
        assert kraken.load_candles("BTC", "1h").to_rows() == theirs
        assert store.load_candles("BTC", "1h", limit=1).to_rows() == ours[-1:]
        assert (store.list_symbols("1h"), store.list_symbols("4h"), kraken.list_symbols("4h")) == (["BTC"], [], ["ETH"])
        assert [(s.symbol, s.timeframe, s.candles) for s in store.candle_series()] == [("BTC", "1h", 5)]
        assert (store.list_timeframes(), kraken.list_timeframes()) == (["1h"], ["1h", "4h"])
        assert store.sources() == kraken.sources() == [("binance", "USDT", 5), ("kraken", "EUR", 5)]

        item = NewsItem("BTC", T0, "feed", 0.5, "the same headline")
        assert store.insert_news([item]) == 1 and kraken.insert_news([item]) == 1  # once per source
        assert kraken.insert_news([NewsItem("ETH", T0, "feed", -0.5, "kraken only")]) == 1
        assert store.load_news(0) == [item] and len(kraken.load_news(0)) == 2
        assert kraken.delete_news("feed", ["BTC"]) == 1 and store.load_news(0) == [item]
        assert kraken.delete_candles("BTC", "1h") == 3 and store.load_candles("BTC", "1h").to_rows() == ours

    # ---- candles ---------------------------------------------------------------------------------
    def test_candles_upsert_and_load(self, store: Store) -> None:
        rows = candle_rows(10)
        assert store.upsert_candles("BTC", "1h", reversed(rows)) == 10  # any input order
        candles = store.load_candles("BTC", "1h")
        assert candles.open_time.tolist() == [r[0] for r in rows]  # ascending
        assert candles.open_time.dtype == np.int64
        assert candles.close.tolist() == [r[4] for r in rows]
        assert candles.volume.tolist() == [r[5] for r in rows]

    def test_load_candles_limit_keeps_newest_in_ascending_order(self, store: Store) -> None:
        rows = candle_rows(10)
        store.upsert_candles("BTC", "1h", rows)
        assert store.load_candles("BTC", "1h", limit=3).open_time.tolist() == [r[0] for r in rows[-3:]]
        assert len(store.load_candles("BTC", "1h", limit=100)) == 10

    def test_load_candles_time_window_is_inclusive(self, store: Store) -> None:
        rows = candle_rows(10)
        store.upsert_candles("BTC", "1h", rows)
        window = store.load_candles("BTC", "1h", since_ms=rows[2][0], until_ms=rows[5][0])
        assert window.open_time.tolist() == [r[0] for r in rows[2:6]]
        assert store.load_candles("BTC", "1h", since_ms=rows[2][0], limit=2).open_time.tolist() == \
            [rows[8][0], rows[9][0]]

    def test_candle_upsert_updates_on_conflict(self, store: Store) -> None:
        store.upsert_candles("BTC", "1h", candle_rows(5))
        t = T0 + 2 * HOUR_MS
        assert store.upsert_candles("BTC", "1h", [(t, 1.0, 2.0, 0.5, 1.5, 99.0)]) == 1
        candles = store.load_candles("BTC", "1h")
        assert len(candles) == 5
        assert (candles.open[2], candles.high[2], candles.low[2], candles.close[2], candles.volume[2]) == \
            (1.0, 2.0, 0.5, 1.5, 99.0)

    def test_candles_are_keyed_by_symbol_and_timeframe(self, store: Store) -> None:
        store.upsert_candles("BTC", "1h", candle_rows(3))
        store.upsert_candles("ETH", "1h", candle_rows(2, base=3000.0))
        store.upsert_candles("BTC", "4h", candle_rows(1))
        store.upsert_candles("btc", "1h", candle_rows(1))  # case-sensitive on both backends
        assert store.list_symbols("1h") == ["BTC", "ETH", "btc"]
        assert store.list_symbols("4h") == ["BTC"]
        assert len(store.load_candles("BTC", "1h")) == 3
        assert len(store.load_candles("SOL", "1h")) == 0

    def test_candles_accept_numpy_rows(self, store: Store) -> None:
        c = sample_candles("SOL", n=24, end_ms=T0)
        arr = np.column_stack([c.open_time, c.open, c.high, c.low, c.close, c.volume])
        assert store.upsert_candles("SOL", "1h", arr) == 24
        loaded = store.load_candles("SOL", "1h")
        assert loaded.open_time.tolist() == c.open_time.tolist()
        assert loaded.close.tolist() == c.close.tolist()  # doubles round-trip exactly

    def test_delete_candles_outside_a_window(self, store: Store) -> None:
        rows = candle_rows(10)
        store.upsert_candles("BTC", "1h", rows)
        store.upsert_candles("ETH", "1h", rows)
        assert store.delete_candles("BTC", "1h", before_ms=rows[2][0], after_ms=rows[7][0]) == 4
        assert store.load_candles("BTC", "1h").open_time.tolist() == [r[0] for r in rows[2:8]]
        assert store.delete_candles("BTC", "1h") == 6
        assert len(store.load_candles("ETH", "1h")) == 10

    # ---- news ------------------------------------------------------------------------------------
    def test_news_insert_and_load(self, store: Store) -> None:
        items = [NewsItem("BTC", T0 + 2, "feed", 0.5, "BTC up"), NewsItem("ETH", T0 + 1, "feed", -0.25, "ETH down"),
                 NewsItem("BTC", T0 - 1, "feed", 0.0, "old")]
        assert store.insert_news(items) == 3
        assert store.insert_news(items) == 0  # re-seeding does not duplicate
        assert [n.headline for n in store.load_news(T0)] == ["ETH down", "BTC up"]  # ascending, since inclusive
        assert store.load_news(T0, symbols=["BTC"]) == [items[0]]
        assert store.load_news(T0, symbols=[]) == []
        assert len(store.load_news(0, symbols=["BTC", "ETH"])) == 3

    def test_news_same_time_different_headline_is_a_new_item(self, store: Store) -> None:
        a, b = NewsItem("BTC", T0, "feed", 0.1, "one"), NewsItem("BTC", T0, "feed", 0.2, "two")
        assert store.insert_news([a, b]) == 2
        assert store.insert_news([NewsItem("BTC", T0, "other", 0.1, "one")]) == 1

    def test_delete_news_by_source(self, store: Store) -> None:
        store.insert_news([NewsItem("BTC", T0, SAMPLE_SOURCE, 0.1, "x"), NewsItem("ETH", T0, SAMPLE_SOURCE, 0.1, "x"),
                           NewsItem("BTC", T0, "real-feed", 0.1, "x")])
        assert store.delete_news(SAMPLE_SOURCE, ["BTC"]) == 1
        assert store.delete_news(SAMPLE_SOURCE) == 1
        assert [n.source for n in store.load_news(0)] == ["real-feed"]

    # ---- signals ---------------------------------------------------------------------------------
    def test_insert_signals_is_idempotent(self, store: Store) -> None:
        record = make_signal("sig-1", T0)
        assert store.insert_signals([record]) == 1
        assert store.insert_signals([record]) == 0
        assert store.insert_signals([record, make_signal("sig-2", T0 + 1)]) == 1
        assert store.insert_signals([]) == 0
        assert store.count_signals() == 2

    def test_signal_round_trip(self, store: Store) -> None:
        record = make_signal("sig-1", T0, stop_loss=None, take_profit=None, approved=False)
        store.insert_signals([record])
        (loaded,) = store.load_signals()
        assert loaded == record
        assert loaded["approved"] is False

    def test_signal_values_from_numpy_and_objects(self, store: Store) -> None:
        record = make_signal("sig-np", np.int64(T0), price=np.float64(101.5), confidence=np.float32(0.5),
                             approved=np.bool_(True), momentum=float("nan"),
                             reasons=["a", "b"], market_context={"x": np.float64(1.5)})
        assert store.insert_signals([record]) == 1
        (loaded,) = store.load_signals()
        assert (loaded["price"], loaded["confidence"], loaded["generated_at_ms"]) == (101.5, 0.5, T0)
        assert loaded["approved"] is True and loaded["momentum"] is None
        assert json.loads(loaded["reasons"]) == ["a", "b"]
        assert json.loads(loaded["market_context"]) == {"x": 1.5}

    def test_load_signals_filters_and_limit(self, store: Store) -> None:
        store.insert_signals([make_signal(f"s{i}", T0 + i, symbol="BTC" if i % 2 else "ETH") for i in range(6)])
        assert [s["signal_id"] for s in store.load_signals()] == [f"s{i}" for i in range(6)]
        assert [s["signal_id"] for s in store.load_signals(symbol="BTC")] == ["s1", "s3", "s5"]
        assert [s["signal_id"] for s in store.load_signals(since_ms=T0 + 4)] == ["s4", "s5"]
        assert [s["signal_id"] for s in store.load_signals(limit=2)] == ["s4", "s5"]
        assert [s["signal_id"] for s in store.load_signals(symbol="ETH", limit=2)] == ["s2", "s4"]

    def test_injection_looking_strings_are_stored_verbatim(self, store: Store) -> None:
        for i, text in enumerate(NASTY):
            symbol = text[:32]
            store.upsert_candles(symbol, "1h", candle_rows(1))
            store.insert_news([NewsItem(symbol, T0 + i, text[:64], 0.1, text)])
            store.insert_signals([make_signal(f"nasty-{i}", T0 + i, symbol=symbol, reasons=json.dumps([text]),
                                              payload=text)])
        assert store.count_signals() == len(NASTY)  # the table is still there
        assert store.list_symbols("1h") == sorted(t[:32] for t in NASTY)
        assert [n.headline for n in store.load_news(0)] == NASTY
        assert [n.source for n in store.load_news(0)] == [t[:64] for t in NASTY]
        for i, signal in enumerate(store.load_signals()):
            assert signal["symbol"] == NASTY[i][:32]
            assert json.loads(signal["reasons"]) == [NASTY[i]]
            assert signal["payload"] == NASTY[i]
            assert store.load_signals(symbol=NASTY[i][:32])[0]["signal_id"] == f"nasty-{i}"

    def test_signal_without_id_is_rejected(self, store: Store) -> None:
        with pytest.raises(ValueError):
            store.insert_signals([make_signal("", T0)])
        assert store.count_signals() == 0

    # ---- outcomes --------------------------------------------------------------------------------
    def test_outcomes_and_performance(self, store: Store) -> None:
        store.insert_signals([make_signal(f"s{i}", T0 + i * HOUR_MS, confidence=0.5 + i / 10,
                                          approved=i != 1) for i in range(4)])
        assert [s["signal_id"] for s in store.signals_without_outcome(T0 + 3 * HOUR_MS)] == ["s0", "s1", "s2"]
        assert [s["signal_id"] for s in store.signals_without_outcome(T0 + 3 * HOUR_MS, limit=1)] == ["s0"]

        outcomes = [make_outcome("s0", 0.02, True), make_outcome("s1", -0.01, False)]
        assert store.insert_outcomes(outcomes) == 2
        assert store.insert_outcomes(outcomes) == 0  # idempotent on signal_id
        assert [s["signal_id"] for s in store.signals_without_outcome(T0 + 10 * HOUR_MS)] == ["s2", "s3"]

        rows = store.load_performance_rows()  # every signal, outcome columns None until scored
        assert [r["signal_id"] for r in rows] == ["s0", "s1", "s2", "s3"]
        first = rows[0]
        assert (first["symbol"], first["action"], first["approved"], first["hit"]) == ("BTC", "BUY", True, True)
        assert first["realized_return"] == pytest.approx(0.02) and first["confidence"] == pytest.approx(0.5)
        assert rows[1]["approved"] is False and rows[1]["hit"] is False
        assert rows[2]["realized_return"] is None and rows[2]["hit"] is None and rows[2]["approved"] is True
        assert [r["signal_id"] for r in store.load_performance_rows(since_ms=T0 + 1)] == ["s1", "s2", "s3"]

    # ---- sample data -----------------------------------------------------------------------------
    def test_seed_store_is_idempotent(self, store: Store) -> None:
        symbols = ["BTC", "ETH", "DOGE"]
        first = seed_store(store, symbols, n=72, end_ms=T0)
        assert first["rows"] == {"candles": 3 * 72, "news_sentiment": first["rows"]["news_sentiment"]}
        assert first["rows"]["news_sentiment"] > 0 and first["end_ms"] == T0
        again = seed_store(store, symbols, n=72, end_ms=T0 + 59_000)  # same hour
        assert again["rows"]["news_sentiment"] == 0
        news = store.load_news(0)
        assert len(news) == first["rows"]["news_sentiment"] and {n.source for n in news} == {SAMPLE_SOURCE}
        assert store.list_symbols("1h") == sorted(symbols)
        for symbol in symbols:
            loaded = store.load_candles(symbol, "1h")
            expected = sample_candles(symbol, n=72, end_ms=T0)
            assert loaded.open_time.tolist() == expected.open_time.tolist()
            assert loaded.close.tolist() == expected.close.tolist()
            assert loaded.close[-1] == SAMPLE_SYMBOLS[symbol]
        assert holds_sample_data(store)

    def test_reseed_with_replace_reanchors_cleanly(self, store: Store) -> None:
        seed_store(store, ["BTC"], n=48, end_ms=T0)
        news_before = len(store.load_news(0))
        summary = seed_store(store, ["BTC"], n=48, end_ms=T0 + 5 * HOUR_MS, replace=True)
        assert summary["deleted"]["candles"] == 5
        candles = store.load_candles("BTC", "1h")
        assert len(candles) == 48 and candles.open_time[-1] == T0 + 5 * HOUR_MS
        assert candles.close[-1] == SAMPLE_SYMBOLS["BTC"]
        assert len(store.load_news(0)) == news_before

    def test_sample_is_stale(self, store: Store) -> None:
        assert sample_is_stale(store)  # no candles at all
        seed_store(store, ["ETH"], n=24, end_ms=T0)
        assert sample_is_stale(store, now_ms=T0)  # no BTC
        seed_store(store, ["BTC"], n=24, end_ms=T0)
        assert not sample_is_stale(store, now_ms=T0 + HOUR_MS)
        assert not sample_is_stale(store, now_ms=T0 + 2 * HOUR_MS)
        assert sample_is_stale(store, now_ms=T0 + 2 * HOUR_MS + 1)
        assert sample_is_stale(store, timeframe="4h", now_ms=T0)
        assert sample_is_stale(store)  # T0 is long past on the real clock
        seed_store(store, ["BTC"], n=24)  # default anchor: the current bar
        assert not sample_is_stale(store)
