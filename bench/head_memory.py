"""`make measure-head`: how much memory the Ray head pod of kuberay/rayservice.yaml needs, measured.

The cluster is started the way the operator starts it (bench/kuberay_local.py: the head and one node per
worker group from their rayStartParams), the manifest's serveConfigV2 is PUT to the dashboard as the
operator does, and then, while the head's processes are sampled every 0.5 s (every process started on the
head node: GCS, dashboard and its module processes, raylet, agents, log monitor, the Serve controller and
the head's proxy), it is loaded the way production loads it: `hey` on the proxy, the operator's polling of
the applications' status, Prometheus scraping every metrics port, GET /health. The application itself runs
on the worker nodes (the head has num-cpus 0), as on Kubernetes.

A container's memory charge is its processes' private pages plus the shared file pages once; on this machine
the head's processes also share pages with the workers' (same libraries), so the sum of their RSS - every
shared page counted in each process that maps it - is the conservative figure used for the limit. PSS and
USS are recorded too. Shared memory (/dev/shm: the object store) is charged to the pod as well; its used
pages are measured separately.

Writes kuberay/head-sizing.json (committed: tests/unit/test_kuberay_manifests.py checks the head's memory
limit against it). Needs `hey` (the Makefile installs it).

    python -m bench.head_memory [--seconds 120] [--concurrency 10] [--headroom 1.5]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.kuberay_local import GROUP_ENV, ROOT, kuberay_like_cluster, load_rayservice, sample_environment
from scripts.ray_procs import descendants, pids_with
from serve_app.cluster import free_port, wait_running

OUT = ROOT / "kuberay" / "head-sizing.json"


def head_pids() -> set[int]:
    return descendants(set(pids_with(env=(GROUP_ENV, "head"))))


def _rollup(pid: int) -> dict[str, int]:
    """Rss, Pss, Private_* of /proc/<pid>/smaps_rollup, in bytes."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return out


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    for marker in ("gcs_server", "raylet", "dashboard/agent.py", "runtime_env/agent", "log_monitor",
                   "dashboard.py", "ServeController", "ProxyActor", "monitor.py"):
        if marker in text or marker in comm:
            return marker
    return comm or text[:40]


def _shm_used(pids: set[int]) -> int:
    """Resident pages of /dev/shm mappings (the object store), counted once across the head's processes."""
    seen: dict[str, int] = {}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        current = None
        for line in text.splitlines():
            parts = line.split()
            if parts and "-" in parts[0] and len(parts) >= 6:
                current = parts[5] if parts[5].startswith("/dev/shm") else None
            elif current and parts and parts[0] == "Rss:":
                seen[current] = max(seen.get(current, 0), int(parts[1]) * 1024)
    return sum(seen.values())


class Sampler(threading.Thread):
    def __init__(self, period_s: float = 0.5):
        super().__init__(daemon=True)
        self.period_s, self.stop_event = period_s, threading.Event()
        self.peak: dict[str, Any] = {"rss": 0}
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            pids = head_pids()
            rollups = {pid: _rollup(pid) for pid in pids}
            rss = sum(r.get("Rss", 0) for r in rollups.values())
            self.samples.append((round(time.monotonic() - t0, 1), rss))
            if rss > self.peak["rss"]:
                self.peak = {
                    "rss": rss, "pss": sum(r.get("Pss", 0) for r in rollups.values()),
                    "uss": sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0) for r in rollups.values()),
                    "shm": _shm_used(pids),
                    "processes": sorted(((_name(p), r.get("Rss", 0)) for p, r in rollups.items()),
                                        key=lambda x: -x[1])}
            self.stop_event.wait(self.period_s)


def _poll(stop: threading.Event, dashboard: str, token: str, metrics_ports: list[int], url: str) -> None:
    """The operator's and Prometheus's steady traffic: application status every 2 s, every metrics port and
    /health every 15 s."""
    headers = {"x-ray-authorization": f"Bearer {token}"}
    n = 0
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            try:
                c.get(f"{dashboard}/api/serve/applications/", params={"api_type": "declarative"}, headers=headers)
                if n % 8 == 0:
                    for port in metrics_ports:
                        c.get(f"http://127.0.0.1:{port}/metrics")
                    c.get(f"{url}/health")
            except httpx.HTTPError:
                pass
            n += 1
            stop.wait(2.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=120, help="load duration")
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--headroom", type=float, default=1.5)
    ap.add_argument("--output", type=Path, default=OUT)
    args = ap.parse_args(argv)

    from bench.run import hey_binary

    rayservice = load_rayservice()
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["proxy_location"] = "HeadOnly"  # the nodes share one machine: one proxy (the head's, as on k8s)
    config["http_options"]["port"] = http_port = free_port()
    work = Path(tempfile.mkdtemp(prefix="headmem"))
    print("seeding a sample store and training a model", file=sys.stderr)
    extra_env = sample_environment(work)
    with kuberay_like_cluster(rayservice, extra_env) as cluster:
        print("cluster up; deploying serveConfigV2 as the operator does", file=sys.stderr)
        sampler = Sampler()
        sampler.start()
        headers = {"x-ray-authorization": f"Bearer {cluster['token']}", "Content-Type": "application/json"}
        r = httpx.put(f"{cluster['dashboard']}/api/serve/applications/", content=json.dumps(config),
                      headers=headers, timeout=60)
        r.raise_for_status()
        os.environ["RAY_AUTH_TOKEN"] = cluster["token"]
        wait_running(cluster["dashboard"], [a["name"] for a in config["applications"]], timeout_s=300)
        url = f"http://127.0.0.1:{http_port}"
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(stop, cluster["dashboard"], cluster["token"],
                                                      cluster["metrics_ports"], url), daemon=True)
        poller.start()
        print(f"running: hey -c {args.concurrency} for {args.seconds} s", file=sys.stderr)
        body = json.dumps({"symbol": "SOL", "price": 100.0})
        hey = subprocess.run([hey_binary(), "-z", f"{args.seconds}s", "-c", str(args.concurrency), "-m", "POST",
                              "-H", "Content-Type: application/json", "-d", body, f"{url}/generate_signal"],
                             capture_output=True, text=True, timeout=args.seconds + 120)
        stop.set()
        time.sleep(5)  # let the last scrapes settle into the samples
        sampler.stop_event.set()
        sampler.join(timeout=10)
    peak = sampler.peak
    requests = next((line.split()[-1] for line in hey.stdout.splitlines() if "Requests/sec" in line), "?")
    result = {
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ray_version": rayservice["spec"]["rayClusterConfig"]["rayVersion"],
        "load": {"seconds": args.seconds, "concurrency": args.concurrency, "requests_per_s": requests,
                 "also": "operator status polling every 2 s; every metrics port and /health every 16 s"},
        "peak_rss_bytes": peak["rss"], "peak_pss_bytes": peak.get("pss"), "peak_uss_bytes": peak.get("uss"),
        "shm_used_bytes": peak.get("shm", 0),
        "processes_at_peak_rss_bytes": [[n, b] for n, b in peak.get("processes", [])],
        "headroom": args.headroom,
        "limit_needed_bytes": int((peak["rss"] + peak.get("shm", 0)) * args.headroom),
        "samples": len(sampler.samples),
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    gib = 2 ** 30
    print(f"head peak: RSS {peak['rss'] / gib:.2f} GiB (PSS {peak.get('pss', 0) / gib:.2f}, USS "
          f"{peak.get('uss', 0) / gib:.2f}), shm {peak.get('shm', 0) / 2**20:.0f} MiB; "
          f"x{args.headroom} -> limit >= {result['limit_needed_bytes'] / gib:.2f} GiB; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
