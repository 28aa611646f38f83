"""Look-ahead check for feature functions: a feature at candle t must not change when the candles after
t are removed.

`check_causality(fn, candles)` computes fn(open, high, low, close, volume) on the full series and on
prefixes ending at a spread of cut points t, and compares row t of each prefix with row t of the full
result. A column whose value differs (beyond float noise), or is defined in one and undefined (NaN) in
the other, is flagged with the first cut point where it happened. The serving function passes by
construction (every indicator looks back only); a column computed from close[t+1], or any column
shifted backwards in time, is caught. No ray, numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from serve_app.core.features import FEATURE_NAMES, WARMUP

FeatureFn = Callable[..., np.ndarray]


@dataclass
class CausalityReport:
    columns: dict[str, int] = field(default_factory=dict)  # leaking column -> first cut point that exposed it
    cut_points: list[int] = field(default_factory=list)
    n_candles: int = 0

    @property
    def ok(self) -> bool:
        return not self.columns

    def describe(self) -> str:
        if self.ok:
            return (f"no look-ahead: {len(self.cut_points)} prefixes of {self.n_candles} candles agree with "
                    f"the full series")
        cols = ", ".join(f"{name} (row {t})" for name, t in self.columns.items())
        return f"look-ahead in {len(self.columns)} feature column(s): {cols} change when later candles are removed"


def cut_points(n: int, count: int = 24, first: int = WARMUP) -> list[int]:
    """`count` prefix ends spread over [first, n-2] (the last row has nothing after it to remove),
    always including the two rows just before the end, where a one-candle look-ahead shows."""
    if n - 2 < first:
        return []
    pts = np.linspace(first, n - 2, num=min(count, n - 1 - first)).round().astype(int)
    return sorted(set(pts.tolist()) | {n - 2, max(first, n - 3)})


def check_causality(fn: FeatureFn, candles: Any, names: Sequence[str] = FEATURE_NAMES, count: int = 24,
                    rtol: float = 1e-9, atol: float = 1e-12) -> CausalityReport:
    """Run the check on `candles` (anything with open/high/low/close/volume arrays, e.g.
    serve_app.store.Candles). Columns beyond len(names) are called col_<index>."""
    ohlcv = [np.asarray(getattr(candles, a), dtype=np.float64) for a in ("open", "high", "low", "close", "volume")]
    n = ohlcv[3].shape[0]
    full = np.asarray(fn(*ohlcv), dtype=np.float64)
    label = [names[j] if j < len(names) else f"col_{j}" for j in range(full.shape[1])]
    report = CausalityReport(cut_points=cut_points(n, count), n_candles=n)
    for t in report.cut_points:
        row = np.asarray(fn(*(a[: t + 1] for a in ohlcv)), dtype=np.float64)[t]
        ref = full[t]
        same = np.isclose(row, ref, rtol=rtol, atol=atol) | (np.isnan(row) & np.isnan(ref))
        for j in np.flatnonzero(~same):
            report.columns.setdefault(label[j], t)
    return report
