"""Checking kuberay/ without a cluster: render the kustomization and validate objects the way the API server
would (custom resources against their CRD's openAPIV3Schema, unknown fields being errors). The metric names
the Grafana dashboard and the PrometheusRule query come from kuberay/metric_names.py (re-exported here).

No Kubernetes client, no network: the CRDs are files (KUBERAY_CRDS_DIR, default <repo>/../shared/kuberay/crds).
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = REPO / "kuberay"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The metric-name helpers live next to the dashboard and the alerts (kuberay/metric_names.py); re-exported.
from kuberay.metric_names import (  # noqa: E402
    DASHBOARD, KUBE_STATE_METRICS, METRIC_NAME, PROMETHEUS_RULE, alert_exprs, dashboard_and_alert_metric_names,
    dashboard_exprs, kube_state_metric_names, metric_names_in_promql, missing_from_scrape, scrape_names,
)


def load_generator():
    """kuberay/generate.py as a module (kuberay/ is a manifest directory, not a package)."""
    spec = importlib.util.spec_from_file_location("kuberay_generate", KUBERAY / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_documents(path: Path) -> list[dict]:
    """Every non-empty YAML document of a file."""
    return [d for d in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_Loader) if d is not None]


def manifest_files(directory: Path = KUBERAY) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


# --- kustomize -------------------------------------------------------------------------------------
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
                  "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}
SETUP = KUBERAY / "setup"


class KustomizeUnavailable(RuntimeError):
    """Neither kubectl nor kustomize is installed (`make test` installs Debian's kubectl)."""


def kustomization(directory: Path = KUBERAY) -> dict:
    return yaml.load((directory / "kustomization.yaml").read_text(encoding="utf-8"), Loader=_Loader)


def kustomize_command() -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise KustomizeUnavailable("neither kubectl nor kustomize is installed (`make test` installs kubectl)")


def render_kustomization(directory: Path = KUBERAY, components: tuple[str, ...] = ()) -> list[dict]:
    """What `kubectl kustomize <directory>` produces - what `kubectl apply -k` sends. With `components`
    (paths relative to `directory`), a copy of kuberay/ is rendered with those optional components enabled."""
    directory = Path(directory)
    if components:
        with tempfile.TemporaryDirectory() as tmp:
            copy_root = Path(tmp) / "kuberay"
            shutil.copytree(KUBERAY, copy_root)
            target = copy_root / directory.relative_to(KUBERAY)
            k = kustomization(target)
            k["components"] = list(components)
            (target / "kustomization.yaml").write_text(yaml.safe_dump(k, sort_keys=False), encoding="utf-8")
            return render_kustomization(target)
    out = subprocess.run(kustomize_command() + [str(directory)], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"kustomize {directory} failed: {out.stderr.strip()}")
    return [o for o in yaml.load_all(out.stdout, Loader=_Loader) if o]


def iter_containers(node: Any) -> Iterator[dict]:
    """Every container and init container anywhere in an object (how kustomize's image transformer finds
    them in custom resources too)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from (c for c in value if isinstance(c, dict))
            else:
                yield from iter_containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_containers(item)


# --- custom resources against their CRD, as strictly as the API server ------------------------------
def crds_dir() -> Path:
    return Path(os.environ.get("KUBERAY_CRDS_DIR", REPO.parent / "shared" / "kuberay" / "crds"))


DNS1123_SUBDOMAIN = r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# ObjectMeta as the API server checks it for any object (a CRD schema may only say `type: object` here):
# known fields with their types, label syntax, unknown fields rejected (kubectl's default --validate=strict).
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": DNS1123_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "pattern": DNS1123_SUBDOMAIN},
        "labels": {"type": "object", "propertyNames": {"pattern": LABEL_KEY, "maxLength": 317},
                   "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE}},
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"}, "resourceVersion": {"type": "string"}, "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]}, "deletionTimestamp": {"type": "string"},
        "deletionGracePeriodSeconds": {"type": "integer"}, "managedFields": {"type": "array"},
        "selfLink": {"type": "string"},
    },
    "additionalProperties": False,
}
_DROP = {"description", "default", "example", "externalDocs", "x-kubernetes-validations",
         "x-kubernetes-map-type", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
         "x-kubernetes-int-or-string", "x-kubernetes-embedded-resource", "x-kubernetes-preserve-unknown-fields",
         "nullable"}


def structural_schema(node: dict, root: bool = True) -> dict:
    """A CRD's openAPIV3Schema as a JSON Schema that fails where the API server would drop or reject data.

    - objects that list `properties` (or list nothing) and have neither `additionalProperties` nor
      `x-kubernetes-preserve-unknown-fields: true` get `additionalProperties: false` (the API server prunes
      unknown fields silently; here they are errors);
    - `x-kubernetes-int-or-string: true` accepts an integer or a string;
    - `x-kubernetes-embedded-resource: true` objects may carry apiVersion/kind and an ObjectMeta `metadata`;
    - the root `metadata` is validated as ObjectMeta, loosely (known fields, label syntax);
    - `nullable: true` admits null; `x-kubernetes-list-type: set` means unique items and `map` unique keys;
    - Go regexes' inline flags are moved to the front for Python; CEL rules are not evaluated.
    """
    s = {k: v for k, v in node.items() if k not in _DROP}
    preserve = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if node.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    elif node.get("nullable") and "type" in s:
        s["type"] = [s["type"], "null"]
    if "pattern" in s:
        s["pattern"] = _python_regex(s["pattern"])
    props = {name: structural_schema(sub, root=False) for name, sub in node.get("properties", {}).items()}
    if node.get("x-kubernetes-embedded-resource"):
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props["metadata"] = copy.deepcopy(OBJECT_META)
    if root:
        props["metadata"] = copy.deepcopy(OBJECT_META)
    if props:
        s["properties"] = props
    is_object = node.get("type") == "object" or "properties" in node
    if isinstance(node.get("additionalProperties"), dict):
        s["additionalProperties"] = structural_schema(node["additionalProperties"], root=False)
    elif is_object and not preserve and "additionalProperties" not in node:
        s["additionalProperties"] = False
    if isinstance(node.get("items"), dict):
        s["items"] = structural_schema(node["items"], root=False)
    if node.get("x-kubernetes-list-type") == "set":
        s["uniqueItems"] = True
    if node.get("x-kubernetes-list-type") == "map" and node.get("x-kubernetes-list-map-keys"):
        defaults = {key: sub.get("default") for key, sub in node.get("items", {}).get("properties", {}).items()}
        s["x-list-map-keys"] = {"keys": list(node["x-kubernetes-list-map-keys"]), "defaults": defaults}
    return s


def _python_regex(pattern: str) -> str:
    flags = "".join(re.findall(r"\(\?([a-z]+)\)", pattern))
    if not flags or pattern.startswith(f"(?{flags})"):
        return pattern
    return f"(?{flags})" + re.sub(r"\(\?[a-z]+\)", "", pattern)


def _list_map_keys(validator, spec, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(item.get(k, spec["defaults"].get(k)) for k in spec["keys"])
        if key in seen:
            yield jsonschema.ValidationError(
                f"duplicate entry for map keys {dict(zip(spec['keys'], key))} (items {seen[key]} and {i})")
        seen[key] = i


_Validator = jsonschema.validators.extend(jsonschema.Draft7Validator, {"x-list-map-keys": _list_map_keys})


class CRDNotFound(LookupError):
    pass


@functools.lru_cache(maxsize=None)
def _crd_index(directory: str) -> dict[tuple[str, str], Path]:
    index = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        head = path.read_text(encoding="utf-8")[:4000]  # group and kind are near the top of a CRD
        group = re.search(r"^\s{2}group:\s*(\S+)", head, re.M)
        kind = re.search(r"^\s{4}kind:\s*(\S+)", head, re.M)
        if group and kind:
            index[(group.group(1), kind.group(1))] = path
    return index


def crd_path(api_version: str, kind: str, directory: Path | None = None) -> Path:
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    path = _crd_index(str(directory or crds_dir())).get((group, kind))
    if path is None:
        raise CRDNotFound(f"no CRD for {kind} ({api_version}) in {directory or crds_dir()}")
    return path


@functools.lru_cache(maxsize=None)
def crd_validator(path: str, version: str):
    crd = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            if not v.get("served", False):
                raise CRDNotFound(f"{path}: version {version} is not served")
            return _Validator(structural_schema(v["schema"]["openAPIV3Schema"]))
    raise CRDNotFound(f"{path}: no version {version}")


def custom_resource_errors(obj: dict, directory: Path | None = None) -> list[str]:
    """Schema errors of a custom resource against its CRD ([] when valid); CRDNotFound if there is none."""
    api_version = obj.get("apiVersion", "")
    path = crd_path(api_version, obj.get("kind", ""), directory)
    validator = crd_validator(str(path), api_version.rsplit("/", 1)[-1])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]


__all__ = [
    "REPO", "KUBERAY", "DASHBOARD", "PROMETHEUS_RULE", "load_generator", "load_documents", "manifest_files",
    "kustomization", "render_kustomization", "kustomize_command", "KustomizeUnavailable", "SETUP", "iter_containers", "crds_dir", "structural_schema",
    "custom_resource_errors", "CRDNotFound", "metric_names_in_promql", "dashboard_exprs", "alert_exprs",
    "dashboard_and_alert_metric_names", "scrape_names", "missing_from_scrape", "METRIC_NAME",
    "KUBE_STATE_METRICS", "kube_state_metric_names",
]
