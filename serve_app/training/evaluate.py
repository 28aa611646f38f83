"""Walk-forward evaluation + backtest of the model family on stored candles, and its report directory.

1. causality check of the serving feature function (refuses on look-ahead: training/leakage.py);
2. walk-forward (training/walkforward.py) with the label spec and XGBoost parameters of a registry version
   (default: the current one; train.py's defaults when there is none);
3. backtest of the out-of-sample signals through the service's trading code (training/backtest.py);
4. a report directory: metrics.json, report.md, trades.csv, calibration.png, confusion.png, equity.png;
   and evaluation.json in the registry version the parameters came from.

`signalgen evaluate` (serve_app/cli/evaluate.py) parses its options into EvaluationOptions and prints.
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from serve_app import plots
from serve_app.core.labels import DEFAULT_FEE_BPS, DEFAULT_SLIPPAGE_BPS, derive_label_spec, round_trip_cost
from serve_app.core.trading import BLOCKS
from serve_app.training.verdict import backtest_interval, compare, forecast_verdict, row_log_loss, verdict_line

CAUSALITY_CANDLES = 400


class EvaluateError(Exception):
    """A problem the operator can fix: printed as one line, exit code 2."""


@dataclass
class EvaluationOptions:
    """What to evaluate and how (the defaults are `signalgen evaluate`'s)."""

    symbols: str | None = None           # comma-separated; None: every symbol stored for the timeframe
    timeframe: str | None = None         # None: the model version's, else the default timeframe
    folds: int = 5
    train_candles: int | None = None
    train_fraction: float = 0.4
    test_candles: int | None = None
    test_fraction: float | None = None
    purge: int | None = None
    n_estimators: int = 300
    model_version: str | None = None
    model_dir: Path | None = None
    fee_bps: float = DEFAULT_FEE_BPS
    slippage_bps: float = DEFAULT_SLIPPAGE_BPS
    seed: int = 0
    out: Path | None = None
    dpi: int = 100
    quiet: bool = False

    @classmethod
    def from_namespace(cls, ns: Any) -> "EvaluationOptions":
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)})


# --- the pipeline ----------------------------------------------------------------------------------
def _model_spec(args: EvaluationOptions) -> tuple[str | None, dict[str, Any] | None, dict[str, Any], str | None]:
    """(version, label spec, xgboost params, timeframe) of --model-version / the current version; the label
    spec is None when no version is given and there is no current one (it is then derived from the data)."""
    from serve_app import settings
    from serve_app.training import registry

    root = args.model_dir or settings.model_dir()
    if args.model_version is None and registry.current_version(root) is None:
        return None, None, {}, None
    try:
        vdir = registry.resolve(args.model_version, root)
        meta = registry.read_metadata(vdir)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise EvaluateError(str(e)) from None
    label = dict(meta.get("label") or {})
    params = dict((meta.get("xgboost") or {}).get("params") or {})
    return vdir.name, label, params, meta.get("timeframe")


def _load_candles(symbols: list[str] | None, timeframe: str) -> dict[str, Any]:
    from serve_app.store import open_store
    from serve_app.store.base import StoreError

    try:
        store = open_store()
        try:
            symbols = symbols or list(store.list_symbols(timeframe))
            candles = {s: store.load_candles(s, timeframe) for s in symbols}
        finally:
            store.close()
    except StoreError as e:
        raise EvaluateError(f"store: {e}") from None
    if not candles:
        raise EvaluateError(f"no candles stored for timeframe {timeframe!r} (ingest or seed some first)")
    missing = [s for s, c in candles.items() if len(c) == 0]
    if missing:
        raise EvaluateError(f"no {timeframe} candles stored for {', '.join(missing)}")
    return candles


def evaluate(args: EvaluationOptions, feature_fn: Callable[..., Any] | None = None) -> tuple[Path, str]:
    """Run everything and write the report; returns (report dir, the text summary)."""
    t0 = time.perf_counter()
    from serve_app.training import registry
    from serve_app.training.backtest import backtest
    from serve_app.training.walkforward import walk_forward
    from serve_app import settings
    from serve_app.core.features import compute_features
    from serve_app.core.timeutil import timeframe_ms
    from serve_app.training.leakage import check_causality

    version, label, params, model_tf = _model_spec(args)
    timeframe = args.timeframe or model_tf or settings.DEFAULT_TIMEFRAME
    try:
        step_ms = timeframe_ms(timeframe)
    except ValueError as e:
        raise EvaluateError(str(e)) from None
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()] if args.symbols else None
    timings: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[phase] = round(now - mark, 2)
        mark = now

    candles = _load_candles(symbols, timeframe)
    lap("load")
    probe = max(candles.values(), key=len).tail(CAUSALITY_CANDLES)
    causality = check_causality(feature_fn or compute_features, probe)
    lap("leakage_check")
    if not causality.ok:
        raise EvaluateError(f"refusing to evaluate: the feature function leaks the future - "
                            f"{', '.join(causality.columns)} (checked on {probe.symbol}: {causality.describe()})")

    label_notes: list[str] = []
    if label is None:  # nothing registered: the label spec the data and the costs call for
        label, label_notes = derive_label_spec(step_ms, [c.close for c in candles.values()],
                                               cost=round_trip_cost(args.fee_bps, args.slippage_bps))
    label = {k: label[k] for k in ("horizon", "k", "vol_period")}
    horizon = int(label["horizon"])

    def run_walk_forward(xgb_params: dict[str, Any], progress: bool) -> Any:
        return walk_forward(list(candles.values()), horizon=horizon, k=float(label["k"]),
                            vol_period=int(label["vol_period"]), folds=args.folds, train_candles=args.train_candles,
                            train_fraction=args.train_fraction, test_candles=args.test_candles,
                            test_fraction=args.test_fraction, purge=args.purge, n_estimators=args.n_estimators,
                            params=xgb_params, seed=args.seed, progress=progress)

    try:
        wf = run_walk_forward(params, not args.quiet)
        lap("walk_forward")
        bt = backtest(candles, wf.symbols, wf.oos, horizon, step_ms, fee_bps=args.fee_bps,
                      slippage_bps=args.slippage_bps, progress=not args.quiet)
        lap("backtest")
        verdict = _verdict(wf, bt, horizon)
        verdict["vs_serving"] = _versus_serving(args, version, timeframe, label, wf, run_walk_forward)
        lap("verdict")
    except ValueError as e:
        raise EvaluateError(str(e)) from None

    now = _dt.datetime.now(_dt.timezone.utc)
    out = args.out or Path("reports") / f"eval-{now:%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "evaluated_at": now.isoformat(timespec="seconds"),
        "model_version": version,
        "timeframe": timeframe,
        "symbols": wf.symbols,
        "label": label,
        "label_notes": label_notes,
        "walk_forward": wf.config,
        "leakage_check": {"ok": True, "symbol": probe.symbol, "detail": causality.describe()},
        "pooled": wf.pooled,
        "folds": wf.folds,
        "backtest": bt.summary,
        "verdict": verdict,
        "seconds": round(time.perf_counter() - t0, 1),
        "timings_s": timings,
    }
    _write_json(out / "metrics.json", metrics)
    _write_trades(out / "trades.csv", bt.trades)
    plots.evaluation_calibration(out / "calibration.png", wf.pooled["calibration"]["table"], args.dpi)
    plots.evaluation_confusion(out / "confusion.png", wf.pooled["confusion_matrix"], args.dpi)
    plots.evaluation_equity(out / "equity.png", bt, args.dpi)
    (out / "report.md").write_text(format_report(metrics), encoding="utf-8")
    done = []
    if version is not None:
        root = args.model_dir or settings.model_dir()
        record = json.dumps(evaluation_record(metrics, out), indent=2, default=registry._json_default)
        registry.attach_file(version, registry.EVALUATION_FILE, record + "\n", root=root)
        done.append(f"evaluation summary attached to model {version}")
    done.append(f"report written to {out}")
    return out, format_summary(metrics, before_verdict=done)


def _verdict(wf: Any, bt: Any, horizon: int) -> dict[str, Any]:
    """Edge / no edge / worse than baseline, from the out-of-sample rows (time-ordered blocks of
    2 x horizon candles, at least 10, of every symbol) and the backtest's excess return over buy-and-hold."""
    oos = wf.oos
    candles_per_block = max(2 * horizon, 10)
    v = forecast_verdict(oos.y, oos.proba, {"prior": oos.prior_proba, "momentum": oos.momentum_proba},
                         np.lexsort((oos.symbol, oos.open_time)), candles_per_block * len(wf.symbols))
    v["backtest"] = backtest_interval(bt.equity, bt.buy_hold, candles_per_block)
    return v


def _versus_serving(args: EvaluationOptions, version: str | None, timeframe: str, label: dict[str, Any], wf: Any,
                    run_walk_forward: Callable[[dict[str, Any], bool], Any]) -> dict[str, Any] | None:
    """The serving (CURRENT) version's model family on the same folds and rows, paired with this one: what
    the promotion gate checks. None when there is no other version serving."""
    from serve_app import settings
    from serve_app.training import registry

    root = args.model_dir or settings.model_dir()
    current = registry.current_version(root)
    if current is None or current == version:
        return None
    meta = registry.read_metadata(registry.resolve(current, root))
    spec = {k: meta.get("label", {}).get(k) for k in ("horizon", "k", "vol_period")}
    ours = {k: label.get(k) for k in ("horizon", "k", "vol_period")}
    if meta.get("timeframe") != timeframe or spec != ours:
        return {"version": current, "comparable": False,
                "why": f"the serving model predicts other labels ({meta.get('timeframe')}, {spec}) than this one "
                       f"({timeframe}, {ours})"}
    theirs = run_walk_forward(dict((meta.get("xgboost") or {}).get("params") or {}), False)
    if theirs.oos.y.size != wf.oos.y.size or not np.array_equal(theirs.oos.y, wf.oos.y):
        return {"version": current, "comparable": False, "why": "the walk-forward rows differ"}
    order = np.lexsort((wf.oos.symbol, wf.oos.open_time))
    diff = row_log_loss(wf.oos.y, wf.oos.proba)[order] - row_log_loss(theirs.oos.y, theirs.oos.proba)[order]
    block = max(2 * int(label["horizon"]), 10) * len(wf.symbols)
    return {"version": current, "comparable": True,
            "log_loss": float(row_log_loss(theirs.oos.y, theirs.oos.proba).mean()), **compare(diff, block)}


def evaluation_record(m: dict[str, Any], out: Path) -> dict[str, Any]:
    """The small evaluation.json for the registry (`signalgen models list` shows `summary`)."""
    p, base, bt = m["pooled"], m["pooled"]["baselines"], m["backtest"]
    s, bh = bt["strategy"], bt["buy_and_hold"]
    return {
        "evaluated_at": m["evaluated_at"],
        "report_dir": str(out.resolve()),
        "timeframe": m["timeframe"],
        "symbols": m["symbols"],
        "oos_window_utc": m["walk_forward"]["oos_window_utc"],
        "folds": m["walk_forward"]["folds"],
        "n_test": p["n_test"],
        "label": m["label"],
        "verdict": m["verdict"],
        "summary": {
            "verdict": m["verdict"]["verdict"],
            "accuracy": p["accuracy"], "log_loss": p["log_loss"], "mcc": p["mcc"],
            "baseline": {"majority": base["majority"]["accuracy"], "momentum": base["momentum"]["accuracy"]},
            "backtest": {"return": s["total_return"], "sharpe": s["sharpe"], "max_dd": s["max_drawdown"],
                         "trades": s["trades"], "buy_hold_return": bh["total_return"]},
        },
        "backtest": {"fee_bps": bt["config"]["fee_bps"], "slippage_bps": bt["config"]["slippage_bps"],
                     "strategy": {k: s[k] for k in ("total_return", "sharpe", "sortino", "max_drawdown",
                                                    "profit_factor", "hit_rate", "trades", "time_in_market")},
                     "buy_and_hold": bh},
    }


# --- output ----------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    from serve_app.training.registry import _json_default

    path.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _write_trades(path: Path, trades: list[dict[str, Any]]) -> None:
    import csv

    from serve_app.core.timeutil import iso_ms

    cols = ("symbol", "side", "signal", "entry_time", "entry", "exit_time", "exit", "exit_reason", "notional",
            "fees", "pnl", "return")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in trades:
            w.writerow([t["symbol"], t["side"], iso_ms(t["signal_ms"]), iso_ms(t["entry_ms"]), f"{t['entry']:.8g}",
                        iso_ms(t["exit_ms"]), f"{t['exit']:.8g}", t["exit_reason"], f"{t['notional']:.2f}",
                        f"{t['fees']:.2f}", f"{t['pnl']:.2f}", f"{t['return']:.5f}"])


def _f(x: Any, nd: int = 3, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "-"
    return f"{x:.{max(nd - 2, 1)}%}" if pct else f"{x:.{nd}f}"


def _choices(folds: list[dict[str, Any]]) -> str:
    """How many folds served raw, calibrated or prior probabilities (train.calibration's choice)."""
    from collections import Counter

    n = Counter(f.get("calibration_choice", "calibrated" if f.get("calibration_kept") else "raw") for f in folds)
    return ", ".join(f"{k} {n[k]}" for k in ("raw", "calibrated", "prior") if n[k])


def format_summary(m: dict[str, Any], before_verdict: Sequence[str] = ()) -> str:
    p, base = m["pooled"], m["pooled"]["baselines"]
    s, bh = m["backtest"]["strategy"], m["backtest"]["buy_and_hold"]
    wf, v, lab = m["walk_forward"], m["verdict"], m["label"]
    blocked = s["decisions"].get("blocked_by") or {}
    ratios = (f", Sharpe {_f(s['sharpe'], 2)}, Sortino {_f(s['sortino'], 2)}" if s["sharpe"] is not None
              else f" (Sharpe/Sortino shown from {s['ratios_need_trades']} trades)")
    lines = [
        f"walk-forward {wf['folds']} folds, {len(m['symbols'])} symbol{'s' * (len(m['symbols']) != 1)} "
        f"({m['timeframe']}), "
        f"{p['n_test']} out-of-sample rows {wf['oos_window_utc'][0]} .. {wf['oos_window_utc'][1]} UTC, "
        f"model {m['model_version'] or 'none registered: the label spec derived from the data'}",
        f"  label: {lab['horizon']}-candle forward return vs {lab['k']} x vol({lab['vol_period']})",
        *[f"  label: {note}" for note in m.get("label_notes", [])],
        f"  model     accuracy {_f(p['accuracy'])}  log-loss {_f(p['log_loss'])}  MCC {_f(p['mcc'])}  (served "
        f"probabilities per fold: {_choices(m['folds'])})",
        f"  prior     accuracy {_f(base['majority']['accuracy'])}  log-loss "
        f"{_f(base['majority']['log_loss_train_prior'])}",
        f"  momentum  accuracy {_f(base['momentum']['accuracy'])}  log-loss {_f(v['log_loss']['momentum'])}",
        f"backtest ({m['backtest']['config']['fee_bps']:g} bps fee + {m['backtest']['config']['slippage_bps']:g} "
        f"bps slippage per fill): return {_f(s['total_return'], pct=True)} vs buy-and-hold "
        f"{_f(bh['total_return'], pct=True)}; in the market {_f(s['time_in_market'], pct=True)} of the time; "
        f"{s['trades']} trades, hit rate {_f(s['hit_rate'])}{ratios}; max drawdown "
        f"{_f(s['max_drawdown'], pct=True)} vs {_f(bh['max_drawdown'], pct=True)}",
        f"  signals {s['decisions']['signals']}: {s['decisions']['BUY']} BUY, {s['decisions']['SELL']} SELL, "
        f"{s['decisions']['HOLD']} HOLD, {s['decisions']['skipped_in_trade']} while the symbol was in a trade; "
        f"{s['decisions']['approved']} approved, {s['decisions']['blocked']} blocked"
        + (" by " + ", ".join(f"{BLOCKS.get(k, k)} {n}" for k, n in blocked.items()) if blocked else ""),
        *[f"WARNING: {w}" for w in wf.get("warnings", [])],
    ]
    vs = v.get("vs_serving")
    if vs:
        lines.append(f"vs the serving model {vs['version']}: " + (
            f"log-loss {v['log_loss']['model']:.4f} vs {vs['log_loss']:.4f} ({vs['difference']:+.4f}, "
            f"{int(v['level'] * 100)}% CI [{vs['low']:+.4f}, {vs['high']:+.4f}])" if vs["comparable"]
            else f"not comparable: {vs['why']}"))
    lines += [f"took {m['seconds']} s", *before_verdict, verdict_line(v, v["backtest"]), ""]  # the verdict last
    return "\n".join(lines)


def format_report(m: dict[str, Any]) -> str:
    p, base, wf = m["pooled"], m["pooled"]["baselines"], m["walk_forward"]
    s, bh, cfg = m["backtest"]["strategy"], m["backtest"]["buy_and_hold"], m["backtest"]["config"]
    lab = m["label"]
    L = [
        f"# Walk-forward evaluation ({m['evaluated_at']})", "",
        f"- model: {m['model_version'] or 'none registered - train.py defaults'}; label: {lab['horizon']}-candle "
        f"forward return vs {lab['k']} x vol({lab['vol_period']}) x sqrt(h)",
        f"- data: {m['timeframe']}, {', '.join(m['symbols'])}; out-of-sample {wf['oos_window_utc'][0]} .. "
        f"{wf['oos_window_utc'][1]} UTC ({p['n_test']} rows)",
        f"- windows: {wf['folds']} folds, train {wf['train_candles']} candles (last {wf['val_fraction']:.0%} for "
        f"early stopping + temperature), purge {wf['purge']}, test {wf['test_candles']} candles per fold",
        f"- leakage check: {m['leakage_check']['detail']} ({m['leakage_check']['symbol']})", "",
        "## Out-of-sample, all folds pooled", "",
        "| | accuracy | log-loss | MCC | up/down hit rate |", "|---|---|---|---|---|",
        f"| model | {_f(p['accuracy'])} | {_f(p['log_loss'])} | {_f(p['mcc'])} | "
        f"{_f(p['directional']['hit_rate'])} ({p['directional']['calls']} calls) |",
        f"| majority class of the training window | {_f(base['majority']['accuracy'])} | "
        f"{_f(base['majority']['log_loss_train_prior'])} | 0 | - |",
        f"| momentum sign | {_f(base['momentum']['accuracy'])} | - | - | "
        f"{_f(base['momentum']['directional']['hit_rate'])} |", "",
        "| class | precision | recall | support |", "|---|---|---|---|",
    ]
    L += [f"| {c} | {_f(v['precision'])} | {_f(v['recall'])} | {v['support']} |" for c, v in p["per_class"].items()]
    cm = p["confusion_matrix"]
    L += ["", "Confusion matrix (rows true, columns predicted):", "",
          "| | " + " | ".join(cm["rows_true_cols_pred"]) + " |", "|---" * (len(cm["rows_true_cols_pred"]) + 1) + "|"]
    L += [f"| {c} | " + " | ".join(str(x) for x in row) + " |"
          for c, row in zip(cm["rows_true_cols_pred"], cm["counts"])]
    L += ["", "![confusion](confusion.png)", "", "## Calibration (top-class probability)", "",
          f"Expected calibration error {_f(p['calibration']['expected_calibration_error'])}.", "",
          "| confidence | mean predicted | observed | rows |", "|---|---|---|---|"]
    L += [f"| {r['bucket']} | {_f(r['mean_predicted'])} | {_f(r['observed'])} | {r['count']} |"
          for r in p["calibration"]["table"]]
    L += ["", "![calibration](calibration.png)", "", "## Per fold", "",
          "| fold | test window (UTC) | rows | trees | served | accuracy | log-loss | MCC | majority | momentum |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for f in m["folds"]:
        fm, fb = f["metrics"], f["baselines"]
        L.append(f"| {f['fold']} | {f['windows_utc']['test'][0]} .. {f['windows_utc']['test'][1]} | {f['n_test']} | "
                 f"{f['trees']} | {f.get('calibration_choice', '-')} | {_f(fm['accuracy'])} | {_f(fm['log_loss'])} | {_f(fm['mcc'])} | "
                 f"{_f(fb['majority']['accuracy'])} ({fb['majority']['class']}) | {_f(fb['momentum']['accuracy'])} |")
    d = s["decisions"]
    L += ["", "## Backtest", "",
          f"Signals go through decide_actions -> size_positions -> assess (ExposureBook) with the service's "
          f"default configs; entry at the next open, exit at stop-loss / take-profit (stop first when a candle "
          f"touches both) or after {cfg['horizon']} candles; {cfg['fee_bps']:g} bps fee + "
          f"{cfg['slippage_bps']:g} bps slippage per fill; starting equity {cfg['starting_equity']:,.0f}.", "",
          "| | strategy | buy-and-hold (equal weight) |", "|---|---|---|",
          f"| total return | {_f(s['total_return'], pct=True)} | {_f(bh['total_return'], pct=True)} |",
          f"| time in market / mean gross exposure | {_f(s['time_in_market'], pct=True)} / "
          f"{_f(s['mean_gross_exposure'], pct=True)} | 100% |",
          f"| trades | {s['trades']} ({s['long_trades']} long) | - |",
          f"| hit rate | {_f(s['hit_rate'])} | - |",
          f"| max drawdown | {_f(s['max_drawdown'], pct=True)} | {_f(bh['max_drawdown'], pct=True)} |",
          f"| profit factor | {_f(s['profit_factor'], 2)} | - |",
          f"| Sharpe (annualised; from {s['ratios_need_trades']} trades) | {_f(s['sharpe'], 2)} | "
          f"{_f(bh['sharpe'], 2)} |",
          f"| Sortino (annualised; from {s['ratios_need_trades']} trades) | {_f(s['sortino'], 2)} | "
          f"{_f(bh['sortino'], 2)} |", "",
          f"Exits: {s['exits']}. Signals: {d['signals']} ({d['BUY']} BUY, {d['SELL']} SELL, {d['HOLD']} HOLD, "
          f"{d['skipped_in_trade']} while the symbol was in a trade); {d['approved']} approved, {d['blocked']} "
          f"blocked by risk" + ("".join(f"; {BLOCKS.get(k, k)}: {n}" for k, n in (d.get("blocked_by") or {}).items()))
          + ". Trades: trades.csv.", "", "![equity](equity.png)", "",
          "## Verdict", "", verdict_line(m["verdict"], m["verdict"]["backtest"]), ""]
    return "\n".join(L)
