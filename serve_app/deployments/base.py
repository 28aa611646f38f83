"""What every deployment shares: metrics, timing, a health report. No business logic here."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

from serve_app.deployments.metrics import StageMetrics

log = logging.getLogger("ray.serve")


class StageBase:
    stage: str = "stage"

    def _init_stage(self, metric_names: list[str] | None = None) -> None:
        level = os.environ.get("LOG_LEVEL", "").upper()
        if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            log.setLevel(level)  # this replica's Serve logger (the ConfigMap's LOG_LEVEL on Kubernetes)
        self.metrics = StageMetrics(metric_names)
        self.started_at = time.time()

    @contextmanager
    def timed(self, stage: str | None = None) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except Exception as e:
            self.metrics.inc("signalgen_stage_failures_total", stage=stage or self.stage, reason=type(e).__name__)
            raise
        finally:
            self.metrics.observe("signalgen_stage_latency_seconds", time.perf_counter() - t0,
                                 stage=stage or self.stage)

    def record_query(self, op: str, seconds: float, failed: bool = False) -> None:
        """Database latency and errors, for every stage that talks to the store."""
        self.metrics.observe("signalgen_db_query_seconds", seconds, op=op)
        if failed:
            self.metrics.inc("signalgen_db_errors_total", op=op)

    def metrics_families(self) -> list[Any]:
        return self.metrics.families()

    def health(self) -> dict[str, Any]:
        """{"ok": bool, "reasons": [...], ...details}; overridden by stages with resources."""
        return {"ok": True, "reasons": []}
