"""`make bench-evaluate`: how long `signalgen evaluate` takes on a large one-minute series, by phase.

A random-walk BTC series of 45,000 one-minute candles (the size of a month of real 1m data) is written to a
throw-away SQLite store, then `serve_app.training.evaluate.evaluate` runs on it with the default options, as
`signalgen evaluate --timeframe 1m` would (no registered model: the label spec derived from the data). The
walk-forward and the backtest are also timed on their own. Writes bench/results/evaluate.json.

    python -m bench.evaluate_speed [--candles 45000]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def random_walk_candles(n: int, step_ms: int, seed: int = 3):
    from serve_app.store.base import Candles

    rng = np.random.default_rng(seed)
    close = 50_000.0 * np.exp(np.cumsum(rng.normal(0, 0.0008, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0, 0.0004, n)) * close
    t0 = (int(time.time() * 1000) // step_ms - n) * step_ms
    return Candles("BTC", "1m", t0 + np.arange(n, dtype=np.int64) * step_ms, open_,
                   np.maximum(open_, close) + spread, np.minimum(open_, close) - spread, close,
                   rng.uniform(1, 10, n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candles", type=int, default=45_000)
    ap.add_argument("--output", type=Path, default=RESULTS / "evaluate.json")
    args = ap.parse_args(argv)

    from serve_app.store.sqlite_store import SQLiteStore

    work = Path(tempfile.mkdtemp(prefix="evalbench"))
    os.environ.update(SIGNAL_DB_PATH=str(work / "store.sqlite"), MODEL_DIR=str(work / "models"), MYSQL_HOST="")
    candles = random_walk_candles(args.candles, 60_000)
    with SQLiteStore(work / "store.sqlite") as store:
        store.migrate()
        store.upsert_candles("BTC", "1m", candles.to_rows())

    from serve_app.training.evaluate import EvaluationOptions, evaluate

    t0 = time.perf_counter()
    out, text = evaluate(EvaluationOptions(timeframe="1m", out=work / "report", quiet=True))
    total = time.perf_counter() - t0
    metrics = json.loads((out / "metrics.json").read_text())
    phases = dict(metrics.get("timings_s", {}))
    phases["report_and_plots"] = round(total - sum(phases.values()), 2)  # metrics.json, report.md, 3 PNGs
    result = {"candles": args.candles, "timeframe": "1m", "evaluate_s": round(total, 2), "phases_s": phases,
              "python": sys.version.split()[0], "cpus": os.cpu_count()}
    print(text)
    print(json.dumps(result, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
