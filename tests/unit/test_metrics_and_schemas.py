"""Metric exposition merge and the request contract's validation."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from serve_app.deployments.metrics import StageMetrics, merge_exposition
from serve_app.api.schemas import SignalRequest


def test_merged_exposition_keeps_each_stage_apart():
    a = StageMetrics(["signalgen_stage_latency_seconds", "signalgen_signals_total"], use_ray=False)
    b = StageMetrics(["signalgen_stage_latency_seconds"], use_ray=False)
    a.observe("signalgen_stage_latency_seconds", 0.003, stage="features")
    a.inc("signalgen_signals_total", symbol="SOL", action="BUY")
    b.observe("signalgen_stage_latency_seconds", 0.02, stage="ml")
    text = merge_exposition([("features", a.families()), ("ml", b.families())]).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert "ray_signalgen_stage_latency_seconds" in fams and "ray_signalgen_signals" in fams
    counts = {(s.labels["deployment"], s.labels["stage"]): s.value
              for s in fams["ray_signalgen_stage_latency_seconds"].samples if s.name.endswith("_count")}
    assert counts == {("features", "features"): 1.0, ("ml", "ml"): 1.0}
    assert text.count("# TYPE ray_signalgen_stage_latency_seconds histogram") == 1


@pytest.mark.parametrize("raw, symbol", [("sol", "SOL"), (" btc ", "BTC"), ("SOL/USDT", "SOL"), ("ethusdt", "ETH")])
def test_symbol_normalisation(raw, symbol):
    assert SignalRequest(symbol=raw, price=1.0).symbol == symbol


@pytest.mark.parametrize("body, field", [
    ({"price": 1.0}, "symbol"),
    ({"symbol": "SOL"}, "price"),
    ({"symbol": "SOL", "price": 0}, "price"),
    ({"symbol": "SOL", "price": -5}, "price"),
    ({"symbol": "SOL", "price": float("nan")}, "price"),
    ({"symbol": "SOL", "price": float("inf")}, "price"),
    ({"symbol": "SOL", "price": "abc"}, "price"),
    ({"symbol": "SO L", "price": 1.0}, "symbol"),
    ({"symbol": "'; DROP TABLE candles; --", "price": 1.0}, "symbol"),
    ({"symbol": "SOL", "price": 1.0, "extra": 1}, "extra"),
    ({"symbol": "SOL", "price": 1.0, "equity": 0}, "equity"),
    ({"symbol": "SOL", "price": 5e-324}, "price"),
    ({"symbol": "SOL", "price": True}, "price"),
    ({"symbol": "\u00df", "price": 1.0}, "symbol"),
])
def test_invalid_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as e:
        SignalRequest.model_validate(body)
    assert field in {str(part) for err in e.value.errors() for part in err["loc"]}
