"""Time helpers shared by the store, the stages and the toolkit: epoch milliseconds in UTC everywhere."""
from __future__ import annotations

from datetime import datetime, timezone


def parse_iso(text: str) -> datetime:
    """An ISO-8601 date or date-time as an aware datetime; no zone means UTC. A trailing `Z` is accepted on
    every supported Python (3.10's datetime.fromisoformat refuses it). Raises ValueError."""
    text = text.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
