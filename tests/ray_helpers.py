"""Serve configs for the tests: configs/serve_config.yaml adapted to a test cluster."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "serve_config.yaml"


def serve_config_for_test(http_port: int, env_vars: dict[str, str], overrides: dict[str, Any] | None = None,
                          extra_apps: dict[str, dict[str, str]] | None = None,
                          extra_app_overrides: dict[str, dict[str, Any]] | None = None,
                          extra_app_num_cpus: dict[str, float] | None = None) -> dict:
    """configs/serve_config.yaml with the test's HTTP port and the replicas' environment.

    extra_apps: {name: env overrides} adds copies of the application under /<name> with another
    environment (e.g. a store that is down), deployed side by side in the same PUT.
    extra_app_overrides: {name: args} for one extra app only (on top of `overrides`).
    extra_app_num_cpus: {name: CPUs} gives every deployment of that extra app this tiny `num_cpus`
    (e.g. 0.01: the session's two apps reserve 1.9 of the 2 test CPUs, so 7 deployments × 0.01 fit).
    Apps not named keep their configuration unchanged (a PUT then leaves them running untouched)."""
    cfg = copy.deepcopy(yaml.safe_load(CONFIG_PATH.read_text()))
    cfg["http_options"]["port"] = http_port
    for app in cfg["applications"]:
        app["runtime_env"] = {"env_vars": dict(env_vars)}
        app["args"].update(overrides or {})
    base = cfg["applications"][0]
    for name, env in (extra_apps or {}).items():
        extra = copy.deepcopy(base)
        extra.update(name=name, route_prefix=f"/{name}", runtime_env={"env_vars": {**env_vars, **env}})
        extra["args"].update((extra_app_overrides or {}).get(name, {}))
        if name in (extra_app_num_cpus or {}):
            for dep in extra["deployments"]:
                dep.setdefault("ray_actor_options", {})["num_cpus"] = extra_app_num_cpus[name]
        cfg["applications"].append(extra)
    return cfg
