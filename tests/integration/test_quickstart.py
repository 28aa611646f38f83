"""The README's quick start, exactly as a new user runs it: `make run` in a copy of the checkout with an
empty HOME (no ~/.ray, no pip cache, no venv), the README's two requests, /health and /metrics, `signalgen
models promote`/`rollback` against that running service, then Ctrl-C — after which every process the run
started must be gone and its ports free.

The run's processes are found by their environment: each one inherits this test's unique HOME.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from scripts.ray_procs import pids_with
from tests.checkout import copy_checkout
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
PORTS = {"serve http": 8000, "dashboard": 8265, "metrics": 8080, "gcs": 6380}
BASE = "http://127.0.0.1:8000"
SEED_REQUESTS = [{"symbol": "SOL", "price": 100.0}, {"symbol": "BTC", "price": 50000.0}]
# variables this project (or Ray) reads: a user's fresh shell has none of them
SCRUBBED_PREFIXES = ("MYSQL_", "SIGNAL_", "RAY_", "MODEL_DIR", "VIRTUAL_ENV", "PYTHONPATH", "PYTEST_")

# The steps depend on each other (serve, promote, Ctrl-C, restart, make stop): the file's order is kept.
pytestmark = [pytest.mark.integration, pytest.mark.quickstart, pytest.mark.random_order(disabled=True),
              pytest.mark.timeout(1500)]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _pids_with_home(home: str) -> list[int]:
    """Processes whose environment has HOME=<home>: everything `make run` started, daemons included."""
    return pids_with(env=("HOME", home))


def _describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        out.append(f"{pid}: {cmdline[:160]}")
    return out


class QuickStart:
    def __init__(self, workdir: Path, home: Path, env: dict[str, str], log_path: Path):
        self.workdir, self.home, self.env, self.log_path = workdir, home, env, log_path
        self.proc: subprocess.Popen | None = None

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n--- make run output (last lines) ---\n" + "\n".join(lines[-n:])

    def run(self, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A command in the copy, from the same empty HOME (as the user's second shell)."""
        return subprocess.run(list(cmd), cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def health(self) -> dict | None:
        if self.proc is not None and self.proc.poll() is not None:
            pytest.fail(f"make run exited with {self.proc.returncode} before serving{self.log_tail()}")
        try:
            r = httpx.get(f"{BASE}/health", timeout=5)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def signal(self, body: dict) -> dict:
        r = httpx.post(f"{BASE}/generate_signal", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuickStart]:
    busy = {name: port for name, port in PORTS.items() if not _port_free(port)}
    if busy:
        pytest.fail(f"the quick start needs these ports free, and they are taken: {busy}")
    root = tmp_path_factory.mktemp("quickstart")
    workdir, home = root / "signalgen", root / "home"
    workdir.mkdir()
    home.mkdir(mode=0o700)
    copy_checkout(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)}
    env["HOME"] = str(home)
    qs = QuickStart(workdir, home, env, root / "make-run.log")
    with open(qs.log_path, "wb") as log:
        # its own process group, so SIGINT reaches make and everything under it, as Ctrl-C in a terminal does
        qs.proc = subprocess.Popen(["make", "run"], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        # venv + packages with no pip cache, sample data, default model, Ray, seven deployments
        wait_for("GET /health 200 from make run", qs.health, 900, every_s=2, detail=qs.log_tail)
        yield qs
    finally:
        if qs.proc.poll() is None:           # a test failed before Ctrl-C: stop it the same way
            os.killpg(qs.proc.pid, signal.SIGINT)
            try:
                qs.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
        for pid in _pids_with_home(str(home)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_quickstart_serves_the_readme_requests(quickstart: QuickStart) -> None:
    for body in SEED_REQUESTS:
        sig = quickstart.signal(body)
        assert sig["symbol"] == body["symbol"] and sig["price"] == body["price"]
        assert sig["action"] in ("BUY", "SELL", "HOLD")
        assert abs(sum(sig["probabilities"].values()) - 1.0) < 1e-6
        assert sig["model_version"].startswith("v")
    health = httpx.get(f"{BASE}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    metrics = httpx.get(f"{BASE}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert 'ray_signalgen_requests_total{' in metrics.text and 'route="/generate_signal"' in metrics.text
    # Ray's own Prometheus endpoint, as the README says
    assert "ray_" in httpx.get("http://127.0.0.1:8080/metrics", timeout=10).text


def test_token_created_owner_only_and_never_logged(quickstart: QuickStart) -> None:
    token_file = quickstart.home / ".ray" / "auth_token"
    assert token_file.is_file(), "make run did not create ~/.ray/auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) & 0o077 == 0
    token = token_file.read_text().strip()
    assert len(token) >= 16
    assert token not in quickstart.log_path.read_text(errors="replace")
    for log in Path("/tmp/ray-signalgen-6380").rglob("*"):
        if log.is_file() and log.suffix in (".log", ".out", ".err") and log.stat().st_size < 50_000_000:
            assert token.encode() not in log.read_bytes(), f"the Ray token appears in {log}"


def test_promote_and_rollback_against_make_run(quickstart: QuickStart) -> None:
    first = quickstart.signal(SEED_REQUESTS[0])["model_version"]
    trained = quickstart.run(".venv/bin/signalgen", "train", "--n-estimators", "40", "--quiet")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    listed = quickstart.run(".venv/bin/signalgen", "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    versions = [v["version"] for v in json.loads(listed.stdout)["versions"]]
    second = next(v for v in versions if v != first)

    refused = quickstart.run(".venv/bin/signalgen", "models", "promote", second, "--require-deploy")
    assert refused.returncode == 2 and "no evaluation with a verdict" in refused.stderr, refused.stderr
    evaluated = quickstart.run(".venv/bin/signalgen", "evaluate", "--model-version", second, "--quiet")
    assert evaluated.returncode == 0 and "verdict: EDGE" in evaluated.stdout, evaluated.stdout + evaluated.stderr
    promoted = quickstart.run(".venv/bin/signalgen", "models", "promote", second, "--require-deploy")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert quickstart.signal(SEED_REQUESTS[0])["model_version"] == second
    assert quickstart.signal(SEED_REQUESTS[1])["model_version"] == second

    rolled = quickstart.run(".venv/bin/signalgen", "models", "rollback", "--require-deploy")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert quickstart.signal(SEED_REQUESTS[0])["model_version"] == first


def _assert_all_gone(qs: QuickStart) -> None:
    home = str(qs.home)
    wait_for("no process of the run left", lambda: not _pids_with_home(home), 60,
                detail=lambda: "\n" + "\n".join(_describe(_pids_with_home(home))))
    wait_for("ports 8000/8265/8080/6380 free", lambda: all(_port_free(p) for p in PORTS.values()), 60,
                detail=_who_holds_ports)


def _who_holds_ports() -> str:
    busy = [p for p in PORTS.values() if not _port_free(p)]
    holders = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout.splitlines()
    return f": busy {busy}\n" + "\n".join(h for h in holders if any(f":{p} " in h for p in busy))


def test_ctrl_c_leaves_nothing_behind(quickstart: QuickStart) -> None:
    os.killpg(quickstart.proc.pid, signal.SIGINT)           # Ctrl-C
    try:
        quickstart.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("make run still running 120 s after Ctrl-C" + quickstart.log_tail())
    _assert_all_gone(quickstart)
    assert "Stopping the local Ray cluster" in quickstart.log_path.read_text(errors="replace")


def test_make_stop_from_a_second_shell(quickstart: QuickStart) -> None:
    """The README's other way out: `make run` again (now set up), then `make stop` from another shell."""
    with open(quickstart.log_path, "ab") as log:
        quickstart.proc = subprocess.Popen(["make", "run"], cwd=quickstart.workdir, env=quickstart.env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for("GET /health 200 from the second make run", quickstart.health, 300, every_s=2,
                detail=quickstart.log_tail)
    assert quickstart.signal(SEED_REQUESTS[1])["symbol"] == "BTC"
    stopped = quickstart.run("make", "stop", timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    try:
        quickstart.proc.wait(timeout=120)      # serve run ends once its cluster is gone
    except subprocess.TimeoutExpired:
        pytest.fail("make run still running 120 s after make stop" + quickstart.log_tail())
    _assert_all_gone(quickstart)


def test_make_bench_starts_its_cluster_from_an_empty_home(quickstart: QuickStart, tmp_path: Path) -> None:
    """`make bench` (and `make loadtest`, which starts its cluster with the same bench.run.ray_cluster) on a
    machine where Ray never ran: it creates the token itself, owner-only, and stops what it started."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**quickstart.env, "HOME": str(home)}
    out = tmp_path / "bench.json"
    bench = subprocess.run(["make", "bench", f"BENCH_ARGS=--smoke --scenarios noop_http --output {out}"],
                           cwd=quickstart.workdir, env=env, capture_output=True, text=True, timeout=600)
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    token_file = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() not in bench.stdout + bench.stderr
    result = json.loads(out.read_text())["scenarios"]["noop_http"]
    assert result and all(level["errors"] == 0 and level["requests"] > 0 for level in result.values())
    wait_for("no process of make bench left", lambda: not _pids_with_home(str(home)), 60,
                detail=lambda: "\n" + "\n".join(_describe(_pids_with_home(str(home)))))
