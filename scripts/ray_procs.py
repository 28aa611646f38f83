"""The local Ray clusters that `make run`, `make bench` and `make loadtest` start: their auth token, and a
precise stop.

    python scripts/ray_procs.py token            make sure a Ray auth token exists (never prints it)
    python scripts/ray_procs.py stop TEMP_DIR    stop that cluster's processes (exit 1 if any survives)

Ray clusters run with token authentication (RAY_AUTH_MODE=token). `ray.init()` creates the token file
when it is missing; `ray start` does not, it fails. So every command that starts a cluster from a shell
first calls ensure_token(), which creates the token the way Ray documents it (`ray get-auth-token
--generate`, into ~/.ray/auth_token), with its output discarded so the value never reaches a terminal or
a log, and leaves the file readable by its owner only.

`ray stop` kills every Ray process on the machine (another user's cluster, a test run); stop() does not:
it stops the processes of the cluster that --temp-dir names (see pids_of).
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path


class TokenError(RuntimeError):
    pass


def token_path() -> Path:
    """Where Ray reads the token from: RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ensure_token(ray_bin: str | None = None) -> str:
    """Make sure `ray start` finds a token; returns where it comes from (never the token itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    path = token_path()
    if not path.exists():
        if os.environ.get("RAY_AUTH_TOKEN_PATH"):
            raise TokenError(f"RAY_AUTH_TOKEN_PATH names {path}, which does not exist: create it or unset it "
                             "(Ray then uses ~/.ray/auth_token, created on first use)")
        ray_bin = ray_bin or str(Path(sys.executable).parent / "ray")
        # umask 077: ~/.ray (when new) and the token file are created for their owner only
        out = subprocess.run([ray_bin, "get-auth-token", "--generate"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, umask=0o077, timeout=120)
        if out.returncode != 0 or not path.exists():
            # stderr holds Ray's messages, not the token (that goes to stdout, discarded above)
            raise TokenError(f"`ray get-auth-token --generate` failed (exit {out.returncode}): "
                             f"{out.stderr.strip()[-500:]}")
        origin = f"{path} (created)"
    else:
        origin = str(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700)
        origin += f" (was readable by others: permissions {oct(mode)} -> {oct(mode & 0o700)})"
    return origin


# run_local.sh and bench's clusters export this (= their --temp-dir) before `ray start`: every process of
# the cluster inherits it, including the agents whose command line Ray renames (ray::DashboardAgent).
CLUSTER_ENV = "SIGNALGEN_RAY_TEMP_DIR"


def _ppid(pid: int | str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid and pid > 1:
        out.add(pid)
        pid = _ppid(pid)
    return out


def pids_with(cmdline: str | None = None, env: tuple[str, str] | None = None,
              exclude: set[int] = frozenset()) -> list[int]:
    """Processes whose command line contains `cmdline`, or whose environment has the variable env=(name,
    value) (exactly), other than `exclude`."""
    in_cmdline = cmdline.encode() if cmdline else None
    in_env = f"\0{env[0]}={env[1]}\0".encode() if env else None
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in exclude:
            continue
        try:
            if (in_cmdline and in_cmdline in (p / "cmdline").read_bytes()) or \
                    (in_env and in_env in b"\0" + (p / "environ").read_bytes()):
                found.append(int(p.name))
        except OSError:
            continue
    return found


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (ppid := _ppid(p.name)) is not None:
            out.setdefault(ppid, []).append(int(p.name))
    return out


def pids_of(marker: str) -> list[int]:
    """The cluster's processes: its temp dir in the command line or CLUSTER_ENV=<temp dir> in the
    environment, and every descendant of those (a raylet's agents rename their command line and may not
    show the environment). Never this process or its parents (the cleanup of run_local.sh runs inside the
    cluster's environment)."""
    mine = _ancestors()
    return sorted(descendants(set(pids_with(cmdline=marker, env=(CLUSTER_ENV, marker), exclude=mine)), mine))


def descendants(roots: set[int], exclude: set[int] = frozenset()) -> set[int]:
    """`roots` and every process below them (by parent pid), other than `exclude`."""
    found, children, stack = set(roots), _children(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child not in exclude:
                found.add(child)
                stack.append(child)
    return found


def _serve_run_pids(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # [python, .../bin/serve, run, ...] (a console script) or [.../bin/serve, run, ...]
        if any(a.endswith(b"/serve") and b == b"run" for a, b in zip(argv, argv[1:])):
            out.append(pid)
    return out


def stop(marker: str, grace_s: float = 15.0) -> list[int]:
    """Stop one cluster; returns the pids still alive (zombies excluded).

    A `serve run` in the foreground of `make run` gets SIGINT first, as Ctrl-C would send: it shuts the
    application down gracefully and run_local.sh's cleanup follows. What is left gets SIGTERM, then SIGKILL."""
    serve_runs = _serve_run_pids(pids_of(marker))
    for pid in serve_runs:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 60
    while serve_runs and set(serve_runs) & set(pids_of(marker)) and time.monotonic() < deadline:
        time.sleep(0.3)
    # SIGTERM until `grace_s` has passed, then SIGKILL, re-reading the process list every round: a raylet
    # that is shutting down can still start a process (an agent) after the first round
    deadline = time.monotonic() + grace_s
    while True:
        left = pids_of(marker)
        now = time.monotonic()
        if not left or now > deadline + grace_s:
            return left
        sig = signal.SIGTERM if now < deadline else signal.SIGKILL
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.3)


def main(argv: list[str]) -> int:
    if argv[:1] == ["token"] and len(argv) == 1:
        try:
            print(f"Ray auth token: {ensure_token()}")
        except TokenError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["stop"] and len(argv) == 2 and len(argv[1]) >= 8:
        left = stop(argv[1])
        if left:
            print(f"still running: {left}", file=sys.stderr)
            return 1
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
