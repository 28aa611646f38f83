"""A copy of this checkout as a clone would have it, for tests that build or run it from scratch."""
from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def copy_checkout(dest: Path) -> Path:
    """The checkout's files (tracked + new, not ignored) into `dest`: no .venv, no data, no build output."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / rel.decode()
        if not src.is_file():      # deleted in the working tree but still in the index
            continue
        target = dest / rel.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
        target.chmod(src.stat().st_mode)
    return dest
