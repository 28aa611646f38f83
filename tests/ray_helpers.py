"""Serve configs for the tests: configs/serve_config.yaml adapted to a test cluster."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "serve_config.yaml"


def serve_config_for_test(http_port: int, env_vars: dict[str, str], overrides: dict[str, Any] | None = None,
                          extra_apps: dict[str, dict[str, str]] | None = None) -> dict:
    """configs/serve_config.yaml with the test's HTTP port and the replicas' environment.

    extra_apps: {name: env overrides} adds copies of the application under /<name> with another
    environment (e.g. a store that is down), deployed side by side in the same PUT."""
    cfg = copy.deepcopy(yaml.safe_load(CONFIG_PATH.read_text()))
    cfg["http_options"]["port"] = http_port
    for app in cfg["applications"]:
        app["runtime_env"] = {"env_vars": dict(env_vars)}
        app["args"].update(overrides or {})
    base = cfg["applications"][0]
    for name, env in (extra_apps or {}).items():
        extra = copy.deepcopy(base)
        extra.update(name=name, route_prefix=f"/{name}", runtime_env={"env_vars": {**env_vars, **env}})
        cfg["applications"].append(extra)
    return cfg
