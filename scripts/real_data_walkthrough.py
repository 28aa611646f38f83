"""The walkthrough of docs/training.md ("Your own data, start to finish"), run for real: three candle files shaped
like real downloads (a Binance-style 1-minute export, an hourly file with ISO datetimes, a daily file with
dates) are generated (random walks: this machine has no internet, and a random walk is what an honest tool
must call "no edge"), then imported, trained, evaluated and offered for promotion with the installed
`signalgen`, in an empty store and registry. Prints each command and what it printed (stdout + stderr), the
work directory shown as ~/real-data. tests/unit/test_docs_walkthrough.py checks docs/training.md against it.

    .venv/bin/python scripts/real_data_walkthrough.py [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import market_fixtures as mf  # noqa: E402  (the generator the tests use)

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SHOWN_AS = "~/real-data"  # the work directory, as the transcript shows it

STEPS = [
    "signalgen import candles btc_1m.csv --symbol BTC",
    "signalgen import candles sol_1h.csv --symbol SOL --timeframe 1m",
    "signalgen import candles sol_1h.csv --symbol SOL",
    "signalgen import candles btc_1d.csv --symbol BTC",
    "signalgen store info",
    "signalgen train --timeframe 1m --quiet",
    "signalgen evaluate --model-version latest --quiet --out reports/btc-1m",
    "signalgen train --timeframe 1h --quiet",
    "signalgen evaluate --model-version latest --quiet --out reports/sol-1h",
    "signalgen models list",
    "signalgen models promote latest --no-deploy",
    "signalgen models promote latest --no-deploy --force --reason 'paper-trading trial, ticket Q-17'",
    "tail -n 1 models/HISTORY.jsonl",
]


def write_files(where: Path) -> None:
    """The three files of issue 12's report, by shape: 45,000 one-minute, 1,000 hourly, 366 daily candles."""
    mf.write_csv(where / "btc_1m.csv", mf.walk(45_000, MINUTE, seed=101, sigma=0.0008, price=42_000.0),
                 "open_time", mf.epoch_ms, extra=True)
    mf.write_csv(where / "sol_1h.csv", mf.walk(1_000, HOUR, seed=102, sigma=0.008, price=95.0),
                 "datetime", mf.iso_datetime)
    mf.write_csv(where / "btc_1d.csv", mf.walk(366, DAY, seed=103, sigma=0.03, price=42_000.0),
                 "date", mf.iso_date)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, help="work in this directory (kept) instead of a temporary one")
    args = ap.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="walkthrough-"))
    work.mkdir(parents=True, exist_ok=True)
    write_files(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MYSQL_", "SIGNAL_", "SIGNALGEN_"))}
    env.update(SIGNAL_DB_PATH=str(work / "real.sqlite"), MODEL_DIR=str(work / "models"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    for step in STEPS:
        done = subprocess.run(shlex.split(step), cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        print(f"$ {step}")
        print(done.stdout.rstrip().replace(str(work), SHOWN_AS))
        if done.returncode:
            print(f"(exit code {done.returncode})")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
