"""Write-behind buffer (nothing lost), outcome scoring and the performance summary."""
from __future__ import annotations

import numpy as np
import pytest

from serve_app.core.analytics import WriteBehindBuffer, score_signals, summarize
from serve_app.store.base import Candles, StoreUnavailable

H = 3_600_000


def test_buffer_keeps_records_when_the_store_fails_then_writes_them_in_order():
    buf = WriteBehindBuffer(max_batch=2)
    buf.add([{"signal_id": str(i)} for i in range(5)])
    written: list[str] = []
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise StoreUnavailable("down")
        written.extend(r["signal_id"] for r in batch)
        return len(batch)

    with pytest.raises(StoreUnavailable):
        buf.flush(flaky)
    assert written == ["0", "1"] and len(buf) == 3 and buf.failures == 1
    assert buf.flush(flaky) == 3
    assert written == ["0", "1", "2", "3", "4"] and len(buf) == 0


def test_spill_and_replay_round_trip(tmp_path):
    a = WriteBehindBuffer(tmp_path / "spill" / "a.jsonl")
    a.add([{"signal_id": "x", "reasons": "[\"é\"]"}, {"signal_id": "y"}])
    assert a.spill() == 2 and len(a) == 0
    b = WriteBehindBuffer(tmp_path / "spill" / "b.jsonl")
    assert b.replay() == 2
    got: list = []
    b.flush(lambda batch: got.extend(batch) or len(batch))
    assert [r["signal_id"] for r in got] == ["x", "y"] and got[0]["reasons"] == "[\"é\"]"
    assert list((tmp_path / "spill").iterdir()) == []  # the journal is consumed
    assert WriteBehindBuffer(tmp_path / "spill" / "c.jsonl").replay() == 0


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
