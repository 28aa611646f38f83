"""SYNTHETIC sample data — generated, NOT real market data or real news.

It exists so that a fresh clone can train a model and serve signals without any download. Prices
are a simulated process (below), and headlines are made-up text tagged `source = "synthetic-sample"`
(`SAMPLE_SOURCE`) and prefixed "[SYNTHETIC SAMPLE NEWS]". Real data comes in through the
import/ingest commands.

The simulation is deterministic: every random stream is a numpy `default_rng` seeded from a SHA-256
of the symbol and stream name (never Python's salted `hash()`), so the values are identical run to
run; only the timestamps move with `end_ms`. It plants modest, learnable structure, so that the demo
model has something real to find out of sample (and the features something to pick up):

* a common market factor (BTC loads on it with beta 1 and little idiosyncratic noise, so the other
  symbols are correlated with BTC), plus a per-symbol idiosyncratic factor; both switch between
  calm / bull / bear regimes (Markov chain) that set a small drift and the volatility level;
* volatility clustering: each factor's log-volatility follows an exponentially weighted sum of its
  recent |shock| surprises (half-life 10 candles);
* momentum: a symbol's standardized move keeps pushing its price the same way for tens of candles
  (the push builds up over ~3 candles and decays with a half-life of 6; a slow negative tail makes
  the kernel sum to zero, so trends fade instead of compounding) - visible in multi-horizon returns,
  MACD and the distance from moving averages;
* overshoot: 2.7 times the part of a move beyond 1.5 sigma is given back over the next few candles
  (half-life 1.5), which outweighs the momentum: very large moves partly snap back (RSI, Bollinger
  %B) while moderate ones continue;
* flow events (~2 % of a symbol's hourly candles): a volume spike (3-7x) with a one-sigma push, then
  drift the same way (half-life 6 candles) - a volume spike on a moderate move precedes
  continuation;
* intrabar wicks scale with volatility (low <= min(open, close) <= max(open, close) <= high);
* volume rises with |return| / volatility and spikes on flow events.

Drifts are in units of the candle's volatility, and every drift and volatility term depends only on
the shocks of a finite window (`_MEMORY` candles) before the candle. Series are generated
newest-first (every random stream is indexed by age) and the path is scaled so that the last close
equals `SAMPLE_SYMBOLS[symbol]` exactly; as a consequence the newest candles do not depend on `n` (a
longer sample only extends further into the past), which keeps the news scores consistent with
whatever number of candles was seeded.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from serve_app.core.timeutil import DAY_MS, HOUR_MS, anchor_ms, iso_utc, timeframe_ms
from serve_app.store.base import Candles, NewsItem, Store

SAMPLE_SOURCE = "synthetic-sample"
NEWS_PREFIX = "[SYNTHETIC SAMPLE NEWS]"

# The close of the newest candle of each symbol's sample.
SAMPLE_SYMBOLS: dict[str, float] = {
    "BTC": 50000.0, "ETH": 3000.0, "SOL": 100.0, "BNB": 600.0,
    "XRP": 0.6, "ADA": 0.45, "DOGE": 0.15, "AVAX": 35.0,
}


@dataclass(frozen=True)
class _Profile:
    name: str
    beta: float  # loading on the common market factor
    idio_vol: float  # hourly idiosyncratic volatility (log return)
    notional_usd: float  # typical traded notional per hour


_PROFILES: dict[str, _Profile] = {
    "BTC": _Profile("Bitcoin", 1.00, 0.0012, 6.0e7),
    "ETH": _Profile("Ethereum", 1.15, 0.0030, 3.0e7),
    "SOL": _Profile("Solana", 1.35, 0.0060, 1.2e7),
    "BNB": _Profile("Binance Coin", 0.85, 0.0035, 6.0e6),
    "XRP": _Profile("XRP", 1.15, 0.0055, 8.0e6),
    "ADA": _Profile("Cardano", 1.20, 0.0055, 4.0e6),
    "DOGE": _Profile("Dogecoin", 1.45, 0.0080, 6.0e6),
    "AVAX": _Profile("Avalanche", 1.40, 0.0070, 3.0e6),
}
assert set(_PROFILES) == set(SAMPLE_SYMBOLS)

# The return process (see the module doc). Drifts are in units of the candle's volatility and kernels
# are in candles, so every symbol (and timeframe) gets the same structure at its own scale.
# Regimes (calm, bull, bear) as (drift, volatility multiplier); the chain stays put with probability
# _REGIME_STAY per hour (mean regime length ~67 h).
_MARKET_REGIMES = np.array([[0.0, 0.75], [0.05, 1.0], [-0.06, 1.35]])
_IDIO_REGIMES = np.array([[0.0, 0.85], [0.04, 1.0], [-0.04, 1.15]])
_REGIME_STAY = 0.985
_MARKET_VOL = 0.0045  # hourly, before the regime and clustering multipliers
_MEMORY = 240  # candles of past shocks that a candle's drift and volatility depend on
_VOL_HALFLIFE, _VOL_GAMMA = 10.0, 0.25  # clustering: log-vol follows recent |shock| surprises
_TREND_RISE, _TREND_HALFLIFE, _TREND_FADE_HALFLIFE = 2.5, 6.0, 30.0  # momentum kernel (candles)
_TREND_GAIN = 0.28
_REVERT_THRESHOLD, _REVERT_HALFLIFE, _REVERT_GAIN = 1.5, 1.5, 2.7  # overshoot after large moves
_FLOW_PROB, _FLOW_PUSH, _FLOW_VOLUME = 0.02, 1.0, 5.0  # flow events: per-hour chance, push, volume x
_FLOW_HALFLIFE, _FLOW_GAIN = 6.0, 0.35  # the continuation drift after a flow event
_WICK_SCALE = 0.6  # wick length in units of the candle's volatility

_NEWS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "up": ("{name} climbs as buyers step in", "{name} extends gains on strong spot demand",
           "Analysts turn constructive on {name} after steady inflows",
           "{name} breaks above short-term resistance"),
    "down": ("{name} slips as traders take profit", "{name} under pressure amid risk-off mood",
             "{name} falls as funding rates cool", "Selling pressure weighs on {name}"),
    "flat": ("{name} trades sideways in a quiet session", "{name} holds its range as volumes thin",
             "Mixed signals for {name} as the market waits for direction",
             "{name} little changed on the day"),
}


# --------------------------------------------------------------------------------------------------
# the simulation (arrays are newest-first: index 0 is the newest candle)
# --------------------------------------------------------------------------------------------------

def _rng(key: str, stream: str) -> np.random.Generator:
    """A generator that depends only on (key, stream), stable across runs and Python versions."""
    words = [int.from_bytes(hashlib.sha256(f"signalgen-sample/{part}".encode()).digest()[:8], "big")
             for part in (key, stream)]
    return np.random.default_rng(np.random.SeedSequence(words))


def _regime_chain(rng: np.random.Generator, n: int, stay: float) -> np.ndarray:
    """A 3-state Markov chain: stay with probability `stay`, else jump to one of the other two."""
    u = rng.random((n, 2))
    states = np.empty(n, dtype=np.int64)
    state = int(u[0, 1] * 3)
    for k in range(n):
        if k and u[k, 0] > stay:
            state = (state + 1 + int(u[k, 1] * 2)) % 3
        states[k] = state
    return states


def _decay(halflife: float) -> np.ndarray:
    """Exponential kernel 2^(-(j-1)/halflife) for lags j = 1.._MEMORY."""
    return 0.5 ** (np.arange(_MEMORY) / halflife)


def _past(x: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """y[k] = sum_j weights[j-1] * x[k+j] for ages k < n: a causal filter over the len(weights)
    candles before each candle (x is newest-first, with at least n + len(weights) entries). Summed
    lag by lag, elementwise, so y[k] is bit-for-bit the same whatever n is."""
    out = np.zeros(n)
    for j, w in enumerate(weights, start=1):
        if w:
            out += w * x[j:j + n]
    return out


def _factor(key: str, m: int, regimes: np.ndarray, vol: float,
            step_h: float) -> tuple[np.ndarray, np.ndarray]:
    """One factor's log returns (regime drift + shock) and volatility for the newest m candles.

    Volatility = base x regime multiplier x clustering term; the clustering term is an exponentially
    weighted sum of the factor's |shock| surprises over the _MEMORY candles before (unit variance,
    mean-corrected so that it does not move the average volatility)."""
    states = _regime_chain(_rng(key, "regime"), m, _REGIME_STAY ** step_h)
    z = _rng(key, "shock").standard_normal(m + _MEMORY)
    w = _decay(_VOL_HALFLIFE)
    surprise = _past(np.abs(z) - math.sqrt(2 / math.pi), w, m) / math.sqrt((1 - 2 / math.pi) * np.sum(w * w))
    sigma = vol * math.sqrt(step_h) * regimes[states, 1] * np.exp(_VOL_GAMMA * surprise - _VOL_GAMMA ** 2 / 2)
    return sigma * (regimes[states, 0] + z[:m]), sigma


def _dynamics(shock: np.ndarray, n: int) -> np.ndarray:
    """The drift (in units of the candle's volatility) of the newest n candles implied by the
    standardized shocks of the _MEMORY candles before each: momentum minus overshoot reversal."""
    # momentum: a shock keeps pushing the price its way for tens of candles (the push builds up over
    # the first few, then decays); the slow negative tail makes the kernel sum to zero, so trends
    # fade out instead of compounding into absurd paths
    lags = np.arange(1, _MEMORY + 1)
    push = _decay(_TREND_HALFLIFE) * (1.0 - 0.5 ** (lags / _TREND_RISE))
    fade = _decay(_TREND_FADE_HALFLIFE)
    w = push - fade * push.sum() / fade.sum()
    trend = _past(shock, w, n) / math.sqrt(np.sum(w * w))  # unit variance
    # overshoot: a multiple of the part of a shock beyond the threshold is given back over the next
    # few candles, which outweighs the momentum the shock starts: very large moves partly snap back
    excess = np.sign(shock) * np.maximum(np.abs(shock) - _REVERT_THRESHOLD, 0.0)
    w = _decay(_REVERT_HALFLIFE)
    revert = _past(excess, w / w.sum(), n)
    return _TREND_GAIN * trend - _REVERT_GAIN * revert


def _flows(symbol: str, n: int, step_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Flow events of one symbol for the newest n candles: (drift in units of the candle's
    volatility, volume multiplier). An event candle gets a push and a volume spike, and the candles
    after it drift the same way."""
    u = _rng(symbol, "flow").random((n + _MEMORY, 2))
    event = np.where(u[:, 0] < _FLOW_PROB * math.sqrt(step_h), np.where(u[:, 1] < 0.5, -1.0, 1.0), 0.0)
    drift = _FLOW_PUSH * event[:n] + _FLOW_GAIN * _past(event, _decay(_FLOW_HALFLIFE), n)
    size = 0.5 + 2.0 * (u[:n, 1] % 0.5)  # uniform in [0.5, 1.5), independent of the direction
    return drift, 1.0 + (_FLOW_VOLUME - 1.0) * np.abs(event[:n]) * size


def _profile(symbol: str) -> _Profile:
    if symbol not in _PROFILES:
        raise ValueError(f"no synthetic sample for {symbol!r}; known: {', '.join(SAMPLE_SYMBOLS)}")
    return _PROFILES[symbol]


def sample_candles(symbol: str, n: int = 2160, end_ms: int | None = None,
                   timeframe: str = "1h") -> Candles:
    """`n` synthetic candles of `symbol`, ascending; the newest opens at `end_ms` floored to the
    timeframe (default: the current bar) and closes at exactly SAMPLE_SYMBOLS[symbol]."""
    profile, step = _profile(symbol), timeframe_ms(timeframe)
    if n < 1:
        raise ValueError("n must be >= 1")
    step_h = step / HOUR_MS
    # the n candles plus the one before the oldest (its close is the oldest open), plus the _MEMORY
    # candles before those that the drift looks back on
    k = n + 1
    m = k + _MEMORY
    market, market_sigma = _factor("market", m, _MARKET_REGIMES, _MARKET_VOL, step_h)
    idio, idio_sigma = _factor(symbol, m, _IDIO_REGIMES, profile.idio_vol, step_h)
    sigma = np.hypot(profile.beta * market_sigma, idio_sigma)
    shock = (profile.beta * market + idio) / sigma  # the symbol's standardized move (incl. regime drift)
    flow_drift, flow_volume = _flows(symbol, k, step_h)
    ret = sigma[:k] * (shock[:k] + _dynamics(shock, k) + flow_drift)

    path = SAMPLE_SYMBOLS[symbol] * np.exp(-np.concatenate(([0.0], np.cumsum(ret[:n]))))
    close, open_ = path[:n], path[1:]  # open[t] = close[t-1]
    ret, sigma, flow_volume = ret[:n], sigma[:n], flow_volume[:n]
    wick = np.abs(_rng(symbol, "wick").standard_normal((n, 2))) * _WICK_SCALE * sigma[:, None]
    high = np.maximum(open_, close) * np.exp(wick[:, 0])
    low = np.minimum(open_, close) * np.exp(-wick[:, 1])
    activity = (np.exp(0.35 * _rng(symbol, "volume").standard_normal(n)) * (0.4 + np.abs(ret) / sigma)
                * flow_volume)
    volume = profile.notional_usd * step_h * activity / ((open_ + close) / 2)

    end = anchor_ms(end_ms, step)
    open_time = end - step * np.arange(n - 1, -1, -1, dtype=np.int64)
    return Candles(symbol, timeframe, open_time, open_[::-1].copy(), high[::-1].copy(),
                   low[::-1].copy(), close[::-1].copy(), volume[::-1].copy())


# --------------------------------------------------------------------------------------------------
# news
# --------------------------------------------------------------------------------------------------

def _headline(symbol: str, score: float, rng: np.random.Generator) -> str:
    mood = "up" if score > 0.25 else "down" if score < -0.25 else "flat"
    options = _NEWS_TEMPLATES[mood]
    text = options[int(rng.integers(len(options)))].format(name=f"{_profile(symbol).name} ({symbol})")
    return f"{NEWS_PREFIX} {text} (synthetic sample, not real news)"


def _symbol_news(symbol: str, end: int, days: int) -> list[NewsItem]:
    """2-4 headlines a day; score ~ tanh of the trailing 24 h sample return plus noise."""
    n = days * 24 + 48
    log_close = np.log(sample_candles(symbol, n=n, end_ms=end).close)
    day_sd = float(np.std(np.diff(log_close))) * math.sqrt(24) or 1.0
    rng = _rng(symbol, "news")
    items = []
    for day in range(days):
        for _ in range(2 + int(rng.integers(3))):
            hours_back, minute = day * 24 + int(rng.integers(24)), int(rng.integers(60))
            i = n - 3 - hours_back  # the newest candle closed before publication
            trailing = log_close[i] - log_close[i - 24]
            score = float(np.clip(0.75 * math.tanh(trailing / day_sd) + 0.3 * rng.standard_normal(), -1, 1))
            items.append(NewsItem(symbol, end - hours_back * HOUR_MS - minute * 60_000, SAMPLE_SOURCE,
                                  round(score, 3), _headline(symbol, score, rng)))
    return items


def sample_news(symbols: Iterable[str], end_ms: int | None = None, days: int = 30) -> list[NewsItem]:
    """Synthetic headlines for the `days` before `end_ms` (default: now; floored to the hour; no
    item is later than that), ascending by published_at, source SAMPLE_SOURCE."""
    end = anchor_ms(end_ms, HOUR_MS)
    items = [item for symbol in symbols for item in _symbol_news(symbol, end, days)]
    return sorted(items, key=lambda it: (it.published_at, it.symbol, it.headline))


# --------------------------------------------------------------------------------------------------
# seeding a store
# --------------------------------------------------------------------------------------------------

def seed_store(store: Store, symbols: Sequence[str] | None = None, n: int = 2160,
               end_ms: int | None = None, timeframe: str = "1h", *, replace: bool = False) -> dict[str, Any]:
    """Write the sample (candles + news) for `symbols` (default: all of SAMPLE_SYMBOLS); idempotent.

    With `replace=True` the sample is re-anchored cleanly: the symbols' candles outside the new
    window and their earlier synthetic news are deleted (only news with source SAMPLE_SOURCE)."""
    symbols = list(symbols or SAMPLE_SYMBOLS)
    for symbol in symbols:
        _profile(symbol)  # fail before writing anything
    step = timeframe_ms(timeframe)
    end = anchor_ms(end_ms, step)
    store.migrate()
    candles_written = candles_deleted = 0
    for symbol in symbols:
        candles = sample_candles(symbol, n, end, timeframe)
        candles_written += store.upsert_candles(symbol, timeframe, candles.to_rows())
        if replace:
            candles_deleted += store.delete_candles(symbol, timeframe, before_ms=int(candles.open_time[0]),
                                                    after_ms=int(candles.open_time[-1]))
    days = max(1, min(30, n * step // DAY_MS))
    news = sample_news(symbols, end_ms=end, days=days)
    news_deleted = store.delete_news(SAMPLE_SOURCE, symbols) if replace else 0
    news_new = store.insert_news(news)
    return {
        "backend": store.backend, "symbols": symbols, "timeframe": timeframe, "candles_per_symbol": n,
        "end_ms": end, "end_time": iso_utc(end),
        "rows": {"candles": candles_written, "news_sentiment": news_new},
        "deleted": {"candles": candles_deleted, "news_sentiment": news_deleted},
    }


def _last_candle(store: Store, symbol: str, timeframe: str) -> Candles:
    return store.load_candles(symbol, timeframe, limit=1)


def sample_is_stale(store: Store, timeframe: str = "1h", max_age_ms: int = 2 * HOUR_MS,
                    now_ms: int | None = None) -> bool:
    """True when the store has no candles in `timeframe`, or BTC's newest candle opened more than
    `max_age_ms` before `now_ms` (default: now)."""
    if not store.list_symbols(timeframe):
        return True
    last = _last_candle(store, "BTC", timeframe)
    if len(last) == 0:
        return True
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    return now - int(last.open_time[-1]) > max_age_ms


def sample_symbols(store: Store, symbols: Iterable[str], timeframe: str = "1h") -> list[str]:
    """Which of `symbols` hold the synthetic sample in `timeframe` (a sample symbol whose newest close is the
    sample's exact final price): what a model trained on them learned says nothing about real markets."""
    out = []
    for symbol in symbols:
        last = _last_candle(store, symbol, timeframe)
        if symbol in SAMPLE_SYMBOLS and len(last) and float(last.close[-1]) == SAMPLE_SYMBOLS[symbol]:
            out.append(symbol)
    return out


def holds_sample_data(store: Store, timeframe: str = "1h") -> bool:
    """True when every symbol with candles in `timeframe` is a sample symbol whose newest close is
    the sample's exact final price (real data is practically never exactly that), or there are no
    candles. Used to avoid overwriting imported data with the synthetic sample."""
    for symbol in store.list_symbols(timeframe):
        last = _last_candle(store, symbol, timeframe)
        if symbol not in SAMPLE_SYMBOLS or float(last.close[-1]) != SAMPLE_SYMBOLS[symbol]:
            return False
    return True
