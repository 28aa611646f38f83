"""The serve config against Ray's schema models: Ray ignores misspelled keys silently, so we do not."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.config import AppArgs
from tests.serve_config_check import serve_config_problems

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "serve_config.yaml"
STAGES = {"Orchestrator", "FeatureEngine", "MarketContext", "MLEngine", "Portfolio", "RiskManager", "Analytics"}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_config_validates_with_ray_schema(config):
    ServeDeploySchema.model_validate(config)
    AppArgs.model_validate(config["applications"][0]["args"])


def test_no_unknown_key_anywhere(config):
    assert serve_config_problems(config) == []


@pytest.mark.parametrize("where, typo", [
    (("applications", 0, "deployments", 0), "max_ongoing_request"),
    (("applications", 0, "deployments", 1, "ray_actor_options"), "num_cpu"),
    (("applications", 0, "deployments", 2, "autoscaling_config"), "target_ongoing_request"),
    (("http_options",), "request_timeout"),
    (("applications", 0, "args", "risk"), "min_confidense"),
    (("applications", 0, "deployments", 3, "user_config"), "model_verison"),
])
def test_typos_are_caught(config, where, typo):
    bad = copy.deepcopy(config)
    node = bad
    for key in where:
        node = node[key]
    node[typo] = 1
    problems = serve_config_problems(bad)
    assert len(problems) == 1 and problems[0].endswith(typo), problems


def test_every_stage_has_its_options(config):
    app = config["applications"][0]
    assert app["import_path"] == "serve_app.app:build_app"
    deps = {d["name"]: d for d in app["deployments"]}
    assert set(deps) == STAGES
    for name, d in deps.items():
        auto = d["autoscaling_config"]
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"], name
        assert auto["target_ongoing_requests"] > 0 and "upscale_delay_s" in auto and "downscale_delay_s" in auto, name
        assert 0 < d["ray_actor_options"]["num_cpus"] < 1, name
        assert d["max_ongoing_requests"] >= 1, name
        assert d["health_check_period_s"] > 0 and d["health_check_timeout_s"] > 0, name
        assert d["graceful_shutdown_timeout_s"] > 0, name
    cpus = {n: d["ray_actor_options"]["num_cpus"] for n, d in deps.items()}
    assert cpus["MLEngine"] == max(cpus.values()), "the ML engine gets the most CPU"
    at_min = sum(cpus[n] * deps[n]["autoscaling_config"]["min_replicas"] for n in deps)
    at_max = sum(cpus[n] * deps[n]["autoscaling_config"]["max_replicas"] for n in deps)
    assert at_min <= 2.0 and at_max <= 2.0 + 1e-9, (at_min, at_max)


def test_graph_deployment_names_match_config(config):
    from serve_app.app import build_app

    app = build_app(config["applications"][0]["args"])
    names = set()
    stack = [app._bound_deployment]
    while stack:
        d = stack.pop()
        names.add(d.name)
        for a in list(d.init_args) + list(d.init_kwargs.values()):
            if hasattr(a, "_bound_deployment"):
                stack.append(a._bound_deployment)
    assert names == STAGES


@pytest.mark.parametrize("section", ["trade", "portfolio", "risk", "market", "analytics"])
def test_the_app_itself_refuses_a_misspelled_nested_key(section):
    """Not only this test: Serve's validation of `args` (AppArgs) fails the deploy on a typo in any section."""
    with pytest.raises(ValueError, match="misspeled_key"):
        AppArgs.model_validate({section: {"misspeled_key": 1}})


def test_the_graph_reads_the_configured_market_source(config):
    """Every stage that opens the store is given the config's market_source (FeatureEngine, MarketContext, and
    Analytics, which scores outcomes on its candles)."""
    from serve_app.app import build_app

    args = {**config["applications"][0]["args"], "market_source": {"exchange": "kraken", "quote": "EUR"}}
    given = {}
    stack = [build_app(args)._bound_deployment]
    while stack:
        d = stack.pop()
        if "market_source" in d.init_kwargs:
            given[d.name] = d.init_kwargs["market_source"]
        stack += [a._bound_deployment for a in list(d.init_args) + list(d.init_kwargs.values())
                  if hasattr(a, "_bound_deployment")]
    assert given == {name: {"exchange": "kraken", "quote": "EUR"} for name in ("FeatureEngine", "MarketContext",
                                                                                "Analytics")}
    assert config["applications"][0]["args"]["market_source"] == {"exchange": "binance", "quote": "USDT"}


@pytest.mark.parametrize("source, message", [
    ({"exchange": "Binance", "quote": "USDT"}, "exchange"),
    ({"exchange": "binance", "quote": "usdt"}, "quote"),
    ({"exchange": "binance", "quote": "USDT", "venue": "spot"}, "venue"),
])
def test_a_bad_market_source_is_refused(source, message):
    with pytest.raises(ValueError, match=message):
        AppArgs.model_validate({"market_source": source})


def test_the_config_wins_over_the_environment_and_says_so():
    import logging

    from serve_app.deployments.base import log, source_settings

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.addHandler(handler)
    try:
        env = {"SIGNAL_DB_PATH": "/tmp/x.sqlite", "SIGNAL_EXCHANGE": "kraken", "SIGNAL_QUOTE": "EUR"}
        settings = source_settings({"exchange": "binance", "quote": "USDT"}, "features", env)
        agreeing = source_settings({"exchange": "kraken", "quote": "EUR"}, "market_context", env)
    finally:
        log.removeHandler(handler)
    assert (settings.exchange, settings.quote, str(settings.sqlite_path)) == ("binance", "USDT", "/tmp/x.sqlite")
    assert agreeing.source == "kraken/EUR"
    warning, info = records
    assert warning.levelno == logging.WARNING and info.levelno == logging.INFO
    assert warning.getMessage() == ("features: the serve config's market_source is binance/USDT but the environment "
                                    "says SIGNAL_EXCHANGE=kraken, SIGNAL_QUOTE=EUR: serving binance/USDT (the config "
                                    "wins)")
    assert info.getMessage() == "market_context: market data source kraken/EUR (the serve config's market_source)"
