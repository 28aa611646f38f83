"""`signalgen`: the operator's toolkit, one CLI over the same core code the deployments use.

    signalgen ingest   --exchange binance --symbols BTC,ETH --timeframe 1h --since 2024-01-01
    signalgen import   candles FILE.csv|FILE.json --symbol BTC [--timeframe 1h]
    signalgen import   news FILE.csv
    signalgen train    [same options as python -m models.train]
    signalgen evaluate [--symbols ...] [--out reports/eval-...]   walk-forward + backtest + plots
    signalgen models   list | promote VERSION | rollback
    signalgen report   [--plot] [--out DIR]                        live signals' realised performance

Each subcommand lives in a module of serve_app.toolkit that exposes `register(subparsers)`; it adds its
parser and sets `func(args) -> int`. Modules import their heavy dependencies (xgboost, matplotlib, ccxt)
inside the commands, so `signalgen --help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# subcommand modules, in the order `--help` lists them
MODULES = (
    "serve_app.toolkit.ingest",      # ingest, import
    "serve_app.toolkit.train_cmd",   # train
    "serve_app.toolkit.evaluate",    # evaluate
    "serve_app.toolkit.lifecycle",   # models list|promote|rollback
    "serve_app.toolkit.report",      # report
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="signalgen", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in MODULES:
        importlib.import_module(name).register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
