"""Analytics core: the journal of signals the store could not take yet (`SignalJournal`: nothing answered is
lost), outcome scoring (`score_signals`, `score_pending`) and the performance summary (`summarize`, also what
`signalgen report` prints).

No ray import. The Analytics deployment makes every signal durable before the ingress answers it: stored
in the database, or appended to its SignalJournal when the database cannot take it; a background thread
replays journals (its own, and those of replicas that are gone) into the store.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from serve_app.store.base import Candles, Store
from serve_app.core.timeutil import timeframe_ms, utc_day


class SignalJournal:
    """Signals the store could not take, made durable on disk until it can: JSON lines in `directory`.

    Each writer (one Analytics replica) appends to its own files, `signals-<scope>-<writer>-<n>.jsonl`, where
    `scope` names the store the records are for (replicas of apps on other stores share a directory safely),
    and holds an
    exclusive `flock` on each while it lives. `append` returns only once the lines are written and fsync'ed,
    so what it acknowledged survives the process being killed. `replay(write)` seals the file being appended
    to (later appends start a new one, so they never wait for the store) and hands every journaled record to
    `write` (the store's insert, idempotent on signal_id) before forgetting it: this writer's sealed files,
    and every file of a writer that is gone (its lock is free; a live writer's files are left alone). A torn
    last line (a write cut short by a kill, so never acknowledged) is skipped. On Kubernetes the directory
    must be a volume that outlives the pod (see docs/kubernetes.md)."""

    def __init__(self, directory: str | os.PathLike, writer_id: str, scope: str = "default"):
        self.directory = Path(directory)
        self.writer_id = writer_id
        self.prefix = f"signals-{scope}-"
        self._seq = 0
        self._fd: int | None = None
        self._appended = 0                                   # records in the open file
        self._sealed: list[tuple[Path, int, int]] = []       # (path, locked fd, records) awaiting the store
        self._lock = threading.Lock()                        # appends and sealing
        self._replaying = threading.Lock()                   # one replay at a time
        self.skipped = 0                                     # unreadable (torn) lines dropped on replay

    @property
    def path(self) -> Path:
        return self.directory / f"{self.prefix}{self.writer_id}-{self._seq}.jsonl"

    @property
    def pending(self) -> int:
        """Records this writer has journaled and not yet handed to the store."""
        return self._appended + sum(n for _, _, n in self._sealed)

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        """Write the records durably (write + fsync); raises OSError when the disk refuses."""
        data = "".join(json.dumps(r, default=_json_default) + "\n" for r in records).encode()
        with self._lock:
            if self._fd is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # ours alone: replay() elsewhere skips it
                self._fd = fd
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
            self._appended += len(records)
        return len(records)

    def _read(self, fd: int) -> list[dict[str, Any]]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        records = []
        for line in b"".join(chunks).decode("utf-8", "replace").splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    self.skipped += 1
        return records

    @staticmethod
    def _write_all(write: Callable[[Sequence[dict[str, Any]]], Any], records: list[dict[str, Any]],
                   batch: int) -> None:
        for k in range(0, len(records), batch):
            write(records[k:k + batch])

    def replay(self, write: Callable[[Sequence[dict[str, Any]]], Any], batch: int = 500) -> int:
        """Move every journaled record this writer may take into the store; returns how many. Stops at the
        first failing write (its error propagates): nothing is forgotten before it is written."""
        with self._replaying:
            with self._lock:
                if self._fd is not None and self._appended:
                    self._sealed.append((self.path, self._fd, self._appended))
                    self._fd, self._appended = None, 0
                    self._seq += 1
            moved = 0
            while self._sealed:
                path, fd, n = self._sealed[0]
                self._write_all(write, self._read(fd), batch)
                path.unlink(missing_ok=True)
                os.close(fd)
                self._sealed.pop(0)
                moved += n
            mine = f"{self.prefix}{self.writer_id}-"
            for path in sorted(self.directory.glob(f"{self.prefix}*.jsonl")) if self.directory.is_dir() else []:
                if path.name.startswith(mine):
                    continue
                try:
                    fd = os.open(path, os.O_RDWR)
                except FileNotFoundError:
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue                      # a live writer's journal
                    records = self._read(fd)
                    self._write_all(write, records, batch)
                    path.unlink(missing_ok=True)
                    moved += len(records)
                finally:
                    os.close(fd)
            return moved

    def orphans(self) -> bool:
        """Whether a journal of another writer lies in the directory (live or gone)."""
        mine = f"{self.prefix}{self.writer_id}-"
        return self.directory.is_dir() and any(not p.name.startswith(mine)
                                               for p in self.directory.glob(f"{self.prefix}*.jsonl"))

    def close(self) -> None:
        """Release the files; a journal that still holds records stays for the next writer to replay."""
        with self._lock:
            handles = [(self.path, self._fd, self._appended)] if self._fd is not None else []
            for path, fd, n in handles + self._sealed:
                if n == 0:
                    path.unlink(missing_ok=True)
                os.close(fd)
            self._fd, self._appended, self._sealed = None, 0, []


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
