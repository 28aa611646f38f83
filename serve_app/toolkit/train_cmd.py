"""`signalgen train`: models.train's command line under the toolkit (same options, same code)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on the configured store (options: signalgen train --help)",
                       add_help=False)
    p.set_defaults(func=_run, passthrough=True)  # every option goes to models.train's own parser


def _run(args: argparse.Namespace) -> int:
    from models.train import main

    return main(args.extra)
