"""Hostile input against the real application on a local Ray, over real HTTP: every malformed request is a
4xx with a clear JSON message (never a 5xx, a hang or a stack trace), plus a property-based fuzz of the
request schema with hypothesis."""
from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

JSON = {"Content-Type": "application/json"}
LIMIT = 16 * 1024  # SIGNAL_MAX_BODY_BYTES' default (the fixture does not set it)


def check(r: httpx.Response, status: int | tuple[int, ...], *needles: str) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    assert "Traceback" not in r.text and 'File "' not in r.text
    for n in needles:
        assert n in r.text, (n, r.text[:500])


def post(client: httpx.Client, content: bytes | str, headers: dict | None = JSON) -> httpx.Response:
    return client.post("/generate_signal", content=content, headers=headers)


@pytest.mark.parametrize("body, status, needle", [
    ({}, 422, "symbol"),
    ({"price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL"}, 422, "price"),
    ({"symbol": "SOL", "price": 100.0, "leverage": 10}, 422, "leverage"),
    ({"symbol": "SOL", "price": 100.0, "__proto__": {"admin": True}}, 422, "__proto__"),
    ({"symbol": "SOL", "price": "cheap"}, 422, "price"),
    ({"symbol": 42, "price": 100.0}, 422, "symbol"),
    ({"symbol": None, "price": 100.0}, 422, "symbol"),
    ({"symbol": {"$ne": ""}, "price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL", "price": [100.0]}, 422, "price"),
    ({"symbol": "SOL", "price": 100.0, "timestamp": "not a time"}, 422, "timestamp"),
    ({"symbol": "SOL", "price": 100.0, "equity": "all of it"}, 422, "equity"),
    ({"symbol": "SOL", "price": 0}, 422, "price"),
    ({"symbol": "SOL", "price": -100.0}, 422, "price"),
    ({"symbol": "SOL", "price": 1e308}, 422, "price"),
    ({"symbol": "SOL", "price": 10 ** 30}, 422, "price"),
    ({"symbol": "SOL", "price": 5e-324}, 422, "price"),  # tiny but > 0: below MIN_PRICE
    ({"symbol": "SOL", "price": True}, 422, "price"),
    ({"symbol": "SOL", "price": 100.0, "equity": 0}, 422, "equity"),
    ({"symbol": "SOL", "price": 100.0, "equity": -1}, 422, "equity"),
    ({"symbol": "", "price": 100.0}, 422, "symbol"),
    ({"symbol": "   ", "price": 100.0}, 422, "symbol"),
    ({"symbol": "A" * 5000, "price": 100.0}, 422, "symbol"),
    ({"symbol": "SÖL", "price": 100.0}, 422, "symbol"),
    ({"symbol": "\u0421\u041e\u041b", "price": 100.0}, 422, "symbol"),        # Cyrillic look-alike of SOL
    ({"symbol": "\U0001f680\U0001f315", "price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL\u0000", "price": 100.0}, 422, "symbol"),
    ({"symbol": "S\u0007O\u001bL", "price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL\u202e", "price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL'; DROP TABLE signals;--", "price": 100.0}, 422, "symbol"),
    ({"symbol": "' OR '1'='1", "price": 100.0}, 422, "symbol"),
    ({"symbol": "SOL%", "price": 100.0}, 422, "symbol"),
    ({"symbol": "../../etc/passwd", "price": 100.0}, 422, "symbol"),
    ({"symbol": "ZZZZ9", "price": 100.0}, 404, "ZZZZ9"),                   # well-formed, not tracked
    ({"symbol": "UNION1SELECT", "price": 100.0}, 404, "UNION1SELECT"),
])
def test_hostile_json_bodies_are_4xx(signal_app, body, status, needle):
    check(signal_app["client"].post("/generate_signal", json=body), status, needle)


@pytest.mark.parametrize("raw, status, needle", [
    ('{"symbol": "SOL", "price": NaN}', 422, "price"),
    ('{"symbol": "SOL", "price": Infinity}', 422, "price"),
    ('{"symbol": "SOL", "price": -Infinity}', 422, "price"),
    ('{"symbol": "SOL", "price": 1e999}', 422, "price"),
    ('{"symbol": "SOL", "price": 100, "equity": NaN}', 422, "equity"),
    ('{"symbol": "SOL", "price": 1' + "0" * 5000 + "}", 422, "price"),
    ("{not json", 422, "invalid JSON"),
    ("symbol=SOL&price=100", 422, "invalid JSON"),
    ('{"symbol": "SOL", "price": 10', 422, "truncated"),
    ('{"symbol": "SO', 422, "truncated"),
    ("", 422, "empty"),
    ('[{"symbol": "SOL", "price": 100}]', 422, "JSON object"),
    ('"SOL"', 422, "JSON object"),
    ("100.0", 422, "JSON object"),
    ("null", 422, "JSON object"),
    ('{"symbol": "\\ud800", "price": 100}', 422, "surrogate"),
    ('{"symbol": "SOL", "symbol": "BTC", "price": 50000}', (200, 404), ""),   # duplicate keys: last wins
    ('{"symbol": "SOL", "price": 1, "x": ' + "[" * 100 + "]" * 100 + "}", 422, "nested"),
    ("[" * 8000 + "]" * 8000, 422, "nested"),                              # > recursion limit, < size limit
    ('{"a":' * 2000 + "1" + "}" * 2000, 422, "nested"),
])
def test_hostile_raw_bodies_are_4xx(signal_app, raw, status, needle):
    check(post(signal_app["client"], raw), status, needle)


def test_invalid_utf8_is_422(signal_app):
    check(post(signal_app["client"], b'{"symbol": "\xff\xfe", "price": 1}'), 422, "UTF-8")


def test_body_over_the_limit_is_413(signal_app):
    big = json.dumps({"symbol": "SOL", "price": 100.0, "pad": "x" * LIMIT})
    check(post(signal_app["client"], big), 413, str(LIMIT))
    check(post(signal_app["client"], "[" * 100_000 + "]" * 100_000), 413, str(LIMIT))


def test_streamed_body_over_the_limit_is_413(signal_app):
    def chunks():  # no Content-Length: the body arrives chunked and is counted as it comes
        yield b'{"symbol": "SOL", "price": 100.0, "pad": "'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'
    r = signal_app["client"].post("/generate_signal", content=chunks(), headers=JSON)
    assert "content-length" not in {k.lower() for k in r.request.headers}
    check(r, 413, str(LIMIT))


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(signal_app, method):
    r = signal_app["client"].request(method, "/generate_signal")
    check(r, 405)
    assert "POST" in r.headers.get("allow", "")


def test_post_on_a_get_route_is_405(signal_app):
    check(signal_app["client"].post("/health", json={}), 405)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml",
                                          "multipart/form-data; boundary=xyz", None])
def test_wrong_content_type_is_415(signal_app, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = post(signal_app["client"], '{"symbol": "SOL", "price": 100.0}', headers=headers)
    check(r, 415, "application/json")


def test_json_with_charset_is_accepted(signal_app):
    r = post(signal_app["client"], '{"symbol": "SOL", "price": 100.0}',
             headers={"Content-Type": "application/json; charset=utf-8"})
    check(r, 200)


def test_analytics_query_garbage_is_422(signal_app):
    check(signal_app["client"].get("/analytics/performance", params={"since": "'; DROP TABLE signals;--"}),
          422, "since")


def test_rejections_are_counted_in_requests_total(signal_app):
    """The guard's and the validator's answers never reach the endpoint, yet they are counted."""
    from prometheus_client.parser import text_string_to_metric_families

    client = signal_app["client"]

    def counted() -> dict[str, float]:
        fams = text_string_to_metric_families(client.get("/metrics").text)
        return {s.labels["status"]: s.value for f in fams if f.name == "ray_signalgen_requests"
                for s in f.samples if s.name.endswith("_total") and s.labels.get("route") == "/generate_signal"}

    before = counted()
    assert post(client, b"x" * (LIMIT + 1)).status_code == 413
    assert post(client, b'{"symbol": "SOL"}').status_code == 422
    assert post(client, b'{"symbol": "SOL"}').status_code == 422
    assert post(client, b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
    after = counted()
    # deltas, so earlier tests' rejections cannot satisfy it (one ingress replica answers /metrics: the
    # session's load never reaches the autoscaler's target of 48 ongoing requests)
    assert {s: after.get(s, 0) - before.get(s, 0) for s in ("413", "415", "422")} == {"413": 1, "415": 1, "422": 2}


def test_the_app_still_answers_after_all_that(signal_app):
    check(signal_app["client"].post("/generate_signal", json={"symbol": "SOL", "price": 100.0}), 200)
    check(signal_app["client"].get("/health"), 200)


# ------------------------------------------------------------------------------------ property-based fuzz
FIELDS = ["symbol", "price", "timestamp", "equity"]
json_leaf = (st.none() | st.booleans() | st.integers(min_value=-10 ** 20, max_value=10 ** 20)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
symbols = st.sampled_from(["SOL", "btc", "eth/usdt", "SOLUSDT", "ZZZ", "", " SOL ", "S\u00d6L", "1"]) \
    | st.text(max_size=20)
prices = (st.floats(allow_nan=True, allow_infinity=True) | st.integers(min_value=-10 ** 30, max_value=10 ** 30)
          | st.sampled_from([100.0, 50000.0, 3000.0, 0, -1, 1e-300, 1e9]))
timestamps = st.datetimes().map(lambda d: d.isoformat()) | st.sampled_from(
    ["2026-11-27T19:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00",
     "2026-13-45", "now", ""]) | st.integers() | st.floats()
field_values = {"symbol": symbols, "price": prices, "timestamp": timestamps, "equity": prices}

tracked = st.sampled_from(["SOL", "BTC", "ETH", "sol", "btc/usdt", "ETH-USD", "SOLUSDT"])
request_bodies = st.one_of(
    # near-valid: a tracked symbol, so hostile prices, times and equities go through the whole pipeline
    st.fixed_dictionaries({"symbol": tracked, "price": st.floats(min_value=1e-6, max_value=1e8) | prices},
                          optional={"timestamp": timestamps, "equity": st.floats(min_value=1e-3, max_value=1e12)
                                    | prices}),
    # well-typed-looking objects with hostile values, sometimes a field missing or an extra one added
    st.fixed_dictionaries({}, optional={k: field_values[k] | json_value for k in FIELDS})
    .flatmap(lambda d: st.dictionaries(st.text(max_size=10), json_value, max_size=2).map(lambda x: {**d, **x})
             if len(d) % 3 == 0 else st.just(d)),
    json_value,  # anything at all as the body
)


def _encode(body) -> str:
    return json.dumps(body, allow_nan=True)  # NaN/Infinity go out as raw tokens


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=request_bodies)
def test_fuzz_request_schema_never_5xx(signal_app, body):
    r = post(signal_app["client"], _encode(body))
    event(f"status {r.status_code}")  # the spread shows with --hypothesis-show-statistics
    assert r.status_code < 500, (r.status_code, _encode(body)[:300], r.text[:300])
    assert "Traceback" not in r.text
    if r.status_code == 200:  # accepted: then it was a valid request
        assert isinstance(body, dict) and isinstance(body.get("price"), (int, float))
        assert math.isfinite(body["price"]) and body["price"] > 0


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1",
                                     "", "application/merge-patch+json"]))
def test_fuzz_raw_bytes_never_5xx(signal_app, raw, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = post(signal_app["client"], raw, headers=headers)
    assert r.status_code < 500, (r.status_code, raw[:200], r.text[:300])
    assert "Traceback" not in r.text
