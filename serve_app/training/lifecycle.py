"""A model version's way into service: the checks, the running application's update, the registry.

`switch` (promote / rollback): checks that the serving code can load the version (feature list, classes,
artifact: SignalModel.load), sets `model_version` in the MLEngine's user_config of the running
application(s) - Serve then calls MLEngine.reconfigure in place on every replica, so the new model is served
without a restart or a failed request - and only then points CURRENT at it and records the change in
HISTORY.jsonl. The running config is changed the way the KubeRay operator changes it: the live declarative
config is read from the dashboard (GET /api/serve/applications/?api_type=declarative) and PUT back whole
with only that one key changed; if the app does not become healthy on the new version, the previous config
is re-applied. No ray import (the dashboard's REST API through serve_app/cluster.py).
"""
from __future__ import annotations

import copy
import getpass
import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Mapping

BUILD_APP = "serve_app.app:build_app"
ML_DEPLOYMENT = "MLEngine"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
REDACTED = "<redacted>"  # what the dashboard shows browsers instead of runtime_env values


class LifecycleError(Exception):
    """A user error: printed as one line, exit code 2."""


class NoRunningApp(Exception):
    """No dashboard answers at the address, or no application there is built from serve_app.app:build_app."""


# --- the Serve config: pure transformations --------------------------------------------------------
def _is_signal_app(app: Mapping[str, Any]) -> bool:
    return str(app.get("import_path", "")).replace(":", ".") == BUILD_APP.replace(":", ".")


def live_deploy_config(details: Mapping[str, Any]) -> dict[str, Any]:
    """The dashboard's GET /api/serve/applications/?api_type=declarative answer -> the config to PUT back:
    every application's deployed_app_config (the app-level logging_config already folded in by Serve),
    with the cluster-wide options the answer carries. Applications being deleted are left out."""
    apps = []
    for name, app in (details.get("applications") or {}).items():
        if app.get("status") == "DELETING":
            continue
        if not app.get("deployed_app_config"):
            raise LifecycleError(f"application {name!r} has no deployed config in the dashboard's answer "
                                 f"(deployed with serve.run?): cannot re-apply it")
        apps.append(app["deployed_app_config"])
    config: dict[str, Any] = {"applications": apps}
    for key in ("proxy_location", "http_options", "grpc_options", "target_capacity"):
        if details.get(key) is not None:
            config[key] = details[key]
    return config


def with_model_version(config: Mapping[str, Any], version: str) -> tuple[dict[str, Any], list[str]]:
    """A copy of a Serve config with user_config.model_version = version in the MLEngine deployment of
    every application built from serve_app.app:build_app (added if the app has no MLEngine entry);
    every other key and application unchanged. Returns (new config, names of the apps changed)."""
    new = copy.deepcopy(dict(config))
    names = []
    for app in new.get("applications") or []:
        if not _is_signal_app(app):
            continue
        deployments = app.setdefault("deployments", [])
        ml = next((d for d in deployments if d.get("name") == ML_DEPLOYMENT), None)
        if ml is None:
            ml = {"name": ML_DEPLOYMENT}
            deployments.append(ml)
        ml["user_config"] = {**(ml.get("user_config") or {}), "model_version": version}
        names.append(app.get("name", "default"))
    return new, names


_MODEL_VERSION = re.compile(r"""(\bmodel_version:[ \t]*)("[^"\n]*"|'[^'\n]*'|[^\s,}#]+)""")


def edit_config_text(text: str, version: str, where: str = "config") -> str:
    """Set model_version in a Serve config YAML by replacing the value after each `model_version:` and
    nothing else (comments, order and layout stay). Refuses, naming the file, when the result is not
    exactly with_model_version() of the parsed file (e.g. an MLEngine without a model_version line)."""
    import yaml

    try:
        old = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise LifecycleError(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(old, dict) or not isinstance(old.get("applications"), list):
        raise LifecycleError(f"{where}: not a Serve config (no `applications` list)")
    expected, names = with_model_version(old, version)
    if not names:
        raise LifecycleError(f"{where}: no application is built from {BUILD_APP}")
    scalar = version if yaml.safe_load(version) == version else json.dumps(version)
    new_text = _MODEL_VERSION.sub(lambda m: m.group(1) + scalar, text)
    if yaml.safe_load(new_text) != expected:
        raise LifecycleError(f"{where}: cannot set model_version by a text edit: each {ML_DEPLOYMENT} "
                             f"user_config of {names} needs its own `model_version:` key, and no other key "
                             f"may be named model_version — edit the file by hand")
    return new_text


def _app_model_root(app: Mapping[str, Any]) -> str | None:
    """Where an application's ML engine reads models, when its config says so."""
    env = ((app.get("runtime_env") or {}).get("env_vars")) or {}
    return (app.get("args") or {}).get("model_root") or env.get("MODEL_DIR")


# --- the running application -----------------------------------------------------------------------
def deploy_model_version(address: str, version: str, root: Path, timeout_s: float,
                         log: Callable[[str], None] = print, timeframe: str | None = None) -> list[str]:
    """Serve `version` in every running application built from serve_app.app:build_app at the dashboard
    `address`; returns their names once their MLEngine replicas are healthy on it. `timeframe` (the model's):
    an application serving another timeframe refuses the update.
    Raises NoRunningApp when there is nothing to update, LifecycleError when the update is refused or
    fails (then the previous config is re-applied)."""
    import httpx

    from serve_app.cluster import applications, deploy

    try:
        details = applications(address)
    except httpx.TransportError as e:
        raise NoRunningApp(f"no Ray dashboard answers at {address} ({type(e).__name__})") from e
    except httpx.HTTPStatusError as e:
        code = e.response.status_code
        if code in (401, 403):
            raise LifecycleError(f"{address} refused the request (HTTP {code}): set RAY_AUTH_TOKEN (or "
                                 f"RAY_AUTH_TOKEN_PATH) to the cluster's auth token") from e
        raise LifecycleError(f"GET {e.request.url} -> HTTP {code}: {e.response.text[:300]}") from e
    live = live_deploy_config(details)
    new, names = with_model_version(live, version)
    if not names:
        raise NoRunningApp(f"no application built from {BUILD_APP} is deployed at {address}")
    if REDACTED in json.dumps(live):
        raise LifecycleError(f"the dashboard at {address} redacted runtime_env values: re-applying its "
                             f"config would replace them with {REDACTED!r}")
    mismatched = _timeframe_mismatches(timeframe, new)
    if mismatched:
        raise LifecycleError(f"{version} predicts {timeframe} candles, but {', '.join(mismatched)} at {address} "
                             f"serve another timeframe: refused")
    for app in new["applications"]:
        app_root = _app_model_root(app) if _is_signal_app(app) else None
        if app_root and os.path.abspath(app_root) != os.path.abspath(root):
            raise LifecycleError(f"application {app.get('name')!r} reads models from {app_root}, this registry "
                                 f"is {root}: run with MODEL_DIR={app_root} (or --model-dir)")
    if new == live:
        log(f"{', '.join(names)} at {address} already configured for {version}")
        return names
    log(f"updating {ML_DEPLOYMENT} user_config.model_version={version} in {', '.join(names)} at {address}")
    try:
        deploy(address, new, timeout_s)
        _wait_model_applied(address, names, version, timeout_s)
    except (httpx.HTTPError, RuntimeError, TimeoutError) as e:
        restored = "re-applied"
        try:
            deploy(address, live, timeout_s)
        except (httpx.HTTPError, RuntimeError, TimeoutError) as e2:
            restored = f"could not be re-applied either ({e2})"
        raise LifecycleError(f"the running app did not take {version}: {e}; the previous config {restored}") from e
    return names


def _wait_model_applied(address: str, names: list[str], version: str, timeout_s: float) -> None:
    """Until the MLEngine deployment of each app targets `version` and is HEALTHY again (every replica
    reconfigured): the app status alone can still read RUNNING from before the controller applied the PUT."""
    import httpx

    from serve_app.cluster import applications

    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            apps = applications(address).get("applications", {})
        except (httpx.HTTPError, ValueError):  # a dashboard hiccup: ask again
            apps = {}
        for name in names:
            ml = (apps.get(name, {}).get("deployments") or {}).get(ML_DEPLOYMENT) or {}
            target = ((ml.get("deployment_config") or {}).get("user_config") or {}).get("model_version")
            state[name] = (apps.get(name, {}).get("status"), ml.get("status"), target)
        if all(s == ("RUNNING", "HEALTHY", version) for s in state.values()):
            return
        time.sleep(0.5)
    raise TimeoutError(f"{ML_DEPLOYMENT} not HEALTHY on {version} after {timeout_s:.0f} s "
                       f"(app status, deployment status, model_version): {state}")


# --- promote / rollback ----------------------------------------------------------------------------
def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def check_servable(version: str, root: Path) -> Path:
    """The version's directory, if the serving code loads it (feature list, classes, artifact)."""
    from serve_app.training import registry
    from serve_app.core.model import ModelLoadError, SignalModel

    try:
        vdir = registry.resolve(version, root)
        SignalModel.load(vdir)
    except (FileNotFoundError, ValueError) as e:
        raise LifecycleError(str(e)) from e
    except ModelLoadError as e:
        raise LifecycleError(f"{version} cannot be served by this code: {e}") from e
    return vdir


def _timeframe_mismatches(timeframe: str | None, config: Mapping[str, Any]) -> list[str]:
    """The applications of a Serve config (built from build_app) that serve another timeframe than the
    model's: "name (their timeframe)"."""
    from serve_app.config import AppArgs

    default = AppArgs.model_fields["timeframe"].default
    out = []
    for app in config.get("applications") or []:
        if _is_signal_app(app):
            theirs = (app.get("args") or {}).get("timeframe", default)
            if timeframe is not None and theirs != timeframe:
                out.append(f"{app.get('name', 'default')} ({theirs})")
    return out


def gate_refusals(version: str, root: Path) -> list[str]:
    """Why `version` must not replace the serving model, if it must not: no evaluation with a verdict, a
    verdict other than "edge", or worse than the serving model on the same evaluation window (its
    evaluation paired it with the serving model). Empty: it may be promoted. Used by `signalgen models
    promote` and by scheduled retraining."""
    from serve_app.training import registry
    from serve_app.training.verdict import EDGE, verdict_line

    evaluation = registry.read_evaluation(registry.resolve(version, root)) or {}
    verdict = evaluation.get("verdict")
    if not verdict:
        return [f"{version} has no evaluation with a verdict: run `signalgen evaluate --model-version {version}`"]
    refusals = []
    if verdict["verdict"] != EDGE:
        refusals.append(f"its evaluation found {verdict['verdict'].upper()} "
                        f"({verdict_line(verdict, verdict.get('backtest'))})")
    current = registry.current_version(root)
    vs = verdict.get("vs_serving")
    if current is not None and current != version:
        if not vs or vs.get("version") != current:
            refusals.append(f"it was not evaluated against the serving model {current}: run `signalgen evaluate "
                            f"--model-version {version}` again")
        elif vs["comparable"] and vs["difference"] > 0:
            refusals.append(f"it is worse than the serving model {current} on the same window: log-loss "
                            f"{vs['log_loss'] + vs['difference']:.4f} vs {vs['log_loss']:.4f}")
        elif not vs["comparable"] and not _synthetic(current, root):
            # "not worse than the serving model" cannot be shown: refuse rather than pass silently. A model
            # trained on the synthetic sample carries no claim to defend, so it may be replaced regardless.
            refusals.append(f"it cannot be compared with the serving model {current} ({vs.get('why', '?')}): "
                            "that it is not worse is unproven")
    return refusals


def _synthetic(version: str, root: Path) -> bool:
    """Whether `version` was trained on the synthetic sample (metadata synthetic_symbols)."""
    from serve_app.training import registry

    try:
        return bool(registry.read_metadata(registry.resolve(version, root)).get("synthetic_symbols"))
    except (OSError, ValueError, LookupError):
        return False


def switch(version: str, root: Path, action: str, address: str, no_deploy: bool = False,
           require_deploy: bool = False, config_file: Path | None = None, timeout_s: float = 300.0,
           log: Callable[[str], None] = print, gate: bool = False, force_reason: str | None = None) -> int:
    """promote/rollback: check the version (and, with `gate`, the promotion gate - overridden only by a
    `force_reason`, recorded in the history), update the running app, then the registry and --config."""
    from serve_app.training import registry

    vdir = check_servable(version, root)
    version = vdir.name  # 'latest' -> its name
    timeframe = registry.read_metadata(vdir).get("timeframe")
    new_text = None
    if config_file is not None:
        try:
            text = config_file.read_text(encoding="utf-8")
        except OSError as e:
            raise LifecycleError(f"{config_file}: {e.strerror or e}") from e
        new_text = edit_config_text(text, version, str(config_file))
        import yaml

        mismatched = _timeframe_mismatches(timeframe, yaml.safe_load(text))
        if mismatched:
            raise LifecycleError(f"{version} predicts {timeframe} candles, but {config_file} serves "
                                 f"{', '.join(mismatched)}: refused")
    extra: dict[str, Any] = {}
    if gate:
        refusals = gate_refusals(version, root)
        if refusals and not force_reason:
            raise LifecycleError(f"promotion of {version} refused: " + "; ".join(refusals)
                                 + ". To promote it anyway: --force --reason 'why' (recorded in the history)")
        if refusals:
            log(f"FORCED past the promotion gate ({force_reason}): " + "; ".join(refusals))
            extra = {"forced": True, "reason": force_reason, "gate": refusals}
    not_deployed = None
    if no_deploy:
        not_deployed = "--no-deploy"
    else:
        try:
            deploy_model_version(address, version, root, timeout_s, log, timeframe)
        except NoRunningApp as e:
            if require_deploy:
                raise LifecycleError(f"{e} (--require-deploy): the registry was not changed") from e
            not_deployed = str(e)
    previous = registry.current_version(root)
    if previous == version:
        log(f"{version} is already CURRENT in {root}")
    else:
        registry.promote(version, action=action, by=_operator(), root=root, **extra)
        log(f"{action}: CURRENT {previous or '(none)'} -> {version} in {root}")
    if new_text is not None:
        config_file.write_text(new_text, encoding="utf-8")
        log(f"{config_file}: model_version: {version}")
    if not_deployed:
        log(f"NOTE: no running app was updated ({not_deployed}). A running app keeps its model until its "
            f"{ML_DEPLOYMENT} user_config.model_version is set to {version} (or, when it is 'current', "
            f"until its replicas restart)")
    return 0
