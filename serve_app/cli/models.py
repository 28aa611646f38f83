"""`signalgen models list | promote VERSION | rollback`: the model registry's lifecycle.

The registry is MODEL_DIR (default models/artifacts; on Kubernetes the models volume): one directory per
version, CURRENT, HISTORY.jsonl (serve_app/training/registry.py). Promotion and rollback - the checks, the
running application's update, the registry - are serve_app/training/lifecycle.py; this module parses,
calls and prints.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from serve_app.core.timeutil import iso_minute
from serve_app.training.lifecycle import DEFAULT_ADDRESS, LifecycleError, switch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registry's model versions, promote one, roll back",
                       description=__doc__.split("\n\n")[0])
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    ls = msub.add_parser("list", help="versions with metrics, baselines and evaluation summaries")
    ls.add_argument("--model-dir", help="registry root (default: $MODEL_DIR or models/artifacts)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)

    pr = msub.add_parser("promote", help="make VERSION the served model (registry + running app), through the "
                                         "promotion gate: an evaluation with the verdict EDGE, not worse than the "
                                         "serving model")
    pr.add_argument("version", metavar="VERSION", help="a version name, or 'latest'")
    pr.add_argument("--force", action="store_true", help="promote past the gate (needs --reason)")
    pr.add_argument("--reason", help="why the gate is overridden; recorded in HISTORY.jsonl with who and when")
    _deploy_options(pr)
    pr.set_defaults(func=cmd_promote)

    rb = msub.add_parser("rollback", help="return to the version served before the current one")
    _deploy_options(rb)
    rb.set_defaults(func=cmd_rollback)


def _deploy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", help="registry root (default: $MODEL_DIR or models/artifacts)")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_ADDRESS),
                   help="Ray dashboard of the running app (default: $RAY_DASHBOARD_ADDRESS or %(default)s)")
    p.add_argument("--no-deploy", action="store_true", help="change the registry only, not the running app")
    p.add_argument("--require-deploy", action="store_true",
                   help="fail (exit 2) when no running app could be updated, instead of a notice")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="also set model_version in this Serve config YAML (a text edit that keeps comments)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the app (default 300)")


def _model_root(args: argparse.Namespace) -> Path:
    from serve_app.settings import model_dir

    return Path(args.model_dir) if args.model_dir else model_dir()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# --- list ------------------------------------------------------------------------------------------
def evaluation_summary(evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers of evaluation.json's `summary` object (else of the whole document), nested objects
    flattened to dotted keys (at most three levels), lists left out."""
    if not evaluation:
        return {}
    source = evaluation["summary"] if isinstance(evaluation.get("summary"), dict) else evaluation
    out: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str, depth: int) -> None:
        for k, v in d.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[prefix + str(k)] = v
            elif isinstance(v, dict) and depth < 2:
                walk(v, f"{prefix}{k}.", depth + 1)

    walk(source, "", 0)
    return out


def _num(x: Any, nd: int = 3) -> str:
    return f"{x:.{nd}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def _symbols(symbols: Any) -> str:
    if not isinstance(symbols, list) or not symbols:
        return "-"
    return ",".join(symbols[:4]) + (f",+{len(symbols) - 4}" if len(symbols) > 4 else "")


def format_versions(versions: list[dict[str, Any]], root: Path, rollback_to: str | None) -> str:
    """The `models list` table: one row per version (* = CURRENT), evaluation summaries under their row."""
    if not versions:
        return f"no model versions under {root} (train one with `signalgen train`)"
    header = ("  VERSION", "CREATED", "TF", "SYMBOLS", "TRAINED ON (UTC)", "TEST ACC", "LOG-LOSS",
              "BASELINE ACC", "BASELINE LOG-LOSS", "VERDICT")
    rows, notes = [], {}
    for v in versions:
        mark = "* " if v.get("current") else "  "
        if "error" in v:
            rows.append((mark + v["version"], *["-"] * (len(header) - 1)))
            notes[len(rows) - 1] = [f"unreadable: {v['error']}"]
            continue
        base_acc = " ".join(f"{k}={_num(a)}" for k, a in (v.get("baseline_accuracy") or {}).items()) or "-"
        base_ll = " ".join(f"{k}={_num(a)}" for k, a in (v.get("baseline_log_loss") or {}).items()) or "-"
        span = v.get("training_span_ms")
        rows.append((mark + v["version"], str(v.get("created_at") or "-"), str(v.get("timeframe") or "-"),
                     _symbols(v.get("symbols")), f"{iso_minute(span[0])} .. {iso_minute(span[1])}" if span else "-",
                     _num(v.get("accuracy")), _num(v.get("log_loss")), base_acc, base_ll,
                     v.get("verdict") or "not evaluated"))
        summary = evaluation_summary(v.get("evaluation"))
        lines = []
        if summary:
            lines.append("evaluation: " + "  ".join(f"{k}={_num(x) if isinstance(x, float) else x}"
                                                    for k, x in summary.items()))
        if v.get("evaluation_error"):
            lines.append(f"evaluation unreadable: {v['evaluation_error']}")
        if lines:
            notes[len(rows) - 1] = lines
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip()]
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        out += [f"      {n}" for n in notes.get(i, [])]
    out.append("")
    out.append(f"registry: {root}   * = CURRENT   rollback returns to: {rollback_to or '(nothing to roll back to)'}")
    return "\n".join(out)


def cmd_list(args: argparse.Namespace) -> int:
    from serve_app.training import registry

    root = _model_root(args)
    try:
        versions = registry.list_versions(root)
        rollback_to = registry.rollback_target(root)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    if args.json:
        for v in versions:
            v["evaluation"] = evaluation_summary(v.get("evaluation")) or None
        print(json.dumps({"root": str(root), "current": registry.current_version(root),
                          "rollback_to": rollback_to, "versions": versions}, indent=2))
    else:
        print(format_versions(versions, root, rollback_to))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    if args.force and not (args.reason or "").strip():
        return _fail("--force needs --reason 'why': the override is recorded in the history")
    try:
        return switch(args.version, _model_root(args), "promote", args.address, args.no_deploy,
                      args.require_deploy, args.config, args.timeout, gate=True,
                      force_reason=args.reason.strip() if args.force else None)
    except (LifecycleError, OSError) as e:
        return _fail(str(e))


def cmd_rollback(args: argparse.Namespace) -> int:
    from serve_app.training import registry

    root = _model_root(args)
    try:
        target = registry.rollback_target(root)
        if target is None:
            raise LifecycleError(f"nothing to roll back to: {root / registry.HISTORY_FILE} records no version "
                                 f"served before {registry.current_version(root) or '(no CURRENT)'}")
        return switch(target, root, "rollback", args.address, args.no_deploy, args.require_deploy,
                      args.config, args.timeout)
    except (LifecycleError, ValueError, OSError) as e:  # ValueError: an unreadable HISTORY.jsonl
        return _fail(str(e))
