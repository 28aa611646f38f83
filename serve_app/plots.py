"""Every PNG the toolkit writes (`signalgen evaluate`, `signalgen report --plot`), drawn with matplotlib on
the headless backend. matplotlib (the toolkit extra) is imported only when a figure is drawn."""
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


# ------------------------------------------------------------------------- `signalgen evaluate`
def evaluation_calibration(path: Path, table: list[dict[str, Any]], dpi: int) -> None:
    plt = pyplot()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    x = [r["mean_predicted"] for r in table]
    ax.plot([1 / 3, 1], [1 / 3, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(x, [r["observed"] for r in table], "o-", label="model (pooled out-of-sample)")
    ax.set_ylabel("observed frequency of the predicted class")
    ax.set_ylim(0, 1)
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    axn.bar(x, [r["count"] for r in table], width=0.04)
    axn.set_xlabel("mean predicted probability (top class)")
    axn.set_ylabel("rows")
    save(fig, path, dpi)


def evaluation_confusion(path: Path, cm: dict[str, Any], dpi: int) -> None:
    import numpy as np

    plt = pyplot()
    counts = np.asarray(cm["counts"], dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = cm["rows_true_cols_pred"]
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(counts[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion (row share), out-of-sample")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save(fig, path, dpi)


def evaluation_equity(path: Path, bt: Any, dpi: int) -> None:
    import numpy as np

    plt = pyplot()
    t = np.asarray(bt.times, dtype="datetime64[ms]")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    s, bh = bt.summary["strategy"], bt.summary["buy_and_hold"]
    ax.plot(t, bt.equity, label=f"strategy ({s['total_return']:+.1%}, {s['trades']} trades)")
    ax.plot(t, bt.buy_hold, label=f"buy-and-hold equal weight ({bh['total_return']:+.1%})")
    ax.set_ylabel("equity")
    ax.set_title("Backtest of the out-of-sample signals (fees + slippage)")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    save(fig, path, dpi)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


# ------------------------------------------------------------------------- `signalgen report --plot`
REPORT_PLOT_FILES = ("calibration.png", "by_symbol.png", "cumulative_return.png")


def write_report_plots(summary: dict[str, Any], out: Path) -> list[Path]:
    """The live report's three PNGs (REPORT_PLOT_FILES) from a performance summary (core.analytics.summarize,
    or GET /analytics/performance)."""
    plt = pyplot()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in REPORT_PLOT_FILES]
    for path, draw in zip(paths, (_plot_calibration, _plot_by_symbol, _plot_cumulative)):
        save(draw(plt, summary), path, dpi=110)
    return paths


def _plot_calibration(plt: Any, summary: dict[str, Any]) -> Any:
    buckets = [b for b in summary["by_confidence"].values() if b["scored"]]
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    x = [b["mean_confidence"] for b in buckets]
    y = [b["hit_rate"] for b in buckets]
    ax.plot(x, y, marker="o", color="tab:blue", label="realised hit rate")
    for b in buckets:
        ax.annotate(f"n={b['scored']}", (b["mean_confidence"], b["hit_rate"]), textcoords="offset points",
                    xytext=(6, -12), fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("hit rate")
    ax.set_title(f"Calibration by confidence bucket (calibration error {_pct(summary.get('calibration_error'))})")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    axn.bar([(b["lower"] + b["upper"]) / 2 for b in buckets], [b["scored"] for b in buckets], width=0.09,
            color="tab:blue", alpha=0.5)
    axn.set_xticks([i / 10 for i in range(11)])
    axn.set_xlim(0, 1)
    axn.set_xlabel("confidence (bars: bucket [lower, upper); points: the bucket's mean confidence)")
    axn.set_ylabel("scored")
    return fig


def _plot_by_symbol(plt: Any, summary: dict[str, Any]) -> Any:
    syms = list(summary["by_symbol"])
    groups = [summary["by_symbol"][s] for s in syms]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(syms) + 4), 4.5))
    hr = [g["hit_rate"] or 0.0 for g in groups]
    bars = a1.bar(syms, hr, color="tab:blue")
    a1.axhline(0.5, ls="--", color="grey", lw=1)
    for bar, g in zip(bars, groups):
        a1.annotate(f"n={g['scored']}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    a1.set_ylim(0, 1)
    a1.set_ylabel("hit rate")
    a1.set_title("Hit rate by symbol")
    ar = [(g["avg_return"] or 0.0) * 100 for g in groups]
    a2.bar(syms, ar, color=["tab:green" if v >= 0 else "tab:red" for v in ar])
    a2.axhline(0, color="black", lw=0.8)
    a2.set_ylabel("avg directional log return (%)")
    a2.set_title("Average return by symbol (BUY/SELL)")
    for ax in (a1, a2):
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", rotation=45 if len(syms) > 6 else 0)
    return fig


def _plot_cumulative(plt: Any, summary: dict[str, Any]) -> Any:
    import numpy as np

    days = list(summary["by_day"])
    daily = np.array([summary["by_day"][d]["total_return"] for d in days]) * 100
    dates = np.array(days, dtype="datetime64[D]")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(dates, daily, color=["tab:green" if v >= 0 else "tab:red" for v in daily], alpha=0.4,
           label="day's sum")
    ax.plot(dates, np.cumsum(daily), marker="o", ms=3, color="tab:blue", label="cumulative")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("directional log return (%, one unit per signal)")
    ax.set_title("Cumulative directional return of the scored BUY/SELL signals (by UTC day generated)")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return fig
