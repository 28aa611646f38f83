"""Analytics deployment: persist every signal (write-behind, never lost), score past signals."""
from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from serve_app.core.analytics import WriteBehindBuffer, score_pending, summarize
from serve_app.settings import spill_dir as default_spill_dir
from serve_app.deployments.base import StageBase
from serve_app.store import StoreError, open_store
from serve_app.core.timeutil import timeframe_ms

log = logging.getLogger("ray.serve")


@serve.deployment
class Analytics(StageBase):
    stage = "analytics"

    def __init__(self, *, timeframe: str, flush_interval_s: float, outcome_horizon_candles: int,
                 spill_dir: str | None):
        self._init_stage()
        self.timeframe = timeframe
        self.horizon_candles = outcome_horizon_candles
        self.horizon_ms = outcome_horizon_candles * timeframe_ms(timeframe)
        spill = Path(spill_dir) if spill_dir else default_spill_dir()
        self.buffer = WriteBehindBuffer(spill / f"signals-{uuid.uuid4().hex[:12]}.jsonl")
        self.store = None  # opened lazily so the replica starts while the database is down
        self.store_error: str | None = None
        self._store_lock = threading.Lock()
        replayed = self.buffer.replay()
        if replayed:
            log.info("analytics: replaying %d journaled signals", replayed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(flush_interval_s,), daemon=True)
        self._thread.start()

    def _get_store(self):
        if self.store is None:
            self.store = open_store()
        return self.store

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.flush()

    def flush(self) -> int:
        with self._store_lock:
            t0 = time.perf_counter()
            try:
                n = self.buffer.flush(lambda batch: self._get_store().insert_signals(batch))
                if n:
                    self.record_query("insert_signals", time.perf_counter() - t0)
                    self.metrics.inc("signalgen_signals_persisted_total", n)
                self.store_error = None
            except StoreError as e:
                self.store_error = f"{type(e).__name__}: {e}"
                self.record_query("insert_signals", time.perf_counter() - t0, failed=True)
                n = 0
            self.metrics.set("signalgen_write_buffer_size", len(self.buffer))
            return n

    async def record(self, records: list[dict]) -> int:
        """Accept `signals` rows (core.records.Signal.row); returns the buffer size."""
        self.buffer.add(records)
        self.metrics.set("signalgen_write_buffer_size", len(self.buffer))
        return len(self.buffer)

    def performance(self, since_ms: int | None = None) -> dict[str, Any]:
        """Score signals whose horizon has passed, then summarise realised performance."""
        self.flush()
        now_ms = int(time.time() * 1000)
        with self._store_lock:
            store = self._get_store()
            score_pending(store, self.timeframe, self.horizon_candles, now_ms)
            rows = store.load_performance_rows(since_ms)
        report = summarize(rows)
        report["horizon_ms"] = self.horizon_ms
        report["pending_writes"] = len(self.buffer)
        return report

    def health(self) -> dict[str, Any]:
        reasons = [f"store unreachable, {len(self.buffer)} signals buffered: {self.store_error}"] if self.store_error else []
        return {"ok": not reasons, "reasons": reasons, "store_reachable": self.store_error is None,
                "pending_writes": len(self.buffer), "written": self.buffer.written}

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("analytics: flush thread is not running")

    def __del__(self) -> None:
        """Graceful shutdown: flush what is buffered; journal to disk what the store cannot take."""
        if not hasattr(self, "_stop"):
            return
        self._stop.set()
        self.flush()
        spilled = self.buffer.spill()
        if spilled:
            log.warning("analytics: store unavailable at shutdown, journaled %d signals to %s",
                        spilled, self.buffer.spill_path)
