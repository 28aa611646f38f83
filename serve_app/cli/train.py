"""`signalgen train`: train a model on the configured store and register it (serve_app.training.train)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve_app import settings
from serve_app.core.labels import DEFAULT_HORIZON, DEFAULT_K, DEFAULT_VOL_PERIOD


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the configured store and register it",
                       description="Candles from the store -> features/labels -> time-ordered split -> XGBoost "
                                   "-> temperature calibration -> out-of-sample evaluation -> registry.")
    p.add_argument("--symbols", help="comma-separated (default: every symbol in the store)")
    p.add_argument("--timeframe", default=settings.DEFAULT_TIMEFRAME)
    p.add_argument("--horizon", type=int, default=DEFAULT_HORIZON, help="label horizon in candles (default %(default)s)")
    p.add_argument("--k", type=float, default=DEFAULT_K, help="flat band in volatility units (default %(default)s)")
    p.add_argument("--vol-period", type=int, default=DEFAULT_VOL_PERIOD, help="candles of the volatility estimate")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--purge", type=int, default=None, help="gap in candles between segments (default: horizon)")
    p.add_argument("--n-estimators", type=int, default=500, help="max boosting rounds (early-stopped)")
    p.add_argument("--model-dir", default=None, help="registry root (default: $MODEL_DIR or models/artifacts)")
    p.add_argument("--set-current", action=argparse.BooleanOptionalAction, default=True,
                   help="point CURRENT at the new version (default: yes)")
    p.add_argument("--if-missing", action="store_true", help="do nothing when a current model exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from serve_app.store import open_store
    from serve_app.training import registry
    from serve_app.training.train import train

    root = Path(a.model_dir) if a.model_dir else settings.model_dir()
    if a.if_missing:
        cur = registry.current_version(root)
        if cur is not None and (root / cur / registry.METADATA_FILE).is_file():
            print(f"current model {cur} exists under {root}; nothing to do (--if-missing)")
            return 0
    store = open_store()
    try:
        symbols = a.symbols.split(",") if a.symbols else None
        vdir = train(store, symbols=symbols, timeframe=a.timeframe, horizon=a.horizon, k=a.k,
                     vol_period=a.vol_period, test_fraction=a.test_fraction, val_fraction=a.val_fraction,
                     purge=a.purge, n_estimators=a.n_estimators, set_current=a.set_current, root=root,
                     progress=not a.quiet)
    except ValueError as e:
        print(f"training failed: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print((vdir / "report.txt").read_text(encoding="utf-8"), end="")
    print(f"saved {vdir}" + ("  (CURRENT)" if a.set_current else ""))
    return 0
