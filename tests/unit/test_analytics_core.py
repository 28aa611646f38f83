"""The signal journal (nothing acknowledged is lost), outcome scoring and the performance summary."""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from serve_app.core.analytics import SignalJournal, score_signals, summarize
from serve_app.store.base import Candles, StoreUnavailable

H = 3_600_000


class FakeStore:
    """insert_signals as the real stores do it: idempotent on signal_id; can be switched off."""

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.down = False
        self.calls = 0

    def insert(self, batch):
        self.calls += 1
        if self.down:
            raise StoreUnavailable("down")
        for r in batch:
            self.rows.setdefault(r["signal_id"], r)
        return len(batch)


def test_journal_keeps_records_until_the_store_takes_them(tmp_path):
    j = SignalJournal(tmp_path / "spill", "a")
    assert j.append([{"signal_id": str(i), "reasons": "[\"é\"]"} for i in range(5)]) == 5
    assert j.pending == 5
    store = FakeStore()
    store.down = True
    with pytest.raises(StoreUnavailable):
        j.replay(store.insert, batch=2)
    assert j.pending == 5 and store.rows == {}                  # nothing forgotten before it is written
    j.append([{"signal_id": "5"}])                              # appends go on while the store is down
    store.down = False
    assert j.replay(store.insert, batch=2) == 6
    assert sorted(store.rows) == [str(i) for i in range(6)] and store.rows["0"]["reasons"] == "[\"é\"]"
    assert j.pending == 0 and j.replay(store.insert) == 0
    j.close()
    assert list((tmp_path / "spill").iterdir()) == []           # consumed


def test_a_live_writers_journal_is_left_alone_a_dead_ones_is_replayed(tmp_path):
    live, other = SignalJournal(tmp_path, "live"), SignalJournal(tmp_path, "other")
    live.append([{"signal_id": "L"}])
    store = FakeStore()
    assert other.replay(store.insert) == 0 and store.rows == {}  # `live` still holds its lock
    # a writer killed with records journaled: a process that appends, prints, and dies without closing
    code = ("import os, sys; from serve_app.core.analytics import SignalJournal; "
            f"j = SignalJournal({str(tmp_path)!r}, 'dead'); j.append([{{'signal_id': 'D1'}}, {{'signal_id': 'D2'}}]); "
            "print('acknowledged', flush=True); os.kill(os.getpid(), 9)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "acknowledged" and run.returncode == -9
    assert other.replay(store.insert) == 2 and sorted(store.rows) == ["D1", "D2"]
    live.close()                                                 # closed with records: the file stays
    assert other.replay(store.insert) == 1 and sorted(store.rows) == ["D1", "D2", "L"]
    assert list(tmp_path.glob("signals-*.jsonl")) == []


def test_a_torn_last_line_is_skipped(tmp_path):
    (tmp_path / "signals-default-gone-0.jsonl").write_text('{"signal_id": "ok"}\n{"signal_id": "to')
    j, store = SignalJournal(tmp_path, "x"), FakeStore()
    assert j.replay(store.insert) == 1 and list(store.rows) == ["ok"] and j.skipped == 1


def test_appends_do_not_wait_for_a_slow_store(tmp_path):
    """replay seals the file being appended to: record() keeps journaling while the store write hangs."""
    j = SignalJournal(tmp_path, "w")
    j.append([{"signal_id": "1"}])
    entered, release, written = threading.Event(), threading.Event(), []

    def slow(batch):
        entered.set()
        assert release.wait(30)
        written.extend(r["signal_id"] for r in batch)

    t = threading.Thread(target=j.replay, args=(slow,))
    t.start()
    assert entered.wait(30)
    j.append([{"signal_id": "2"}])          # would block for as long as `slow` if the file were shared
    assert j.pending == 2
    release.set()
    t.join(30)
    assert written == ["1"] and j.pending == 1
    assert j.replay(lambda b: written.extend(r["signal_id"] for r in b)) == 1 and written == ["1", "2"]


def _candles():
    t = np.arange(10, dtype=np.int64) * H
    c = np.array([100, 101, 102, 103, 104, 103, 102, 101, 100, 99], dtype=float)
    return Candles("SOL", "1h", t, c, c + 1, c - 1, c, np.ones(10))


def test_score_signals():
    sigs = [
        {"signal_id": "a", "symbol": "SOL", "action": "BUY", "price": 100.0, "generated_at_ms": 0},
        {"signal_id": "b", "symbol": "SOL", "action": "SELL", "price": 104.0, "generated_at_ms": 4 * H},
        {"signal_id": "c", "symbol": "SOL", "action": "BUY", "price": 104.0, "generated_at_ms": 4 * H},
        {"signal_id": "d", "symbol": "SOL", "action": "BUY", "price": 100.0, "generated_at_ms": 8 * H},  # too recent
        {"signal_id": "e", "symbol": "XRP", "action": "BUY", "price": 1.0, "generated_at_ms": 0},  # no candles
    ]
    out = {o["signal_id"]: o for o in score_signals(sigs, {"SOL": _candles()}, 4 * H, now_ms=10 * H)}
    assert set(out) == {"a", "b", "c"}
    assert out["a"]["exit_price"] == 104.0 and out["a"]["hit"] is True
    assert out["b"]["hit"] is True and out["c"]["hit"] is False
    assert out["a"]["realized_return"] == pytest.approx(np.log(1.04))


def test_score_signals_waits_for_the_exit_candle_to_close():
    """Signal b's exit candle opens at 8 H; at now = 8.5 H it is still in progress: not scored yet."""
    sigs = [{"signal_id": "a", "symbol": "SOL", "action": "BUY", "price": 100.0, "generated_at_ms": 0},
            {"signal_id": "b", "symbol": "SOL", "action": "SELL", "price": 104.0, "generated_at_ms": 4 * H}]
    early = score_signals(sigs, {"SOL": _candles()}, 4 * H, now_ms=8 * H + H // 2, candle_ms=H)
    assert [o["signal_id"] for o in early] == ["a"]
    later = score_signals(sigs, {"SOL": _candles()}, 4 * H, now_ms=9 * H, candle_ms=H)
    assert [o["signal_id"] for o in later] == ["a", "b"]


def test_summarize_groups():
    rows = [
        {"symbol": "SOL", "action": "BUY", "confidence": 0.72, "realized_return": 0.02, "hit": True},
        {"symbol": "SOL", "action": "SELL", "confidence": 0.55, "realized_return": 0.01, "hit": False},
        {"symbol": "BTC", "action": "HOLD", "confidence": 0.5, "realized_return": None, "hit": None},
    ]
    s = summarize(rows)
    assert s["overall"]["signals"] == 3 and s["overall"]["scored"] == 2
    assert s["overall"]["hit_rate"] == 0.5
    assert s["overall"]["avg_return"] == pytest.approx((0.02 - 0.01) / 2)
    assert s["by_symbol"]["SOL"]["scored"] == 2 and s["by_symbol"]["BTC"]["hit_rate"] is None
    assert set(s["by_confidence"]) == {"0.7-0.8", "0.5-0.6"}


def test_journals_for_another_store_are_not_replayed(tmp_path):
    writer = SignalJournal(tmp_path, "w", scope="storeA")
    writer.append([{"signal_id": "A"}])
    writer.close()                                         # gone, with a record journaled for store A
    other = SignalJournal(tmp_path, "v", scope="storeB")
    store = FakeStore()
    assert other.replay(store.insert) == 0 and store.rows == {}
    assert not other.orphans() and len(list(tmp_path.glob("signals-storeA-*.jsonl"))) == 1
