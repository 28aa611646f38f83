"""docs/training.md's real-data walkthrough is what the tools print now: scripts/real_data_walkthrough.py is run
and its transcript compared, line by line, with the one in the doc. Only what differs from run to run is
masked: the time of day in version names and timestamps, durations, the data's age and `user@host`."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "training.md"

MASKS = [
    # version names: when trained, and the artifact's hash (xgboost's bytes differ between builds/platforms)
    (re.compile(r"\bv\d{8}-\d{6}-[0-9a-f]{8}\b"), "vDATE-TIME-HASH"),
    (re.compile(r"\b20(2[5-9]|[3-9]\d)-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00"), "NOW"),   # created / at
    (re.compile(r"\b(took|trained in) [\d.]+ s\b"), r"\1 N s"),
    (re.compile(r"[\d.]+ d old\b"), "N d old"),
    (re.compile(r'"by": "[^"]*"'), '"by": "USER@HOST"'),
]


def normalise(text: str) -> list[str]:
    lines = []
    for line in text.strip().splitlines():
        for pattern, repl in MASKS:
            line = pattern.sub(repl, line)
        lines.append(line.rstrip())
    return lines


def documented() -> str:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- walkthrough:begin -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.strip().removeprefix("```").removesuffix("```")


def test_the_walkthrough_in_the_docs_is_what_the_tools_print(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "real_data_walkthrough.py"), "--keep",
                          str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    fresh, doc = normalise(run.stdout), normalise(documented())
    assert len(fresh) > 50 and any(line.startswith("verdict: NO EDGE") for line in fresh)
    for i, (got, shown) in enumerate(zip(fresh, doc)):
        assert got == shown, f"docs/training.md walkthrough line {i + 1} differs:\n  doc:   {shown}\n  now:   {got}"
    assert len(fresh) == len(doc)
