"""Metric names that the Grafana dashboard and the PrometheusRule in kuberay/monitoring/ query, and a
comparison with a Prometheus scrape — so a test can prove that every query names a metric the running app
really exports on Ray's metrics port.

    from kuberay.metric_names import dashboard_and_alert_metric_names, missing_from_scrape
    missing_from_scrape(dashboard_and_alert_metric_names(), scrape_text)   # set() when all are exported

The collector's alert is the one query on metrics the app does not export: kube-state-metrics' (the Jobs run
outside Ray and export nothing). Those names are listed in KUBE_STATE_METRICS, left out of
dashboard_and_alert_metric_names() and returned by kube_state_metric_names() instead.

`python kuberay/metric_names.py [scrape.txt]` prints the names (and, given a scrape, the missing ones).
No dependencies beyond PyYAML.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Iterable

import yaml

MONITORING = Path(__file__).resolve().parent / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"


# --- metric names in PromQL --------------------------------------------------------------------------
_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_OFFSET = re.compile(r"\boffset\s+-?[\w$]+", re.I)
_AT = re.compile(r"@\s*(?:start\(\)|end\(\)|[\d.]+)")
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENTIFIER = re.compile(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*(?![\w:])")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
# The kube-state-metrics series the rules may use (kube-prometheus-stack runs kube-state-metrics and scrapes it
# by default): the STABLE CronJob and Job metrics of kube-state-metrics v2 (docs/metrics/workload/
# cronjob-metrics.md and job-metrics.md in kubernetes/kube-state-metrics), labels `namespace` and `cronjob` /
# `job_name`. A name outside this list in a query is a typo or a new dependency: a test says so.
KUBE_STATE_METRICS = frozenset({
    "kube_cronjob_created", "kube_cronjob_info", "kube_cronjob_next_schedule_time", "kube_cronjob_spec_suspend",
    "kube_cronjob_status_active", "kube_cronjob_status_last_schedule_time",
    "kube_cronjob_status_last_successful_time",
    "kube_job_created", "kube_job_complete", "kube_job_failed", "kube_job_owner", "kube_job_status_active",
    "kube_job_status_failed", "kube_job_status_succeeded", "kube_job_status_start_time",
    "kube_job_status_completion_time",
})


def metric_names_in_promql(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: label matchers, strings, ranges/durations, offsets,
    `by (...)`-style label lists, Grafana variables, numbers, function and aggregation names are ignored."""
    text = _PROMQL_STRING.sub(" ", expr)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _AT.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for m in _IDENTIFIER.finditer(text):
        word = m.group(0)
        if word.lower() in _KEYWORDS:
            continue
        if text[m.end():].lstrip().startswith("("):  # a function or an aggregation operator
            continue
        names.add(word)
    return names


def _template_query_exprs(query: Any) -> list[str]:
    """PromQL inside a Grafana template variable's query (label_values(expr, label), query_result(expr))."""
    text = query.get("query", "") if isinstance(query, dict) else str(query or "")
    m = re.match(r"^\s*label_values\((.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$", text, re.S)
    if m:
        return [m.group(1)]
    m = re.match(r"^\s*query_result\((.*)\)\s*$", text, re.S)
    if m:
        return [m.group(1)]
    return []


def dashboard_exprs(path: Path = DASHBOARD) -> list[str]:
    dash = json.loads(path.read_text(encoding="utf-8"))
    exprs: list[str] = []

    def panels(items: Iterable[dict]) -> None:
        for p in items:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            panels(p.get("panels", []))

    panels(dash.get("panels", []))
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            exprs += _template_query_exprs(var.get("query"))
    return exprs


def alert_exprs(path: Path = PROMETHEUS_RULE) -> list[str]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return [rule["expr"] for doc in docs for group in doc["spec"]["groups"]
            for rule in group["rules"] if rule.get("expr")]


def _all_metric_names() -> set[str]:
    names: set[str] = set()
    for expr in dashboard_exprs() + alert_exprs():
        names |= metric_names_in_promql(expr)
    return names


def dashboard_and_alert_metric_names() -> set[str]:
    """Every metric name the Grafana dashboard (panels and template variables) and the PrometheusRule use that
    the app must export on Ray's metrics port: all of them but kube-state-metrics' (KUBE_STATE_METRICS)."""
    return _all_metric_names() - KUBE_STATE_METRICS


def kube_state_metric_names() -> set[str]:
    """The metric names the queries use from kube-state-metrics (the collector's alert)."""
    return _all_metric_names() & KUBE_STATE_METRICS


# --- comparing with a scrape ---------------------------------------------------------------------------
def scrape_names(text: str) -> tuple[set[str], dict[str, str]]:
    """(sample names, {family name: type}) of a Prometheus text exposition."""
    samples, families = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                families[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return samples, families


def missing_from_scrape(names: Iterable[str], scrape_text: str) -> set[str]:
    """The names that a scrape does not export — neither as a sample name nor as a family (a histogram's
    `_bucket`/`_sum`/`_count` count as its family; a counter family without `_total` as its `_total`)."""
    samples, families = scrape_names(scrape_text)
    missing = set()
    for name in names:
        if name in samples or name in families:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and families.get(base) in ("histogram", "summary"):
            continue
        if name.endswith("_total") and families.get(name[:-len("_total")]) == "counter":
            continue
        missing.add(name)
    return missing


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = dashboard_and_alert_metric_names()
    print("\n".join(sorted(names)))
    if argv:
        missing = missing_from_scrape(names, Path(argv[0]).read_text(encoding="utf-8"))
        print(f"missing from {argv[0]}: {sorted(missing) or 'none'}", file=sys.stderr)
        return 1 if missing else 0
    return 0


__all__ = ["METRIC_NAME", "KUBE_STATE_METRICS", "metric_names_in_promql", "dashboard_exprs", "alert_exprs",
           "dashboard_and_alert_metric_names", "kube_state_metric_names", "scrape_names", "missing_from_scrape"]

if __name__ == "__main__":
    sys.exit(main())
