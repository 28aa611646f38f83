"""Reading and validating candles and news from files (and exchange pages), no CLI.

Every row is checked before anything is stored; a bad row is reported with where it came from and
skipped, never stored:

  CSV   `where` is the file line number, the header being line 1
  JSON  `where` is the 0-based index in the top-level array
  exchange pages: `where` is the 0-based index in the fetched series

Timestamps may be epoch seconds, milliseconds, microseconds or nanoseconds (told apart per value by
magnitude: below 1e11 is seconds - any date before the year 5138 -, below 1e14 milliseconds, below 1e17
microseconds, below 1e20 nanoseconds) or ISO-8601 text (naive = UTC).

A candle file says its own timeframe: `infer_timeframe` takes the most common spacing between its candles.
Without --timeframe that is used; with a --timeframe that disagrees, nothing is stored.
"""
from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from serve_app.store import NewsItem, Store
from serve_app.core.timeutil import parse_iso
from serve_app.core.timeutil import iso_utc, timeframe_ms

CANDLE_COLUMNS: tuple[str, ...] = ("timestamp", "open", "high", "low", "close", "volume")
NEWS_FILE_COLUMNS: tuple[str, ...] = ("published_at", "symbol", "source", "score", "headline")
FORMATS: tuple[str, ...] = ("csv", "json")

# Why a row was skipped (reason key -> what the report says).
REASONS: dict[str, str] = {
    "missing_field": "missing field",
    "not_numeric": "non-numeric value",
    "bad_timestamp": "unreadable timestamp",
    "off_grid": "timestamp off the timeframe grid",
    "duplicate": "duplicate",
    "non_positive_price": "non-positive price",
    "negative_volume": "negative volume",
    "inconsistent_ohlc": "high < low, or open/close outside [low, high]",
    "score_out_of_range": "score outside [-1, 1]",
    "too_long": "text longer than the store's column",
}

_SECONDS_BELOW = 1e11
_MILLIS_BELOW = 1e14
_MICROS_BELOW = 1e17
_NANOS_BELOW = 1e20
# the candle file's time column: the first of these its header has (any case)
TIME_COLUMNS: tuple[str, ...] = ("timestamp", "datetime", "date", "open_time", "opentime", "time", "open time")
# the timeframes a file's candle spacing is recognised as (the service's grid: multiples from the epoch)
TIMEFRAMES: tuple[str, ...] = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")
# the store's column sizes (serve_app/store/schema.py): MySQL in strict mode rejects longer text
_MAX_SYMBOL, _MAX_SOURCE, _MAX_HEADLINE_BYTES = 32, 64, 65535

CandleRow = tuple[int, float, float, float, float, float]


class InputFileError(ValueError):
    """The file as a whole cannot be read (missing, wrong format, header without a needed column)."""


class RowError(ValueError):
    """One row is bad: `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class BadRow:
    where: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Gap:
    """`missing` candles are absent just before the valid row at `where` (opening at `open_time`)."""

    where: int
    open_time: int
    missing: int


@dataclass
class Validated:
    """What a validator made of its input: the valid rows (ascending), the bad ones, the gaps."""

    location: str  # "line", "index": what `where` counts
    timeframe: str | None = None      # candles: the timeframe the rows were checked against
    timeframe_note: str = ""          # candles: where it came from
    read: int = 0
    rows: list[Any] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    def skipped_by_reason(self) -> Counter:
        return Counter(b.reason for b in self.bad)

    @property
    def missing_candles(self) -> int:
        return sum(g.missing for g in self.gaps)


# --------------------------------------------------------------------------------------------------
# fields
# --------------------------------------------------------------------------------------------------

def _present(value: Any, name: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowError("missing_field", f"{name} is missing")
    return value.strip() if isinstance(value, str) else value


def number(value: Any, name: str) -> float:
    """A finite float from a CSV cell or JSON value; RowError otherwise."""
    value = _present(value, name)
    if isinstance(value, bool):
        raise RowError("not_numeric", f"{name} is not a number: {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise RowError("not_numeric", f"{name} is not a number: {value!r}") from None
    if not math.isfinite(result):
        raise RowError("not_numeric", f"{name} is not a finite number: {value!r}")
    return result


def parse_timestamp(value: Any, name: str = "timestamp") -> int:
    """Epoch seconds, ms, µs or ns (by magnitude) or ISO-8601 text -> UTC epoch ms."""
    value = _present(value, name)
    try:
        numeric = float(value)
    except (TypeError, ValueError):
        numeric = None
    if numeric is not None and not isinstance(value, bool):
        if not math.isfinite(numeric) or numeric < 0 or numeric >= _NANOS_BELOW:
            raise RowError("bad_timestamp", f"{name} {value!r} is not epoch seconds, ms, µs or ns")
        for below, to_ms in ((_SECONDS_BELOW, 1000.0), (_MILLIS_BELOW, 1.0), (_MICROS_BELOW, 1e-3),
                             (_NANOS_BELOW, 1e-6)):
            if numeric < below:
                return round(numeric * to_ms)
    try:
        parsed = parse_iso(str(value))
    except ValueError:
        raise RowError("bad_timestamp", f"{name} {value!r} is neither an epoch time nor ISO-8601") from None
    return round(parsed.timestamp() * 1000)


def _text(value: Any, name: str, max_len: int) -> str:
    text = str(_present(value, name))
    if len(text) > max_len:
        raise RowError("too_long", f"{name} has {len(text)} characters (at most {max_len})")
    return text


# --------------------------------------------------------------------------------------------------
# validators
# --------------------------------------------------------------------------------------------------

class CandleValidator:
    """Checks candle rows one at a time (so a stream of exchange pages can be fed page by page);
    `result()` gives every valid row ascending, the bad rows and the gaps between valid rows."""

    def __init__(self, timeframe: str, location: str) -> None:
        self.timeframe = timeframe
        self.step = timeframe_ms(timeframe)
        self._out = Validated(location)
        self._where: dict[int, int] = {}  # open_time of each valid row -> where it came from

    def add(self, where: int, fields: Sequence[Any]) -> CandleRow | None:
        """The row as (open_time_ms, open, high, low, close, volume), or None when it is bad
        (recorded with its reason). `fields` are the six values in CANDLE_COLUMNS order."""
        self._out.read += 1
        try:
            if not isinstance(fields, (list, tuple)):
                raise RowError("missing_field", "expected [ms, open, high, low, close, volume], got "
                                                f"{json.dumps(fields)[:40]}")
            row = self._check(fields)
        except RowError as exc:
            self._out.bad.append(BadRow(where, exc.reason, exc.detail))
            return None
        self._where[row[0]] = where
        self._out.rows.append(row)
        return row

    def _check(self, fields: Sequence[Any]) -> CandleRow:
        fields = list(fields[:6]) + [None] * (6 - len(fields))
        open_time = parse_timestamp(fields[0])
        o, h, low, c, v = (number(x, name) for x, name in zip(fields[1:], CANDLE_COLUMNS[1:]))
        if open_time % self.step:
            raise RowError("off_grid", f"timestamp {iso_utc(open_time)} is not on the {self.timeframe} grid")
        if min(o, h, low, c) <= 0:
            raise RowError("non_positive_price", f"prices must be > 0 (open {o}, high {h}, low {low}, close {c})")
        if v < 0:
            raise RowError("negative_volume", f"volume {v} < 0")
        if h < low or not (low <= o <= h and low <= c <= h):
            raise RowError("inconsistent_ohlc", f"open {o}, high {h}, low {low}, close {c}: "
                                                f"{REASONS['inconsistent_ohlc']}")
        if open_time in self._where:
            raise RowError("duplicate", f"timestamp {iso_utc(open_time)} already on "
                                        f"{self._out.location} {self._where[open_time]}")
        return open_time, o, h, low, c, v

    def result(self) -> Validated:
        out = self._out
        out.rows.sort()
        out.gaps = [Gap(self._where[cur[0]], cur[0], (cur[0] - prev[0]) // self.step - 1)
                    for prev, cur in zip(out.rows, out.rows[1:]) if cur[0] - prev[0] > self.step]
        return out


def validate_candles(records: Iterable[tuple[int, Sequence[Any]]], timeframe: str, location: str) -> Validated:
    validator = CandleValidator(timeframe, location)
    for where, fields in records:
        validator.add(where, fields)
    return validator.result()


def _news_item(fields: dict[str, Any]) -> NewsItem:
    published = parse_timestamp(fields.get("published_at"), "published_at")
    symbol = _text(fields.get("symbol"), "symbol", _MAX_SYMBOL).upper()
    source = _text(fields.get("source"), "source", _MAX_SOURCE)
    score = number(fields.get("score"), "score")
    if not -1.0 <= score <= 1.0:
        raise RowError("score_out_of_range", f"score {score} outside [-1, 1]")
    headline = str(_present(fields.get("headline"), "headline"))
    if len(headline.encode("utf-8")) > _MAX_HEADLINE_BYTES:
        raise RowError("too_long", f"headline longer than {_MAX_HEADLINE_BYTES} bytes")
    return NewsItem(symbol, published, source, score, headline)


def validate_news(records: Iterable[tuple[int, dict[str, Any]]], location: str) -> Validated:
    """News rows -> NewsItems (in file order). A row repeating an earlier one's (symbol,
    published_at, source, headline) — the store's identity of a news item — is a duplicate."""
    out = Validated(location)
    first: dict[tuple[str, int, str, str], int] = {}
    for where, fields in records:
        out.read += 1
        try:
            item = _news_item(fields)
            key = (item.symbol, item.published_at, item.source, item.headline)
            if key in first:
                raise RowError("duplicate", f"same news item as {location} {first[key]}")
        except RowError as exc:
            out.bad.append(BadRow(where, exc.reason, exc.detail))
            continue
        first[key] = where
        out.rows.append(item)
    return out


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------

def file_format(path: Path, fmt: str | None = None) -> str:
    """`fmt` if given, else the format the extension names (.csv / .json)."""
    if fmt:
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputFileError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                             f"use --format {'|'.join(FORMATS)}")
    return suffix


def csv_records(path: Path, columns: Sequence[str | tuple[str, ...]]) -> Iterator[tuple[int, list[str | None]]]:
    """(line number, cells in `columns` order) for each non-blank data row. A column is a name or a tuple of
    names it may have (the first one the header has is used). Header names are matched without case or
    surrounding spaces; other columns are ignored; a short row has None for its missing cells."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            index, missing = [], []
            for column in columns:
                names = (column,) if isinstance(column, str) else column
                found = next((header.index(n) for n in names if n in header), None)
                if found is None:
                    missing.append(names[0] if len(names) == 1 else f"one of {', '.join(names)}")
                index.append(found)
            if missing:
                accepted = ", ".join(c if isinstance(c, str) else "|".join(c) for c in columns)
                raise InputFileError(f"{path}: header lacks {'; '.join(missing)} (accepted: {accepted}; "
                                     f"found {', '.join(header) or 'nothing'})")
            for cells in reader:
                if not any(cell.strip() for cell in cells):
                    continue
                yield reader.line_num, [cells[i] if i < len(cells) else None for i in index]
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputFileError(f"{path}: not a readable UTF-8 CSV file (line {reader.line_num}): {exc}") from None


def json_records(path: Path) -> Iterator[tuple[int, Sequence[Any]]]:
    """(array index, row) for a JSON array of [ms, open, high, low, close, volume] arrays."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise InputFileError(f"{path}: expected a JSON array of [ms, open, high, low, close, volume] rows")
    for index, row in enumerate(data):
        yield index, row


class TimeframeMismatch(InputFileError):
    """The file's candle spacing is not the timeframe asked for."""


def infer_timeframe(times_ms: Sequence[int]) -> tuple[str | None, str]:
    """(timeframe, how) from candle open times: the most common spacing between consecutive distinct
    times, when it is one of TIMEFRAMES; (None, why) otherwise."""
    distinct = sorted(set(times_ms))
    if len(distinct) < 2:
        return None, f"{len(distinct)} distinct timestamp(s): too few to tell the spacing"
    spacing, n = Counter(b - a for a, b in zip(distinct, distinct[1:])).most_common(1)[0]
    share = n / (len(distinct) - 1)
    named = next((tf for tf in TIMEFRAMES if timeframe_ms(tf) == spacing), None)
    how = f"{n} of {len(distinct) - 1} intervals ({share:.0%}) are {_spacing_text(spacing)}"
    return named, how if named else f"the candles are {_spacing_text(spacing)} apart ({how}), not one of " \
                                   f"{', '.join(TIMEFRAMES)}"


def _spacing_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def read_candles(path: str | Path, timeframe: str | None = None, fmt: str | None = None) -> Validated:
    """Read and validate a candle file (CSV with a header, or a JSON array of arrays). The timeframe is the
    file's own spacing (`infer_timeframe`); a `timeframe` that disagrees raises TimeframeMismatch (nothing
    is read into the store), as does a file whose spacing is not a known timeframe when none is given.
    `Validated.timeframe` says which was used and why."""
    path = Path(path)
    if timeframe is not None:
        timeframe_ms(timeframe)  # an unknown timeframe is refused before the file is read (ValueError)
    if file_format(path, fmt) == "json":
        records, location = list(json_records(path)), "index"
    else:
        columns = (TIME_COLUMNS, *CANDLE_COLUMNS[1:])
        records, location = list(csv_records(path, columns)), "line"
    times = []
    for _, fields in records:
        try:
            times.append(parse_timestamp(fields[0] if isinstance(fields, (list, tuple)) and fields else None))
        except RowError:
            continue
    if not records:
        return Validated(location, timeframe=timeframe, timeframe_note="the file has no rows")
    inferred, how = infer_timeframe(times)
    if timeframe is None and inferred is None:
        raise TimeframeMismatch(f"{path}: cannot tell the timeframe - {how}; give --timeframe")
    if timeframe is not None and inferred is not None and timeframe != inferred:
        raise TimeframeMismatch(f"{path}: the file holds {inferred} candles ({how}), --timeframe says "
                                f"{timeframe}: nothing stored")
    checked = validate_candles(records, timeframe or inferred, location)
    checked.timeframe = timeframe or inferred
    checked.timeframe_note = (f"--timeframe {timeframe}" + (f"; the file agrees: {how}" if inferred else "")
                              if timeframe else f"{inferred}, from the file: {how}")
    return checked


def read_news(path: str | Path) -> Validated:
    """Read and validate a news-sentiment CSV (published_at, symbol, source, score, headline)."""
    records = ((line, dict(zip(NEWS_FILE_COLUMNS, cells))) for line, cells in csv_records(Path(path), NEWS_FILE_COLUMNS))
    return validate_news(records, "line")


# --------------------------------------------------------------------------------------------------
# storing
# --------------------------------------------------------------------------------------------------

def upsert_new(store: Store, symbol: str, timeframe: str, rows: Sequence[CandleRow]) -> int:
    """Upsert `rows` (existing candles are overwritten) and return how many were not stored before.
    (Store.upsert_candles returns the rows written on both backends, not the new ones, so the new
    ones are counted against the open times already stored in the rows' time range.)"""
    if not rows:
        return 0
    times = [r[0] for r in rows]
    before = store.load_candles(symbol, timeframe, since_ms=min(times), until_ms=max(times))
    stored = set(before.open_time.tolist())
    store.upsert_candles(symbol, timeframe, rows)
    return sum(1 for t in set(times) if t not in stored)


# --------------------------------------------------------------------------------------------------
# import into the store
# --------------------------------------------------------------------------------------------------

@dataclass
class ImportResult:
    checked: Validated
    written: int  # valid rows upserted (0 when --strict aborted)
    new: int  # rows the store did not have before

    @property
    def exit_code(self) -> int:
        """1 when bad rows were found and nothing was stored, else 0."""
        return 1 if self.checked.bad and not self.written else 0


def import_candles(store: Store, path: str | Path, symbol: str, timeframe: str | None = None,
                   fmt: str | None = None, strict: bool = False) -> ImportResult:
    """Store the file's valid candles under `symbol` in their timeframe (the file's own, or `timeframe` when
    the file agrees: read_candles)."""
    checked = read_candles(path, timeframe, fmt)
    if (strict and checked.bad) or not checked.rows:
        return ImportResult(checked, 0, 0)
    return ImportResult(checked, len(checked.rows), upsert_new(store, symbol, checked.timeframe, checked.rows))


def import_news(store: Store, path: str | Path, strict: bool = False) -> ImportResult:
    checked = read_news(path)
    if strict and checked.bad:
        return ImportResult(checked, 0, 0)
    return ImportResult(checked, len(checked.rows), store.insert_news(checked.rows))
