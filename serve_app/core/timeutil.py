"""Time helpers shared by the store, the stages, training and the commands: epoch milliseconds, UTC."""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def now_ms() -> int:
    return int(time.time() * 1000)


def timeframe_ms(timeframe: str) -> int:
    """Length of one candle in ms: "1m", "15m", "1h", "4h", "1d", "1w"."""
    match = re.fullmatch(r"(\d+)([mhdw])", timeframe)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"unsupported timeframe {timeframe!r} (expected e.g. 15m, 1h, 4h, 1d)")
    unit = {"m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}[match.group(2)]
    return int(match.group(1)) * unit


def anchor_ms(end_ms: int | None, step_ms: int) -> int:
    """`end_ms` (default: now) floored to the candle grid: the open time of the newest candle."""
    end = now_ms() if end_ms is None else int(end_ms)
    return end - end % step_ms


def iso_utc(ms: int) -> str:
    """2026-11-27T19:00:00+00:00 (seconds)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def iso_ms(ms: int) -> str:
    """2026-11-27T19:00:00.000Z (milliseconds, the API's format)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def parse_iso(text: str) -> datetime:
    """An ISO-8601 date or date-time as an aware datetime; no zone means UTC. A trailing `Z` is accepted on
    every supported Python (3.10's datetime.fromisoformat refuses it). Raises ValueError."""
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def iso_minute(ms: int | None) -> str:
    """2026-11-27 19:00 (UTC, for tables); "-" for None."""
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
