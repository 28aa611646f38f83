"""Backtest of out-of-sample signals through the service's own trading code (no ray).

At the close of every candle that has an out-of-sample prediction (serve_app.training.walkforward), the symbols
without an open position go through the same steps as a live request: market context (regime) from
`compute_contexts` on the recent closes, `decide_actions` on the calibrated probabilities,
`size_positions` with the current equity and the ATR feature, and `assess` against one ExposureBook.
An approved signal is filled at the next candle's open (slippage against us, fee on the notional) and
held until its stop-loss or take-profit (the levels `assess` published, checked against each candle's
low/high; a candle that touches both counts as a stop - the conservative assumption; a gap through a
level fills at the open) or for the label horizon (exit at that candle's close). One position per
symbol: while a symbol is in a trade (or has an order pending), its new signals are not traded.
Equity is marked to market at every close; buy-and-hold puts an equal share of the starting equity
in every symbol at the first out-of-sample open (same fee and slippage) and holds to the end.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from serve_app.training.walkforward import OutOfSample
from serve_app.core.labels import DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS
from serve_app.core.market import MarketConfig, build_snapshot, compute_contexts, realised_vols, vol_threshold_in
from serve_app.core.records import CandleFacts, Prediction, SignalInput, Sizing, Work
from serve_app.core.trading import (ExposureBook, PortfolioConfig, RiskConfig, TradeConfig, assess, decide_actions,
                                    pre_trade_blocks, size_positions)

YEAR_MS = 365.25 * 86_400_000
MIN_TRADES_FOR_RATIOS = 30   # fewer trades: Sharpe and Sortino are not reported


@dataclass
class _Position:
    side: float  # +1 long, -1 short
    notional: float
    stop: float
    take_profit: float
    exit_candle: int  # exit at this candle's close at the latest (signal candle + horizon)
    signal_ms: int
    qty: float = 0.0
    entry: float = 0.0
    entry_ms: int = 0
    fees: float = 0.0


@dataclass
class BacktestResult:
    times: np.ndarray  # candle open times (ms) of the equity curve
    equity: np.ndarray  # strategy, marked at each close
    buy_hold: np.ndarray
    trades: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def performance(equity: np.ndarray, periods_per_year: float) -> dict[str, Any]:
    """Total return, annualised Sharpe/Sortino (per-candle returns, zero risk-free rate) and max drawdown."""
    r = np.diff(equity) / equity[:-1] if equity.size > 1 else np.empty(0)
    mean, sd = (float(r.mean()), float(r.std(ddof=1))) if r.size > 1 else (0.0, 0.0)
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2))) if r.size else 0.0
    scale = math.sqrt(periods_per_year)
    return {
        "total_return": float(equity[-1] / equity[0] - 1) if equity.size else 0.0,
        "sharpe": mean / sd * scale if sd > 0 else None,
        "sortino": mean / downside * scale if downside > 0 else None,
        "max_drawdown": float(np.max(1 - equity / np.maximum.accumulate(equity))) if equity.size else 0.0,
    }


def _trade_stats(trades: list[dict[str, Any]]) -> dict[str, Any]:
    pnl = np.array([t["pnl"] for t in trades])
    gain, loss = float(pnl[pnl > 0].sum()), float(-pnl[pnl < 0].sum())
    return {
        "trades": len(trades),
        "hit_rate": float(np.mean(pnl > 0)) if pnl.size else None,
        "profit_factor": gain / loss if loss > 0 else None,
        "long_trades": sum(t["side"] == "long" for t in trades),
        "exits": {r: sum(t["exit_reason"] == r for t in trades) for r in ("stop_loss", "take_profit", "horizon")},
        "fees_paid": float(sum(t["fees"] for t in trades)),
    }


def backtest(candles: Mapping[str, Any], symbols: Sequence[str], oos: OutOfSample, horizon: int, step_ms: int,
             fee_bps: float = DEFAULT_FEE_BPS, slippage_bps: float = DEFAULT_SLIPPAGE_BPS,
             trade: TradeConfig | None = None,
             portfolio: PortfolioConfig | None = None, risk: RiskConfig | None = None,
             market: MarketConfig | None = None, market_history: int = 1000,
             progress: bool = False) -> BacktestResult:
    """Trade the out-of-sample predictions `oos` (symbol indices into `symbols`, candle indices into
    `candles[symbol]`). Configs default to the service defaults; `market_history` is how many closes
    the market-context snapshot sees (the service's candle cache window)."""
    trade, portfolio = trade or TradeConfig(), portfolio or PortfolioConfig()
    risk, market = risk or RiskConfig(), market or MarketConfig()
    fee, slip = fee_bps / 1e4, slippage_bps / 1e4
    cs = [candles[s] for s in symbols]
    if oos.y.size == 0:
        raise ValueError("no out-of-sample rows to trade")
    start, last_signal = int(oos.open_time.min()), int(oos.open_time.max())
    grid = np.unique(np.concatenate([c.open_time[(c.open_time >= start)
                                                 & (c.open_time <= last_signal + horizon * step_ms)] for c in cs]))
    # candle index of every symbol at every grid point (-1: no candle)
    at = np.full((len(cs), grid.size), -1, dtype=np.int64)
    for i, c in enumerate(cs):
        pos = np.searchsorted(c.open_time, grid).clip(max=len(c) - 1)
        at[i] = np.where(c.open_time[pos] == grid, pos, -1)
    signals_at: dict[int, list[int]] = {}
    for row, g in enumerate(np.searchsorted(grid, oos.open_time)):
        signals_at.setdefault(int(g), []).append(row)
    # the action of every out-of-sample row at once: only BUY/SELL rows need a market context, sizing and
    # risk (most rows are HOLD, and a HOLD never trades)
    all_actions, all_confidence = decide_actions(oos.proba)
    # each symbol's rolling volatility once: the snapshot of a candle takes its percentile over the window
    vols = [realised_vols(c.close, market.vol_lookback) for c in cs]

    book = ExposureBook(ttl_s=horizon * step_ms / 1000)  # a position lives at most `horizon` candles
    realized = portfolio.equity
    last_close = np.full(len(cs), np.nan)
    pending: dict[int, _Position] = {}
    open_pos: dict[int, _Position] = {}
    trades: list[dict[str, Any]] = []
    equity = np.empty(grid.size)
    gross = np.empty(grid.size)
    decisions = {"signals": 0, "BUY": 0, "SELL": 0, "HOLD": 0, "approved": 0, "blocked": 0, "skipped_in_trade": 0}
    blocked_by: Counter = Counter()
    bar = tqdm(total=grid.size, desc="backtest", unit="candle", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)

    def close_position(i: int, p: _Position, price: float, ms: int, reason: str) -> None:
        nonlocal realized
        fill = price * (1 - p.side * slip)
        exit_fee = p.qty * fill * fee
        pnl = p.side * p.qty * (fill - p.entry) - exit_fee
        realized += pnl
        book.set(symbols[i], 0.0, ms / 1000)
        trades.append({"symbol": symbols[i], "side": "long" if p.side > 0 else "short", "signal_ms": p.signal_ms,
                       "entry_ms": p.entry_ms, "entry": p.entry, "exit_ms": ms, "exit": fill, "exit_reason": reason,
                       "notional": p.notional, "fees": p.fees + exit_fee, "pnl": pnl - p.fees,
                       "return": (pnl - p.fees) / p.notional})
        # the entry fee was already taken from `realized` at the fill; pnl above is net of both fees

    for g, t_ms in enumerate(grid.tolist()):
        if g % 1000 == 0:
            bar.update(min(1000, grid.size - g))
        close_ms = t_ms + step_ms
        for i, c in enumerate(cs):
            ci = int(at[i, g])
            if ci < 0:
                continue
            o, h, lo, cl = float(c.open[ci]), float(c.high[ci]), float(c.low[ci]), float(c.close[ci])
            if i in pending:
                p = open_pos[i] = pending.pop(i)
                p.entry = o * (1 + p.side * slip)
                p.qty = p.notional / p.entry
                p.fees = p.notional * fee
                p.entry_ms = t_ms
                realized -= p.fees
            p = open_pos.get(i)
            if p is not None:
                if p.side > 0:
                    stop_hit, tp_hit = lo <= p.stop, h >= p.take_profit
                    stop_px, tp_px = min(o, p.stop), max(o, p.take_profit)
                else:
                    stop_hit, tp_hit = h >= p.stop, lo <= p.take_profit
                    stop_px, tp_px = max(o, p.stop), min(o, p.take_profit)
                if stop_hit:  # also when the take-profit was touched in the same candle: assume the worst
                    close_position(i, open_pos.pop(i), stop_px, close_ms, "stop_loss")
                elif tp_hit:
                    close_position(i, open_pos.pop(i), tp_px, close_ms, "take_profit")
                elif ci >= p.exit_candle:
                    close_position(i, open_pos.pop(i), cl, close_ms, "horizon")
            last_close[i] = cl
        equity[g] = realized + sum(p.side * p.qty * (last_close[i] - p.entry) for i, p in open_pos.items())
        gross[g] = sum(p.qty * last_close[i] for i, p in open_pos.items())

        signalled = signals_at.get(g, [])
        free = [r for r in signalled if int(oos.symbol[r]) not in open_pos and int(oos.symbol[r]) not in pending]
        decisions["signals"] += len(signalled)
        decisions["skipped_in_trade"] += len(signalled) - len(free)
        rows = [r for r in free if all_actions[r] != "HOLD"]
        decisions["HOLD"] += len(free) - len(rows)
        # the risk checks that need neither size nor book first: most BUY/SELL rows of a weak model stop
        # here (confidence), and need no market context or sizing
        facts = {}
        for r in rows:
            i, k = int(oos.symbol[r]), int(oos.candle[r])
            price, opened = float(cs[i].close[k]), int(cs[i].open_time[k])
            # the candle just closed is the freshest data there is: no staleness in a replay
            inp = SignalInput(symbols[i], price, asof_ms=opened, equity=float(equity[g]))
            candle = CandleFacts(last_close=price, last_open_time_ms=opened, atr=float(oos.atr_pct[r]) * price,
                                 atr_pct=float(oos.atr_pct[r]), candles_cached=k + 1, cache_age_s=0.0,
                                 store_reachable=True)
            pred = Prediction(tuple(float(x) for x in oos.proba[r]), all_actions[r], float(all_confidence[r]),
                              "backtest")
            decisions[all_actions[r]] += 1
            blocks = pre_trade_blocks(inp, candle, pred, risk)
            if blocks:
                decisions["blocked"] += 1
                blocked_by.update(key for key, _ in blocks)
            else:
                facts[r] = (i, k, inp, candle, pred)
        if not facts:
            continue
        rows = list(facts)
        sym_i = [facts[r][0] for r in rows]
        ci = [facts[r][1] for r in rows]
        prices = np.array([facts[r][2].price for r in rows])
        first = {i: max(0, k + 1 - market_history) for i, k in zip(sym_i, ci)}
        snapshot = build_snapshot(
            {symbols[i]: cs[i].close[first[i]: k + 1] for i, k in zip(sym_i, ci)}, [], market, close_ms,
            vol_thresholds={symbols[i]: vol_threshold_in(vols[i], first[i], k, market.vol_lookback,
                                                         market.volatile_percentile) for i, k in zip(sym_i, ci)})
        contexts = compute_contexts([symbols[i] for i in sym_i], prices.tolist(), [close_ms] * len(rows),
                                    snapshot, market)
        sized = size_positions([all_actions[r] for r in rows], oos.proba[rows], prices,
                               np.array([facts[r][3].atr for r in rows]), np.full(len(rows), equity[g]),
                               [ctx.regime for ctx in contexts], trade, portfolio)
        for j, r in enumerate(rows):
            i, k, inp, candle, pred = facts[r]
            work = Work(inp, candle=candle, market=contexts[j], prediction=pred,
                        sizing=Sizing(equity=float(equity[g]), notional=float(sized["notional"][j]),
                                      kelly_fraction=float(sized["kelly"][j]),
                                      vol_cap_fraction=float(sized["vol_cap"][j])))
            verdict = assess(work, trade, risk, book, now=close_ms / 1000)
            if not verdict.approved:
                decisions["blocked"] += 1
                blocked_by.update(verdict.blocked_by)
                continue
            decisions["approved"] += 1
            pending[i] = _Position(side=1.0 if pred.action == "BUY" else -1.0, notional=verdict.notional,
                                   stop=verdict.stop_loss, take_profit=verdict.take_profit,
                                   exit_candle=k + horizon, signal_ms=inp.asof_ms)
    for i, p in list(open_pos.items()):  # only if the data ends before a position's horizon
        close_position(i, open_pos.pop(i), float(last_close[i]), int(grid[-1]) + step_ms, "end")
    equity[-1] = realized

    bar.close()
    buy_hold = _buy_and_hold(cs, at, portfolio.equity, fee, slip)
    ppy = YEAR_MS / step_ms
    perf, stats = performance(equity, ppy), _trade_stats(trades)
    if stats["trades"] < MIN_TRADES_FOR_RATIOS:  # an annualised ratio of a handful of trades says nothing
        perf.update(sharpe=None, sortino=None)
    summary = {
        # what a reader needs first: what it made, how long it was in the market, how often it traded and won
        "strategy": {"total_return": perf["total_return"], "time_in_market": float(np.mean(gross > 0)),
                     "trades": stats["trades"], "hit_rate": stats["hit_rate"], **perf, **stats,
                     "mean_gross_exposure": float(np.mean(gross / equity)),
                     "ratios_need_trades": MIN_TRADES_FOR_RATIOS,
                     "decisions": {**decisions, "blocked_by": dict(blocked_by.most_common())}},
        "buy_and_hold": performance(buy_hold, ppy),
        "config": {"fee_bps": fee_bps, "slippage_bps": slippage_bps, "horizon": horizon,
                   "starting_equity": portfolio.equity, "periods_per_year": ppy,
                   "trade": trade.model_dump(), "portfolio": portfolio.model_dump(),
                   "risk": risk.model_dump(), "candles": int(grid.size)},
    }
    return BacktestResult(grid, equity, buy_hold, trades, summary)


def _buy_and_hold(cs: Sequence[Any], at: np.ndarray, equity0: float, fee: float, slip: float) -> np.ndarray:
    """Equal-weight buy-and-hold: each symbol's share bought at its first open on the grid (cash before),
    marked at the closes (carried over gaps), sold at the last close (both fills with fee and slippage)."""
    share = equity0 / len(cs)
    value = np.zeros(at.shape[1])
    for i, c in enumerate(cs):
        present = at[i] >= 0
        first = int(np.argmax(present))
        idx = np.maximum.accumulate(np.where(present, np.arange(at.shape[1]), 0))
        closes = np.asarray(c.close, dtype=np.float64)[at[i][idx]]
        qty = share * (1 - fee) / (float(c.open[at[i, first]]) * (1 + slip))
        v = np.where(np.arange(at.shape[1]) >= first, qty * closes, share)
        v[-1] = qty * closes[-1] * (1 - slip) * (1 - fee)
        value += v
    return value
