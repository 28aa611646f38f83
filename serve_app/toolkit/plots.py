"""Matplotlib for the toolkit's PNGs (evaluate, report): the headless backend, one way to write a figure.
Imported by the commands only when they plot, so `signalgen --help` does not load matplotlib."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path, dpi: int) -> None:
    """Lay the figure out, write it as PNG and release it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
