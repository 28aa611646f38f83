"""Analytics core: the write-behind signal buffer (nothing accepted is lost), outcome scoring
(`score_signals`, `score_pending`) and the performance summary (`summarize`, also what
`signalgen report` prints).

No ray import. The Analytics deployment owns one WriteBehindBuffer and calls `flush()` from a background
task; on shutdown it flushes, and whatever the store cannot take is spilled to a JSONL journal that the
next replica replays on start.
"""
from __future__ import annotations

import json
import math
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from serve_app.store.base import Candles, Store, StoreError
from serve_app.core.timeutil import timeframe_ms, utc_day


class WriteBehindBuffer:
    """Accepts signal records at memory speed; `flush(write)` moves them to the store in batches.

    A failed write keeps the records (in order) for the next flush. `spill()` journals what is left to
    disk, and `replay()` loads a journal back (the store's insert is idempotent on signal_id, so a record
    that was both written and journaled is stored once)."""

    def __init__(self, spill_path: Path | None = None, max_batch: int = 500):
        self._items: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.spill_path = spill_path
        self.max_batch = max_batch
        self.written = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, records: Sequence[dict[str, Any]]) -> None:
        with self._lock:
            self._items.extend(records)

    def flush(self, write: Callable[[Sequence[dict[str, Any]]], int]) -> int:
        """Write everything buffered, batch by batch; stops at the first failure (re-raised as StoreError)."""
        total = 0
        while True:
            with self._lock:
                batch = self._items[: self.max_batch]
            if not batch:
                return total
            try:
                write(batch)
            except StoreError:
                self.failures += 1
                raise
            with self._lock:
                del self._items[: len(batch)]
            total += len(batch)
            self.written += len(batch)

    def spill(self) -> int:
        """Append what is still buffered to the journal file; returns how many records were journaled."""
        if not self.spill_path:
            return 0
        with self._lock:
            items, self._items = self._items, []
        if not items:
            return 0
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spill_path, "a", encoding="utf-8") as fh:
            for rec in items:
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return len(items)

    def replay(self) -> int:
        """Load every journal in the spill directory (left by this or an earlier replica) into the buffer."""
        if not self.spill_path:
            return 0
        n = 0
        for journal in sorted(self.spill_path.parent.glob("*.jsonl")):
            claimed = journal.with_suffix(f".replay-{os.getpid()}")
            try:
                os.replace(journal, claimed)  # atomic: two replicas never replay the same file
            except FileNotFoundError:
                continue
            records = [json.loads(line) for line in claimed.read_text(encoding="utf-8").splitlines() if line.strip()]
            self.add(records)
            claimed.unlink()
            n += len(records)
        return n


def score_signals(signals: Sequence[dict[str, Any]], candles: dict[str, Candles], horizon_ms: int,
                  now_ms: int, horizon_candles: int | None = None,
                  candle_ms: int | None = None) -> list[dict[str, Any]]:
    """Outcome of each past signal: the close of the first candle opening at or after
    generated_at + horizon, against the signal's price. A BUY hits when the price rose, a SELL when it
    fell; a HOLD hits when the price moved less than 0.5% either way. `horizon_candles` is recorded
    with each outcome. With `candle_ms` (the candle length), a candle that has not closed by `now_ms`
    is not used: its last price is not its close, so the signal waits for a later run."""
    out = []
    for s in signals:
        c = candles.get(s["symbol"])
        target = int(s["generated_at_ms"]) + horizon_ms
        if c is None or len(c) == 0 or target > now_ms:
            continue
        i = int(np.searchsorted(c.open_time, target, side="left"))
        if i >= len(c) or (candle_ms is not None and int(c.open_time[i]) + candle_ms > now_ms):
            continue
        entry, exit_ = float(s["price"]), float(c.close[i])
        ret = math.log(exit_ / entry)
        if s["action"] == "BUY":
            hit = ret > 0
        elif s["action"] == "SELL":
            hit = ret < 0
        else:
            hit = abs(ret) < 0.005
        out.append({"signal_id": s["signal_id"], "horizon_candles": horizon_candles, "entry_price": entry,
                    "exit_price": exit_, "realized_return": ret, "hit": bool(hit), "evaluated_at_ms": now_ms})
    return out


def score_pending(store: Store, timeframe: str, horizon_candles: int, now_ms: int, page: int = 1000) -> int:
    """Score every stored signal without an outcome whose horizon (`horizon_candles` candles of
    `timeframe`) has passed, against the store's candles, and store the outcomes; returns how many were
    written. A signal whose exit candle is not in the store yet stays unscored for a later run."""
    horizon_ms = horizon_candles * timeframe_ms(timeframe)
    written = 0
    while True:
        pending = store.signals_without_outcome(now_ms - horizon_ms, limit=page)
        if not pending:
            return written
        first = min(int(s["generated_at_ms"]) for s in pending)
        candles = {sym: store.load_candles(sym, timeframe, since_ms=first) for sym in {s["symbol"] for s in pending}}
        outcomes = score_signals(pending, candles, horizon_ms, now_ms, horizon_candles, timeframe_ms(timeframe))
        if outcomes:
            store.insert_outcomes(outcomes)
            written += len(outcomes)
        # a full page may hide more; a page where nothing could be scored would come back unchanged
        if len(pending) < page or not outcomes:
            return written


def confidence_bucket(confidence: float) -> tuple[float, float]:
    """The tenth [lower, upper) that holds a confidence; 1.0 belongs to the last one, [0.9, 1.0]."""
    i = min(math.floor(round(float(confidence) * 10, 9)), 9)
    return i / 10, (i + 1) / 10


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Realised performance overall, by symbol, by action, by confidence bucket and by UTC day.

    Every group reports: signals, scored (those with an outcome), hits, hit_rate, mean_confidence (over
    the scored signals, so that it compares with hit_rate), calibration_gap (hit_rate - mean_confidence:
    negative means over-confident), avg_return and total_return (mean and sum of the directional log
    return over the scored BUY/SELL signals: the log return a position in the signal's direction made,
    negated for SELL; HOLD has no exposure) and directional (how many signals those two are over).
    A confidence bucket also has its bounds, lower and upper (keys "0.6-0.7": confidences in [0.6, 0.7)).
    `calibration_error` is the mean |calibration_gap| of the buckets, weighted by their scored signals."""
    by_symbol: dict[str, list] = defaultdict(list)
    by_action: dict[str, list] = defaultdict(list)
    by_bucket: dict[tuple[float, float], list] = defaultdict(list)
    by_day: dict[str, list] = defaultdict(list)
    for r in rows:
        by_symbol[r["symbol"]].append(r)
        by_action[r["action"]].append(r)
        by_bucket[confidence_bucket(r["confidence"])].append(r)
        if r.get("generated_at_ms") is not None:
            by_day[utc_day(int(r["generated_at_ms"]))].append(r)
    buckets = {f"{lo:.1f}-{hi:.1f}": {"lower": lo, "upper": hi, **_agg(v)} for (lo, hi), v in sorted(by_bucket.items())}
    gaps = [(b["scored"], abs(b["calibration_gap"])) for b in buckets.values() if b["scored"]]
    times = [int(r["generated_at_ms"]) for r in rows if r.get("generated_at_ms") is not None]
    return {
        "overall": _agg(rows),
        "by_symbol": {k: _agg(v) for k, v in sorted(by_symbol.items())},
        "by_action": {k: _agg(v) for k, v in sorted(by_action.items())},
        "by_confidence": buckets,
        "by_day": {k: _agg(v) for k, v in sorted(by_day.items())},
        "calibration_error": sum(n * g for n, g in gaps) / sum(n for n, _ in gaps) if gaps else None,
        "first_signal_ms": min(times) if times else None,
        "last_signal_ms": max(times) if times else None,
    }


def _agg(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in group if r.get("realized_return") is not None]
    directional = [_directional(r) for r in scored if r["action"] != "HOLD"]
    hits = sum(bool(r["hit"]) for r in scored)
    hit_rate = hits / len(scored) if scored else None
    mean_conf = float(np.mean([float(r["confidence"]) for r in scored])) if scored else None
    return {
        "signals": len(group),
        "scored": len(scored),
        "hits": hits,
        "hit_rate": hit_rate,
        "mean_confidence": mean_conf,
        "calibration_gap": hit_rate - mean_conf if scored else None,
        "avg_return": float(np.mean(directional)) if directional else None,
        "total_return": float(np.sum(directional)),
        "directional": len(directional),
    }


def _directional(r: dict[str, Any]) -> float:
    ret = float(r["realized_return"])
    return -ret if r["action"] == "SELL" else ret
