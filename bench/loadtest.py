"""`make loadtest`: a burst of requests and a bounded soak against the real graph, outside `make test`.

1. the burst test: `hey -n 1000 -c 10 -m POST ... /generate_signal` — every request must answer 200;
2. a soak: `--soak-seconds` (default 300) at a steady total rate (`--rate`, default 40 req/s; one hey per
   symbol, `-q` per worker) while the summed RSS of the Ray cluster's processes is sampled every
   `--sample-s` seconds. Memory growth = mean of the last window / mean of the first window after warm-up
   − 1 (window 60 s, warm-up 60 s; both a fifth of the soak when it is shorter than 5 minutes).

Checks: zero errors in both runs, memory growth ≤ `--max-growth` (10 %). Starts its own Ray cluster like
`make bench` (bench.run.ray_cluster: own temp dir, make run's Ray settings, stopped precisely) and deploys
configs/serve_config.yaml over the dashboard's REST API. Prints a summary, writes bench/results/loadtest.json
and exits 1 when a check fails.

    python -m bench.loadtest [--soak-seconds 300] [--rate 40] [--concurrency 2]
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from bench.run import (BODIES, CONFIG, RAY_ENV, RESULTS, MemorySampler, hey_binary, log, machine, ray_cluster,
                       summarize, warm_up)
from serve_app.cluster import deploy, free_port


def hey(url: str, body: dict, args: list[str], timeout_s: float) -> dict[str, Any]:
    """One hey run (CSV output); returns latencies of the 200s, error count and status histogram."""
    t0 = time.monotonic()
    if os.environ.get("SIGNAL_API_KEY"):  # the replicas inherit it from this environment: send the key
        args = [*args, "-H", f"X-API-Key: {os.environ['SIGNAL_API_KEY']}"]
    out = subprocess.run([hey_binary(), *args, "-m", "POST", "-T", "application/json", "-d", json.dumps(body),
                          "-o", "csv", url], capture_output=True, text=True, timeout=timeout_s)
    wall = time.monotonic() - t0
    lat, statuses = [], {}
    for row in csv.DictReader(io.StringIO(out.stdout)):
        code = row.get("status-code") or "?"
        statuses[code] = statuses.get(code, 0) + 1
        if code == "200":
            lat.append(float(row["response-time"]))
    errors = sum(n for c, n in statuses.items() if c != "200")
    if out.returncode != 0:
        errors += 1
        log(f"hey exited {out.returncode}: {out.stderr.strip()[:300]}")
    # hey's CSV holds only requests that got a response: connection errors appear in its text summary
    if "Error distribution" in out.stderr:
        log(f"hey errors: {out.stderr.strip()[:300]}")
    return {"lat": lat, "errors": errors, "statuses": statuses, "wall": wall}


def merge(runs: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for r in runs:
        for c, n in r["statuses"].items():
            statuses[c] = statuses.get(c, 0) + n
    out = summarize([x for r in runs for x in r["lat"]], sum(r["errors"] for r in runs), wall_s)
    out["status_codes"] = statuses
    return out


def burst_test(url: str) -> dict[str, Any]:
    """hey -n 1000 -c 10 -m POST ... /generate_signal: 1000 requests from 10 clients as fast as they go."""
    r = hey(url, BODIES[0], ["-n", "1000", "-c", "10"], timeout_s=600)
    return merge([r], r["wall"])


def soak(url: str, marker: str, seconds: float, rate: float, concurrency: int, sample_s: float) -> dict[str, Any]:
    """One hey per symbol, `concurrency` workers each, `-q` per worker so the total is `rate` req/s."""
    qps = max(1.0, rate / (len(BODIES) * concurrency))
    runs: list = [None] * len(BODIES)

    def one(i: int) -> None:
        runs[i] = hey(url, BODIES[i], ["-z", f"{seconds:g}s", "-c", str(concurrency), "-q", f"{qps:g}"],
                      timeout_s=seconds + 300)

    with MemorySampler(marker, sample_s) as rss:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(BODIES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    res = merge(runs, seconds)
    window = min(60.0, seconds / 5)
    warm = window
    first = [mb for t, mb, _ in rss.samples if warm <= t < warm + window]
    last = [mb for t, mb, _ in rss.samples if seconds - window <= t <= seconds]
    first_mb = sum(first) / len(first) if first else None
    last_mb = sum(last) / len(last) if last else None
    res.update({
        "seconds": seconds, "target_rps": round(len(BODIES) * concurrency * qps, 1),
        "hey": f"{len(BODIES)} x hey -z {seconds:g}s -c {concurrency} -q {qps:g}",
        "memory": {
            "sample_period_s": sample_s, "warm_up_s": warm, "window_s": window,
            "first_window_mean_mb": round(first_mb, 1) if first_mb else None,
            "last_window_mean_mb": round(last_mb, 1) if last_mb else None,
            "growth": round(last_mb / first_mb - 1, 4) if first_mb and last_mb else None,
            "min_mb": min(mb for _, mb, _ in rss.samples), "max_mb": max(mb for _, mb, _ in rss.samples),
            "process_counts": sorted({n for _, _, n in rss.samples}),
            "samples": rss.samples,
        },
    })
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    ap.add_argument("--rate", type=float, default=40.0, help="total requests per second during the soak")
    ap.add_argument("--concurrency", type=int, default=2, help="hey workers per symbol during the soak")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period")
    ap.add_argument("--max-growth", type=float, default=0.10)
    ap.add_argument("--output", type=Path, default=RESULTS / "loadtest.json")
    args = ap.parse_args(argv)
    started = time.time()
    cfg = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    http_port = free_port()
    cfg["http_options"]["port"] = http_port
    with ray_cluster(dict(RAY_ENV)) as cluster:
        log("deploying configs/serve_config.yaml (PUT /api/serve/applications/)")
        deploy(cluster["dashboard"], cfg, timeout_s=300)
        url = f"http://127.0.0.1:{http_port}/generate_signal"
        warm_up(url)
        log("burst test: hey -n 1000 -c 10 -m POST ... /generate_signal")
        burst = burst_test(url)
        log(f"burst test: {burst}")
        log(f"soak: {args.soak_seconds:g} s at {args.rate:g} req/s")
        sk = soak(url, cluster["temp_dir"], args.soak_seconds, args.rate, args.concurrency, args.sample_s)
        log(f"soak: { {k: v for k, v in sk.items() if k != 'memory'} }")
    mem = sk["memory"]
    checks = {
        "burst_test_errors": {"value": burst["errors"], "target": "== 0", "met": burst["errors"] == 0},
        "soak_errors": {"value": sk["errors"], "target": "== 0", "met": sk["errors"] == 0},
        "soak_memory_growth": {"value": mem["growth"], "target": f"<= {args.max_growth:g}",
                               "met": mem["growth"] is not None and mem["growth"] <= args.max_growth},
    }
    report = {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
              "settings": {"ray_env": RAY_ENV, "serve_config": "configs/serve_config.yaml", **vars(args),
                           "output": str(args.output)},
              "burst_test": burst, "soak": sk, "checks": checks, "elapsed_s": round(time.time() - started, 1)}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print()
    print(f"burst test (hey -n 1000 -c 10): {burst['requests']} requests, {burst['errors']} errors, "
          f"{burst['rps']} req/s, p50 {burst['p50_ms']} ms, p99 {burst['p99_ms']} ms")
    print(f"soak ({sk['hey']}): {sk['requests']} requests, {sk['errors']} errors, {sk['rps']} req/s, "
          f"p50 {sk['p50_ms']} ms, p99 {sk['p99_ms']} ms")
    print(f"Ray RSS: first window {mem['first_window_mean_mb']} MB, last window {mem['last_window_mean_mb']} MB, "
          f"growth {'n/a' if mem['growth'] is None else format(mem['growth'], '+.2%')} (min {mem['min_mb']}, "
          f"max {mem['max_mb']} MB)")
    for k, c in checks.items():
        print(f"{k:<22} {str(c['value']):>10}  target {c['target']:<8} {'met' if c['met'] else 'NOT met'}")
    print(f"\nwritten {args.output}")
    return 0 if all(c["met"] for c in checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
