"""A tiny `make bench` for correctness only (no timing assertion): the in-process and one-process
scenarios run the real stage code on the embedded sample and answer every request with a signal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.training.train import train
from serve_app.settings import StoreSettings
from serve_app.store import open_store
from serve_app.data.sample import seed_store

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bench")
    env = {"SIGNAL_DB_PATH": str(root / "db.sqlite"), "MODEL_DIR": str(root / "models"), "MYSQL_HOST": ""}
    store = open_store(StoreSettings.from_env(env))
    seed_store(store, symbols=["BTC", "ETH", "SOL"], n=400)
    train(store, root=env["MODEL_DIR"], n_estimators=20, min_candles=200)
    store.close()
    return env


def test_bench_smoke_inprocess_and_plain_uvicorn(bench_env, tmp_path):
    out = tmp_path / "latest.json"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--scenarios", "inprocess,plain_uvicorn",
                           "--output", str(out)], cwd=ROOT, env={**os.environ, **bench_env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    for scenario in ("inprocess", "plain_uvicorn"):
        runs = report["scenarios"][scenario]
        assert set(runs) == {"1", "3"}
        for r in runs.values():
            assert r["requests"] > 0 and r["errors"] == 0 and r["rps"] > 0 and r["p50_ms"] > 0
    assert report["ratios"]["total_errors"] == 0
    assert "plain_uvicorn" in proc.stdout and "written" in proc.stdout
