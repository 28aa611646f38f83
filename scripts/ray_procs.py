"""Stop exactly the Ray processes of one cluster: those whose command line names its --temp-dir.

`ray stop` kills every Ray process on the machine (another user's cluster, a test run); this does not.
Usage: python scripts/ray_procs.py stop TEMP_DIR   (exit 1 if any survives)
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def pids_of(marker: str) -> list[int]:
    found = []
    needle = marker.encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if needle in (p / "cmdline").read_bytes():
                found.append(int(p.name))
        except OSError:
            continue
    return found


def stop(marker: str, grace_s: float = 15.0) -> list[int]:
    """SIGTERM, then SIGKILL what is left; returns the pids still alive (zombies excluded)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_of(marker):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while pids_of(marker) and time.monotonic() < deadline:
            time.sleep(0.3)
    return pids_of(marker)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "stop" or len(sys.argv[2]) < 8:
        sys.exit("usage: ray_procs.py stop TEMP_DIR")
    left = stop(sys.argv[2])
    if left:
        sys.exit(f"still running: {left}")
