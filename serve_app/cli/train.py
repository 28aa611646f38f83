"""`signalgen train`: train a model on the configured store and register it (serve_app.training.train)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve_app import settings
from serve_app.core.labels import DEFAULT_K


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the configured store and register it",
                       description="Candles from the store -> features/labels -> time-ordered split -> XGBoost "
                                   "-> temperature calibration -> out-of-sample evaluation -> registry.")
    p.add_argument("--symbols", help="comma-separated (default: every symbol in the store)")
    p.add_argument("--timeframe", default=settings.DEFAULT_TIMEFRAME)
    p.add_argument("--horizon", type=int, help="label horizon in candles (default: 4 hours of candles, longer if a "
                                               "labelled move would not pay a round trip's costs)")
    p.add_argument("--k", type=float, default=DEFAULT_K, help="flat band in volatility units (default %(default)s)")
    p.add_argument("--vol-period", type=int, help="candles of the labels' volatility estimate (default: 12 "
                                                  "horizons, at least 48)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--purge", type=int, default=None, help="gap in candles between segments (default: horizon)")
    p.add_argument("--n-estimators", type=int, default=500, help="max boosting rounds (early-stopped)")
    p.add_argument("--model-dir", default=None, help="registry root (default: $MODEL_DIR or models/artifacts)")
    p.add_argument("--if-missing", action="store_true",
                   help="bootstrap a registry: do nothing when it has a CURRENT model, else train one and make it "
                        "CURRENT (what make run and the image do). Without it, CURRENT never moves: a new version "
                        "is served after `signalgen evaluate --model-version V` and `signalgen models promote V` "
                        "(the promotion gate)")
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
    serving = registry.current_version(root)
    set_current = bool(a.if_missing)  # only when bootstrapping: no CURRENT (checked above)
    store = open_store()
    try:
        symbols = a.symbols.split(",") if a.symbols else None
        vdir = train(store, symbols=symbols, timeframe=a.timeframe, horizon=a.horizon, k=a.k,
                     vol_period=a.vol_period, test_fraction=a.test_fraction, val_fraction=a.val_fraction,
                     purge=a.purge, n_estimators=a.n_estimators, set_current=set_current, root=root,
                     progress=not a.quiet)
    except ValueError as e:
        print(f"training failed: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print((vdir / "report.txt").read_text(encoding="utf-8"), end="")
    if set_current:
        print(f"saved {vdir}  (CURRENT: the registry had none)")
    else:
        print(f"saved {vdir}")
        print(f"CURRENT {'stays ' + serving if serving else 'is not set'}. To serve the new version: signalgen "
              f"evaluate --model-version {vdir.name}, then signalgen models promote {vdir.name} (refused unless "
              f"its evaluation shows an edge)")
    return 0
