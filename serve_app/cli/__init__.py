"""`signalgen`: the one command line of the system, thin commands over the package's own code.

    signalgen store    migrate | seed [--if-missing-or-stale] | info    schema, synthetic sample, contents
    signalgen collect  [--symbols BTC,ETH] [--timeframes 1h,1m] [--loop]   keep market data fresh (ccxt)
    signalgen ingest   --exchange binance --symbols BTC,ETH --timeframe 1h --since 2024-01-01
    signalgen import   candles FILE.csv|FILE.json --symbol BTC [--timeframe 1h]
    signalgen import   news FILE.csv
    signalgen train    [--symbols ...] [--horizon 4] [--if-missing]   (CURRENT only with --if-missing)
    signalgen evaluate [--symbols ...] [--out reports/eval-...]   walk-forward + backtest + plots
    signalgen models   list | promote VERSION | rollback
    signalgen report   [--plot] [--out DIR]                        live signals' realised performance
    signalgen k8s      preflight [--context C] [--manifests DIR]     read-only cluster checks before kubectl apply

Each subcommand is a module of serve_app.cli that exposes `register(subparsers)`: it adds its parser and
sets `func(args) -> int`, which parses nothing more, calls the package (store, data, training, core) and
prints. Heavy dependencies (xgboost, matplotlib, ccxt) are imported inside the commands, so `signalgen
--help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# subcommand modules, in the order `--help` lists them
MODULES = (
    "serve_app.cli.store",       # store migrate|seed|info
    "serve_app.cli.collect",     # collect
    "serve_app.cli.ingest",      # ingest, import
    "serve_app.cli.train",       # train
    "serve_app.cli.evaluate",    # evaluate
    "serve_app.cli.models",      # models list|promote|rollback
    "serve_app.cli.report",      # report
    "serve_app.cli.k8s",         # k8s preflight
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="signalgen", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in MODULES:
        importlib.import_module(name).register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
