"""Strict checks for a Serve config: Ray validates types but silently ignores unknown keys
(`max_ongoing_request`, `num_cpu`), so every key is compared with the fields of Ray's schema models."""
from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as Optional[X], List[X], Union[Dict, X]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _field_keys(model: type[BaseModel]) -> dict[str, Any]:
    keys = {}
    for name, f in model.model_fields.items():
        keys[name] = f
        if f.alias:
            keys[f.alias] = f
    return keys


def unknown_keys(data: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """Paths of every key in `data` (recursively) that `model` does not define."""
    found: list[str] = []
    if isinstance(data, list):
        for i, item in enumerate(data):
            found += unknown_keys(item, model, f"{path}[{i}]")
        return found
    if not isinstance(data, dict):
        return found
    fields = _field_keys(model)
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            found.append(where)
            continue
        sub = _model_in(fields[key].annotation)
        if sub is not None and isinstance(value, (dict, list)):
            found += unknown_keys(value, sub, where)
    return found


def serve_config_problems(config: dict[str, Any]) -> list[str]:
    """Unknown keys anywhere in a Serve config, including the dict-typed parts Ray cannot know:
    the app builder's `args` and the ML engine's `user_config`."""
    from ray.serve.schema import ServeDeploySchema

    from serve_app.config import AppArgs, MLUserConfig

    problems = [f"unknown key: {p}" for p in unknown_keys(config, ServeDeploySchema)]
    for i, app in enumerate(config.get("applications", [])):
        problems += [f"unknown key: applications[{i}].args.{p}" for p in unknown_keys(app.get("args", {}), AppArgs)]
        for j, dep in enumerate(app.get("deployments", [])):
            where = f"applications[{i}].deployments[{j}]"
            if dep.get("name") == "MLEngine":
                problems += [f"unknown key: {where}.user_config.{p}"
                             for p in unknown_keys(dep.get("user_config") or {}, MLUserConfig)]
    return problems


__all__ = ["unknown_keys", "serve_config_problems"]
