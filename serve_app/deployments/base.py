"""What every deployment shares: metrics, timing, a health report. No business logic here."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator

from serve_app.deployments.metrics import StageMetrics
from serve_app.settings import StoreSettings
from serve_app.store import Store, open_store

log = logging.getLogger("ray.serve")


def source_settings(market_source: dict[str, str], stage: str,
                    env: dict[str, str] | None = None) -> StoreSettings:
    """The replica's StoreSettings (from its environment) for the serve config's `market_source`. The config
    wins over SIGNAL_EXCHANGE/SIGNAL_QUOTE; when they disagree, the replica says so in its log."""
    env = os.environ if env is None else env
    settings = StoreSettings.from_env({k: v for k, v in env.items() if k not in ("SIGNAL_EXCHANGE", "SIGNAL_QUOTE")})
    settings = settings.with_source(market_source["exchange"], market_source["quote"])
    said = {k: env[k] for k in ("SIGNAL_EXCHANGE", "SIGNAL_QUOTE") if env.get(k)}
    if said and (said.get("SIGNAL_EXCHANGE", settings.exchange), said.get("SIGNAL_QUOTE", settings.quote)) != \
            (settings.exchange, settings.quote):
        log.warning("%s: the serve config's market_source is %s but the environment says %s: serving %s "
                    "(the config wins)", stage, settings.source, ", ".join(f"{k}={v}" for k, v in said.items()),
                    settings.source)
    else:
        log.info("%s: market data source %s (the serve config's market_source)", stage, settings.source)
    return settings


def source_store_factory(market_source: dict[str, str], stage: str) -> Callable[[], Store]:
    """Opens the store of the configured market source (for CandleCache and the like)."""
    return partial(open_store, source_settings(market_source, stage))


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
