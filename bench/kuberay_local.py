"""A local Ray cluster started the way the KubeRay operator starts the RayService's pods: one Ray node per
group of kuberay/rayservice.yaml (the head, then one node per worker group) from its rayStartParams, with the
environment the operator gives a RayService's containers and token auth. Each node's processes carry
SIGNALGEN_RAY_GROUP=<group> in their environment, so a caller can tell the head's processes from the workers'
on one machine. Used by tests/integration/test_operator_path.py and bench/head_memory.py.
"""
from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from scripts.ray_procs import CLUSTER_ENV
from scripts.ray_procs import stop as stop_processes
from serve_app.cluster import free_port
from serve_app.k8s.preflight import parse_quantity

ROOT = Path(__file__).resolve().parents[1]
RAYSERVICE = ROOT / "kuberay" / "rayservice.yaml"
GROUP_ENV = "SIGNALGEN_RAY_GROUP"


def ray_exe() -> str:
    return str(Path(sys.executable).parent / "ray")


def load_rayservice(path: Path = RAYSERVICE) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def start_params_to_flags(params: dict[str, str]) -> list[str]:
    """`ray start` flags from rayStartParams, quoted the way the operator's shell command sees them."""
    flags: list[str] = []
    for key, value in params.items():
        flags += shlex.split(f"--{key}={value}")
    return flags


def kuberay_env(cluster: str, token: str, extra: dict[str, str]) -> dict[str, str]:
    """What the operator adds to every Ray container of a RayService (KubeRay v1.7), plus token auth."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({
        "RAY_CLUSTER_NAME": cluster,
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
        "RAY_timeout_ms_task_wait_for_death_info": "0",
        "RAY_gcs_server_request_timeout_seconds": "5",
        "RAY_SERVE_KV_TIMEOUT_S": "5",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    })
    env.update(extra)
    return env


def _cpus(container: dict[str, Any]) -> str:
    """num-cpus as KubeRay derives it from the container's CPU limit (whole CPUs)."""
    return str(int(parse_quantity(container["resources"]["limits"]["cpu"])))


@contextmanager
def kuberay_like_cluster(rayservice: dict, extra_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Start the head and one node per worker group; yields {dashboard, token, metrics_ports, env, temp_dir,
    gcs_port}. Everything this cluster started is stopped on exit (an assertion if something survives)."""
    spec = rayservice["spec"]["rayClusterConfig"]
    temp_dir = tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    token = secrets.token_hex(16)
    gcs_port, dash_port = free_port(), free_port()
    env = {**kuberay_env(rayservice["metadata"]["name"], token, extra_env), CLUSTER_ENV: temp_dir}
    head_params = dict(spec["headGroupSpec"]["rayStartParams"])
    head_params.update({"dashboard-host": "127.0.0.1", "metrics-export-port": str(free_port())})
    metrics_ports = [int(head_params["metrics-export-port"])]
    nodes = [("head", [ray_exe(), "start", "--head", f"--port={gcs_port}", f"--dashboard-port={dash_port}",
                       f"--temp-dir={temp_dir}", "--disable-usage-stats", *start_params_to_flags(head_params)])]
    for group in spec["workerGroupSpecs"]:
        params = dict(group["rayStartParams"])
        params["metrics-export-port"] = str(free_port())
        params.setdefault("num-cpus", _cpus(group["template"]["spec"]["containers"][0]))
        metrics_ports.append(int(params["metrics-export-port"]))
        nodes.append((group["groupName"], [ray_exe(), "start", f"--address=127.0.0.1:{gcs_port}",
                                           f"--temp-dir={temp_dir}", *start_params_to_flags(params)]))
    try:
        for group, cmd in nodes:
            node_env = {**env, GROUP_ENV: group}
            if group != "head":
                node_env["RAY_ADDRESS"] = f"127.0.0.1:{gcs_port}"
            _start_node(group, cmd, node_env, metrics_ports)
        yield {"dashboard": f"http://127.0.0.1:{dash_port}", "token": token, "metrics_ports": metrics_ports,
               "env": env, "temp_dir": temp_dir, "gcs_port": gcs_port}
    finally:
        left = stop_processes(temp_dir)
        assert not left, f"processes still running after stop: {left}"


def _start_node(group: str, cmd: list[str], env: dict[str, str], metrics_ports: list[int]) -> None:
    """`ray start` for one node. A worker node that fails to start is tried once more on a fresh metrics port
    (free_port() only finds a port that was free a moment ago: another process on the machine may take it
    first); a second failure raises with `ray start`'s own output."""
    for attempt in (1, 2):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
        if run.returncode == 0:
            return
        if group == "head" or attempt == 2:
            raise RuntimeError(f"ray start of the {group} node failed (exit {run.returncode}): "
                               f"{(run.stderr or run.stdout).strip()[-2000:]}")
        print(f"ray start of the {group} node failed, trying again on a fresh metrics port: "
              f"{(run.stderr or run.stdout).strip()[-500:]}", file=sys.stderr)
        flag = next(i for i, a in enumerate(cmd) if a.startswith("--metrics-export-port="))
        old_port = int(cmd[flag].split("=", 1)[1])
        new_port = free_port()
        cmd[flag] = f"--metrics-export-port={new_port}"
        metrics_ports[metrics_ports.index(old_port)] = new_port


def sample_environment(root: Path, n_estimators: int = 60) -> dict[str, str]:
    """A seeded SQLite store, a trained default model and a journal directory under `root`, as the replicas'
    environment (nothing in the checkout's data/ or models/ is touched)."""
    from serve_app.data.sample import seed_store
    from serve_app.settings import StoreSettings
    from serve_app.store import open_store
    from serve_app.training.train import train

    env = {"SIGNAL_DB_PATH": str(root / "crypto_prices.sqlite"), "MODEL_DIR": str(root / "models"),
           "SIGNAL_SPILL_DIR": str(root / "spill"), "MYSQL_HOST": ""}
    store = open_store(StoreSettings.from_env(env))
    try:
        seed_store(store)
        train(store, root=env["MODEL_DIR"], n_estimators=n_estimators)
    finally:
        store.close()
    return env
