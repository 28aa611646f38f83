"""Regenerate the docs' example plots (docs/img/evaluate_*.png, docs/img/report_*.png) from the
synthetic sample, in a throw-away store and registry:

    .venv/bin/python scripts/docs_plots.py [--keep DIR]

evaluate_*: `signalgen evaluate` on the sample (8 symbols). report_*: signals generated in-process with
the service's own pipeline (LocalPipeline) every 3 hours across the trained model's test window, each
from the candles and news published up to that hour only, then `signalgen report --plot`.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
STEP_HOURS = 3


class StoreAsOf:
    """A read view of a store as it was at `clock` (ms): no candle opening later, no news published later."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.clock = inner, 0

    def load_candles(self, symbol: str, timeframe: str, limit: int | None = None, since_ms: int | None = None,
                     until_ms: int | None = None):
        until = self.clock if until_ms is None else min(until_ms, self.clock)
        return self.inner.load_candles(symbol, timeframe, limit=limit, since_ms=since_ms, until_ms=until)

    def load_news(self, since_ms: int, symbols=None):
        return [n for n in self.inner.load_news(since_ms, symbols) if n.published_at <= self.clock]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def generate_signals(store: Any, version_dir: Path) -> int:
    """Signals over the model's test window (out of sample), stored as the service would store them."""
    from tqdm import tqdm

    from serve_app.core.model import SignalModel
    from serve_app.core.pipeline import LocalPipeline
    from serve_app.core.records import Signal, SignalInput
    from serve_app.core.timeutil import HOUR_MS, iso_ms

    model = SignalModel.load(version_dir)
    window = model.metadata["test_window"]
    start, end = max(w[0] for w in window.values()), min(w[1] for w in window.values())
    view = StoreAsOf(store)
    pipe = LocalPipeline(lambda: view, model)
    symbols = store.list_symbols("1h")
    written = 0
    for t in tqdm(range(start, end - 8 * HOUR_MS, STEP_HOURS * HOUR_MS), desc="signals", unit="step"):
        view.clock = t
        pipe.refresh()
        decided = t + HOUR_MS  # the candle opening at t has closed: that is when the signal is given
        requests = [SignalInput(s, float(pipe.cache.data[s].close[-1]), decided) for s in symbols]
        results = pipe.run(requests)
        failed = [r for r in results if not isinstance(r, Signal)]
        if failed:
            raise RuntimeError(f"pipeline failed at {iso_ms(decided)}: {failed[:2]}")
        written += store.insert_signals([replace(r, generated_at_ms=decided).row() for r in results])
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="work in this directory and keep it (default: a temp dir)")
    a = ap.parse_args(argv)
    work = a.keep or Path(tempfile.mkdtemp(prefix="signalgen-docs-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(SIGNAL_DB_PATH=str(work / "sample.sqlite"), MODEL_DIR=str(work / "models"), MYSQL_HOST="")

    from serve_app.training.train import train
    from serve_app.cli import main as signalgen
    from serve_app.store import open_store
    from serve_app.data.sample import seed_store

    try:
        with open_store() as store:
            seed_store(store)
            version_dir = train(store, n_estimators=60, progress=True)
            if signalgen(["evaluate", "--out", str(work / "evaluate"), "--dpi", "80"]) != 0:
                return 1
            print(f"{generate_signals(store, version_dir)} signals generated")
        if signalgen(["report", "--plot", "--out", str(work / "report")]) != 0:
            return 1
        IMG.mkdir(parents=True, exist_ok=True)
        for kind in ("evaluate", "report"):
            for png in sorted((work / kind).glob("*.png")):
                shutil.copyfile(png, IMG / f"{kind}_{png.name}")
                print(f"wrote {IMG / f'{kind}_{png.name}'}")
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
