"""The risk rules over HTTP on a running app, with the action forced: the apps here serve a model trained on a
series that only ever rises, so every signal is a BUY and every rule can be seen blocking or capping it
(with the sample model, most signals are HOLD and a rule would have nothing to act on).

  /riskcheck  the real graph and thresholds except max_atr_pct (far below any ATR: the volatility circuit
              breaker blocks every BUY), and a request body timeout of 2 s: price sanity, stale data, the
              breaker and the 408 slow body, each against a control request without the trigger
  /exposure   the real graph with tight caps (10 % of equity per symbol, 25 % in total) and its own fresh
              exposure book: the per-symbol cap, then the total cap shrinking and finally blocking a BUY
"""
from __future__ import annotations

import socket
from datetime import datetime, timedelta
from typing import Iterator
from urllib.parse import urlparse

import pytest

from serve_app.cluster import deploy, wait_deleted
from tests.integration.conftest import STORE_DOWN_APP
from tests.market_fixtures import always_up_registry
from tests.ray_helpers import serve_config_for_test

pytestmark = pytest.mark.integration

APPS = ("riskcheck", "exposure")
EXPOSURE_RISK = {"max_symbol_fraction": 0.10, "max_total_exposure_fraction": 0.25}
EQUITY = 10_000.0


@pytest.fixture(scope="module")
def risk_apps(signal_app: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("always-up")
    version = always_up_registry(root)
    port = urlparse(signal_app["url"]).port
    env = signal_app["env"]
    common = {"MODEL_DIR": str(root / "models"), "SIGNAL_SPILL_DIR": str(root / "spill")}

    def config(with_apps: bool) -> dict:
        extra = {**STORE_DOWN_APP, **({"riskcheck": {**common, "SIGNAL_BODY_TIMEOUT_S": "2"},
                                       "exposure": common} if with_apps else {})}
        return serve_config_for_test(
            port, env, overrides={"refresh_interval_s": 2}, extra_apps=extra,
            extra_app_overrides={"riskcheck": {"risk": {**_session_risk(env, port), "max_atr_pct": 1e-6}},
                                 "exposure": {"risk": {**_session_risk(env, port), **EXPOSURE_RISK}}},
            extra_app_num_cpus={n: 0.001 for n in APPS})

    deploy(signal_app["dashboard"], config(True), timeout_s=240)
    try:
        yield {"client": signal_app["client"], "version": version, "url": signal_app["url"]}
    finally:
        deploy(signal_app["dashboard"], config(False), timeout_s=240)
        wait_deleted(signal_app["dashboard"], list(APPS), timeout_s=240)


def _session_risk(env: dict, port: int) -> dict:
    """The serve config's own risk section (the apps change one or two thresholds of it)."""
    return dict(serve_config_for_test(port, env)["applications"][0]["args"]["risk"])


def buy(ctx: dict, app: str, symbol: str, **fields) -> dict:
    last = ctx["client"].post(f"/{app}/generate_signal", json={"symbol": symbol, "price": 1.0})  # 200 or blocked
    assert last.status_code == 200, last.text
    price = last.json()["data"]["last_close"]
    r = ctx["client"].post(f"/{app}/generate_signal", json={"symbol": symbol, "price": fields.pop("price", price),
                                                            **fields})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["action"] == "BUY" and body["model_version"] == ctx["version"], body
    return body


def has(body: dict, needle: str) -> bool:
    return any(needle in reason for reason in body["risk"]["reasons"])


def test_price_sanity_blocks_a_price_far_from_the_last_close(risk_apps: dict) -> None:
    control = buy(risk_apps, "riskcheck", "SOL")
    assert not has(control, "price sanity")
    far = buy(risk_apps, "riskcheck", "SOL", price=control["data"]["last_close"] * 1.5)
    assert not far["risk"]["approved"] and far["position"]["size"] == 0
    assert has(far, "price sanity") and "from the last close" in str(far["risk"]["reasons"])


def test_stale_data_blocks_a_signal_whose_last_candle_is_too_old(risk_apps: dict) -> None:
    control = buy(risk_apps, "riskcheck", "BTC")
    assert not has(control, "stale data")
    last_open = datetime.fromisoformat(control["data"]["last_candle_open"].replace("Z", "+00:00"))
    asof = (last_open + timedelta(hours=3)).isoformat()                  # past max_data_age_s (2 h 15 min)
    late = buy(risk_apps, "riskcheck", "BTC", timestamp=asof)
    assert not late["risk"]["approved"] and late["position"]["size"] == 0
    assert has(late, "stale data: last candle opened 3 h before the signal time (limit 2.25 h)"), late["risk"]


def test_volatility_circuit_breaker_blocks_every_buy(risk_apps: dict) -> None:
    body = buy(risk_apps, "riskcheck", "ETH")
    assert not body["risk"]["approved"] and has(body, "volatility circuit breaker")
    assert body["data"]["atr_pct"] > 0
    # the same model on the exposure app (the breaker at the config's 6 %) approves the same BUY
    assert not has(buy(risk_apps, "exposure", "ETH", equity=EQUITY), "volatility circuit breaker")


def test_exposure_caps_shrink_then_block(risk_apps: dict) -> None:
    """Fresh book on /exposure (ETH may hold a position from the breaker test): per-symbol cap 10 % of equity,
    total 25 %. Two symbols take 10 % each, the third gets the 5 % left, the fourth is blocked."""
    before = buy(risk_apps, "exposure", "ETH", equity=EQUITY)["position"]["notional"]  # what ETH already holds
    open_total = before
    fills = []
    for symbol in ("BTC", "SOL", "BNB", "XRP"):
        body = buy(risk_apps, "exposure", symbol, equity=EQUITY)
        fills.append((symbol, body["position"]["notional"], body["risk"]["approved"], body["risk"]["reasons"]))
        open_total += body["position"]["notional"]
    cap, total = EXPOSURE_RISK["max_symbol_fraction"] * EQUITY, EXPOSURE_RISK["max_total_exposure_fraction"] * EQUITY
    assert before == pytest.approx(cap)
    (_, n1, ok1, r1), (_, n2, ok2, r2), (_, n3, ok3, r3), (_, n4, ok4, r4) = fills
    assert ok1 and n1 == pytest.approx(cap) and any("above per-symbol cap" in r for r in r1), fills
    assert ok2 and n2 == pytest.approx(total - 2 * cap) and any("total exposure leaves room" in r for r in r2), fills
    assert not ok3 and n3 == 0 and any("total exposure cap reached" in r for r in r3), fills
    assert not ok4 and n4 == 0 and any("total exposure cap reached" in r for r in r4), fills
    assert open_total == pytest.approx(total)


def test_a_body_that_does_not_arrive_is_408(risk_apps: dict) -> None:
    """Headers promising 60 bytes, then 10 of them and silence: the guard answers 408 once SIGNAL_BODY_TIMEOUT_S
    (2 s on /riskcheck) has passed, and the connection does not hang."""
    url = urlparse(risk_apps["url"])
    with socket.create_connection((url.hostname, url.port), timeout=30) as s:
        s.sendall(b"POST /riskcheck/generate_signal HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 60\r\n\r\n{\"symbol\":")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode()
    assert status_line.split()[1] == "408", answer[:300]
    assert b"request body not received within 2 s" in answer
