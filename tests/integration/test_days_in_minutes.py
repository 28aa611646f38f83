"""Days in minutes: market data that goes stale and comes back, on the running application, without a restart.

A fake Binance (tests/fake_exchange.py) runs on the wall clock and serves 1-minute candles; `signalgen collect
--loop --interval 2` (a subprocess, as an operator runs it) keeps a MariaDB database of its own fresh. A fourth
app, /days, is deployed next to the session's apps with timeframe 1m, a candle refresh every second, a model that
only ever says BUY (trained on a rising 1m series: tests/market_fixtures.py) and risk.max_data_age_s = 150 s.

1. collector running: every signal is approved, across at least one new candle arriving;
2. collector stopped (SIGTERM, exit 0): the answers become blocked, naming stale data as their only block, /health
   says all market data is stale and Ray's exported ray_signalgen_data_age_seconds of /days passes 150 s for every
   symbol - the SignalgenStaleMarketData alert's condition (its threshold is risk.max_data_age_s: checked below);
3. collector started again: the missed candles are fetched, signals are approved again, the metric drops below the
   limit - by the same replicas, the app never redeployed.

Why the real clock, not an accelerated one: the risk rule measures a candle's age against the request's time
(now) and the metric against the FeatureEngine's clock, both the wall clock; there is no clock to inject into the
service, so the candles must be real-time ones. Binance has no candle shorter than 1 minute. The age is measured
from the newest candle's *open*, and only closed candles are stored, so a store kept fresh holds a newest candle
60-120 s old (plus the collector's interval and the cache refresh): the limit must be above 120 s, and 150 s
leaves 30 s for both on a busy machine. A timeline (UTC) is printed as it happens (pytest -s shows it).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serve_app.cluster import applications, deploy, wait_deleted
from serve_app.settings import PROJECT_ROOT, StoreSettings
from tests.conftest import mysql_admin_connection
from tests.fake_exchange import FakeBinance, candle, wall_clock_ms
from tests.integration.conftest import session_apps_config
from tests.market_fixtures import always_up_registry
from tests.polling import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.mysql]

APP = "days"
SYMBOLS = ("BTC", "ETH", "SOL")
MAX_DATA_AGE_S = 150.0
HISTORY_MIN = 400  # candles the first collector run fetches: more than the features' warm-up and the context's
METRIC = "ray_signalgen_data_age_seconds"
STEP_MS = 60_000


def _iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class Timeline:
    """Prints `HH:MM:SS phase: approved/blocked (reason), data_age_s=...` when something changes: the phase, the
    verdict, a new candle reaching the answers; plus the metric's crossings."""

    def __init__(self) -> None:
        self.phase = ""
        self.last: tuple | None = None
        self.newest_open_ms = 0

    def note(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S', time.gmtime())} {self.phase}: {text}", flush=True)

    def enter(self, phase: str, text: str) -> None:
        self.phase, self.last = phase, None
        self.note(text)

    def answer(self, body: dict) -> None:
        blocks = [r.removeprefix("blocked: ") for r in body["risk"]["reasons"] if r.startswith("blocked: ")]
        verdict = "approved" if body["risk"]["approved"] else f"blocked ({'; '.join(blocks)})"
        opened = _iso_ms(body["data"]["last_candle_open"])
        age = (_iso_ms(body["data"]["as_of"]) - opened) / 1000
        new_candle = opened > self.newest_open_ms
        self.newest_open_ms = max(self.newest_open_ms, opened)
        key = (body["risk"]["approved"], tuple(b.split(":")[0] for b in blocks))
        if key != self.last or new_candle:
            self.note(f"{verdict}, {body['symbol']} data_age_s={age:.1f}"
                      + (f" (newest candle {time.strftime('%H:%M', time.gmtime(opened / 1000))})" if new_candle else ""))
        self.last = key


class Collector:
    """`signalgen collect --loop --interval 2` as a subprocess into the test's database; start and stop again."""

    def __init__(self, exchange_url: str, env: dict[str, str], log: Path) -> None:
        since = (wall_clock_ms() // STEP_MS - HISTORY_MIN) * STEP_MS
        self.argv = [str(Path(sys.executable).parent / "signalgen"), "collect", "--loop", "--interval", "2",
                     "--exchange-url", exchange_url, "--symbols", ",".join(SYMBOLS), "--timeframes", "1m",
                     "--since", str(since)]
        self.env, self.log = env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=PROJECT_ROOT)

    def runs(self) -> int:
        """Collector runs finished so far (each prints one summary line)."""
        return self.log.read_text().count(" collect into ") if self.log.exists() else 0

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self.proc = None
        return code

    def tail(self) -> str:
        return "\ncollector log:\n" + "\n".join(self.log.read_text().splitlines()[-15:]) if self.log.exists() else ""


@pytest.fixture(scope="module")
def days(signal_app: dict, mysql_settings: StoreSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from serve_app.store import open_store

    root = tmp_path_factory.mktemp("days")
    version = always_up_registry(root, "1m", horizon=4)  # 4-minute labels: the derived ones need 3199 candles
    database = f"signalgen_test_days_{uuid.uuid4().hex[:10]}"
    store_env = {"MYSQL_HOST": mysql_settings.mysql_host or "127.0.0.1", "MYSQL_PORT": str(mysql_settings.mysql_port),
                 "MYSQL_USER": mysql_settings.mysql_user, "MYSQL_PASSWORD": mysql_settings.mysql_password,
                 "MYSQL_DATABASE": database}
    open_store(StoreSettings.from_env(store_env)).close()  # created and migrated
    http_port = int(signal_app["url"].rsplit(":", 1)[1])
    app_env = {**store_env, "MODEL_DIR": str(root / "models"), "SIGNAL_SPILL_DIR": str(root / "spill")}
    risk = {**session_apps_config(http_port, signal_app["env"], APP, None)["applications"][0]["args"]["risk"],
            "max_data_age_s": MAX_DATA_AGE_S}
    config = session_apps_config(http_port, signal_app["env"], APP, app_env, args={"timeframe": "1m", "risk": risk})
    collector_env = {k: v for k, v in os.environ.items() if k != "SIGNAL_DB_PATH"} | store_env
    with FakeBinance(clock=wall_clock_ms) as exchange:
        collector = Collector(exchange.url, collector_env, root / "collector.log")
        try:
            yield {"client": signal_app["client"], "dashboard": signal_app["dashboard"], "config": config,
                   "exchange": exchange, "collector": collector, "version": version,
                   "deploy": lambda: deploy(signal_app["dashboard"], config, timeout_s=240)}
        finally:
            if collector.proc is not None:
                collector.stop()
            try:
                deploy(signal_app["dashboard"], session_apps_config(http_port, signal_app["env"], APP, None),
                       timeout_s=240)
                wait_deleted(signal_app["dashboard"], [APP], timeout_s=240)
            finally:
                admin = mysql_admin_connection()
                with admin.cursor() as cur:
                    cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
                admin.close()


def _replicas(dashboard: str) -> dict[str, tuple[float, str]]:
    """replica id -> (start time, state) of every replica of /days."""
    deployments = applications(dashboard)["applications"][APP]["deployments"]
    return {r["replica_id"]: (r.get("start_time_s"), r.get("state")) for d in deployments.values()
            for r in d.get("replicas", [])}


def test_signals_are_approved_blocked_as_stale_and_approved_again_as_the_collector_stops_and_resumes(days: dict):
    import ray

    client, exchange, collector, tl = days["client"], days["exchange"], days["collector"], Timeline()
    metrics_ports = sorted({n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]})
    scraper = httpx.Client(timeout=20)
    answers: list[dict] = []
    turn = iter(range(10**9))
    t_start = time.monotonic()

    def signal() -> dict:
        """One signal for the next symbol in turn, at the exchange's live price."""
        symbol = SYMBOLS[next(turn) % len(SYMBOLS)]
        now = exchange.now_ms
        price = candle(symbol, "USDT", "1m", now - now % STEP_MS, now)[4]
        r = client.post(f"/{APP}/generate_signal", json={"symbol": symbol, "price": price})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["action"] == "BUY" and body["model_version"] == days["version"], body
        tl.answer(body)
        answers.append(body)
        return body

    def poll(what: str, until, timeout_s: float, every_s: float = 0.5):
        """A signal every tick until `until()` (it reads `answers`) holds."""
        return wait_for(what, lambda: (signal(), until())[1], timeout_s, every_s,
                        detail=lambda: f"\nlast answer: {answers[-1] if answers else None}{collector.tail()}")

    def approved_symbols(since: int) -> set[str]:
        return {a["symbol"] for a in answers[since:] if a["risk"]["approved"]}

    def opened(a: dict) -> int:
        return _iso_ms(a["data"]["last_candle_open"])

    def stale_only(a: dict) -> bool:
        blocks = [r for r in a["risk"]["reasons"] if r.startswith("blocked: ")]
        return bool(blocks) and all(r.startswith("blocked: stale data: last candle opened ") for r in blocks)

    def data_age_metric() -> dict[str, float]:
        """symbol -> ray_signalgen_data_age_seconds of /days as Prometheus scrapes it from Ray's metrics ports
        (the largest of the FeatureEngine replicas', as the alert's `max by symbol`)."""
        ages: dict[str, float] = {}
        for port in metrics_ports:
            for fam in text_string_to_metric_families(scraper.get(f"http://127.0.0.1:{port}/metrics").text):
                for s in fam.samples:
                    if s.name == METRIC and s.labels.get("application") == APP:
                        ages[s.labels["symbol"]] = max(ages.get(s.labels["symbol"], 0.0), s.value)
        return ages

    def metric(over: bool) -> dict[str, float] | None:
        signal()  # the gauge is set when a request passes the FeatureEngine
        ages = data_age_metric()
        if set(ages) != set(SYMBOLS):
            return None
        return ages if (min(ages.values()) > MAX_DATA_AGE_S if over else max(ages.values()) < MAX_DATA_AGE_S) else None

    def ages_text(ages: dict[str, float]) -> str:
        return ", ".join(f"{s}={v:.0f}" for s, v in sorted(ages.items()))

    # --- 1. the collector runs: it fills the history, then keeps up; the app starts on its data -----------------
    tl.enter("1 collector running", f"signalgen collect --loop --interval 2 ({len(SYMBOLS)} symbols, 1m); "
                                    f"/{APP} max_data_age_s={MAX_DATA_AGE_S:.0f}")
    collector.start()
    wait_for("the collector's first run", collector.runs, 180, 0.5, detail=collector.tail)
    days["deploy"]()
    replicas = _replicas(days["dashboard"])
    deployed_at = applications(days["dashboard"])["applications"][APP]["last_deployed_time_s"]
    tl.note(f"/{APP} deployed ({len(replicas)} replicas)")
    signal()
    first_open = opened(answers[0])
    # it keeps approving while new candles arrive: until a candle that closed after the first answer is served
    poll("every symbol approved and a newer candle served", lambda: approved_symbols(0) == set(SYMBOLS)
         and opened(answers[-1]) > first_open, 150)
    assert all(a["risk"]["approved"] for a in answers), [a["risk"] for a in answers if not a["risk"]["approved"]]
    tl.note(f"all {len(answers)} answers approved, across a new candle")

    # --- 2. the collector stops: the newest candle ages past the limit -------------------------------------------
    code = collector.stop()
    tl.enter("2 collector stopped", f"SIGTERM, exit code {code}")
    assert code == 0, collector.tail()
    mark = len(answers)
    assert signal()["risk"]["approved"], "blocked at once: the newest candle was young when the collector stopped"
    poll("a signal blocked as stale data", lambda: stale_only(answers[-1]), MAX_DATA_AGE_S + 60)
    stale = answers[-1]
    assert not stale["risk"]["approved"] and stale["position"]["size"] == 0
    assert re.search(r"stale data: last candle opened \d+ s before the signal time \(limit 150 s\)",
                     " ".join(stale["risk"]["reasons"])), stale["risk"]
    ages = wait_for(f"{METRIC} of /{APP} above {MAX_DATA_AGE_S:.0f} s for every symbol", lambda: metric(True), 90, 1.0,
                    detail=lambda: f" (scraped: {data_age_metric()})")
    tl.note(f"{METRIC} over {MAX_DATA_AGE_S:.0f} s: {ages_text(ages)}")
    health = client.get(f"/{APP}/health")
    assert health.status_code == 503 and any("all market data stale" in r for r in health.json()["reasons"]), \
        health.text
    tl.note(f"/health {health.status_code}: {'; '.join(health.json()['reasons'])}")
    stale_open = max(opened(a) for a in answers[mark:])

    # --- 3. the collector resumes: the missed candles are fetched, signals approved again ------------------------
    runs_before = collector.runs()
    collector.start()
    tl.enter("3 collector resumed", "signalgen collect --loop started again")
    mark = len(answers)
    poll("every symbol approved again", lambda: approved_symbols(mark) == set(SYMBOLS), 120)
    assert collector.runs() > runs_before and opened(answers[-1]) > stale_open
    ages = wait_for(f"{METRIC} of /{APP} below {MAX_DATA_AGE_S:.0f} s again", lambda: metric(False), 90, 1.0,
                    detail=lambda: f" (scraped: {data_age_metric()})")
    tl.note(f"{METRIC} back under {MAX_DATA_AGE_S:.0f} s: {ages_text(ages)}")
    health = client.get(f"/{APP}/health")
    assert health.status_code == 200, health.text

    # never restarted: the replicas running before phase 1 are the ones running now; the app not redeployed
    now_replicas = _replicas(days["dashboard"])
    assert {rid: now_replicas.get(rid) for rid in replicas} == replicas, (replicas, now_replicas)
    assert all(state == "RUNNING" for _, state in replicas.values()), replicas
    assert applications(days["dashboard"])["applications"][APP]["last_deployed_time_s"] == deployed_at
    code = collector.stop()
    assert code == 0, collector.tail()
    tl.note(f"the same {len(replicas)} replicas throughout, never redeployed; {len(answers)} signals, "
            f"{time.monotonic() - t_start:.0f} s")
    scraper.close()


def test_the_stale_data_alert_fires_at_the_risk_limit() -> None:
    """SignalgenStaleMarketData's threshold is the serve config's risk.max_data_age_s: the alert speaks when
    the risk stage starts blocking (its `for:` then says how long before anyone is paged)."""
    rules = yaml.safe_load((PROJECT_ROOT / "kuberay" / "monitoring" / "prometheusrule.yaml").read_text())
    alert = next(r for g in rules["spec"]["groups"] for r in g["rules"] if r.get("alert") == "SignalgenStaleMarketData")
    m = re.fullmatch(r"max by \(ray_io_cluster, symbol\) \(ray_signalgen_data_age_seconds\{application=\"signals\"\}\) "
                     r"> (\d+(?:\.\d+)?)", alert["expr"].strip())
    assert m, alert["expr"]
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve_config.yaml").read_text())
    signals = next(a for a in config["applications"] if a["name"] == "signals")
    assert float(m.group(1)) == float(signals["args"]["risk"]["max_data_age_s"])
