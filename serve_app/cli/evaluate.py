"""`signalgen evaluate`: walk-forward evaluation + backtest of the model family on stored candles, with a
report directory (serve_app/training/evaluate.py does the work; this module parses and prints).

    signalgen evaluate [--symbols BTC,ETH] [--timeframe 1h] [--folds 5] [--train-candles N | --train-fraction F]
                       [--test-candles N | --test-fraction F] [--purge N] [--n-estimators N]
                       [--model-version V] [--fee-bps 10] [--slippage-bps 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from serve_app.training.evaluate import EvaluateError, EvaluationOptions, evaluate


def register(sub: argparse._SubParsersAction) -> None:
    d = EvaluationOptions()  # the defaults, defined once
    p = sub.add_parser("evaluate", help="walk-forward evaluation + backtest, writes a report directory",
                       description="Walk-forward evaluation (rolling time windows, purged, never shuffled) of "
                                   "the model family on stored candles, against the majority-class and "
                                   "momentum baselines, then a backtest of the out-of-sample signals through "
                                   "the service's portfolio and risk code. Writes metrics.json, report.md "
                                   "and PNG plots.")
    p.add_argument("--symbols", help="comma-separated (default: every symbol stored for the timeframe)")
    p.add_argument("--timeframe", help="candle timeframe (default: the model version's, else 1h)")
    p.add_argument("--folds", type=int, default=d.folds, help="number of consecutive test windows (default %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--train-candles", type=int, metavar="N", help="training window length in candles")
    g.add_argument("--train-fraction", type=float, default=d.train_fraction, metavar="F",
                   help="training window as a fraction of the data span (default %(default)s)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--test-candles", type=int, metavar="N", help="test window length per fold in candles")
    g.add_argument("--test-fraction", type=float, metavar="F",
                   help="test window per fold as a fraction of the span (default: the folds share what "
                        "follows the first training window)")
    p.add_argument("--purge", type=int, help="candles between training and test windows (default and "
                                             "minimum: the label horizon)")
    p.add_argument("--n-estimators", type=int, default=d.n_estimators,
                   help="max boosting rounds per fold, early-stopped (default %(default)s)")
    p.add_argument("--model-version", help="registry version whose label spec and XGBoost parameters are "
                                           "evaluated, and which receives evaluation.json (default: current)")
    p.add_argument("--model-dir", type=Path, help="registry root (default: $MODEL_DIR or models/artifacts)")
    p.add_argument("--fee-bps", type=float, default=d.fee_bps, help="fee per fill, basis points (default %(default)g)")
    p.add_argument("--slippage-bps", type=float, default=d.slippage_bps,
                   help="slippage per fill, basis points (default %(default)g)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, help="report directory (default reports/eval-<UTC timestamp>/)")
    p.add_argument("--dpi", type=int, default=d.dpi, help="resolution of the PNG plots (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, feature_fn: Callable[..., Any] | None = None) -> int:
    """The command. `feature_fn` is the feature function the causality check guards (default: the
    serving one, serve_app.core.features.compute_features)."""
    try:
        out, text = evaluate(EvaluationOptions.from_namespace(args), feature_fn)
    except EvaluateError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    print(text, end="")  # ends with the verdict line
    return 0
