"""Hostile-input and API-key guards for the FastAPI ingress (no ray import: unit-tested in-process).

`install_guards(app)` is called once, right after the app is created. It adds one pure-ASGI middleware
(`HTTPGuard`) and two exception handlers. Every malformed request gets a clear 4xx with a JSON body,
never a 5xx, a hang or a stack trace:

=====================================================  =====  ==============================================
request                                                status  body
=====================================================  =====  ==============================================
no / wrong ``X-API-Key`` while ``SIGNAL_API_KEY`` set     401  ``{"detail": "missing or invalid API key ..."}``
``Content-Length`` or streamed (chunked) body > limit     413  ``{"detail": "request body larger than N bytes"}``
body not received within ``body_timeout_s``               408  ``{"detail": "..."}``
POST/PUT/PATCH with a body that is not JSON               415  names ``application/json``
invalid / truncated / non-UTF-8 JSON, empty body          422  FastAPI's shape: ``{"detail": [{"loc": ...}]}``
NaN / Infinity / 1e999 / 5000-digit number                422  ``loc`` and ``msg`` name the field
JSON nested deeper than ``MAX_JSON_DEPTH``                422  (the C parser's RecursionError is caught too)
array / string / number as the body                       422  "the request body must be a JSON object"
lone UTF-16 surrogate escapes (``"\\ud800"``)             422  (they would break the UTF-8 encoder later)
schema violations (missing/extra fields, types, ranges)   422  FastAPI's own errors, rendered safely
wrong method                                              405  Starlette's default (``Allow`` header)
anything unexpected                                       500  ``{"detail": "internal error (ExcType)"}``
=====================================================  =====  ==============================================

Why a middleware and not a FastAPI dependency for the API key: a dependency runs after FastAPI has read
and parsed the body, so an unauthenticated caller could still make the replica buffer and validate bodies
(and learn the schema from 422s); the middleware rejects before a byte of the body is read. It is
default-deny: every path needs the key except the probes and docs in `OPEN_PATHS`, so a route added later
is protected without anyone remembering to. The key is compared with `hmac.compare_digest` on bytes.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
from typing import Any, Iterable, Iterator

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ray.serve")

API_KEY_HEADER = "X-API-Key"
DEFAULT_MAX_BODY_BYTES = 16 * 1024
MAX_JSON_DEPTH = 32            # the request schema is flat; 32 levels is generous
MAX_NUMBER_DIGITS = 100        # longer integer literals are rejected (Python refuses > 4300 digits anyway)
MAX_ECHO_CHARS = 200           # a 422 echoes at most this much of an offending input
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
JSON_EXAMPLE = '{"symbol": "SOL", "price": 100.0}'


# --------------------------------------------------------------------------------------------- helpers
class _Rejected(HTTPException):
    """A 4xx decided by the guard. An HTTPException, so that if it surfaces inside FastAPI (a body the
    app streams past the limit) FastAPI re-raises it and answers with this status, not a generic 400."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=detail, headers=headers or {})
        self.status = status


class _BadNumber:
    """Stands in for a NaN/Infinity token or an unrepresentable number while the body is parsed."""

    def __init__(self, token: str, why: str):
        self.token, self.why = token, why


def _parse_constant(token: str) -> _BadNumber:  # NaN, Infinity, -Infinity
    return _BadNumber(token, "NaN and Infinity are not valid JSON numbers")


def _parse_float(token: str) -> Any:
    v = float(token)
    return v if math.isfinite(v) else _BadNumber(token, "number overflows a 64-bit float")


def _parse_int(token: str) -> Any:
    if len(token.lstrip("-")) > MAX_NUMBER_DIGITS:
        return _BadNumber(token[:20] + "...", f"integer literal longer than {MAX_NUMBER_DIGITS} digits")
    return int(token)


def _err(kind: str, loc: Iterable[Any], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def _field(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "body"


def _json_type(v: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def check_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a request body strictly; raise `_Rejected(422, [FastAPI-shaped errors])` when it is not one
    JSON object of finite numbers and valid strings, nested at most `max_depth` deep."""
    if not body.strip():
        raise _Rejected(422, [_err("missing", [], f"the request body is empty; expected a JSON object like "
                                                   f"{JSON_EXAMPLE}")])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Rejected(422, [_err("json_invalid", [e.start], f"the request body is not valid UTF-8 "
                                                              f"(byte {e.start})")]) from None
    try:
        doc = json.loads(text, parse_constant=_parse_constant, parse_float=_parse_float, parse_int=_parse_int)
    except RecursionError:
        raise _Rejected(422, [_err("json_too_deep", [], f"JSON nested too deeply (at most {max_depth} "
                                                        f"levels)")]) from None
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        hint = " (the body looks truncated)" if truncated else ""
        raise _Rejected(422, [_err("json_invalid", [e.pos], f"invalid JSON: {e.msg} at line {e.lineno} "
                                                            f"column {e.colno}{hint}")]) from None
    except ValueError as e:  # e.g. Python's int-conversion limit
        raise _Rejected(422, [_err("json_invalid", [], f"invalid JSON: {e}")]) from None

    errors: list[dict] = []
    stack: list[tuple[Any, tuple, int]] = [(doc, (), 0)]
    while stack and len(errors) < 20:
        value, path, depth = stack.pop()
        if depth > max_depth:
            errors.append(_err("json_too_deep", path, f"{_field(path)}: JSON nested deeper than {max_depth} "
                                                      f"levels"))
            break
        if isinstance(value, _BadNumber):
            errors.append(_err("finite_number", path, f"{_field(path)}: {value.why} ({value.token}); send a "
                                                      f"finite number", value.token))
        elif isinstance(value, str):
            if not _utf8_ok(value):
                errors.append(_err("string_unicode", path, f"{_field(path)}: string contains an unpaired "
                                                           f"UTF-16 surrogate escape"))
        elif isinstance(value, dict):
            for k, v in value.items():
                if not _utf8_ok(k):
                    errors.append(_err("string_unicode", path, f"{_field(path)}: a key contains an unpaired "
                                                               f"UTF-16 surrogate escape"))
                    continue
                stack.append((v, path + (k,), depth + 1))
        elif isinstance(value, list):
            stack.extend((v, path + (i,), depth + 1) for i, v in enumerate(value))
    if errors:
        raise _Rejected(422, errors)
    if not isinstance(doc, dict):
        raise _Rejected(422, [_err("model_attributes_type", [], f"the request body must be a JSON object like "
                                                                f"{JSON_EXAMPLE}; got {_json_type(doc)}")])
    return doc


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _media_type(headers: dict[bytes, bytes]) -> str | None:
    raw = headers.get(b"content-type")
    if raw is None:
        return None
    return raw.decode("latin-1").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (media_type.startswith("application/")
                                                  and media_type.endswith("+json"))


def _api_routes(router: Any, prefix: str = "", depth: int = 0) -> Iterator[tuple[Any, str]]:
    """(route, accumulated include prefix) for every HTTP API route under `router`, included ones too."""
    for route in getattr(router, "routes", ()):
        if hasattr(route, "body_field") and hasattr(route, "path_regex"):
            yield route, prefix
        elif hasattr(route, "original_router") and depth < 16:   # FastAPI >= 0.137's _IncludedRouter
            context = getattr(route, "include_context", None)
            yield from _api_routes(route.original_router, prefix + (getattr(context, "prefix", "") or ""),
                                   depth + 1)


def _is_form(route: Any) -> bool:
    field = route.body_field
    return type(getattr(field, "field_info", None)).__name__ in ("Form", "File")


def _route_path(scope: Scope) -> str:
    """The path inside the application (Serve mounts an app under its route_prefix as root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root):]
    return path or "/"


# ------------------------------------------------------------------------------------------ middleware
class HTTPGuard:
    """Pure ASGI middleware: API key, body size, body read timeout, content type, strict JSON; and a last
    catch-all so nothing below it can turn into a stack trace on the wire. Settings are read from the
    environment when Starlette builds the middleware stack, i.e. on the replica's first request."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, api_key: str | None = None,
                 max_body_bytes: int | None = None, body_timeout_s: float = 15.0,
                 max_json_depth: int = MAX_JSON_DEPTH):
        self.app, self.fastapi_app = app, fastapi_app
        settings = guard_settings()
        key = settings["api_key"] if api_key is None else api_key
        self.api_key: bytes | None = key.encode("utf-8") if key else None
        self.max_body_bytes = settings["max_body_bytes"] if max_body_bytes is None else max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.max_json_depth = max_json_depth
        self._routes: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            receive = await self._check(scope, receive)
            await self.app(scope, receive, tracked_send)
        except _Rejected as r:
            if started:
                raise
            count_response(self.fastapi_app, self._route_label(scope), r.status)
            await _reply(send, r.status, r.detail, r.headers)
        except Exception as e:  # noqa: BLE001 - the last line: a short message, the trace goes to the log
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                count_response(self.fastapi_app, self._route_label(scope), 500)
                await _reply(send, 500, f"internal error ({type(e).__name__})")

    def _route_label(self, scope: Scope) -> str:
        """The request's API route for a metric label; "other" for unknown paths (bounded cardinality)."""
        if self._routes is None:
            self._routes = frozenset(prefix + route.path for route, prefix in _api_routes(self.fastapi_app))
        path = _route_path(scope)
        return path if path in self._routes else "other"

    async def _check(self, scope: Scope, receive: Receive) -> Receive:
        headers = dict(scope.get("headers") or [])
        path = _route_path(scope)
        if self.api_key is not None and path.rstrip("/") not in OPEN_PATHS and path not in OPEN_PATHS:
            given = headers.get(API_KEY_HEADER.lower().encode("latin-1"), b"")
            if not hmac.compare_digest(given, self.api_key):
                raise _Rejected(401, f"missing or invalid API key: send it in the {API_KEY_HEADER} header",
                                {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
                if n < 0:
                    raise ValueError
            except ValueError:
                raise _Rejected(400, "invalid Content-Length header") from None
            if n > self.max_body_bytes:
                raise _Rejected(413, f"request body larger than {self.max_body_bytes} bytes")
        method = scope.get("method", "GET")
        if method not in BODY_METHODS or not self._json_route(scope):
            return self._counting(receive)   # size enforced while the app streams it; 404/405 by the router
        body = await self._read_body(receive)
        media = _media_type(headers)
        if media is None:
            if body.strip():
                raise _Rejected(415, "missing Content-Type: send the body as application/json")
        elif not _is_json(media):
            raise _Rejected(415, f"unsupported Content-Type {media!r}: send the body as application/json")
        check_json_body(body, self.max_json_depth)
        return _replay(body, receive)

    def _json_route(self, scope: Scope) -> bool:
        """True when a route matches the path and the method and takes a JSON body. Routes are found
        through `include_router` nodes too: since FastAPI 0.137 included routers are not flattened, and
        Serve's class-based ingress re-mounts every method of the deployment class that way."""
        path, method = _route_path(scope), scope.get("method", "GET")
        for route, prefix in _api_routes(self.fastapi_app.router):
            regex = compile_path(prefix + route.path)[0] if prefix else route.path_regex
            if regex.match(path) and method in (route.methods or ()):
                return route.body_field is not None and not _is_form(route)
        return False

    async def _read_body(self, receive: Receive) -> bytes:
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _Rejected(408, f"request body not received within {self.body_timeout_s:g} s") from None
            if message["type"] == "http.disconnect":
                raise _Rejected(400, "client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _Rejected(413, f"request body larger than {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _counting(self, receive: Receive) -> Receive:
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > self.max_body_bytes:
                    raise _Rejected(413, f"request body larger than {self.max_body_bytes} bytes")
            return message
        return counted


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()   # after the body: wait for the disconnect, as the server would
    return replay


async def _reply(send: Send, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
    body = _dumps({"detail": detail})
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------------- exception handlers
def _safe(v: Any) -> Any:
    """Make an echoed input safe to render: finite numbers, short strings, UTF-8-encodable text."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, str):
        v = v.encode("utf-8", "backslashreplace").decode("utf-8")
        return v if len(v) <= MAX_ECHO_CHARS else v[:MAX_ECHO_CHARS] + f"... ({len(v)} chars)"
    if isinstance(v, dict):
        return {_safe(k) if isinstance(k, str) else k: _safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_safe(x) for x in v]
    return v


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return _dumps(_safe(content))


def count_response(app: FastAPI, route: str, status: int) -> None:
    """Report an answer the endpoints never saw (a guard rejection, a 422 from validation, the catch-all
    500) to the hook the app's owner set as `app.state.count_response(route, status)` - the ingress counts
    them in signalgen_requests_total. Never fails the response."""
    hook = getattr(app.state, "count_response", None)
    if hook is not None:
        try:
            hook(route, status)
        except Exception:  # noqa: BLE001 - metrics must not turn a 4xx into a 500
            log.warning("count_response hook failed", exc_info=True)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body shape (`{"detail": [{"type", "loc", "msg", "input", ...}]}`), rendered so that
    no echoed input (NaN, a lone surrogate, a 16 KiB string) can make the error itself fail."""
    route = request.scope.get("route")
    count_response(request.app, getattr(route, "path", "other"), 422)
    try:
        errors = jsonable_encoder(exc.errors())
    except Exception:  # noqa: BLE001 - an input jsonable_encoder cannot handle: drop the echoes
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
    return SafeJSONResponse({"detail": errors}, status_code=422)


async def unhandled_error_handler(request: Request, exc: Exception) -> Response:
    route = request.scope.get("route")
    count_response(request.app, getattr(route, "path", "other"), 500)
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return SafeJSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)


# ------------------------------------------------------------------------------------------------ setup
def guard_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """`SIGNAL_API_KEY` (unset or empty: no key required) and `SIGNAL_MAX_BODY_BYTES` (default 16 KiB)."""
    env = os.environ if env is None else env
    raw = (env.get("SIGNAL_MAX_BODY_BYTES") or "").strip()
    try:
        max_body = int(raw) if raw else DEFAULT_MAX_BODY_BYTES
        if max_body <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"SIGNAL_MAX_BODY_BYTES must be a positive integer, got {raw!r}") from None
    return {"api_key": (env.get("SIGNAL_API_KEY") or "").strip() or None, "max_body_bytes": max_body}


def install_guards(app: FastAPI, *, api_key: str | None = None, max_body_bytes: int | None = None,
                   body_timeout_s: float = 15.0) -> FastAPI:
    """Install the guards on `app` (call once, before it serves). Explicit arguments override the
    environment (tests); by default the replica's environment is read when it serves its first request.
    A malformed SIGNAL_MAX_BODY_BYTES fails here, at import, with a message naming it."""
    guard_settings()
    app.add_middleware(HTTPGuard, fastapi_app=app, api_key=api_key, max_body_bytes=max_body_bytes,
                       body_timeout_s=body_timeout_s)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unhandled_error_handler)
    _document(app, api_key)
    return app


def _document(app: FastAPI, api_key: str | None) -> None:
    """OpenAPI: 413/415 on every JSON-body operation; the API-key scheme on protected ones when a key is
    configured (so /docs gets an Authorize button and schemathesis knows the header)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        key_on = bool(api_key) if api_key is not None else guard_settings()["api_key"] is not None
        for path, ops in spec.get("paths", {}).items():
            for method, op in ops.items():
                if not isinstance(op, dict):
                    continue
                if method.upper() in BODY_METHODS and "requestBody" in op:
                    op.setdefault("responses", {}).setdefault("413", {"description": "Request body too large"})
                    op["responses"].setdefault("415", {"description": "Content-Type is not application/json"})
                if key_on and path.rstrip("/") not in OPEN_PATHS:
                    op["security"] = [{"ApiKeyAuth": []}]
                    op.setdefault("responses", {}).setdefault("401", {"description": "Missing or invalid API key"})
        if key_on:
            spec.setdefault("components", {}).setdefault("securitySchemes", {})["ApiKeyAuth"] = {
                "type": "apiKey", "in": "header", "name": API_KEY_HEADER}
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
