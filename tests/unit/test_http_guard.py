"""serve_app.api.guard in-process: a tiny FastAPI app with the real SignalRequest model and the guards,
driven by Starlette's TestClient. Every hostile input is a 4xx with a clear message, never a 5xx."""
from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.api import guard as http_guard
from serve_app.api.guard import DEFAULT_MAX_BODY_BYTES, guard_settings, install_guards
from serve_app.api.schemas import SignalRequest

KEY = "test-key-not-a-secret-0123"
JSON = {"Content-Type": "application/json"}


def make_app(**kwargs) -> FastAPI:
    app = FastAPI()
    install_guards(app, **kwargs)

    @app.post("/generate_signal")
    async def generate_signal(req: SignalRequest) -> dict:
        return {"symbol": req.symbol, "price": req.price}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> dict:
        return {"m": 1}

    @app.get("/analytics/performance")
    async def performance() -> dict:
        return {"overall": {}}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internals /etc/passwd")

    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(api_key="", max_body_bytes=DEFAULT_MAX_BODY_BYTES),
                    raise_server_exceptions=False) as c:
        yield c


def post_raw(client, content, headers=JSON):
    return client.post("/generate_signal", content=content, headers=headers)


def assert_clean(r, status, *needles):
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text and "File \"" not in r.text
    assert r.headers["content-type"].startswith("application/json")
    for n in needles:
        assert n in r.text, (n, r.text)


def test_valid_request_passes(client):
    r = client.post("/generate_signal", json={"symbol": "sol/usdt", "price": 100.0})
    assert r.status_code == 200 and r.json() == {"symbol": "SOL", "price": 100.0}


@pytest.mark.parametrize("body, field", [
    ({"price": 100.0}, "symbol"),
    ({"symbol": "SOL"}, "price"),
    ({"symbol": "SOL", "price": 100.0, "leverage": 10}, "leverage"),
    ({"symbol": "SOL", "price": "cheap"}, "price"),
    ({"symbol": 42, "price": 100.0}, "symbol"),
    ({"symbol": ["SOL"], "price": 100.0}, "symbol"),
    ({"symbol": "SOL", "price": None}, "price"),
    ({"symbol": "SOL", "price": 0}, "price"),
    ({"symbol": "SOL", "price": -1}, "price"),
    ({"symbol": "SOL", "price": 1e300}, "price"),
    ({"symbol": "SOL", "price": 100, "equity": -5}, "equity"),
    ({"symbol": "SOL", "price": 100, "timestamp": "yesterday"}, "timestamp"),
    ({"symbol": "", "price": 100.0}, "symbol"),
    ({"symbol": "S" * 10_000, "price": 100.0}, "symbol"),
    ({"symbol": "SOL'; DROP TABLE signals;--", "price": 1.0}, "symbol"),
    ({"symbol": "SOL\u0000", "price": 1.0}, "symbol"),
    ({"symbol": "\u0421\u041e\u041b", "price": 1.0}, "symbol"),  # Cyrillic look-alike
    ({"symbol": "\U0001f680", "price": 1.0}, "symbol"),
])
def test_schema_violations_are_422_naming_the_field(client, body, field):
    r = client.post("/generate_signal", json=body)
    assert_clean(r, 422, field)
    assert isinstance(r.json()["detail"], list)   # FastAPI's shape
    assert any(field in map(str, e["loc"]) for e in r.json()["detail"])
    assert len(r.content) < 4000                   # long inputs are not echoed in full


@pytest.mark.parametrize("raw, field", [
    (b'{"symbol": "SOL", "price": NaN}', "price"),
    (b'{"symbol": "SOL", "price": Infinity}', "price"),
    (b'{"symbol": "SOL", "price": -Infinity}', "price"),
    (b'{"symbol": "SOL", "price": 1e999}', "price"),
    (b'{"symbol": "SOL", "price": 100, "equity": NaN}', "equity"),
    (b'{"symbol": "SOL", "price": 1' + b"0" * 5000 + b"}", "price"),
])
def test_nan_infinity_and_huge_numbers_are_422_naming_the_field(client, raw, field):
    r = post_raw(client, raw)
    assert_clean(r, 422, field)
    assert r.json()["detail"][0]["loc"] == ["body", field]


@pytest.mark.parametrize("raw, needle", [
    (b"{not json", "invalid JSON"),
    (b'{"symbol": "SOL", "price": 10', "truncated"),
    (b'{"symbol": "SOL"', "truncated"),
    (b'{"symbol": "SO', "truncated"),
    (b"", "empty"),
    (b"   ", "empty"),
    (b"\xff\xfe{}", "UTF-8"),
    (b'[{"symbol": "SOL", "price": 100}]', "JSON object"),
    (b'"SOL"', "JSON object"),
    (b"42", "JSON object"),
    (b"null", "JSON object"),
    (b"true", "JSON object"),
    (b'{"symbol": "\\ud800", "price": 1}', "surrogate"),
])
def test_non_json_truncated_and_non_object_bodies_are_422(client, raw, needle):
    assert_clean(post_raw(client, raw), 422, needle)


@pytest.mark.parametrize("depth", [40, 900, 5000])
def test_deeply_nested_json_is_422(client, depth):
    raw = b'{"symbol": "SOL", "price": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"
    assert_clean(post_raw(client, raw), 422, "nested")


def test_100k_nested_arrays_are_422_not_recursion_error():
    raw = b"[" * 100_000 + b"]" * 100_000
    with TestClient(make_app(api_key="", max_body_bytes=1_000_000), raise_server_exceptions=False) as c:
        assert_clean(post_raw(c, raw), 422, "nested too deeply")
    ok = b'{"a": ' + b"[" * 30 + b"]" * 30 + b"}"   # within MAX_JSON_DEPTH: parsed as usual
    assert http_guard.check_json_body(ok) == json.loads(ok)


def test_body_over_the_limit_is_413_by_content_length_and_by_stream():
    with TestClient(make_app(api_key="", max_body_bytes=1000), raise_server_exceptions=False) as c:
        big = json.dumps({"symbol": "SOL", "price": 1, "pad": "x" * 2000}).encode()
        assert_clean(post_raw(c, big), 413, "1000 bytes")

        def chunks():  # no Content-Length: Transfer-Encoding chunked
            for _ in range(10):
                yield b" " * 200
        r = c.post("/generate_signal", content=chunks(), headers=JSON)
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_clean(r, 413, "1000 bytes")
        # a GET with a streamed body is counted too when the app reads it; a body under the limit passes
        assert c.post("/generate_signal", json={"symbol": "SOL", "price": 1}).status_code == 200


def test_default_limit_is_16_kib():
    assert guard_settings({})["max_body_bytes"] == 16 * 1024
    assert guard_settings({"SIGNAL_MAX_BODY_BYTES": "2048"})["max_body_bytes"] == 2048
    with pytest.raises(ValueError, match="SIGNAL_MAX_BODY_BYTES"):
        guard_settings({"SIGNAL_MAX_BODY_BYTES": "lots"})


def test_env_is_read_when_the_app_starts(monkeypatch):
    monkeypatch.setenv("SIGNAL_MAX_BODY_BYTES", "100")
    monkeypatch.setenv("SIGNAL_API_KEY", KEY)
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        h = {**JSON, "X-API-Key": KEY}
        assert c.post("/generate_signal", content=b'{"symbol":"SOL","price":1,"p":"' + b"x" * 200 + b'"}',
                      headers=h).status_code == 413
        assert c.post("/generate_signal", json={"symbol": "SOL", "price": 1}).status_code == 401


def test_a_key_file_created_rotated_and_removed_reaches_the_running_app(monkeypatch, tmp_path):
    """SIGNAL_API_KEY_FILE is how Kubernetes mounts the optional Secret signalgen-api-key: the kubelet creates,
    replaces and removes the file in the running pod, and the guard follows without a restart."""
    from serve_app.api import guard

    now = [0.0]
    monkeypatch.setattr(guard.time, "monotonic", lambda: now[0])
    key_file = tmp_path / "api-key"
    monkeypatch.setenv("SIGNAL_API_KEY_FILE", str(key_file))
    monkeypatch.setenv("SIGNAL_API_KEY", "ignored-when-the-file-is-set")
    body = {"symbol": "SOL", "price": 1}
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        assert c.post("/generate_signal", json=body).status_code == 200            # no file: no key
        key_file.write_text("first-key\n")
        now[0] += 1.0
        assert c.post("/generate_signal", json=body).status_code == 401
        assert c.post("/generate_signal", json=body, headers={"X-API-Key": "first-key"}).status_code == 200
        rotated = tmp_path / "api-key.new"                                          # the kubelet swaps files
        rotated.write_text("second-key")
        rotated.replace(key_file)
        assert c.post("/generate_signal", json=body, headers={"X-API-Key": "first-key"}).status_code == 200
        now[0] += 1.0                                                               # seen at the next check
        assert c.post("/generate_signal", json=body, headers={"X-API-Key": "first-key"}).status_code == 401
        assert c.post("/generate_signal", json=body, headers={"X-API-Key": "second-key"}).status_code == 200
        key_file.unlink()
        now[0] += 1.0
        assert c.post("/generate_signal", json=body).status_code == 200
        assert "ApiKeyAuth" in c.get("/openapi.json").json()["components"]["securitySchemes"]


def test_invalid_content_length_is_400(client):
    r = post_raw(client, b'{"symbol":"SOL","price":1}', headers={**JSON, "Content-Length": "abc"})
    assert r.status_code == 400


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"},
                                     {"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "multipart/form-data; boundary=x"},
                                     {"Content-Type": "application/xml"}])
def test_wrong_content_type_is_415_naming_json(client, headers):
    assert_clean(post_raw(client, b'{"symbol": "SOL", "price": 100}', headers=headers), 415, "application/json")


def test_json_content_type_variants_pass(client):
    for ct in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.signal+json"):
        assert post_raw(client, b'{"symbol": "SOL", "price": 100}', {"Content-Type": ct}).status_code == 200


def test_missing_content_type_is_415(client):
    r = client.post("/generate_signal", content=b'{"symbol": "SOL", "price": 100}')
    assert "content-type" not in {k.lower() for k in r.request.headers}
    assert_clean(r, 415, "application/json")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(client, method):
    r = client.request(method, "/generate_signal", content=b"{}", headers=JSON)
    assert r.status_code == 405 and "POST" in r.headers["allow"]
    assert client.post("/health").status_code == 405


def test_unknown_path_is_404(client):
    assert client.post("/nope", json={}).status_code == 404


def test_unexpected_exception_is_a_short_500_without_traceback(client):
    r = client.get("/boom")
    assert_clean(r, 500, "internal error", "RuntimeError")
    assert "/etc/passwd" not in r.text and len(r.content) < 200


# ----------------------------------------------------------------------------------------- API key
@pytest.fixture(scope="module")
def keyed():
    with TestClient(make_app(api_key=KEY), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("path, method", [("/generate_signal", "POST"), ("/analytics/performance", "GET"),
                                          ("/metrics", "GET"), ("/anything-else", "GET")])
def test_api_key_required_on_protected_routes(keyed, path, method):
    kw = {"json": {"symbol": "SOL", "price": 1.0}} if method == "POST" else {}
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}, {"X-API-Key": KEY[:-1]},
                    {"X-API-Key": KEY + "x"}, {"Authorization": f"Bearer {KEY}"}):
        r = keyed.request(method, path, headers=headers, **kw)
        assert_clean(r, 401, "X-API-Key")
        assert r.headers["www-authenticate"].startswith("ApiKey")
    r = keyed.request(method, path, headers={"X-API-Key": KEY}, **kw)
    assert r.status_code == (404 if path == "/anything-else" else 200), r.text
    assert keyed.request(method, path, headers={"x-api-key": KEY}, **kw).status_code != 401  # case-insensitive


def test_api_key_checked_before_the_body(keyed):
    r = keyed.post("/generate_signal", content=b"x" * 100_000, headers={"Content-Type": "text/plain"})
    assert r.status_code == 401


@pytest.mark.parametrize("path", ["/health", "/docs", "/openapi.json", "/health/"])
def test_probes_and_docs_stay_open(keyed, path):
    assert keyed.get(path, follow_redirects=False).status_code in (200, 307)


def test_openapi_documents_the_key_and_the_4xx(keyed):
    spec = keyed.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ApiKeyAuth"] == {"type": "apiKey", "in": "header",
                                                                   "name": "X-API-Key"}
    op = spec["paths"]["/generate_signal"]["post"]
    assert op["security"] == [{"ApiKeyAuth": []}] and {"401", "413", "415", "422"} <= set(op["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]


def test_no_key_configured_means_open(client):
    assert client.get("/metrics").status_code == 200
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_key_compare_is_constant_time(monkeypatch):
    calls = []
    real = http_guard.hmac.compare_digest

    def spy(a, b):
        calls.append((type(a), type(b)))
        return real(a, b)
    monkeypatch.setattr(http_guard.hmac, "compare_digest", spy)
    with TestClient(make_app(api_key=KEY), raise_server_exceptions=False) as c:
        assert c.get("/metrics", headers={"X-API-Key": "nope"}).status_code == 401
        assert c.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
        # a non-ASCII header value must not crash the compare (str compare_digest raises TypeError)
        assert c.get("/metrics", headers={"X-API-Key": b"\xe9\xff"}).status_code == 401
    assert calls and all(t == (bytes, bytes) for t in calls)


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_routes_under_include_router_are_guarded(prefix):
    """Serve's class-based ingress re-mounts the deployment's methods with `include_router`, and FastAPI
    >= 0.137 keeps included routers as nodes instead of flattening them: the guard must still find them."""
    from fastapi import APIRouter

    app = FastAPI()
    install_guards(app, api_key="", max_body_bytes=DEFAULT_MAX_BODY_BYTES)
    router = APIRouter()

    @router.post("/generate_signal")
    async def generate_signal(req: SignalRequest) -> dict:
        return {"symbol": req.symbol}

    app.include_router(router, prefix=prefix)
    with TestClient(app, raise_server_exceptions=False) as c:
        url = prefix + "/generate_signal"
        assert c.post(url, json={"symbol": "SOL", "price": 1}).status_code == 200
        assert_clean(c.post(url, content=b'{"symbol": "SOL", "price": NaN}', headers=JSON), 422, "price")
        assert_clean(c.post(url, content=b"[1]", headers=JSON), 422, "JSON object")
        assert_clean(c.post(url, content=b"{}", headers={"Content-Type": "text/plain"}), 415, "application/json")
        assert c.get(url).status_code == 405


def test_answers_the_endpoints_never_see_are_reported_to_the_count_hook() -> None:
    """Guard rejections, validation 422s and the catch-all 500 reach app.state.count_response (the ingress
    counts them in signalgen_requests_total); unknown paths get the bounded label "other"."""
    app = make_app(api_key=KEY, max_body_bytes=64)
    seen: list[tuple[str, int]] = []
    app.state.count_response = lambda route, status: seen.append((route, status))
    client = TestClient(app, raise_server_exceptions=False)
    auth = {**JSON, "X-API-Key": KEY}
    client.post("/generate_signal", content=b'{"symbol": "SOL", "price": 1}', headers=JSON)  # no key
    client.post("/generate_signal", content=b"x" * 100, headers=auth)  # too large
    client.post("/generate_signal", content=b'{"symbol": "SOL"}', headers=auth)  # price missing
    client.post("/generate_signal", content=b"{}", headers={"X-API-Key": KEY, "Content-Type": "text/plain"})
    client.post("/no/such/path", content=b"{}", headers=JSON)  # no key, unknown path
    client.get("/boom", headers={"X-API-Key": KEY})
    ok = client.post("/generate_signal", content=b'{"symbol": "SOL", "price": 1}', headers=auth)
    assert ok.status_code == 200  # the endpoint counts its own answers: not reported here
    assert seen == [("/generate_signal", 401), ("/generate_signal", 413), ("/generate_signal", 422),
                    ("/generate_signal", 415), ("other", 401), ("/boom", 500)]


def test_a_failing_count_hook_does_not_change_the_answer() -> None:
    app = make_app()
    app.state.count_response = lambda route, status: 1 / 0
    r = TestClient(app).post("/generate_signal", content=b'{"symbol": "SOL"}', headers=JSON)
    assert r.status_code == 422 and "price" in r.text
