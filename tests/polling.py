"""Waiting for a condition with a deadline, instead of sleeping and hoping."""
from __future__ import annotations

import time
from typing import Any, Callable

import httpx


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.25,
             detail: Callable[[], str] | None = None) -> Any:
    """Poll `check` until it returns something truthy (returned); an HTTP error or a missing key counts as
    not yet. AssertionError naming `what`, the last value and `detail()` (e.g. a log tail) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, KeyError):
            last = None
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last: {last!r}){detail() if detail else ''}")
