"""`signalgen report`: the live signals' realised performance, from the store or a running service.

    signalgen report                          score what is due, print the tables
    signalgen report --since 2026-11-01 --json
    signalgen report --plot [--out DIR]       also write calibration / by-symbol / cumulative PNGs
    signalgen report --url http://127.0.0.1:8000   GET /analytics/performance of a running service

The numbers are `serve_app.core.analytics.summarize` over the stored signals and their outcomes - the
same dict GET /analytics/performance returns. Before summarising, the signals whose horizon has passed
are scored with `score_pending`, the same rule the Analytics deployment applies (--no-score skips it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serve_app.core.timeutil import iso_minute, parse_iso
from serve_app.plots import REPORT_PLOT_FILES as PLOT_FILES  # noqa: F401 - the files --plot writes
from serve_app.plots import write_report_plots
from serve_app.settings import SERVE_CONFIG



class ReportError(Exception):
    """A problem the operator can fix (bad option, unreachable store or service): one line, exit 2."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="live signals' realised performance (hit rate, returns, calibration)",
                       description="Realised performance of the stored signals: overall, by symbol, by action "
                                   "and calibration by confidence bucket. Scores the signals whose horizon "
                                   "has passed first (as the Analytics deployment does).")
    p.add_argument("--since", metavar="DATE", help="only signals generated at or after this ISO date/time (UTC "
                                                   "unless it names a zone), e.g. 2026-11-01")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")
    p.add_argument("--plot", action="store_true", help="write PNG plots into --out")
    p.add_argument("--out", type=Path, help="directory for --plot (default reports/report-<UTC timestamp>/)")
    p.add_argument("--horizon-candles", type=int, metavar="N",
                   help="candles after a signal at which it is scored (default: analytics.outcome_horizon_"
                        f"candles of {SERVE_CONFIG})")
    p.add_argument("--timeframe", help="candle timeframe of the outcomes (default: the serve config's timeframe)")
    p.add_argument("--no-score", action="store_true", help="do not write outcomes; report what is stored")
    p.add_argument("--url", help="read GET /analytics/performance of a running service (e.g. "
                                 "http://127.0.0.1:8000) instead of the store; sends SIGNAL_API_KEY if set")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        since_ms = _parse_since(args.since)
        if args.url and (args.no_score or args.horizon_candles is not None or args.timeframe):
            raise ReportError("--no-score, --horizon-candles and --timeframe apply to the store; with --url "
                              "the service scores with its own configuration")
        if args.url:
            summary = _from_service(args.url, since_ms)
        else:
            summary = _from_store(args, since_ms)
        _output(args, summary)
    except ReportError as e:
        print(f"signalgen report: {e}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------- sources
def _parse_since(text: str | None) -> int | None:
    if not text:
        return None
    try:
        dt = parse_iso(text)
    except ValueError:
        raise ReportError(f"--since {text!r} is not an ISO date or date-time (e.g. 2026-11-01 or "
                          "2026-11-01T12:00)") from None
    return int(dt.timestamp() * 1000)


def service_defaults(path: Path = SERVE_CONFIG) -> tuple[str, int]:
    """(timeframe, outcome horizon in candles) of the signal app in the serve config - what the running
    Analytics deployment uses; the app's defaults (AppArgs) when the file or the keys are missing."""
    import yaml

    from serve_app.config import AppArgs

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        config = {}
    except (OSError, yaml.YAMLError) as e:
        raise ReportError(f"cannot read {path}: {e}") from None
    args = next((app.get("args") or {} for app in config.get("applications") or []
                 if app.get("import_path") == "serve_app.app:build_app"), {})
    try:
        a = AppArgs.model_validate(args)
    except ValueError as e:
        raise ReportError(f"{path}: invalid application args: {e}") from None
    return a.timeframe, a.analytics.outcome_horizon_candles


def _from_store(args: argparse.Namespace, since_ms: int | None) -> dict[str, Any]:
    from serve_app.core.analytics import score_pending, summarize
    from serve_app.settings import StoreSettings
    from serve_app.store import StoreError, open_store
    from serve_app.core.timeutil import timeframe_ms

    timeframe, horizon = service_defaults()
    timeframe = args.timeframe or timeframe
    horizon = args.horizon_candles if args.horizon_candles is not None else horizon
    if horizon < 1:
        raise ReportError(f"--horizon-candles must be at least 1, got {horizon}")
    try:
        horizon_ms = horizon * timeframe_ms(timeframe)
    except ValueError as e:
        raise ReportError(str(e)) from None
    settings = StoreSettings.from_env()
    try:
        with open_store(settings) as store:
            written = None
            if not args.no_score:
                _progress(args, f"scoring signals older than {horizon} x {timeframe} in {settings.describe()} ...")
                written = score_pending(store, timeframe, horizon, int(time.time() * 1000))
                _progress(args, f"scored {written} signal(s)")
            rows = store.load_performance_rows(since_ms)
    except StoreError as e:
        raise ReportError(f"store {settings.describe()}: {type(e).__name__}: {e}") from None
    summary = summarize(rows)
    summary.update(source=settings.describe(), timeframe=timeframe, horizon_candles=horizon,
                   horizon_ms=horizon_ms, outcomes_written=written)
    return summary


def _from_service(url: str, since_ms: int | None) -> dict[str, Any]:
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    endpoint = url.rstrip("/") + "/analytics/performance"
    if since_ms is not None:
        since = datetime.fromtimestamp(since_ms / 1000, tz=timezone.utc).isoformat()
        endpoint += "?" + urllib.parse.urlencode({"since": since})
    headers = {"Accept": "application/json"}
    key = (os.environ.get("SIGNAL_API_KEY") or "").strip()
    if key:
        headers["X-API-Key"] = key
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint, headers=headers), timeout=60) as resp:
            summary = json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")[:300]
        raise ReportError(f"GET {endpoint}: HTTP {e.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ReportError(f"GET {endpoint}: {getattr(e, 'reason', e)}") from None
    if not isinstance(summary, dict) or "overall" not in summary:
        raise ReportError(f"GET {endpoint}: not a performance summary")
    summary["source"] = endpoint
    return summary


def _progress(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr)


# ------------------------------------------------------------------------------------------- output
def _output(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    overall = summary["overall"]
    if args.json:
        print(json.dumps(summary, indent=2))
    elif overall["signals"]:
        print(format_report(summary))
    if not overall["signals"]:
        where = f" since {args.since}" if args.since else ""
        print(f"no signals in {summary.get('source')}{where}: nothing to report (signals are stored as the "
              "service answers POST /generate_signal)" + (", no plots written" if args.plot else ""),
              file=sys.stderr)
        return
    if not args.plot:
        return
    if not overall["scored"]:
        print("no signal has been scored yet (its horizon has not passed): no plots written", file=sys.stderr)
        return
    out = args.out or Path("reports") / f"report-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    try:
        paths = write_report_plots(summary, out)
    except OSError as e:
        raise ReportError(f"cannot write plots to {out}: {e}") from None
    for path in paths:
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x * 100:+.2f}%" if signed else f"{x * 100:.1f}%"


def format_report(summary: dict[str, Any]) -> str:
    """The summary as plain-text tables (what `signalgen report` prints)."""
    o = summary["overall"]
    head = (f"{'':<14}{'signals':>8}{'scored':>8}{'hits':>7}{'hit rate':>10}{'mean conf':>11}{'gap':>9}"
            f"{'avg ret':>10}{'total ret':>11}")

    def row(name: str, g: dict[str, Any]) -> str:
        return (f"{name:<14}{g['signals']:>8}{g['scored']:>8}{g['hits']:>7}{_pct(g['hit_rate']):>10}"
                f"{_pct(g['mean_confidence']):>11}{_pct(g['calibration_gap'], True):>9}"
                f"{_pct(g['avg_return'], True):>10}{_pct(g['total_return'], True):>11}")

    lines = [f"Signals from {iso_minute(summary.get('first_signal_ms'))} to {iso_minute(summary.get('last_signal_ms'))} "
             f"UTC - {summary.get('source', '')}"]
    if summary.get("horizon_candles"):
        lines.append(f"Outcome: the close {summary['horizon_candles']} x {summary['timeframe']} candles after the "
                     f"signal; {o['signals'] - o['scored']} signal(s) not scored yet")
    lines += ["", head, row("overall", o), "", "By symbol"]
    lines += [row("  " + k, g) for k, g in summary["by_symbol"].items()]
    lines += ["", "By action"]
    lines += [row("  " + k, g) for k, g in summary["by_action"].items()]
    lines += ["", "Calibration by confidence bucket (confidence of the chosen action; 'gap' = hit rate - "
                  "mean confidence, negative = over-confident)"]
    lines += [row(f"  {b['lower']:.2f}-{b['upper']:.2f}", b) for b in summary["by_confidence"].values()]
    ece = summary.get("calibration_error")
    lines += ["", f"Calibration error (weighted mean |gap| over buckets): {_pct(ece)}",
              "hit: BUY if the price rose, SELL if it fell, HOLD if it moved < 0.5%; avg/total ret: mean/sum "
              "of the log return in the signal's direction over scored BUY/SELL signals"]
    return "\n".join(lines)
