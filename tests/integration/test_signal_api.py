"""The whole graph on a real local Ray, over real HTTP: the README's examples, the contract, bad input,
health, metrics, persistence, and a live model swap through user_config."""
from __future__ import annotations

import concurrent.futures as cf
from datetime import datetime

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.api.schemas import SignalResponse
from tests.integration.conftest import STORE_DOWN_APP
from serve_app.cluster import deploy
from tests.polling import wait_for
from tests.ray_helpers import serve_config_for_test

pytestmark = pytest.mark.integration

STAGES = {"Orchestrator", "FeatureEngine", "MarketContext", "MLEngine", "Portfolio", "RiskManager", "Analytics"}


def check_contract(body: dict, symbol: str, price: float) -> SignalResponse:
    sig = SignalResponse.model_validate(body)
    assert sig.symbol == symbol and sig.price == price
    assert set(sig.probabilities) == {"down", "flat", "up"}
    assert abs(sum(sig.probabilities.values()) - 1) < 1e-4
    assert sig.confidence == pytest.approx(max(sig.probabilities.values()), abs=1e-6)
    assert -1 <= sig.market_context.sentiment <= 1
    datetime.fromisoformat(sig.generated_at.replace("Z", "+00:00"))
    if sig.action.value == "HOLD":
        assert sig.risk.stop_loss is None and sig.risk.take_profit is None
    elif sig.action.value == "BUY":
        assert sig.risk.stop_loss < price < sig.risk.take_profit
    else:
        assert sig.risk.take_profit < price < sig.risk.stop_loss
    if sig.action.value == "HOLD" or not sig.risk.approved:
        assert sig.position.size == 0 and sig.position.notional == 0
    else:
        assert sig.position.size > 0 and sig.position.notional == pytest.approx(sig.position.size * price, rel=1e-6)
    assert sig.risk.reasons or sig.risk.approved
    return sig


def test_all_seven_deployments_running(signal_app):
    app = signal_app["status"]["applications"]["signals"]
    assert app["status"] == "RUNNING"
    assert set(app["deployments"]) == STAGES
    assert all(d["status"] == "HEALTHY" for d in app["deployments"].values())


@pytest.mark.parametrize("symbol, price", [("SOL", 100.0), ("BTC", 50000.0)])
def test_seed_examples_produce_signals(signal_app, symbol, price):
    r = signal_app["client"].post("/generate_signal", json={"symbol": symbol, "price": price})
    assert r.status_code == 200, r.text
    sig = check_contract(r.json(), symbol, price)
    assert sig.model_version.startswith("v")
    assert sig.data["last_close"] == pytest.approx(price, rel=0.05)  # the sample ends near the README's prices


def test_optional_fields_and_symbol_normalisation(signal_app):
    body = {"symbol": "eth/usdt", "price": 3000.0, "timestamp": datetime.utcnow().isoformat() + "Z",
            "equity": 25000}
    r = signal_app["client"].post("/generate_signal", json=body)
    assert r.status_code == 200, r.text
    sig = check_contract(r.json(), "ETH", 3000.0)
    assert sig.data["equity"] == 25000
    assert sig.position.notional <= 25000 * 0.2 + 1e-6


def test_concurrent_requests_are_batched_and_all_answered(signal_app):
    bodies = [{"symbol": s, "price": p} for s, p in [("SOL", 100.0), ("BTC", 50000.0), ("ETH", 3000.0)] * 10]
    with cf.ThreadPoolExecutor(10) as pool:
        rs = list(pool.map(lambda b: httpx.post(signal_app["url"] + "/generate_signal", json=b, timeout=60), bodies))
    assert [r.status_code for r in rs] == [200] * len(bodies)
    for b, r in zip(bodies, rs):
        check_contract(r.json(), b["symbol"], b["price"])
    assert len({r.json()["signal_id"] for r in rs}) == len(rs)


@pytest.mark.parametrize("body, status, needle", [
    ({"price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL"}, 422, "price"),
    ({"symbol": "SOL", "price": 0}, 422, "price"),
    ({"symbol": "SOL", "price": -1}, 422, "price"),
    ({"symbol": "SOL", "price": "cheap"}, 422, "price"),
    ({"symbol": "SOL", "price": 100.0, "leverage": 10}, 422, "leverage"),
    ({"symbol": "DROP TABLE", "price": 1.0}, 422, "symbol"),
    ({"symbol": "ZZZ", "price": 1.0}, 404, "ZZZ"),
])
def test_bad_input_gets_a_clear_4xx(signal_app, body, status, needle):
    r = signal_app["client"].post("/generate_signal", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert "Traceback" not in r.text


def test_non_json_body_is_422(signal_app):
    r = signal_app["client"].post("/generate_signal", content=b"{not json",
                                  headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "Traceback" not in r.text


def test_health_reports_every_stage(signal_app):
    r = signal_app["client"].get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    stages = body["stages"]
    assert stages["ml"]["model_loaded"] is True and stages["ml"]["model_version"].startswith("v")
    assert stages["features"]["store_reachable"] is True and stages["features"]["symbols"] >= 3
    assert max(stages["features"]["data_age_s"].values()) < 7200
    assert {"features", "market_context", "ml", "portfolio", "risk", "analytics", "orchestrator"} <= set(stages)
    # the session's model was trained on the synthetic sample: said loudly, and exported as a metric
    assert stages["ml"]["model_synthetic"] is True
    assert any("SYNTHETIC sample" in w and stages["ml"]["model_version"] in w for w in body["warnings"])
    fams = {f.name: f for f in text_string_to_metric_families(signal_app["client"].get("/metrics").text)}
    flags = {s.labels["model_version"]: s.value for s in fams["ray_signalgen_model_synthetic"].samples}
    assert flags.get(stages["ml"]["model_version"]) == 1.0, flags


def _signals_counted(client: httpx.Client) -> float:
    fams = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return sum(s.value for s in fams["ray_signalgen_signals"].samples
               if s.name.endswith("_total") and s.labels.get("symbol") == "SOL")


def test_metrics_endpoint_is_prometheus_text(signal_app):
    client = signal_app["client"]
    client.post("/generate_signal", json={"symbol": "SOL", "price": 100.0})  # the counter exists from here on
    before = _signals_counted(client)
    assert client.post("/generate_signal", json={"symbol": "SOL", "price": 100.0}).status_code == 200
    assert client.post("/generate_signal", json={"symbol": "SOL", "price": 100.0}).status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("ray_signalgen_signals", "ray_signalgen_stage_latency_seconds", "ray_signalgen_ml_batch_size",
                 "ray_signalgen_predictions", "ray_signalgen_requests"):
        assert name in fams, sorted(fams)
    assert _signals_counted(client) - before == 2   # exactly the two signals just answered (one replica's count)
    stages = {s.labels.get("stage") for s in fams["ray_signalgen_stage_latency_seconds"].samples}
    assert {"features", "market_context", "ml", "portfolio", "risk"} <= stages


def test_docs_and_openapi(signal_app):
    assert signal_app["client"].get("/docs").status_code == 200
    spec = signal_app["client"].get("/openapi.json").json()
    assert "/generate_signal" in spec["paths"] and "/health" in spec["paths"]


def test_every_signal_is_persisted(signal_app):
    from serve_app.settings import StoreSettings
    from serve_app.store import open_store

    store = open_store(StoreSettings.from_env(signal_app["env"]))
    ids = []
    for _ in range(5):
        r = signal_app["client"].post("/generate_signal", json={"symbol": "SOL", "price": 100.0})
        ids.append(r.json()["signal_id"])
        # a signal is answered only once it is stored (or journaled, which a reachable store never needs)
        assert ids[-1] in {s["signal_id"] for s in store.load_signals(symbol="SOL")}
    stored = {s["signal_id"]: s for s in store.load_signals(symbol="SOL")}
    one = stored[ids[0]]
    assert one["symbol"] == "SOL" and one["price"] == 100.0 and one["model_version"].startswith("v")
    store.close()
    perf = signal_app["client"].get("/analytics/performance")
    assert perf.status_code == 200 and perf.json()["overall"]["signals"] >= 5


def test_store_unreachable_is_503_with_a_clear_message(signal_app):
    """The /nodb copy of the app runs against a MySQL server that refuses connections: it starts, says so
    in /health, and answers signals with 503 naming the problem."""
    status = signal_app["status"]["applications"]["nodb"]
    assert status["status"] == "RUNNING"
    r = signal_app["client"].post("/nodb/generate_signal", json={"symbol": "SOL", "price": 100.0})
    assert r.status_code == 503, r.text
    assert "unreachable" in r.json()["detail"] and "127.0.0.1:1" in r.json()["detail"]
    h = signal_app["client"].get("/nodb/health")
    assert h.status_code == 503
    body = h.json()
    assert body["status"] == "unavailable" and body["stages"]["features"]["store_reachable"] is False
    assert any("features" in reason for reason in body["reasons"])
    assert signal_app["client"].post("/nodb/generate_signal", json={"symbol": "SOL"}).status_code == 422


def test_new_model_version_loads_through_user_config(signal_app):
    """Train a second model, point the ML engine's user_config at it, redeploy: no restart, new version."""
    from serve_app.training.train import train
    from serve_app.settings import StoreSettings
    from serve_app.store import open_store

    env = signal_app["env"]
    store = open_store(StoreSettings.from_env(env))
    new_dir = train(store, root=env["MODEL_DIR"], n_estimators=30, set_current=False, seed=7)
    store.close()
    old = signal_app["client"].post("/generate_signal", json={"symbol": "SOL", "price": 100.0}).json()
    assert old["model_version"] != new_dir.name
    config = serve_config_for_test(int(signal_app["url"].rsplit(":", 1)[1]), env, overrides={"refresh_interval_s": 2},
                                   extra_apps=STORE_DOWN_APP)
    ml = next(d for d in config["applications"][0]["deployments"] if d["name"] == "MLEngine")
    original = dict(ml["user_config"])
    ml["user_config"]["model_version"] = new_dir.name

    def served(version: str) -> bool:
        r = signal_app["client"].post("/generate_signal", json={"symbol": "SOL", "price": 100.0})
        assert r.status_code == 200, r.text
        return r.json()["model_version"] == version

    deploy(signal_app["dashboard"], config)
    try:
        wait_for(f"{new_dir.name} served", lambda: served(new_dir.name), 60)
    finally:  # the session's app as every other test expects it: back on the registry's CURRENT
        ml["user_config"] = original
        deploy(signal_app["dashboard"], config)
        wait_for(f"{old['model_version']} served again", lambda: served(old["model_version"]), 60)
