"""Analytics core: the write-behind signal buffer (nothing accepted is lost) and performance scoring.

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

from serve_app.store.base import Candles, StoreError


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
                  now_ms: int) -> list[dict[str, Any]]:
    """Outcome of each past signal: the close of the first candle opening at or after
    generated_at + horizon, against the signal's price. A BUY hits when the price rose, a SELL when it
    fell; a HOLD hits when the price moved less than 0.5% either way."""
    out = []
    for s in signals:
        c = candles.get(s["symbol"])
        target = int(s["generated_at_ms"]) + horizon_ms
        if c is None or len(c) == 0 or target > now_ms:
            continue
        i = int(np.searchsorted(c.open_time, target, side="left"))
        if i >= len(c):
            continue
        entry, exit_ = float(s["price"]), float(c.close[i])
        ret = math.log(exit_ / entry)
        if s["action"] == "BUY":
            hit = ret > 0
        elif s["action"] == "SELL":
            hit = ret < 0
        else:
            hit = abs(ret) < 0.005
        out.append({"signal_id": s["signal_id"], "horizon_candles": None, "entry_price": entry,
                    "exit_price": exit_, "realized_return": ret, "hit": bool(hit), "evaluated_at_ms": now_ms})
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Hit rate and average directional return overall, by symbol, by action and by confidence bucket.

    The directional return is the log return a position in the signal's direction would have made
    (negated for SELL, zero exposure for HOLD is reported separately)."""

    def agg(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
        scored = [r for r in group if r.get("realized_return") is not None]
        directional = [_directional(r) for r in scored if r["action"] != "HOLD"]
        return {
            "signals": len(group),
            "scored": len(scored),
            "hit_rate": float(np.mean([bool(r["hit"]) for r in scored])) if scored else None,
            "avg_return": float(np.mean(directional)) if directional else None,
        }

    by_symbol: dict[str, list] = defaultdict(list)
    by_action: dict[str, list] = defaultdict(list)
    by_bucket: dict[str, list] = defaultdict(list)
    for r in rows:
        by_symbol[r["symbol"]].append(r)
        by_action[r["action"]].append(r)
        lo = min(int(float(r["confidence"]) * 10), 9) / 10
        by_bucket[f"{lo:.1f}-{lo + 0.1:.1f}"].append(r)
    return {
        "overall": agg(rows),
        "by_symbol": {k: agg(v) for k, v in sorted(by_symbol.items())},
        "by_action": {k: agg(v) for k, v in sorted(by_action.items())},
        "by_confidence": {k: agg(v) for k, v in sorted(by_bucket.items())},
    }


def _directional(r: dict[str, Any]) -> float:
    ret = float(r["realized_return"])
    return -ret if r["action"] == "SELL" else ret
