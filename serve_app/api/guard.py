"""Hostile-input and API-key guards for the FastAPI ingress (no ray import: unit-tested in-process).

FastAPI, Starlette and pydantic already do routing (404, 405 with ``Allow``), JSON parsing and schema
validation - missing/extra fields, types, ranges, NaN/Infinity/1e999 via ``allow_inf_nan=False`` - with
422s whose ``loc`` names the field. `install_guards(app)` adds only what they do not:

- 401 without the right ``X-API-Key`` (when ``SIGNAL_API_KEY`` is set, or the file ``SIGNAL_API_KEY_FILE`` holds
  one: re-read when it changes, so a rotated Kubernetes Secret reaches running replicas), before routing;
- 413 for a ``Content-Length`` or a streamed body over the limit, 408 for a body that does not arrive;
- 415 for a JSON route's body that is not ``application/json`` (FastAPI would validate the raw bytes: 422);
- 422 from `check_json_body` for an empty, non-UTF-8, invalid, truncated, too deep or non-object body, an
  integer of more than 100 digits or a lone surrogate: FastAPI's messages do not say which, and it answers
  a bare 400 for the deep, the long and the non-UTF-8 ones;
- validation errors rendered so an echoed NaN/Infinity cannot fail the response (FastAPI's would: a 500)
  and a 16 KiB input is not echoed whole; each of these answers counted; a last 500 without a trace.

The body checks run in the ``receive`` the middleware hands the app: FastAPI reads a body after routing, so
404/405 stay the router's and every route with a JSON body is checked, under include_router too.

The key is declared with `fastapi.security.APIKeyHeader` (it reads the header; its scheme is what
/openapi.json documents, the Authorize button) but checked in the middleware, not as a dependency: a
dependency runs only after FastAPI has read and validated the body (an unauthenticated caller could make the
replica do that, and learn the schema from 422s) and never for a path without a route. Default-deny: every
path but the probes and docs in `OPEN_PATHS` needs it. Compared with `hmac.compare_digest` on bytes.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import time
from typing import Any, Iterable, Iterator

from fastapi import FastAPI, params
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("ray.serve")

API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="ApiKeyAuth", auto_error=False)
API_KEY_HEADER = API_KEY.model.name
DEFAULT_MAX_BODY_BYTES = 16 * 1024
DEFAULT_BODY_TIMEOUT_S = 15.0
MAX_JSON_DEPTH = 32            # the request schema is flat; 32 levels is generous
MAX_NUMBER_DIGITS = 100        # longer integer literals are rejected (Python refuses > 4300 digits anyway)
MAX_ECHO_CHARS = 200           # a 422 echoes at most this much of an offending input
OPEN_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
JSON_EXAMPLE = '{"symbol": "SOL", "price": 100.0}'


class _Rejected(HTTPException):
    """A 4xx decided by the guard. An HTTPException, so that when it is raised inside FastAPI's body read
    FastAPI re-raises it (any other error there becomes a generic 400) and `_rejected_handler` answers."""


# ------------------------------------------------------------------------------------------ JSON body
class _LongInt:
    def __init__(self, token: str):
        self.token = token[:20] + "..."


def _parse_int(token: str) -> Any:
    return _LongInt(token) if len(token.lstrip("-")) > MAX_NUMBER_DIGITS else int(token)


def _err(kind: str, loc: Iterable[Any], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def _field(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "body"


def _json_type(v: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


def _utf8_ok(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_json_body(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a request body strictly; raise `_Rejected(422, [FastAPI-shaped errors])` when it is not one
    UTF-8 JSON object, nested at most `max_depth` deep, without over-long integers or lone surrogates.
    NaN/Infinity pass: the schema rejects them, naming the field."""
    if not body.strip():
        raise _Rejected(422, [_err("missing", [], f"the request body is empty; expected a JSON object like "
                                                   f"{JSON_EXAMPLE}")])
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Rejected(422, [_err("json_invalid", [e.start], f"the request body is not valid UTF-8 "
                                                              f"(byte {e.start})")]) from None
    try:
        doc = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise _Rejected(422, [_err("json_too_deep", [], f"JSON nested too deeply (at most {max_depth} "
                                                        f"levels)")]) from None
    except json.JSONDecodeError as e:
        truncated = e.pos >= len(text.rstrip()) or e.msg.startswith("Unterminated string")
        hint = " (the body looks truncated)" if truncated else ""
        raise _Rejected(422, [_err("json_invalid", [e.pos], f"invalid JSON: {e.msg} at line {e.lineno} "
                                                            f"column {e.colno}{hint}")]) from None

    errors: list[dict] = []
    stack: list[tuple[Any, tuple, int]] = [(doc, (), 0)]
    while stack and len(errors) < 20:
        value, path, depth = stack.pop()
        if depth > max_depth:
            errors.append(_err("json_too_deep", path, f"{_field(path)}: JSON nested deeper than {max_depth} "
                                                      f"levels"))
            break
        if isinstance(value, _LongInt):
            errors.append(_err("finite_number", path, f"{_field(path)}: integer literal longer than "
                                                      f"{MAX_NUMBER_DIGITS} digits ({value.token}); send a "
                                                      f"finite number", value.token))
        elif isinstance(value, str) and not _utf8_ok(value):
            errors.append(_err("string_unicode", path, f"{_field(path)}: string contains an unpaired UTF-16 "
                                                       f"surrogate escape"))
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


def _check_json_request(scope: Scope, body: bytes, max_depth: int) -> None:
    """415 unless the body is declared JSON (FastAPI's rule: application/json or application/*+json; no
    Content-Type is tolerated only for an empty body), then `check_json_body`."""
    raw = Headers(scope=scope).get("content-type")
    media = None if raw is None else raw.split(";", 1)[0].strip().lower()
    if media is None and body.strip():
        raise _Rejected(415, "missing Content-Type: send the body as application/json")
    if media is not None and media != "application/json" and not (media.startswith("application/")
                                                                   and media.endswith("+json")):
        raise _Rejected(415, f"unsupported Content-Type {media!r}: send the body as application/json")
    check_json_body(body, max_depth)


# ------------------------------------------------------------------------------------------ middleware
def _route_paths(router: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """The path of every API route under `router`. Since FastAPI 0.137 included routers are nodes, not
    flattened (Serve's class-based ingress re-mounts the deployment's methods that way)."""
    for route in getattr(router, "routes", ()):
        if isinstance(route, APIRoute):
            yield prefix + route.path
        elif hasattr(route, "original_router") and depth < 16:
            context = getattr(route, "include_context", None)
            yield from _route_paths(route.original_router, prefix + (getattr(context, "prefix", "") or ""),
                                    depth + 1)


def _route_path(scope: Scope) -> str:
    """The path inside the application (Serve mounts an app under its route_prefix as root_path)."""
    path, root = scope.get("path", ""), scope.get("root_path", "") or ""
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        path = path[len(root):]
    return path or "/"


class HTTPGuard:
    """Pure ASGI middleware: API key and Content-Length before anything else; body size, read timeout,
    content type and strict JSON in the `receive` it hands the app; and a last catch-all so nothing below
    it can turn into a stack trace on the wire. Settings are read from the environment when Starlette
    builds the middleware stack, i.e. on the replica's first request."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, api_key: str | None = None,
                 max_body_bytes: int | None = None, body_timeout_s: float | None = None,
                 max_json_depth: int = MAX_JSON_DEPTH):
        self.app, self.fastapi_app = app, fastapi_app
        settings = guard_settings()
        if api_key is not None:
            self.keys = ApiKeySource(key=api_key)
        else:
            self.keys = ApiKeySource(key=settings["api_key"], path=settings["api_key_file"])
        self.max_body_bytes = settings["max_body_bytes"] if max_body_bytes is None else max_body_bytes
        self.body_timeout_s = settings["body_timeout_s"] if body_timeout_s is None else body_timeout_s
        self.max_json_depth = max_json_depth
        self._routes: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self._check_headers(scope)
        except _Rejected as r:
            await _answer(self.fastapi_app, self._route_label(scope), r.status_code, r.detail,
                          r.headers)(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._guarded(scope, receive), tracked_send)
        except Exception as e:  # noqa: BLE001 - the last line: a short message, the trace goes to the log
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:  # not Starlette's Exception handler: that re-raises after answering
                await _answer(self.fastapi_app, self._route_label(scope), 500,
                              f"internal error ({type(e).__name__})")(scope, receive, send)

    def _route_label(self, scope: Scope) -> str:
        """The request's API route for a metric label; "other" for unknown paths (bounded cardinality)."""
        if self._routes is None:
            self._routes = frozenset(_route_paths(self.fastapi_app))
        path = _route_path(scope)
        return path if path in self._routes else "other"

    async def _check_headers(self, scope: Scope) -> None:
        path = _route_path(scope)
        key = self.keys.current()
        if key is not None and path.rstrip("/") not in OPEN_PATHS and path not in OPEN_PATHS:
            given = (await API_KEY(HTTPConnection(scope)) or "").encode("latin-1")  # ASGI headers are bytes
            if not hmac.compare_digest(given, key):
                raise _Rejected(401, f"missing or invalid API key: send it in the {API_KEY_HEADER} header",
                                {"WWW-Authenticate": f'ApiKey header="{API_KEY_HEADER}"'})
        length = Headers(scope=scope).get("content-length")
        if length is not None and not (length.isascii() and length.isdigit()):
            raise _Rejected(400, "invalid Content-Length header")
        if length is not None and int(length) > self.max_body_bytes:
            raise _Rejected(413, f"request body larger than {self.max_body_bytes} bytes")

    def _guarded(self, scope: Scope, receive: Receive) -> Receive:
        """The app's `receive`: counts the body against the limit and times out its arrival; once the body
        is complete and the route (set by the router by then) takes JSON, checks it."""
        chunks: list[bytes] = []
        size, deadline, complete = 0, None, False

        async def guarded() -> Message:
            nonlocal size, deadline, complete
            if complete:
                return await receive()   # after the body: the disconnect, as the server sends it
            loop = asyncio.get_running_loop()
            deadline = deadline or loop.time() + self.body_timeout_s
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise _Rejected(408, f"request body not received within {self.body_timeout_s:g} s") from None
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                raise _Rejected(413, f"request body larger than {self.max_body_bytes} bytes")
            if not message.get("more_body", False):
                complete = True
                field = getattr(scope.get("route"), "body_field", None)
                if field is not None and not isinstance(field.field_info, params.Form):
                    _check_json_request(scope, b"".join(chunks), self.max_json_depth)
            return message
        return guarded


# ----------------------------------------------------------------------------------- answers, counting
def _safe(v: Any) -> Any:
    """Make an echoed input safe to render: finite numbers, short strings (lone surrogates are escaped by
    ``ensure_ascii``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, str):
        return v if len(v) <= MAX_ECHO_CHARS else v[:MAX_ECHO_CHARS] + f"... ({len(v)} chars)"
    if isinstance(v, dict):
        return {_safe(k): _safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_safe(x) for x in v]
    return v


class SafeJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(_safe(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


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


def _answer(app: FastAPI, route: str, status: int, detail: Any,
            headers: dict[str, str] | None = None) -> Response:
    count_response(app, route, status)
    return SafeJSONResponse({"detail": detail}, status_code=status, headers=headers)


def _route_of(request: Request) -> str:
    return getattr(request.scope.get("route"), "path", "other")


async def _rejected_handler(request: Request, exc: _Rejected) -> Response:
    return _answer(request.app, _route_of(request), exc.status_code, exc.detail, exc.headers)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's own 422 (its default handler's body), counted and rendered with `SafeJSONResponse`."""
    return _answer(request.app, _route_of(request), 422, jsonable_encoder(exc.errors()))


# ------------------------------------------------------------------------------------------------ setup
def _positive(env: dict[str, str], name: str, default: float, kind: type) -> Any:
    raw = (env.get(name) or "").strip()
    try:
        value = kind(raw) if raw else default
        if value <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {raw!r}") from None
    return value


class ApiKeySource:
    """The API key a request must carry, or None when none is required: a fixed `key`, or the contents of
    the file `path` (how a Kubernetes Secret is mounted), re-read when the file changes - so a key created
    or rotated in the Secret reaches the running replicas without a restart (the kubelet refreshes mounted
    Secrets within about a minute). The file is looked at at most once per `check_every_s`; a missing or
    empty file means no key, like an unset SIGNAL_API_KEY. `path` wins over `key`."""

    def __init__(self, key: str | None = None, path: str | None = None, check_every_s: float = 1.0,
                 clock: Any = None):
        self.path, self.check_every_s, self.clock = path, check_every_s, clock
        self._key: bytes | None = key.strip().encode("utf-8") if key and key.strip() else None
        self._seen: tuple[int, int, int] | None = None   # the file's (inode, mtime_ns, size) when last read
        self._checked = float("-inf")

    def current(self) -> bytes | None:
        if self.path is None:
            return self._key
        now = (self.clock or time.monotonic)()
        if now - self._checked >= self.check_every_s:
            self._checked = now
            self._reload()
        return self._key

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:  # no file (the optional Secret does not exist): no key required
            self._seen, self._key = None, None
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        try:
            with open(self.path, "rb") as f:
                text = f.read().strip()
        except OSError:
            return  # mid-swap: keep the previous key, look again on the next check
        was = self._key
        self._key, self._seen = (text or None), seen
        if self._key != was:
            log.warning("API key %s from %s", "loaded" if self._key else "removed", self.path)


def guard_settings(env: dict[str, str] | None = None) -> dict[str, Any]:
    """`SIGNAL_API_KEY` (unset or empty: no key required) or `SIGNAL_API_KEY_FILE` (a file holding the key,
    re-read when it changes; it wins when both are set), `SIGNAL_MAX_BODY_BYTES` (default 16 KiB) and
    `SIGNAL_BODY_TIMEOUT_S` (how long a request body may take to arrive, default 15 s)."""
    env = os.environ if env is None else env
    return {"api_key": (env.get("SIGNAL_API_KEY") or "").strip() or None,
            "api_key_file": (env.get("SIGNAL_API_KEY_FILE") or "").strip() or None,
            "max_body_bytes": _positive(env, "SIGNAL_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int),
            "body_timeout_s": _positive(env, "SIGNAL_BODY_TIMEOUT_S", DEFAULT_BODY_TIMEOUT_S, float)}


def install_guards(app: FastAPI, *, api_key: str | None = None, max_body_bytes: int | None = None,
                   body_timeout_s: float | None = None) -> FastAPI:
    """Install the guards on `app` (call once, before it serves). Explicit arguments override the
    environment (tests); by default the replica's environment is read when it serves its first request.
    A malformed SIGNAL_MAX_BODY_BYTES or SIGNAL_BODY_TIMEOUT_S fails here, at import, with a message naming
    it."""
    guard_settings()
    app.add_middleware(HTTPGuard, fastapi_app=app, api_key=api_key, max_body_bytes=max_body_bytes,
                       body_timeout_s=body_timeout_s)
    app.add_exception_handler(_Rejected, _rejected_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    _document(app, api_key)
    return app


def _document(app: FastAPI, api_key: str | None) -> None:
    """OpenAPI: 413/415 on every operation with a body; with a key configured, `API_KEY`'s scheme and, on
    every operation outside `OPEN_PATHS`, its security requirement and 401 (the middleware enforces the key,
    so no route carries it as a dependency for FastAPI to find)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = build()
        settings = guard_settings()
        key_on = bool(api_key) if api_key is not None else (settings["api_key"] is not None
                                                              or settings["api_key_file"] is not None)
        for path, ops in spec.get("paths", {}).items():
            for op in (op for op in ops.values() if isinstance(op, dict)):
                responses = op.setdefault("responses", {})
                if "requestBody" in op:
                    responses.setdefault("413", {"description": "Request body too large"})
                    responses.setdefault("415", {"description": "Content-Type is not application/json"})
                if key_on and path.rstrip("/") not in OPEN_PATHS:
                    op["security"] = [{API_KEY.scheme_name: []}]
                    responses.setdefault("401", {"description": "Missing or invalid API key"})
        if key_on:
            spec.setdefault("components", {}).setdefault("securitySchemes", {})[API_KEY.scheme_name] = \
                API_KEY.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
