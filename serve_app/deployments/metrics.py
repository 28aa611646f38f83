"""Metric names in one place.

Each metric is recorded twice: through `ray.serve.metrics` (exported on Ray's metrics port, scraped by
Prometheus on Kubernetes, tagged by Ray with application/deployment/replica) and in a per-replica
prometheus-client registry, which `GET /metrics` merges across the stages so a user without Prometheus
sees the same names. Ray prefixes custom metric names with `ray_` on its port, so the local registry
uses that prefix too: `ray_signalgen_signals_total` is one name in both places (dashboards, alerts).
"""
from __future__ import annotations

from typing import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PCounter
from prometheus_client import Gauge as PGauge
from prometheus_client import Histogram as PHistogram
from prometheus_client.metrics_core import Metric

RAY_PREFIX = "ray_"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# name -> (kind, description, tag keys, buckets)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "signalgen_requests_total": ("counter", "HTTP requests answered by the ingress", ("route", "status"), None),
    "signalgen_signals_total": ("counter", "Signals generated", ("symbol", "action"), None),
    "signalgen_stage_failures_total": ("counter", "Failures by pipeline stage", ("stage", "reason"), None),
    "signalgen_stage_latency_seconds": ("histogram", "Time spent in a stage per batch", ("stage",),
                                        LATENCY_BUCKETS),
    "signalgen_request_latency_seconds": ("histogram", "End-to-end signal latency at the ingress", (),
                                          LATENCY_BUCKETS),
    "signalgen_pipeline_batch_size": ("histogram", "Requests grouped into one pipeline batch", (), BATCH_BUCKETS),
    "signalgen_ml_batch_size": ("histogram", "Rows per XGBoost inplace_predict call", (), BATCH_BUCKETS),
    # Ray's exporter rebuilds a histogram's _sum from bucket midpoints, so exact mean batch sizes come from
    # these counters: rows / batches (predictions_total / ml_batches_total, requests / pipeline_batches).
    "signalgen_ml_batches_total": ("counter", "XGBoost inplace_predict calls", (), None),
    "signalgen_pipeline_batches_total": ("counter", "Pipeline batches sent through the stages", (), None),
    "signalgen_predictions_total": ("counter", "Rows predicted by the ML engine", ("model_version",), None),
    "signalgen_db_query_seconds": ("histogram", "Database query latency", ("op",), LATENCY_BUCKETS),
    "signalgen_db_errors_total": ("counter", "Database errors", ("op",), None),
    "signalgen_write_buffer_size": ("gauge", "Signals journaled (the store could not take them) and not yet "
                                               "stored, per Analytics replica", (), None),
    "signalgen_signals_persisted_total": ("counter", "Signals inserted into the store (each once)", (), None),
    "signalgen_data_age_seconds": ("gauge", "Age of the newest cached candle per symbol", ("symbol",), None),
    "signalgen_model_synthetic": ("gauge", "1 while the served model was trained on the SYNTHETIC sample data "
                                  "(its signals say nothing about real markets), else 0", ("model_version",),
                                  None),
}


class StageMetrics:
    """Records to Ray's metrics and to a local prometheus-client registry at once."""

    def __init__(self, names: Iterable[str] | None = None, use_ray: bool = True):
        self.registry = CollectorRegistry()
        self._prom = {}
        self._ray = {}
        for name in (names or DEFINITIONS):
            kind, desc, tags, buckets = DEFINITIONS[name]
            exported = RAY_PREFIX + name
            if kind == "counter":
                self._prom[name] = PCounter(exported, desc, tags, registry=self.registry)
            elif kind == "gauge":
                self._prom[name] = PGauge(exported, desc, tags, registry=self.registry)
            else:
                self._prom[name] = PHistogram(exported, desc, tags, buckets=buckets, registry=self.registry)
            if use_ray:
                self._ray[name] = _ray_metric(name, kind, desc, tags, buckets)

    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        m = self._prom[name]
        (m.labels(**tags) if tags else m).inc(value)
        if name in self._ray:
            self._ray[name].inc(value, tags=tags or None)

    def observe(self, name: str, value: float, **tags: str) -> None:
        m = self._prom[name]
        (m.labels(**tags) if tags else m).observe(value)
        if name in self._ray:
            self._ray[name].observe(value, tags=tags or None)

    def set(self, name: str, value: float, **tags: str) -> None:
        m = self._prom[name]
        (m.labels(**tags) if tags else m).set(value)
        if name in self._ray:
            self._ray[name].set(value, tags=tags or None)

    def families(self) -> list[Metric]:
        return list(self.registry.collect())


def _ray_metric(name, kind, desc, tags, buckets):
    from ray.serve import metrics as serve_metrics

    if kind == "counter":
        return serve_metrics.Counter(name, description=desc, tag_keys=tags)
    if kind == "gauge":
        return serve_metrics.Gauge(name, description=desc, tag_keys=tags)
    return serve_metrics.Histogram(name, description=desc, boundaries=list(buckets), tag_keys=tags)


def merge_exposition(per_source: Sequence[tuple[str, list[Metric]]]) -> bytes:
    """Prometheus text for families gathered from several replicas; each sample gets a `deployment` label
    naming its source so two stages' series never collide."""
    from prometheus_client.exposition import generate_latest

    merged: dict[str, Metric] = {}
    for source, families in per_source:
        for fam in families:
            tgt = merged.get(fam.name)
            if tgt is None:
                tgt = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                tgt.samples.append(type(s)(s.name, {**s.labels, "deployment": source}, s.value, s.timestamp,
                                           s.exemplar))

    class _Collector:
        def collect(self):
            return list(merged.values())

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector())
    return generate_latest(reg)
