"""`make bench`: the signal graph against the floors it should be compared with, in one run.

Scenarios, each at concurrency 1, 10 and 32 (the README's requests, symbols mixed):
  inprocess      the stage code called directly (LocalPipeline), c requests as one batch: compute cost
  plain_uvicorn  the same stage code in one uvicorn process, no Ray
  noop_http      a no-op Serve FastAPI ingress behind the same proxy and HTTP options: Serve's floor
  chain_http     that ingress plus 5 sequential calls to a no-op deployment: the graph's critical path
                 in Ray hops alone, with no stage work
  graph_http     the real seven-deployment application (configs/serve_config.yaml) over HTTP
The HTTP load generator is `hey` (Debian package), one process per symbol so symbols interleave. Also
recorded: the ML engine's batch-size distribution under each graph load (from Ray's metrics port) and
the peak resident memory of every Ray process. Writes bench/results/latest.json and prints a table.

    python -m bench.run [--duration 15] [--concurrency 1,10,32] [--scenarios ...] [--smoke]
    python -m bench.run --growth          # per-request cost vs tracked symbols and history length
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import yaml

from scripts.ray_procs import CLUSTER_ENV, ensure_token, pids_of
from scripts.ray_procs import stop as stop_processes
from serve_app.cluster import deploy, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONFIG = ROOT / "configs" / "serve_config.yaml"
BODIES = [{"symbol": "SOL", "price": 100.0}, {"symbol": "BTC", "price": 50000.0},
          {"symbol": "ETH", "price": 3000.0}]
SCENARIOS = ("inprocess", "plain_uvicorn", "noop_http", "chain_http", "graph_http")
# the graph's critical path: features -> ML -> portfolio -> risk (market runs beside features), then analytics
# records the signals before they are answered
CHAIN_HOPS = 5
# What `make run` (scripts/run_local.sh) and the RayService set: measured levers, see the README.
RAY_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
TARGETS = {
    "graph_vs_noop_throughput_c10": (">=", 0.6),
    "graph_vs_noop_p50_c1": ("<=", 2.0),
    "inprocess_p50_ms_c1": ("<=", 2.0),
    "ml_mean_batch_c32": (">=", 8.0),
    "total_errors": ("<=", 0),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ statistics
def summarize(latencies_s: list[float], errors: int, wall_s: float) -> dict[str, Any]:
    lat = np.asarray(latencies_s) * 1000.0
    ok = len(latencies_s)
    return {
        "requests": ok + errors,
        "errors": errors,
        "rps": round(ok / wall_s, 1) if wall_s > 0 else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)), 2) if ok else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if ok else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 2) if ok else None,
    }


# ------------------------------------------------------------------------------------------ load (hey)
def hey_binary() -> str:
    exe = shutil.which("hey")
    if not exe:
        sys.exit("hey not found: `make bench` installs it (apt-get install hey)")
    return exe


def _hey(url: str, body: dict, concurrency: int, duration_s: float) -> tuple[list[float], int]:
    key = [a for k, v in api_key_headers().items() for a in ("-H", f"{k}: {v}")]
    out = subprocess.run([hey_binary(), "-z", f"{duration_s}s", "-c", str(concurrency), "-m", "POST", *key,
                          "-T", "application/json", "-d", json.dumps(body), "-o", "csv", url],
                         capture_output=True, text=True, timeout=duration_s + 120)
    lat, errors = [], 0
    for row in csv.DictReader(io.StringIO(out.stdout)):
        if row.get("status-code") == "200":
            lat.append(float(row["response-time"]))
        else:
            errors += 1
    return lat, errors


def http_load(url: str, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`concurrency` clients for `duration_s`, symbols mixed: one hey per symbol, clients split among them
    (c=1: the symbols take turns, a third of the time each)."""
    if concurrency < len(BODIES):
        runs = [(b, concurrency, duration_s / len(BODIES)) for b in BODIES]
        results = [_hey(url, *r) for r in runs]
        wall = duration_s
    else:
        shares = [concurrency // len(BODIES) + (1 if i < concurrency % len(BODIES) else 0) for i in range(len(BODIES))]
        results: list = [None] * len(BODIES)

        def one(i: int) -> None:
            results[i] = _hey(url, BODIES[i], shares[i], duration_s)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(BODIES))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = duration_s
    lat = [x for r in results for x in r[0]]
    return summarize(lat, sum(r[1] for r in results), wall)


def api_key_headers() -> dict[str, str]:
    """The ingress wants X-API-Key when SIGNAL_API_KEY is set (the cluster inherits this environment)."""
    key = os.environ.get("SIGNAL_API_KEY")
    return {"X-API-Key": key} if key else {}


def warm_up(url: str, n: int = 30) -> None:
    for i in range(n):
        r = httpx.post(url, json=BODIES[i % len(BODIES)], timeout=60, headers=api_key_headers())
        r.raise_for_status()


# ------------------------------------------------------------------------------------------ memory
class MemorySampler:
    """Summed RSS of a Ray cluster's processes (scripts/ray_procs.pids_of: its own and their descendants),
    sampled every `period_s` from the start: `samples` = [(seconds since start, MB, processes)], `peak_mb`
    their max."""

    def __init__(self, marker: str, period_s: float = 0.5):
        self.marker, self.period_s = marker, period_s
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _rss_mb(pids: list[int]) -> float:
        total = 0
        for pid in pids:
            try:
                m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            except OSError:
                continue
            total += int(m.group(1)) if m else 0
        return total / 1024.0

    @property
    def peak_mb(self) -> float:
        return max((mb for _, mb, _ in self.samples), default=0.0)

    def _loop(self) -> None:
        t0 = time.monotonic()
        while True:
            pids = pids_of(self.marker)
            self.samples.append((round(time.monotonic() - t0, 1), round(self._rss_mb(pids), 1), len(pids)))
            if self._stop.wait(self.period_s):
                return

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------ Ray metrics
def histogram(text: str, name: str) -> dict[str, float]:
    """Buckets (le → cumulative count), count and sum of a histogram, summed over every series."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {"count": 0.0, "sum": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == f"{name}_bucket":
                out[s.labels["le"]] = out.get(s.labels["le"], 0.0) + s.value
            elif s.name == f"{name}_count":
                out["count"] += s.value
            elif s.name == f"{name}_sum":
                out["sum"] += s.value
    return out


def counter(text: str, name: str, **labels: str) -> float:
    """A counter summed over every series whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                total += smp.value
    return total


def scrape_histograms(metrics_url: str) -> dict[str, dict[str, float]]:
    """Batch-size histograms (for the distribution) plus the exact rows/batches counters (for the mean:
    Ray rebuilds a histogram's _sum from bucket midpoints)."""
    text = httpx.get(metrics_url, timeout=20).text
    out = {k: histogram(text, f"ray_signalgen_{k}") for k in ("ml_batch_size", "pipeline_batch_size")}
    out["ml_batch_size"]["rows"] = counter(text, "ray_signalgen_predictions_total")
    out["ml_batch_size"]["batches"] = counter(text, "ray_signalgen_ml_batches_total")
    out["pipeline_batch_size"]["rows"] = counter(text, "ray_signalgen_requests_total", route="/generate_signal")
    out["pipeline_batch_size"]["batches"] = counter(text, "ray_signalgen_pipeline_batches_total")
    return out


def settled_histograms(metrics_url: str, before: dict, expect_more: bool) -> dict:
    """Ray exports metrics every few seconds: wait until the counts stop moving."""
    last, stable = None, 0
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        cur = scrape_histograms(metrics_url)
        key = (cur["ml_batch_size"]["count"], cur["pipeline_batch_size"]["count"], cur["ml_batch_size"]["rows"],
               cur["pipeline_batch_size"]["rows"])
        moved = cur["ml_batch_size"]["count"] > before["ml_batch_size"]["count"]
        stable = stable + 1 if key == last else 0
        last = key
        if stable >= 2 and (moved or not expect_more):
            return cur
        time.sleep(1.5)
    return cur


def batch_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    count = after["batches"] - before["batches"]
    total = after["rows"] - before["rows"]
    les = sorted((k for k in after if k not in ("count", "sum", "rows", "batches")), key=lambda x: float(x))
    dist, prev = {}, 0.0
    for le in les:
        cum = after[le] - before.get(le, 0.0)
        label = "+Inf" if le == "+Inf" else str(int(float(le)))
        dist[f"<={label}"] = int(round(cum - prev))
        prev = cum
    return {"batches": int(round(count)), "mean": round(total / count, 2) if count else None,
            "distribution": {k: v for k, v in dist.items() if v}}


# ------------------------------------------------------------------------------------------ scenarios
def run_inprocess(concurrencies: list[int], duration_s: float) -> dict[str, Any]:
    """c requests as one batch through LocalPipeline; latency = the batch's time (what each of c requests
    that arrived together waits), per_request_ms = batch time / c."""
    from serve_app.training.registry import resolve
    from serve_app.core.model import SignalModel
    from serve_app.api.schemas import http_result
    from serve_app.core.pipeline import LocalPipeline
    from serve_app.core.records import SignalInput
    from serve_app.store import open_store

    pipe = LocalPipeline(open_store, SignalModel.load(resolve("current")))
    pipe.refresh()
    out = {}
    for c in concurrencies:
        items = [SignalInput(BODIES[i % len(BODIES)]["symbol"], BODIES[i % len(BODIES)]["price"],
                             int(time.time() * 1000)) for i in range(c)]
        for _ in range(20):
            pipe.run(items)  # warm caches
        lat, errors, t_end = [], 0, time.monotonic() + duration_s
        t0 = time.monotonic()
        while time.monotonic() < t_end:
            s = time.perf_counter()
            res = [http_result(r) for r in pipe.run(items)]   # the ingress's share too: the response bodies
            dt = time.perf_counter() - s
            errors += sum(1 for status, _ in res if status != 200)
            lat.extend([dt] * c)
        summary = summarize(lat, errors, time.monotonic() - t0)
        summary["per_request_ms"] = round(summary["p50_ms"] / c, 3)
        out[str(c)] = summary
        log(f"inprocess c={c}: {summary}")
    return out


@contextmanager
def plain_uvicorn() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.plain_app:app", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log", "--log-level", "warning"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}/generate_signal"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.post(url, json=BODIES[0], timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_http(name: str, url: str, concurrencies: list[int], duration_s: float,
             metrics_url: str | None = None) -> dict[str, Any]:
    warm_up(url)
    out = {}
    for c in concurrencies:
        before = scrape_histograms(metrics_url) if metrics_url else None
        if before is not None:
            before = settled_histograms(metrics_url, before, expect_more=False)
        summary = http_load(url, c, duration_s)
        if before is not None:
            after = settled_histograms(metrics_url, before, expect_more=True)
            summary["ml_batch"] = batch_delta(before["ml_batch_size"], after["ml_batch_size"])
            summary["pipeline_batch"] = batch_delta(before["pipeline_batch_size"], after["pipeline_batch_size"])
        out[str(c)] = summary
        log(f"{name} c={c}: {summary}")
    return out


def bench_serve_config(http_port: int) -> dict:
    """configs/serve_config.yaml plus the no-op ingress as a second application behind the same proxy."""
    cfg = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    cfg["http_options"]["port"] = http_port
    orch = next(d for d in cfg["applications"][0]["deployments"] if d["name"] == "Orchestrator")
    cfg["applications"].append({
        "name": "noop", "route_prefix": "/noop", "import_path": "bench.noop_app:app",
        "deployments": [{"name": "NoopIngress", "max_ongoing_requests": orch["max_ongoing_requests"],
                         "ray_actor_options": {"num_cpus": 0.02}}],
    })
    cfg["applications"].append({
        "name": "chain", "route_prefix": "/chain", "import_path": "bench.noop_app:chain_app",
        "args": {"hops": CHAIN_HOPS},
        "deployments": [{"name": "NoopChainIngress", "max_ongoing_requests": orch["max_ongoing_requests"],
                         "ray_actor_options": {"num_cpus": 0.02}},
                        {"name": "NoopStage", "max_ongoing_requests": orch["max_ongoing_requests"],
                         "ray_actor_options": {"num_cpus": 0.02}}],
    })
    return cfg


@contextmanager
def ray_cluster(env_extra: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A private local Ray cluster started like `make run` (its own temp dir, stopped precisely)."""
    temp_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    gcs, dash, metrics = free_port(), free_port(), free_port()
    # metrics reported every second (Ray's default is 10 s) so batch sizes can be read right after a run
    # PYTHONPATH: the replicas import the benchmark's no-op apps (bench.noop_app) from this checkout
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_metrics_report_interval_ms": "1000",
           CLUSTER_ENV: temp_dir, "PYTHONPATH": pythonpath, **env_extra}
    ray = str(Path(sys.executable).parent / "ray")
    log(f"Ray auth token: {ensure_token(ray)}")
    subprocess.run([ray, "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", f"--metrics-export-port={metrics}", "--num-cpus=2",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"], env=env, check=True,
                   capture_output=True, timeout=180)
    try:
        yield {"dashboard": f"http://127.0.0.1:{dash}", "metrics": f"http://127.0.0.1:{metrics}/metrics",
               "temp_dir": temp_dir}
    finally:
        stop_processes(temp_dir)


def run_ray_scenarios(scenarios: list[str], concurrencies: list[int], duration_s: float,
                      env_extra: dict[str, str]) -> tuple[dict[str, Any], float]:
    results: dict[str, Any] = {}
    with ray_cluster(env_extra) as cluster, MemorySampler(cluster["temp_dir"]) as mem:
        http_port = free_port()
        log("deploying the graph and the no-op ingress (PUT /api/serve/applications/)")
        deploy(cluster["dashboard"], bench_serve_config(http_port), timeout_s=300)
        base = f"http://127.0.0.1:{http_port}"
        if "noop_http" in scenarios:
            results["noop_http"] = run_http("noop_http", f"{base}/noop/generate_signal", concurrencies, duration_s)
        if "chain_http" in scenarios:
            results["chain_http"] = run_http("chain_http", f"{base}/chain/generate_signal", concurrencies,
                                             duration_s)
        if "graph_http" in scenarios:
            results["graph_http"] = run_http("graph_http", f"{base}/generate_signal", concurrencies, duration_s,
                                             metrics_url=cluster["metrics"])
    return results, round(mem.peak_mb, 1)


# ------------------------------------------------------------------------------------------ report
def ratios(res: dict[str, Any]) -> dict[str, Any]:
    def get(s: str, c: int, k: str):
        return res.get(s, {}).get(str(c), {}).get(k)

    r: dict[str, Any] = {}
    if get("graph_http", 10, "rps") and get("noop_http", 10, "rps"):
        r["graph_vs_noop_throughput_c10"] = round(get("graph_http", 10, "rps") / get("noop_http", 10, "rps"), 3)
    if get("graph_http", 1, "p50_ms") and get("noop_http", 1, "p50_ms"):
        r["graph_vs_noop_p50_c1"] = round(get("graph_http", 1, "p50_ms") / get("noop_http", 1, "p50_ms"), 3)
    if get("chain_http", 1, "p50_ms") and get("noop_http", 1, "p50_ms"):
        r["chain_vs_noop_p50_c1"] = round(get("chain_http", 1, "p50_ms") / get("noop_http", 1, "p50_ms"), 3)
        r["ms_per_hop_c1"] = round((get("chain_http", 1, "p50_ms") - get("noop_http", 1, "p50_ms")) / CHAIN_HOPS, 2)
    if get("graph_http", 10, "rps") and get("chain_http", 10, "rps"):
        r["graph_vs_chain_throughput_c10"] = round(get("graph_http", 10, "rps") / get("chain_http", 10, "rps"), 3)
    if get("inprocess", 1, "p50_ms") is not None:
        r["inprocess_p50_ms_c1"] = get("inprocess", 1, "p50_ms")
    ml32 = res.get("graph_http", {}).get("32", {}).get("ml_batch", {}).get("mean")
    if ml32 is not None:
        r["ml_mean_batch_c32"] = ml32
    r["total_errors"] = sum(v.get("errors", 0) for s in SCENARIOS for v in res.get(s, {}).values())
    r["targets"] = {k: {"target": f"{op} {lim}", "value": r.get(k),
                        "met": None if r.get(k) is None else (r[k] >= lim if op == ">=" else r[k] <= lim)}
                    for k, (op, lim) in TARGETS.items()}
    return r


def table(res: dict[str, Any]) -> str:
    lines = [f"{'scenario':<14} {'c':>3} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}  "
             f"{'ML batch':>8}"]
    for s in SCENARIOS:
        for c, v in res.get(s, {}).items():
            ml = v.get("ml_batch", {}).get("mean")
            lines.append(f"{s:<14} {c:>3} {v['rps']:>8.1f} {v['p50_ms'] or 0:>8.2f} {v['p95_ms'] or 0:>8.2f} "
                         f"{v['p99_ms'] or 0:>8.2f} {v['errors']:>6}  {'' if ml is None else f'{ml:8.2f}'}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import ray

    return {"cpus": os.cpu_count(), "cpu_model": cpu, "python": platform.python_version(),
            "ray": ray.__version__, "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of load per scenario and concurrency")
    ap.add_argument("--concurrency", default="1,10,32")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--default-ray", action="store_true",
                    help="Ray Serve's defaults instead of make run's settings (RAY_ENV)")
    ap.add_argument("--env", action="append", default=[], help="extra KEY=VALUE for the Ray cluster")
    ap.add_argument("--smoke", action="store_true", help="tiny run for correctness (1 s, c=1,3)")
    ap.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    ap.add_argument("--growth", action="store_true", help="measure cost vs symbols and history instead")
    args = ap.parse_args(argv)
    if args.growth:
        from bench.growth import main as growth_main

        return growth_main(args.output.with_name("growth.json"))
    conc = [1, 3] if args.smoke else [int(c) for c in args.concurrency.split(",")]
    duration = 1.0 if args.smoke else args.duration
    scenarios = [s for s in args.scenarios.split(",") if s]
    env_extra = dict(kv.split("=", 1) for kv in args.env)
    env_extra = {**RAY_ENV, **env_extra}
    if args.default_ray:
        env_extra = {k: v for k, v in env_extra.items() if k not in RAY_ENV}
    started = time.time()
    results: dict[str, Any] = {}
    if "inprocess" in scenarios:
        results["inprocess"] = run_inprocess(conc, duration)
    if "plain_uvicorn" in scenarios:
        with plain_uvicorn() as url:
            results["plain_uvicorn"] = run_http("plain_uvicorn", url, conc, duration)
    peak = None
    if {"noop_http", "chain_http", "graph_http"} & set(scenarios):
        ray_results, peak = run_ray_scenarios(scenarios, conc, duration, env_extra)
        results.update(ray_results)
    report = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"duration_s": duration, "concurrency": conc, "load_generator": "hey (one per symbol)",
                     "ray_env": env_extra, "serve_config": str(CONFIG.relative_to(ROOT))},
        "scenarios": results,
        "ray_peak_rss_mb": peak,
        "ratios": ratios(results),
        "elapsed_s": round(time.time() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print()
    print(table(results))
    print(f"\nRay processes peak RSS: {peak} MB")
    for k, t in report["ratios"]["targets"].items():
        print(f"{k:<32} {str(t['value']):>10}  target {t['target']:<8} {'' if t['met'] is None else ('met' if t['met'] else 'NOT met')}")
    print(f"\nwritten {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
