"""Analytics deployment: every answered signal made durable before it is answered, outcome scoring.

`record(rows)` returns only when the rows are durable: inserted into the store (idempotent on signal_id:
a row sent twice is stored once), or - when the store cannot take them - appended and fsync'ed to this
replica's journal (core/analytics.py SignalJournal, in SIGNAL_SPILL_DIR). The ingress answers a signal only
after that acknowledgement, and sends the rows again (to a replacement replica) when this one dies first.
A background thread replays journals into the store once it is reachable: this replica's own, and those of
replicas that are gone. After a store failure, record() goes straight to the journal for `store_retry_s`
instead of waiting for a connect timeout on every batch.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from serve_app.core.analytics import SignalJournal, score_pending, summarize
from serve_app.core.timeutil import timeframe_ms
from serve_app.deployments.base import StageBase, source_settings
from serve_app.settings import spill_dir as default_spill_dir
from serve_app.store import StoreError, open_store

log = logging.getLogger("ray.serve")


@serve.deployment
class Analytics(StageBase):
    stage = "analytics"

    def __init__(self, *, timeframe: str, flush_interval_s: float, outcome_horizon_candles: int,
                 spill_dir: str | None, store_retry_s: float, market_source: dict[str, str]):
        self._init_stage()
        # signals are not per source, but their outcomes are scored on the served source's candles
        self.settings = source_settings(market_source, self.stage)
        self.timeframe = timeframe
        self.horizon_candles = outcome_horizon_candles
        self.horizon_ms = outcome_horizon_candles * timeframe_ms(timeframe)
        # one journal scope per store: a replica never replays signals meant for another database
        scope = hashlib.sha256(self.settings.describe().encode()).hexdigest()[:10]
        self.journal = SignalJournal(Path(spill_dir) if spill_dir else default_spill_dir(), uuid.uuid4().hex[:12],
                                     scope=scope)
        self.store = None  # opened lazily so the replica starts while the database is down
        self.store_error: str | None = None
        self.store_failed_at = 0.0
        self.store_retry_s = store_retry_s
        self.stored = 0
        self._store_lock = threading.Lock()
        self.metrics.set("signalgen_write_buffer_size", 0)  # exported from the start (dashboards, alerts)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(flush_interval_s,), daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------- the store
    def _get_store(self):
        if self.store is None:
            self.store = open_store(self.settings)
        return self.store

    def _insert(self, rows: list[dict]) -> int:
        """Insert under the store lock, timed and counted; raises StoreError (and remembers it)."""
        t0 = time.perf_counter()
        try:
            with self._store_lock:
                new = self._get_store().insert_signals(rows)
        except StoreError as e:
            self.store_error, self.store_failed_at = f"{type(e).__name__}: {e}", time.monotonic()
            self.record_query("insert_signals", time.perf_counter() - t0, failed=True)
            raise
        self.record_query("insert_signals", time.perf_counter() - t0)
        self.store_error = None
        self.stored += new  # rows not stored before: a batch sent again after a retry counts once
        self.metrics.inc("signalgen_signals_persisted_total", new)
        return len(rows)

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            waiting = self.store_error and time.monotonic() - self.store_failed_at < self.store_retry_s
            if (self.journal.pending or self.journal.orphans()) and not waiting:
                self.replay()

    def replay(self) -> int:
        """Journaled signals into the store, when it takes them again (background thread, and before a
        performance report)."""
        try:
            moved = self.journal.replay(self._insert)
        except StoreError:
            moved = 0
        except OSError as e:  # the journal directory itself: reported by /health
            self.store_error = self.store_error or f"journal: {e}"
            moved = 0
        if moved:
            log.info("analytics: %d journaled signals stored", moved)
        self.metrics.set("signalgen_write_buffer_size", self.journal.pending)
        return moved

    # ------------------------------------------------------------------------------------- the API
    def _make_durable(self, rows: list[dict]) -> dict[str, int]:
        recently_failed = self.store_error and time.monotonic() - self.store_failed_at < self.store_retry_s
        if not recently_failed:
            try:
                return {"stored": self._insert(rows), "journaled": 0}
            except StoreError:
                pass
        self.journal.append(rows)   # OSError propagates: the ingress must not answer these signals
        self.metrics.set("signalgen_write_buffer_size", self.journal.pending)
        return {"stored": 0, "journaled": len(rows)}

    async def record(self, rows: list[dict]) -> dict[str, int]:
        """Make `signals` rows (core.records.Signal.row) durable; returns how many were stored and how many
        journaled. Raises when neither the store nor the journal took them."""
        with self.timed():
            return await asyncio.to_thread(self._make_durable, rows)

    def performance(self, since_ms: int | None = None) -> dict[str, Any]:
        """Score signals whose horizon has passed, then summarise realised performance."""
        self.replay()
        now_ms = int(time.time() * 1000)
        with self._store_lock:
            store = self._get_store()
            score_pending(store, self.timeframe, self.horizon_candles, now_ms)
            rows = store.load_performance_rows(since_ms)
        report = summarize(rows)
        report["horizon_ms"] = self.horizon_ms
        report["pending_writes"] = self.journal.pending
        return report

    def health(self) -> dict[str, Any]:
        pending = self.journal.pending
        reasons = [f"store unreachable, {pending} signals journaled: {self.store_error}"] if self.store_error else []
        return {"ok": not reasons, "reasons": reasons, "store_reachable": self.store_error is None,
                "pending_writes": pending, "written": self.stored, "journal": str(self.journal.path)}

    def check_health(self) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("analytics: journal replay thread is not running")

    def __del__(self) -> None:
        """Graceful shutdown: one last replay; a journal the store could not take stays for the next replica."""
        if not hasattr(self, "_stop"):
            return
        self._stop.set()
        self.replay()
        if self.journal.pending:
            log.warning("analytics: store unavailable at shutdown, %d signals stay journaled in %s",
                        self.journal.pending, self.journal.path)
        self.journal.close()
