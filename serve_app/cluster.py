"""Deploy a Serve config the way the KubeRay operator does: PUT /api/serve/applications/ on the dashboard,
then poll until every application is RUNNING. Shared by the tests, the benchmark and `signalgen models`."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def auth_headers() -> dict[str, str]:
    """Ray's token (token auth is on by default): RAY_AUTH_TOKEN or the file `ray start`/`ray.init` wrote."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if not token and path.exists():
        token = path.read_text().strip()
    return {"x-ray-authorization": f"Bearer {token}"} if token else {}


def applications(dashboard: str) -> dict:
    """GET /api/serve/applications/?api_type=declarative: the cluster's Serve options and, per application,
    its status, deployments (with replicas) and deployed config. Raises httpx.HTTPError (no answer, or an
    error status)."""
    r = httpx.get(f"{dashboard.rstrip('/')}/api/serve/applications/", params={"api_type": "declarative"},
                  headers=auth_headers(), timeout=10)
    r.raise_for_status()
    return r.json()


def put_config(dashboard: str, config: dict) -> None:
    """PUT a whole Serve config (every application: one left out is deleted) without waiting."""
    r = httpx.put(f"{dashboard.rstrip('/')}/api/serve/applications/", json=config, headers=auth_headers(),
                  timeout=60)
    r.raise_for_status()


def deploy(dashboard: str, config: dict, timeout_s: float = 300.0) -> dict:
    """PUT the config and wait until every application is RUNNING; returns the final status JSON."""
    put_config(dashboard, config)
    return wait_running(dashboard, [a["name"] for a in config["applications"]], timeout_s)


def wait_running(dashboard: str, names: list[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    last: dict = {}
    while time.monotonic() < deadline:
        try:
            last = applications(dashboard)
            apps = last.get("applications", {})
            statuses = {n: apps.get(n, {}).get("status") for n in names}
            if all(s == "RUNNING" for s in statuses.values()):
                return last
            failed = {n: apps[n].get("message") for n, s in statuses.items() if s == "DEPLOY_FAILED"}
            if failed:
                raise RuntimeError(f"deploy failed: {failed}")
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"applications {names} not RUNNING after {timeout_s:.0f} s: "
                       f"{ {n: a.get('status') for n, a in last.get('applications', {}).items()} }")


def wait_deleted(dashboard: str, names: list[str], timeout_s: float) -> None:
    """Until none of `names` is listed any more (a deleted application stays DELETING while its replicas
    shut down gracefully)."""
    deadline = time.monotonic() + timeout_s
    listed: set[str] = set(names)
    while time.monotonic() < deadline:
        try:
            listed = set(names) & set(applications(dashboard).get("applications", {}))
            if not listed:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"applications {sorted(listed)} still listed {timeout_s:.0f} s after their deletion")
