"""How per-request cost grows with the number of tracked symbols and with candle history length.

In-process (LocalPipeline: the stages' own functions), against a temporary SQLite store filled with
copies of the synthetic sample under other names. Request cost should stay flat: features use a fixed
window per symbol, and everything that spans all symbols (breadth, vol thresholds) is computed when the
caches refresh, off the request path. Refresh time is reported too (it grows, by design, with the data).
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from serve_app.training.registry import resolve
from serve_app.core.model import SignalModel
from serve_app.core.pipeline import LocalPipeline
from serve_app.core.records import Signal, SignalInput
from serve_app.data.sample import SAMPLE_SYMBOLS, sample_candles
from serve_app.store.sqlite_store import SQLiteStore

BASE = list(SAMPLE_SYMBOLS)


def _fill(path: Path, n_symbols: int, n_candles: int) -> list[str]:
    store = SQLiteStore(path)
    store.migrate()
    names = []
    for i in range(n_symbols):
        base = BASE[i % len(BASE)]
        name = base if i < len(BASE) else f"S{i:04d}"
        c = sample_candles(base, n=n_candles)
        store.upsert_candles(name, "1h", c.to_rows())
        names.append(name)
    store.close()
    return names


def _measure(path: Path, names: list[str], model: SignalModel, history: int, reps: int = 300) -> dict:
    pipe = LocalPipeline(lambda: SQLiteStore(path), model, market_history=history)
    t0 = time.perf_counter()
    pipe.refresh()
    refresh_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    picks = rng.choice(names, size=reps)
    prices = {s: float(pipe.cache.data[s].close[-1]) for s in names}
    now = int(time.time() * 1000)
    for s in picks[:30]:  # warm up
        pipe.run([SignalInput(s, prices[s], now)])
    one = []
    for s in picks:
        t = time.perf_counter()
        (result,) = pipe.run([SignalInput(s, prices[s], now)])
        one.append(time.perf_counter() - t)
        assert isinstance(result, Signal), result
    batch = []
    for k in range(0, reps, 32):
        items = [SignalInput(s, prices[s], now) for s in picks[k:k + 32]]
        t = time.perf_counter()
        pipe.run(items)
        batch.append((time.perf_counter() - t) / len(items))
    return {"symbols": len(names), "history": history, "refresh_s": round(refresh_s, 3),
            "p50_ms_single": round(float(np.median(one)) * 1000, 3),
            "p50_ms_per_request_batch32": round(float(np.median(batch)) * 1000, 3)}


def main(output: Path) -> int:
    model = SignalModel.load(resolve("current"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_symbols in (10, 100, 1000):
            path = Path(tmp) / f"s{n_symbols}.sqlite"
            t = time.perf_counter()
            names = _fill(path, n_symbols, 400)
            print(f"[growth] {n_symbols} symbols x 400 candles seeded in {time.perf_counter() - t:.1f} s", flush=True)
            rows.append(_measure(path, names, model, history=400))
            print(f"[growth] {rows[-1]}", flush=True)
        for n_candles in (500, 2000, 8000):
            path = Path(tmp) / f"h{n_candles}.sqlite"
            names = _fill(path, 10, n_candles)
            rows.append(_measure(path, names, model, history=n_candles))
            print(f"[growth] {rows[-1]}", flush=True)
    print(f"\n{'symbols':>8} {'history':>8} {'refresh s':>10} {'1 req ms':>9} {'per req in 32 ms':>17}")
    for r in rows:
        print(f"{r['symbols']:>8} {r['history']:>8} {r['refresh_s']:>10.3f} {r['p50_ms_single']:>9.3f} "
              f"{r['p50_ms_per_request_batch32']:>17.3f}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"rows": rows}, indent=2))
    print(f"written {output}")
    return 0
