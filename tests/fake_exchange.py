"""A local fake of Binance's public spot REST API: the part ccxt's `binance.load_markets()` (spot only) and
`fetch_ohlcv()` call, served over real HTTP (stdlib http.server in a thread) so the collector runs through
ccxt unchanged, pointed here with SIGNAL_EXCHANGE_URL / --exchange-url.

    GET /api/v3/exchangeInfo   the markets (payloads shaped like Binance's)
    GET /api/v3/time           {"serverTime": <the fake's clock>}
    GET /api/v3/klines         symbol, interval, startTime, endTime, limit (default 500, at most 1000)

Candles are a deterministic function of (market, interval, open time) on the fake's clock, which only moves
when a test calls `advance` - or, made with `clock=` (e.g. `wall_clock_ms`), follows that clock: new candles
then close in real time, for a test against a running service that judges their age by the wall clock. Like Binance, klines run up to the candle in progress, which is always the last
one served and whose values are still changing (its close is the price so far). Faults for the next requests
to a path (optionally for one market): `fail_next("429" | "5xx" | "malformed", n)`. Every request is
recorded, and so is every closed candle served (`served`), to check that each was fetched once.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from serve_app.core.timeutil import timeframe_ms

KLINES = "/api/v3/klines"
BASE_PRICE = {"BTC": 50_000.0, "ETH": 3_000.0, "SOL": 100.0}
QUOTE_FACTOR = {"USDT": 1.0, "EUR": 0.92}
INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
FAULTS = ("429", "5xx", "malformed")


def price(base: str, quote: str, interval: str, k: int) -> float:
    """The price at the start of candle number k (open time // interval length)."""
    p = BASE_PRICE.get(base, 10.0) * QUOTE_FACTOR.get(quote, 1.0)
    return round(p * (1 + 0.02 * math.sin(k / 37 + len(interval)) + 0.005 * math.sin(k / 5.3)), 2)


def candle(base: str, quote: str, interval: str, open_time: int, now_ms: int | None = None) -> tuple:
    """(open_time, open, high, low, close, volume) as numbers; with `now_ms` inside the candle, its values
    so far (the close is the price at `now_ms`, the volume the share traded until then)."""
    step = timeframe_ms(interval)
    k = open_time // step
    o, c = price(base, quote, interval, k), price(base, quote, interval, k + 1)
    volume = 10.0 + k % 13
    if now_ms is not None and open_time + step > now_ms:
        done = (now_ms - open_time) / step
        c, volume = round(o + (c - o) * done, 2), round(volume * done, 8)
    return open_time, o, round(max(o, c) * 1.001, 2), round(min(o, c) * 0.999, 2), c, volume


def market_json(base: str, quote: str) -> dict[str, Any]:
    """One entry of exchangeInfo's `symbols`, as Binance sends it for a spot market."""
    return {
        "symbol": f"{base}{quote}", "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8,
        "quoteAsset": quote, "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8,
        "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
             "tickSize": "0.01000000"},
            {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000", "stepSize": "0.00001000"},
            {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
             "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
        ],
        "permissions": [], "permissionSets": [["SPOT", "MARGIN"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


def wall_clock_ms() -> int:
    """The machine's clock, epoch ms: `FakeBinance(clock=wall_clock_ms)` is an exchange running in real time."""
    return int(time.time() * 1000)


def _f(x: float) -> str:
    return f"{x:.8f}"


class FakeBinance:
    """The fake exchange; a context manager (starts serving at once, stops on exit)."""

    DEFAULT_LIMIT, MAX_LIMIT = 500, 1000

    def __init__(self, now_ms: int | None = None, markets: tuple[tuple[str, str], ...] = (
            ("BTC", "USDT"), ("ETH", "USDT"), ("SOL", "USDT"), ("BTC", "EUR")),
                 clock: Callable[[], int] | None = None) -> None:
        """The fake's clock stands at `now_ms`, or reads `clock()` (epoch ms); `advance` adds to either."""
        if (now_ms is None) == (clock is None):
            raise ValueError("give the fake exchange either now_ms or clock")
        self._clock = clock or (lambda: 0)
        self._offset_ms = 0 if now_ms is None else int(now_ms)
        self.markets = {f"{b}{q}": (b, q) for b, q in markets}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path, query) of every request
        self.served: dict[tuple[str, str], list[int]] = defaultdict(list)  # (market id, interval) -> closed open times
        self._faults: list[tuple[str, str, str | None]] = []  # (kind, path, market id or None)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-binance", daemon=True)
        self._thread.start()

    # ---- the test's controls ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def now_ms(self) -> int:
        return int(self._clock()) + self._offset_ms

    def advance(self, ms: int) -> None:
        with self._lock:
            self._offset_ms += int(ms)

    def fail_next(self, kind: str, count: int = 1, path: str = KLINES, market: str | None = None) -> None:
        """The next `count` requests to `path` (for `market`, a Binance id like BTCUSDT, if given) fail:
        "429" rate limited, "5xx" a 503 from the gateway, "malformed" a 200 whose body is not JSON."""
        assert kind in FAULTS, kind
        with self._lock:
            self._faults += [(kind, path, market)] * count

    def klines_requests(self, market: str | None = None) -> list[dict[str, str]]:
        return [q for p, q in self.requests if p == KLINES and (market is None or q.get("symbol") == market)]

    def closed_candles(self, base: str, quote: str, interval: str, start: int, end: int) -> list[tuple]:
        """The candles that have closed by now, opening in [start, end] - what the store should hold."""
        step = timeframe_ms(interval)
        first = -(-start // step) * step
        return [candle(base, quote, interval, t) for t in range(first, end + 1, step) if t + step <= self.now_ms]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "FakeBinance":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- serving ----------------------------------------------------------------------------------
    def _answer(self, path: str, query: dict[str, str]) -> tuple[int, str, str, dict[str, str]]:
        """(status, content type, body, extra headers) for one GET."""
        with self._lock:
            self.requests.append((path, query))
            fault = next((f for f in self._faults if f[1] == path and f[2] in (None, query.get("symbol"))), None)
            if fault is not None:
                self._faults.remove(fault)
            now = self.now_ms
        if fault is not None:
            return self._fault(fault[0])
        if path == "/api/v3/time":
            return self._json({"serverTime": now})
        if path == "/api/v3/exchangeInfo":
            return self._json({
                "timezone": "UTC", "serverTime": now,
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000}],
                "exchangeFilters": [],
                "symbols": [market_json(b, q) for b, q in self.markets.values()]})
        if path == KLINES:
            return self._klines(query, now)
        return self._json({"code": -1, "msg": f"unknown path {path}"}, 404)

    def _klines(self, query: dict[str, str], now: int) -> tuple[int, str, str, dict[str, str]]:
        market, interval = query.get("symbol"), query.get("interval")
        if market not in self.markets:
            return self._json({"code": -1121, "msg": "Invalid symbol."}, 400)
        if interval not in INTERVALS:
            return self._json({"code": -1120, "msg": "Invalid interval."}, 400)
        try:
            limit = int(query.get("limit", self.DEFAULT_LIMIT))
            start = int(query["startTime"]) if "startTime" in query else None
            end = int(query["endTime"]) if "endTime" in query else now
        except ValueError:
            return self._json({"code": -1100, "msg": "Illegal characters found in a parameter."}, 400)
        if not 1 <= limit <= self.MAX_LIMIT:
            return self._json({"code": -1130, "msg": "Invalid data sent for a parameter."}, 400)
        step = timeframe_ms(interval)
        current = now - now % step  # the candle in progress
        last = min(current, end - end % step)
        first = -(-start // step) * step if start is not None else last - (limit - 1) * step
        times = list(range(first, last + 1, step))[:limit]
        base, quote = self.markets[market]
        rows = []
        for t in times:
            o_t, o, h, low, c, v = candle(base, quote, interval, t, now)
            rows.append([o_t, _f(o), _f(h), _f(low), _f(c), _f(v), t + step - 1, _f(v * c), 100 + t // step % 50,
                         _f(v / 2), _f(v * c / 2), "0"])
        with self._lock:
            self.served[(market, interval)] += [t for t in times if t + step <= now]
        return self._json(rows)

    @staticmethod
    def _json(payload: Any, status: int = 200) -> tuple[int, str, str, dict[str, str]]:
        return status, "application/json;charset=UTF-8", json.dumps(payload, separators=(",", ":")), {}

    @classmethod
    def _fault(cls, kind: str) -> tuple[int, str, str, dict[str, str]]:
        if kind == "429":
            status, ctype, body, _ = cls._json(
                {"code": -1003, "msg": "Too much request weight used; current limit is 6000 request weight per "
                                       "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling "
                                       "the API."}, 429)
            return status, ctype, body, {"Retry-After": "1"}
        if kind == "5xx":
            return 503, "text/html", "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>", {}
        return 200, "application/json;charset=UTF-8", '[[1700000000000,"42000.01000000","42100.0', {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                status, ctype, body, headers = fake._answer(parts.path, query)
                data = body.encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass  # quiet: the requests are recorded in fake.requests

        return Handler
