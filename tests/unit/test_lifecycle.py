"""`signalgen models list|promote|rollback` without Ray: the registry side, the --config text edit and the
transformation of the dashboard's live declarative config (tests/integration/test_model_lifecycle.py runs
the same commands against a real cluster)."""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import xgboost as xgb
import yaml

from serve_app.training import registry
from serve_app.cluster import free_port
from serve_app.core.features import FEATURE_NAMES
from serve_app.core.labels import CLASSES
from serve_app.cli import models as models_cli
from serve_app.training import lifecycle

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "serve_config.yaml"
EVALUATION = {"summary": {"walk_forward": {"accuracy": 0.41, "mcc": 0.07, "folds": 5},
                          "backtest": {"total_return": 0.031, "sharpe": 1.25}},
              "folds": [{"accuracy": 0.4}, {"accuracy": 0.42}]}


# the gate is tested on its own below; elsewhere these versions have no evaluation and are forced past it
FORCED = ("--force", "--reason", "test: the promotion gate is not under test here")


def run_models(*argv: str) -> int:
    ap = argparse.ArgumentParser()
    models_cli.register(ap.add_subparsers(required=True))
    args = ap.parse_args(["models", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def booster() -> xgb.Booster:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, len(FEATURE_NAMES)))
    y = rng.integers(0, len(CLASSES), 300)
    return xgb.train({"objective": "multi:softprob", "num_class": len(CLASSES), "max_depth": 2},
                     xgb.DMatrix(X, label=y, feature_names=list(FEATURE_NAMES)), num_boost_round=3)


@pytest.fixture
def make_version(booster, tmp_path):
    """Save a version under tmp_path/models with this metadata (overrides on top of a valid one)."""
    root = tmp_path / "models"
    counter = iter(range(100))

    def make(**overrides) -> str:
        i = next(counter)
        meta = {"version": f"v20250101-00000{i}-test", "created_at": f"2025-01-01T00:00:0{i}+00:00",
                "feature_names": list(FEATURE_NAMES), "classes": list(CLASSES), "temperature": 1.2,
                "symbols": ["BTC", "ETH"], "metrics": {"accuracy": 0.40 + i / 100, "log_loss": 1.05 - i / 100},
                "baselines": {"majority": {"accuracy": 0.36, "log_loss_train_prior": 1.09},
                              "momentum": {"accuracy": 0.33}}}
        meta.update(overrides)
        return registry.save_version(booster, meta, root=root).name

    make.root = root
    return make


# --- list ------------------------------------------------------------------------------------------
def test_list_text_and_json_with_and_without_evaluation(make_version, monkeypatch, capsys):
    v1, v2 = make_version(), make_version(symbols=["SOL"])
    registry.attach_file(v2, "evaluation.json", json.dumps(EVALUATION), root=make_version.root)
    registry.set_current(v1, make_version.root)
    monkeypatch.setenv("MODEL_DIR", str(make_version.root))

    assert run_models("list") == 0
    lines = capsys.readouterr().out.splitlines()
    row1 = next(i for i, line in enumerate(lines) if v1 in line)
    row2 = next(i for i, line in enumerate(lines) if v2 in line)
    assert lines[row1].startswith("* ") and not lines[row2].startswith("*")  # the CURRENT marker
    assert "BTC,ETH" in lines[row1] and "0.400" in lines[row1] and "majority=0.360" in lines[row1]
    assert "majority=1.090" in lines[row1]  # the baseline log-loss
    assert "evaluation" not in lines[row1 + 1]  # v1 has no evaluation.json
    ev = lines[row2 + 1]
    for shown in ("walk_forward.accuracy=0.410", "walk_forward.mcc=0.070", "walk_forward.folds=5",
                  "backtest.total_return=0.031", "backtest.sharpe=1.250"):
        assert shown in ev
    assert "rollback returns to: (nothing" in lines[-1]

    assert run_models("list", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["current"] == v1 and out["root"] == str(make_version.root) and out["rollback_to"] is None
    by_version = {v["version"]: v for v in out["versions"]}
    assert by_version[v1]["evaluation"] is None and by_version[v1]["current"] is True
    assert by_version[v2]["evaluation"] == {"walk_forward.accuracy": 0.41, "walk_forward.mcc": 0.07,
                                            "walk_forward.folds": 5, "backtest.total_return": 0.031,
                                            "backtest.sharpe": 1.25}
    assert by_version[v2]["symbols"] == ["SOL"] and by_version[v2]["accuracy"] == pytest.approx(0.41)
    assert by_version[v2]["baseline_log_loss"] == {"majority": 1.09}


def test_list_names_an_unreadable_evaluation(make_version, capsys):
    v = make_version()
    (make_version.root / v / "evaluation.json").write_text("{not json")
    assert run_models("list", "--model-dir", str(make_version.root)) == 0
    assert f"{make_version.root / v / 'evaluation.json'}: not valid JSON" in capsys.readouterr().out


# --- promote refuses what the serving code cannot load ---------------------------------------------
def test_promote_refuses_a_different_feature_list(make_version, capsys):
    good = make_version()
    registry.set_current(good, make_version.root)
    names = list(FEATURE_NAMES)
    names[2] = "funding_rate"
    bad = make_version(feature_names=names)
    assert run_models("promote", bad, "--model-dir", str(make_version.root), "--no-deploy", *FORCED) == 2
    err = capsys.readouterr().err
    assert bad in err and "feature names do not match" in err
    assert f"missing [{FEATURE_NAMES[2]!r}]" in err and "unexpected ['funding_rate']" in err
    assert registry.current_version(make_version.root) == good and registry.read_history(make_version.root) == []


def test_promote_refuses_different_classes(make_version, capsys):
    bad = make_version(classes=list(reversed(CLASSES)))
    assert run_models("promote", bad, "--model-dir", str(make_version.root), "--no-deploy", *FORCED) == 2
    err = capsys.readouterr().err
    assert f"classes {list(reversed(CLASSES))} != {list(CLASSES)}" in err
    assert registry.current_version(make_version.root) is None


def test_promote_refuses_a_corrupt_artifact(make_version, capsys):
    bad = make_version()
    vdir = make_version.root / bad
    garbage = b"\x00not an xgboost model" * 10
    (vdir / "model.ubj").write_bytes(garbage)
    meta = registry.read_metadata(vdir)
    meta["model_sha256"] = hashlib.sha256(garbage).hexdigest()  # the checksum matches the garbage
    (vdir / "metadata.json").write_text(json.dumps(meta))
    assert run_models("promote", bad, "--model-dir", str(make_version.root), "--no-deploy", *FORCED) == 2
    err = capsys.readouterr().err
    assert f"{vdir / 'model.ubj'}: corrupt XGBoost model" in err
    assert registry.current_version(make_version.root) is None


def test_promote_unknown_version(make_version, capsys):
    make_version()
    assert run_models("promote", "v19990101-000000-nothere", "--model-dir", str(make_version.root),
                      "--no-deploy", *FORCED) == 2
    assert "v19990101-000000-nothere" in capsys.readouterr().err


# --- history and rollback --------------------------------------------------------------------------
def test_history_and_rollback(make_version, capsys):
    root = str(make_version.root)
    v1, v2, v3 = make_version(), make_version(), make_version()
    registry.set_current(v1, root)  # what training does: not a promotion
    assert run_models("rollback", "--model-dir", root, "--no-deploy") == 2
    assert "nothing to roll back to" in capsys.readouterr().err

    assert run_models("promote", v2, "--model-dir", root, "--no-deploy", *FORCED) == 0
    assert run_models("promote", "latest", "--model-dir", root, "--no-deploy", *FORCED) == 0  # = v3
    assert registry.current_version(root) == v3
    history = registry.read_history(root)
    assert [(h["action"], h["version"], h["previous"]) for h in history] == [("promote", v2, v1),
                                                                              ("promote", v3, v2)]
    assert all(h["at"] and "@" in h["by"] for h in history)

    assert run_models("rollback", "--model-dir", root, "--no-deploy") == 0
    assert registry.current_version(root) == v2
    assert run_models("rollback", "--model-dir", root, "--no-deploy") == 0
    assert registry.current_version(root) == v1
    capsys.readouterr()
    assert run_models("rollback", "--model-dir", root, "--no-deploy") == 2
    assert "nothing to roll back to" in capsys.readouterr().err and registry.current_version(root) == v1
    assert [(h["action"], h["version"]) for h in registry.read_history(root)][2:] == [("rollback", v2),
                                                                                       ("rollback", v1)]
    # promoting the current version again records nothing
    assert run_models("promote", v1, "--model-dir", root, "--no-deploy", *FORCED) == 0
    assert len(registry.read_history(root)) == 4


def test_rollback_after_current_was_switched_outside_promote(make_version):
    root = make_version.root
    v1, v2, v3 = make_version(), make_version(), make_version()
    registry.set_current(v1, root)
    assert run_models("promote", v2, "--model-dir", str(root), "--no-deploy", *FORCED) == 0
    registry.set_current(v3, root)  # e.g. `signalgen train` with set_current
    assert registry.rollback_target(root) == v2
    assert run_models("rollback", "--model-dir", str(root), "--no-deploy") == 0
    assert registry.current_version(root) == v2 and registry.rollback_target(root) == v1


def test_rollback_refuses_a_removed_version(make_version, capsys):
    root = make_version.root
    v1, v2 = make_version(), make_version()
    registry.set_current(v1, root)
    assert run_models("promote", v2, "--model-dir", str(root), "--no-deploy", *FORCED) == 0
    shutil.rmtree(root / v1)
    assert run_models("rollback", "--model-dir", str(root), "--no-deploy") == 2
    assert v1 in capsys.readouterr().err and registry.current_version(root) == v2


def test_unreadable_history_is_named(make_version, capsys):
    make_version()
    (make_version.root / registry.HISTORY_FILE).write_text('{"version": "a"}\n[1, 2\n')
    assert run_models("rollback", "--model-dir", str(make_version.root), "--no-deploy") == 2
    assert f"{make_version.root / registry.HISTORY_FILE}:2" in capsys.readouterr().err


# --- the running app: none answering ---------------------------------------------------------------
def test_promote_without_a_cluster_updates_the_registry_and_says_so(make_version, capsys):
    root = str(make_version.root)
    v1, v2 = make_version(), make_version()
    registry.set_current(v1, root)
    nobody = f"http://127.0.0.1:{free_port()}"
    assert run_models("promote", v2, "--model-dir", root, "--address", nobody, "--require-deploy", *FORCED) == 2
    assert f"no Ray dashboard answers at {nobody}" in capsys.readouterr().err
    assert registry.current_version(root) == v1  # --require-deploy: nothing changed

    assert run_models("promote", v2, "--model-dir", root, "--address", nobody, *FORCED) == 0
    out = capsys.readouterr().out
    assert "no running app was updated" in out and nobody in out
    assert registry.current_version(root) == v2


# --- --config: a text edit that changes model_version only -----------------------------------------
def test_config_text_edit_keeps_comments_and_changes_only_model_version(make_version, tmp_path, capsys):
    v = make_version()
    cfg = tmp_path / "serve_config.yaml"
    shutil.copy(CONFIG, cfg)
    original = cfg.read_text()
    assert run_models("promote", v, "--model-dir", str(make_version.root), "--no-deploy", "--config", str(cfg),
                      *FORCED) == 0
    edited = cfg.read_text()
    changed = [(a, b) for a, b in zip(original.splitlines(), edited.splitlines()) if a != b]
    assert len(original.splitlines()) == len(edited.splitlines())
    assert changed == [("          model_version: current", f"          model_version: {v}")]
    expected, names = lifecycle.with_model_version(yaml.safe_load(original), v)
    assert names == ["signals"] and yaml.safe_load(edited) == expected


@pytest.mark.parametrize("version, scalar", [("v1.2", "v1.2"), ("1e3", "1e3"), ("12", '"12"'), ("true", '"true"')])
def test_config_text_edit_quotes_what_yaml_would_misread(version, scalar):
    text = ("applications:  # the app\n  - name: a\n    import_path: serve_app.app:build_app\n"
            "    deployments:\n      - name: MLEngine\n        user_config: {model_version: 'x', max_batch_size: 8}\n")
    edited = lifecycle.edit_config_text(text, version)
    assert f"{{model_version: {scalar}, max_batch_size: 8}}" in edited and "# the app" in edited
    assert yaml.safe_load(edited)["applications"][0]["deployments"][0]["user_config"] == {
        "model_version": version, "max_batch_size": 8}


def test_config_text_edit_refuses_what_it_cannot_do_in_place(tmp_path):
    no_line = yaml.safe_load(CONFIG.read_text())
    ml = next(d for d in no_line["applications"][0]["deployments"] if d["name"] == "MLEngine")
    del ml["user_config"]["model_version"]
    with pytest.raises(lifecycle.LifecycleError, match="cannot set model_version by a text edit"):
        lifecycle.edit_config_text(yaml.safe_dump(no_line), "v2", "cfg.yaml")
    with pytest.raises(lifecycle.LifecycleError, match="not a Serve config"):
        lifecycle.edit_config_text("kind: RayService\n", "v2", "cfg.yaml")
    other = {"applications": [{"name": "x", "import_path": "other.app:build"}]}
    with pytest.raises(lifecycle.LifecycleError, match="no application is built from serve_app.app:build_app"):
        lifecycle.edit_config_text(yaml.safe_dump(other), "v2", "cfg.yaml")


# --- the dashboard's declarative config -> the PUT ------------------------------------------------
def live_details() -> dict:
    """Shaped like Ray 2.60's GET /api/serve/applications/?api_type=declarative answer (as captured from the
    integration cluster): two apps built from serve_app.app:build_app, one other app, one being deleted."""
    cfg = yaml.safe_load(CONFIG.read_text())
    signals = {**cfg["applications"][0], "runtime_env": {"env_vars": {"MODEL_DIR": "/srv/models"}},
               "logging_config": cfg["logging_config"]}
    nodb = {**copy.deepcopy(signals), "name": "nodb", "route_prefix": "/nodb"}
    nodb["runtime_env"]["env_vars"]["MYSQL_PORT"] = "1"
    other = {"name": "echo", "route_prefix": "/echo", "import_path": "echo_app:app",
             "deployments": [{"name": "MLEngine", "user_config": {"model_version": "keep"}}]}

    def app(config, status="RUNNING"):
        return {"name": config["name"] if config else "gone", "route_prefix": "/x", "docs_path": None,
                "status": status, "message": "", "last_deployed_time_s": 1.0, "deployed_app_config": config,
                "source": "declarative", "deployments": {}, "external_scaler_enabled": False,
                "deployment_topology": None}

    return {"controller_info": {"node_id": "n1", "actor_name": "SERVE_CONTROLLER_ACTOR"},
            "proxy_location": "HeadOnly",
            "http_options": {**cfg["http_options"], "root_path": "", "ssl_keyfile": None},
            "grpc_options": {"port": 9000, "grpc_servicer_functions": [], "request_timeout_s": None},
            "proxies": {"n1": {"status": "HEALTHY"}},
            "applications": {"signals": app(signals), "nodb": app(nodb), "echo": app(other),
                             "gone": app(None, "DELETING")},
            "target_capacity": None, "target_groups": [], "controller_health_metrics": {"uptime_s": 5.0},
            "restores_unset_config_options": True}


def test_declarative_config_transformation_keeps_everything_else():
    from ray.serve.schema import ServeDeploySchema

    details = live_details()
    snapshot = copy.deepcopy(details)
    live = lifecycle.live_deploy_config(details)
    ServeDeploySchema.model_validate(live)  # what the PUT accepts
    assert [a["name"] for a in live["applications"]] == ["signals", "nodb", "echo"]  # not the one being deleted
    assert set(live) == {"applications", "proxy_location", "http_options", "grpc_options"}
    assert live["http_options"] == details["http_options"]

    new, names = lifecycle.with_model_version(live, "v2")
    assert names == ["signals", "nodb"] and details == snapshot  # nothing mutated
    assert new["applications"][2] == live["applications"][2]  # the other app, its MLEngine included
    for before, after in zip(live["applications"][:2], new["applications"][:2]):
        ml_before = next(d for d in before["deployments"] if d["name"] == "MLEngine")
        ml_after = next(d for d in after["deployments"] if d["name"] == "MLEngine")
        assert ml_after["user_config"] == {**ml_before["user_config"], "model_version": "v2"}
        assert {k: v for k, v in after.items() if k != "deployments"} == \
               {k: v for k, v in before.items() if k != "deployments"}
        assert [d for d in after["deployments"] if d["name"] != "MLEngine"] == \
               [d for d in before["deployments"] if d["name"] != "MLEngine"]
        assert {k: v for k, v in ml_after.items() if k != "user_config"} == \
               {k: v for k, v in ml_before.items() if k != "user_config"}
    assert {k: v for k, v in new.items() if k != "applications"} == \
           {k: v for k, v in live.items() if k != "applications"}


def test_app_without_an_mlengine_entry_gets_one():
    new, names = lifecycle.with_model_version(
        {"applications": [{"name": "a", "import_path": "serve_app.app.build_app"}]}, "v7")
    assert names == ["a"] and new["applications"][0]["deployments"] == [
        {"name": "MLEngine", "user_config": {"model_version": "v7"}}]


def test_app_without_its_config_is_refused():
    details = live_details()
    details["applications"]["signals"]["deployed_app_config"] = None
    with pytest.raises(lifecycle.LifecycleError, match="'signals' has no deployed config"):
        lifecycle.live_deploy_config(details)


def _dashboard(monkeypatch, details: dict) -> list:
    """httpx.get answers with `details`; every PUT is recorded (and must not happen in these tests)."""
    puts: list = []
    monkeypatch.setattr(httpx, "get", lambda url, **kw: httpx.Response(200, json=details,
                                                                       request=httpx.Request("GET", url)))
    monkeypatch.setattr(httpx, "put", lambda url, **kw: puts.append(kw) or httpx.Response(200))
    return puts


def test_deploy_refuses_an_app_reading_another_model_dir(monkeypatch, tmp_path):
    puts = _dashboard(monkeypatch, live_details())
    with pytest.raises(lifecycle.LifecycleError, match="reads models from /srv/models.*MODEL_DIR=/srv/models"):
        lifecycle.deploy_model_version("http://dash", "v2", tmp_path, 5, log=lambda m: None)
    assert puts == []


def test_deploy_refuses_a_redacted_config(monkeypatch):
    details = live_details()
    details["applications"]["nodb"]["deployed_app_config"]["runtime_env"]["env_vars"]["MYSQL_PASSWORD"] = \
        lifecycle.REDACTED
    puts = _dashboard(monkeypatch, details)
    with pytest.raises(lifecycle.LifecycleError, match="redacted"):
        lifecycle.deploy_model_version("http://dash", "v2", Path("/srv/models"), 5, log=lambda m: None)
    assert puts == []


def test_deploy_refuses_a_model_for_another_timeframe_than_the_running_apps(monkeypatch):
    puts = _dashboard(monkeypatch, live_details())       # both signal apps serve the config's 1h
    with pytest.raises(lifecycle.LifecycleError, match=r"v2 predicts 1m candles, but signals \(1h\), nodb \(1h\)"):
        lifecycle.deploy_model_version("http://dash", "v2", Path("/srv/models"), 5, log=lambda m: None,
                                       timeframe="1m")
    assert puts == []


def test_deploy_with_no_signal_app_is_no_running_app(monkeypatch):
    details = live_details()
    details["applications"] = {"echo": details["applications"]["echo"]}
    _dashboard(monkeypatch, details)
    with pytest.raises(lifecycle.NoRunningApp, match="no application built from serve_app.app:build_app"):
        lifecycle.deploy_model_version("http://dash", "v2", Path("/srv/models"), 5, log=lambda m: None)


# --- the promotion gate ----------------------------------------------------------------------------
def _evaluated(make_version, verdict: str, vs_serving: dict | None = None, **meta) -> str:
    v = make_version(**meta)
    record = {"verdict": {"verdict": verdict, "rows": 1000, "level": 0.95, "best_baseline": "prior",
                          "log_loss": {"model": 1.05, "prior": 1.09, "momentum": 1.10},
                          "vs_prior": {"difference": -0.04, "low": -0.05, "high": -0.03},
                          "vs_best_baseline": {"difference": -0.04, "low": -0.05, "high": -0.03},
                          "vs_serving": vs_serving}}
    registry.attach_file(v, "evaluation.json", json.dumps(record), root=make_version.root)
    return v


def test_gate_refuses_a_version_without_a_verdict(make_version, capsys):
    v = make_version()
    assert run_models("promote", v, "--model-dir", str(make_version.root), "--no-deploy") == 2
    err = capsys.readouterr().err
    assert "refused" in err and "no evaluation with a verdict" in err and f"signalgen evaluate --model-version {v}" in err
    assert registry.current_version(make_version.root) is None and registry.read_history(make_version.root) == []


def test_gate_refuses_no_edge_and_says_so(make_version, capsys):
    v = _evaluated(make_version, "no edge")
    assert run_models("promote", v, "--model-dir", str(make_version.root), "--no-deploy") == 2
    assert "its evaluation found NO EDGE" in capsys.readouterr().err
    assert registry.current_version(make_version.root) is None


def test_gate_refuses_worse_than_the_serving_model(make_version, capsys):
    root = make_version.root
    serving = make_version()
    registry.set_current(serving, root)
    worse = _evaluated(make_version, "edge", {"version": serving, "comparable": True, "log_loss": 1.04,
                                               "difference": 0.01, "low": 0.002, "high": 0.02})
    assert run_models("promote", worse, "--model-dir", str(root), "--no-deploy") == 2
    assert f"worse than the serving model {serving}" in capsys.readouterr().err
    stale = _evaluated(make_version, "edge", {"version": "v-someone-else", "comparable": True, "log_loss": 1.1,
                                               "difference": -0.05, "low": -0.06, "high": -0.04})
    assert run_models("promote", stale, "--model-dir", str(root), "--no-deploy") == 2
    assert f"not evaluated against the serving model {serving}" in capsys.readouterr().err
    assert registry.current_version(root) == serving


def test_gate_refuses_what_cannot_be_compared_unless_the_serving_model_is_synthetic(make_version, capsys):
    """Another label spec (or other rows) means "not worse than the serving model" cannot be shown: refused,
    naming why - unless the serving model was trained on the synthetic sample, which has no claim to defend."""
    root = make_version.root
    serving = make_version()
    registry.set_current(serving, root)
    why = "the serving model predicts other labels (1h, horizon 4) than this one (1h, horizon 16)"
    other = _evaluated(make_version, "edge", {"version": serving, "comparable": False, "why": why})
    assert run_models("promote", other, "--model-dir", str(root), "--no-deploy") == 2
    err = capsys.readouterr().err
    assert f"cannot be compared with the serving model {serving} ({why})" in err
    assert registry.current_version(root) == serving
    seed = make_version(synthetic_symbols=["BTC", "ETH", "SOL"])
    registry.set_current(seed, root)
    real = _evaluated(make_version, "edge", {"version": seed, "comparable": False, "why": why})
    assert run_models("promote", real, "--model-dir", str(root), "--no-deploy") == 0
    assert registry.current_version(root) == real


def test_gate_lets_an_edge_that_beats_the_serving_model_through(make_version):
    root = make_version.root
    serving = make_version()
    registry.set_current(serving, root)
    better = _evaluated(make_version, "edge", {"version": serving, "comparable": True, "log_loss": 1.08,
                                                "difference": -0.03, "low": -0.04, "high": -0.02})
    assert run_models("promote", better, "--model-dir", str(root), "--no-deploy") == 0
    assert registry.current_version(root) == better
    entry = registry.read_history(root)[-1]
    assert entry["action"] == "promote" and "forced" not in entry


def test_force_records_who_when_and_why(make_version, capsys):
    root = make_version.root
    v = _evaluated(make_version, "no edge")
    assert run_models("promote", v, "--model-dir", str(root), "--no-deploy", "--force") == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert run_models("promote", v, "--model-dir", str(root), "--no-deploy", "--force", "--reason",
                      "desk wants the new symbols live") == 0
    assert "FORCED past the promotion gate" in capsys.readouterr().out
    entry = registry.read_history(root)[-1]
    assert entry["version"] == v and entry["forced"] is True and entry["reason"] == "desk wants the new symbols live"
    assert entry["by"] and entry["at"] and any("NO EDGE" in g for g in entry["gate"])


def test_a_model_for_another_timeframe_is_refused_even_forced(make_version, tmp_path, capsys):
    v = _evaluated(make_version, "edge", timeframe="1m")
    cfg = tmp_path / "serve_config.yaml"
    cfg.write_text(CONFIG.read_text())                 # serves timeframe 1h
    assert run_models("promote", v, "--model-dir", str(make_version.root), "--no-deploy", "--config", str(cfg),
                      *FORCED) == 2
    err = capsys.readouterr().err
    assert f"{v} predicts 1m candles" in err and "signals (1h)" in err
    assert registry.current_version(make_version.root) is None and cfg.read_text() == CONFIG.read_text()
