"""`signalgen k8s preflight` against recorded Kubernetes API responses.

A real HTTP server on 127.0.0.1 plays the API server: it answers GETs from JSON files keyed by API path
(tests/fixtures/k8s/<scenario>/<path>.json, e.g. api/v1/secrets.json for /api/v1/secrets; version.json for
/version), the way the API server does: a named object or a namespace's objects out of a recorded list,
`labelSelector` applied, and 404 with a Status body for anything else. A generated kubeconfig points kubectl
at it, so the preflight's real code path runs: `kubectl get --raw` for every read, `kubectl kustomize` for
the manifests.

tests/fixtures/k8s/ready/ is a cluster the manifests can be applied to (GKE, KubeRay v1.7.0 from its Helm
chart in `default`, kube-prometheus-stack as release `prometheus` in prometheus-system, the namespace, the
Secrets - values redacted: the preflight reads key names only - and both volumes made by `kuberay/setup`).
The CustomResourceDefinitions are not recorded (the RayService CRD alone is 300 KB of JSON): they are the
published ones the manifest tests validate against (tests/k8s_helpers.crds_dir(), KubeRay v1.7.0,
prometheus-operator), with the fields the API server adds. Every other scenario is the ready cluster with one
thing changed, so each test names the one fault it is about.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from serve_app.k8s import preflight
from serve_app.k8s.preflight import FAIL, PASS, WARN, Report, Result
from tests.conftest import skip_or_fail
from tests.k8s_helpers import KUBERAY, crds_dir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "k8s"
ROOT = Path(__file__).resolve().parents[2]
NS = "crypto-trading"
CRD_LIST = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
PODS, SECRETS, NODES = "/api/v1/pods", "/api/v1/secrets", "/api/v1/nodes"
CLAIMS, CLASSES = "/api/v1/persistentvolumeclaims", "/apis/storage.k8s.io/v1/storageclasses"
PROMETHEUSES = "/apis/monitoring.coreos.com/v1/prometheuses"
KUSTOMIZE_OPERATOR_LABELS = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": "kuberay-operator"}


@pytest.fixture(scope="module", autouse=True)
def _kubectl() -> None:
    if shutil.which("kubectl") is None:
        skip_or_fail("kubectl is not installed (the preflight reads the cluster and renders kuberay/ with it)")


# --- the fake API server -------------------------------------------------------------------------------------
def load_scenario(name: str) -> dict[str, Any]:
    """{API path: JSON body} of tests/fixtures/k8s/<name>/."""
    base = FIXTURES / name
    return {"/" + p.relative_to(base).with_suffix("").as_posix(): json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(base.rglob("*.json"))}


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


def _selector_holds(selector: str, labels: dict[str, str]) -> bool:
    """An equality-based label selector (`a=b,c!=d,e,!f`), as the API server applies it to a list."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


class FakeAPIServer:
    """An API server that answers from recorded responses (a route may be a (code, Status) pair: an error);
    `failure` (code, reason, message) answers every path but those in `failure_spares` with that error
    instead. Records the requests it got."""

    def __init__(self, routes: dict[str, Any], failure: tuple[int, str, str] | None = None,
                 failure_spares: tuple[str, ...] = ()) -> None:
        self.routes, self.failure, self.failure_spares = routes, failure, failure_spares
        self.requests: list[tuple[str, str]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                api.requests.append((self.command, self.path))
                url = urlsplit(self.path)
                if self.command != "GET":
                    code, body = 405, _status(405, "MethodNotAllowed", "the preflight must only read")
                else:
                    code, body = api.answer(url.path, parse_qs(url.query))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FakeAPIServer":
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        if self.failure and path not in self.failure_spares:
            code, reason, message = self.failure
            return code, _status(code, reason, message)
        body = self.routes.get(path)
        if body is None:
            body = self._derived(path)
        if isinstance(body, tuple):          # (code, Status): an error answer
            return body
        if body is None:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        if "items" in body and query.get("labelSelector"):
            body = {**body, "items": [o for o in body["items"] if _selector_holds(
                query["labelSelector"][0], (o.get("metadata") or {}).get("labels") or {})]}
        return 200, body

    def _derived(self, path: str) -> dict | tuple | None:
        """A named object, or one namespace's objects, out of a recorded list (`/api/v1/secrets` answers
        `/api/v1/namespaces/N/secrets` and `/api/v1/namespaces/N/secrets/NAME`)."""
        parts = path.strip("/").split("/")
        group = parts[1] if parts[0] == "apis" and len(parts) > 2 else ""
        if "namespaces" in parts and len(parts) - parts.index("namespaces") > 2:
            i = parts.index("namespaces")
            namespace, resource, name = parts[i + 1], parts[i + 2], parts[i + 3] if len(parts) > i + 3 else None
            listing = self.routes.get("/" + "/".join(parts[:i] + [resource]))
        elif len(parts) >= 3:
            namespace, resource, name = None, parts[-2], parts[-1]
            listing = self.routes.get("/" + "/".join(parts[:-1]))
        else:
            return None
        if not isinstance(listing, dict) or "items" not in listing:
            return None
        items = [o for o in listing["items"]
                 if namespace is None or (o.get("metadata") or {}).get("namespace") == namespace]
        if name is None:
            return {**listing, "items": items}
        for item in items:
            if (item.get("metadata") or {}).get("name") == name:
                # list items of built-in kinds carry no kind/apiVersion; a single GET does
                return {"kind": listing["kind"].removesuffix("List"), "apiVersion": listing["apiVersion"], **item}
        qualified = f"{resource}.{group}" if group else resource
        return 404, _status(404, "NotFound", f'{qualified} "{name}" not found',
                            {"name": name, "group": group, "kind": resource} if group else
                            {"name": name, "kind": resource})

    def kubeconfig(self, directory: Path, token: str = "fixture-token") -> Path:
        path = directory / "kubeconfig"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "signal-prod", "cluster": {"server": self.url}}],
            "users": [{"name": "ci-reader", "user": {"token": token}}],
            "contexts": [{"name": "signal-prod", "context": {"cluster": "signal-prod", "user": "ci-reader"}}],
            "current-context": "signal-prod"}), encoding="utf-8")
        return path


# --- the scenarios -------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def published_crd(filename: str) -> dict:
    """A published CRD as the API server returns it: what was applied, plus uid, status, acceptedNames."""
    path = crds_dir() / filename
    if not path.is_file():
        skip_or_fail(f"{path} not found (the published CRDs, KUBERAY_CRDS_DIR)")
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    crd["metadata"].update({"uid": "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d", "resourceVersion": "1204350",
                            "generation": 1, "creationTimestamp": "2025-10-30T10:12:31Z"})
    served = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
    crd["status"] = {"acceptedNames": crd["spec"]["names"], "storedVersions": served, "conditions": [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
         "message": "no conflicts found", "lastTransitionTime": "2025-10-30T10:12:31Z"},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": "2025-10-30T10:12:31Z"}]}
    return crd


def _ready() -> dict[str, Any]:
    routes = load_scenario("ready")
    routes[CRD_LIST] = {"kind": "CustomResourceDefinitionList", "apiVersion": "apiextensions.k8s.io/v1",
                        "metadata": {"resourceVersion": "1843941"},
                        "items": [published_crd(f) for f in ("ray.io_rayservices.yaml",
                                                             "monitoring.coreos.com_podmonitors.yaml",
                                                             "monitoring.coreos.com_prometheusrules.yaml")]}
    return routes


_READY: dict[str, Any] = {}


def ready_cluster() -> dict[str, Any]:
    """A fresh copy of the ready cluster's routes (the tests change it)."""
    if not _READY:
        _READY.update(_ready())
    return copy.deepcopy(_READY)


def item(routes: dict, listing: str, name: str, namespace: str | None = None) -> dict:
    for obj in routes[listing]["items"]:
        meta = obj["metadata"]
        if meta["name"] == name and (namespace is None or meta.get("namespace") == namespace):
            return obj
    raise KeyError(f"{listing}: no {name}")


def remove(routes: dict, listing: str, name: str) -> None:
    before = len(routes[listing]["items"])
    routes[listing]["items"] = [o for o in routes[listing]["items"] if o["metadata"]["name"] != name]
    assert len(routes[listing]["items"]) == before - 1, f"{listing}: no {name} to remove"


HELM_OPERATOR = "kuberay-operator-6c9f7d5b8-x7k2p"
MYSQL_KEY = "password"          # the key of Secret signalgen-mysql (a name here: tests/unit/test_no_secrets.py)


# --- the manifests -------------------------------------------------------------------------------------------
def _edit_yaml(path: Path, change: Callable[[dict], None]) -> None:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")


def copy_manifests(target: Path, *, image: str | None = "ghcr.io/crypto-trading/signalgen",
                   runbook: str | None = "https://gitlab.crypto-trading.internal/platform/signalgen/-/blob/main",
                   storage_class: str | None = "standard-rwx") -> Path:
    """kuberay/ copied, with the parameters an operator sets for this cluster (None: keep the repo's)."""
    shutil.copytree(KUBERAY, target, ignore=shutil.ignore_patterns("__pycache__"))
    if image:
        def set_image(k: dict) -> None:
            (entry,) = [i for i in k["images"] if i["name"] == "signalgen"]
            entry["newName"] = image
        _edit_yaml(target / "kustomization.yaml", set_image)
    if runbook:
        _edit_yaml(target / "params.yaml", lambda p: p["data"].update(runbookBaseUrl=runbook))
    if storage_class:
        _edit_yaml(target / "setup" / "params.yaml", lambda p: p["data"].update(storageClass=storage_class))
        _edit_yaml(target / "setup" / "kustomization.yaml",
                   lambda k: k.update(components=sorted(set(k.get("components") or []) | {"storage-class"})))
    return target


@pytest.fixture(scope="module")
def ready_manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kuberay/ as set up for the ready cluster: image pushed, runbook URL and RWX class set."""
    return copy_manifests(tmp_path_factory.mktemp("manifests") / "kuberay")


@pytest.fixture
def run_preflight(tmp_path: Path, ready_manifests: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Callable[..., tuple[Report, FakeAPIServer]]:
    """Run the preflight (the package's entry point, kubectl underneath) against a scenario."""
    monkeypatch.setenv("HOME", str(tmp_path))          # kubectl's cache
    monkeypatch.delenv("KUBECONFIG", raising=False)

    def run(routes: dict, manifests: Path | None = None, **kwargs: Any) -> tuple[Report, FakeAPIServer]:
        with FakeAPIServer(routes) as api:
            report = preflight.run(manifests or ready_manifests, kubeconfig=str(api.kubeconfig(tmp_path)),
                                   timeout=20, display_dir="kuberay/", **kwargs)
        assert {method for method, _ in api.requests} == {"GET"}, api.requests
        return report, api
    return run


def results(report: Report, check: str) -> list[Result]:
    found = [r for r in report.results if r.check == check]
    assert found, f"no {check!r} result; checks: {[r.check for r in report.results]}"
    return found


def result(report: Report, check: str) -> Result:
    (found,) = results(report, check)
    return found


def problems(report: Report) -> list[str]:
    return [f"{r.status} {r.check}: {r.detail}" for r in report.results if r.status != PASS]


# --- a ready cluster -----------------------------------------------------------------------------------------
def test_ready_cluster_passes_every_check(run_preflight) -> None:
    report, api = run_preflight(ready_cluster())
    assert problems(report) == []
    assert not report.failed
    checks = [r.check for r in report.results]
    for check in ("crd", "operator", "operator version", "operator network", "namespace", "secret signalgen-mysql",
                  "secret signalgen-ray-token", "secret signalgen-api-key", "secret signalgen-mysql-admin",
                  "secret signalgen-mysql-collector", "pvc signalgen-models",
                  "pvc signalgen-spill", "image", "prometheus crds", "prometheus podmonitors", "prometheus rules",
                  "prometheus network", "prometheus runbooks", "capacity"):
        assert check in checks, check
    assert report.namespace == NS and report.rayservices == ["signalgen"]
    assert report.kubernetes == "v1.32.4-gke.1415000" and report.context == "signal-prod"
    assert "authOptions" in result(report, "crd").detail
    assert "kuberay-operator-6c9f7d5b8-x7k2p Running in default (quay.io/kuberay/operator:v1.7.0)" in \
        result(report, "operator").detail
    assert "exists, Bound (class standard-rwx" in result(report, "pvc signalgen-models").detail
    assert "key auth_token" in result(report, "secret signalgen-ray-token").detail
    assert "prometheus-system/prometheus-kube-prometheus-prometheus" in result(report, "prometheus rules").detail
    # the Secrets are read one by one, by name (a namespace's list would need list rights on all Secrets)
    assert any(path.startswith("/api/v1/namespaces/crypto-trading/secrets/") for _, path in api.requests)
    assert not any(path.split("?")[0].endswith("/secrets") for _, path in api.requests)


def test_ready_cluster_via_the_command_line(tmp_path: Path, ready_manifests: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    with FakeAPIServer(ready_cluster()) as api:
        kubeconfig = api.kubeconfig(tmp_path)
        code = main(["k8s", "preflight", "--kubeconfig", str(kubeconfig), "--manifests", str(ready_manifests)])
        out = capsys.readouterr().out
        assert code == 0, out
        assert out.splitlines()[0].startswith(f"preflight: context signal-prod ({api.url}, Kubernetes v1.32.4")
        assert out.rstrip().endswith("passed, 0 warnings, 0 failed: ready to apply")

        code = main(["k8s", "preflight", "--kubeconfig", str(kubeconfig), "--manifests", str(ready_manifests),
                     "--json"])
        listed = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"check", "status", "detail", "fix"} <= set(listed[0])
    assert {r["status"] for r in listed} == {PASS}
    assert {r["check"] for r in listed} >= {"crd", "operator", "capacity"}
    assert all(r["fix"] == "" for r in listed)          # a PASS has nothing to fix


# --- the KubeRay CRD -----------------------------------------------------------------------------------------
def test_no_kuberay_crd_fails(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, CRD_LIST, "rayservices.ray.io")
    report, _ = run_preflight(routes)
    crd = result(report, "crd")
    assert crd.status == FAIL and "rayservices.ray.io is not installed" in crd.detail
    assert "helm install kuberay-operator" in crd.fix and "v1.7.0" in crd.fix
    assert report.failed


def test_crd_older_than_kuberay_1_6_fails_with_the_upgrade_command(run_preflight) -> None:
    routes = ready_cluster()
    crd = item(routes, CRD_LIST, "rayservices.ray.io")
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    cluster_config = v1["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rayClusterConfig"]
    del cluster_config["properties"]["authOptions"]          # what a v1.5 CRD looks like to the manifests
    item(routes, PODS, HELM_OPERATOR)["spec"]["containers"][0]["image"] = "quay.io/kuberay/operator:v1.5.1"
    report, _ = run_preflight(routes)
    crd_result = result(report, "crd")
    assert crd_result.status == FAIL
    assert "no spec.rayClusterConfig.authOptions (KubeRay < 1.6)" in crd_result.detail
    assert "spec.rayClusterConfig.authOptions" in crd_result.detail.split("does not know:")[1]
    assert 'kubectl apply --server-side -k "github.com/ray-project/kuberay/ray-operator/config/crd?ref=v1.7.0"' \
        in crd_result.fix
    version = result(report, "operator version")
    assert version.status == WARN and "v1.5.1" in version.detail and "--version 1.7.0" in version.fix


# --- the operator --------------------------------------------------------------------------------------------
def _kustomize_installed(routes: dict) -> None:
    """The operator as `kubectl create -k ray-operator/config/default?ref=v1.7.0` installs it."""
    pod = item(routes, PODS, HELM_OPERATOR)
    pod["metadata"]["labels"] = {**KUSTOMIZE_OPERATOR_LABELS, "pod-template-hash": "7b5d9c8f4"}
    pod["metadata"]["name"] = "kuberay-operator-7b5d9c8f4-q2w8n"
    pod["spec"]["containers"][0]["args"] = ["--feature-gates=RayClusterStatusConditions=true"]


@pytest.mark.parametrize("install", ["helm", "kustomize"])
def test_operator_of_either_install_in_default_passes_with_the_repos_parameters(
        run_preflight, install: str) -> None:
    routes = ready_cluster()
    if install == "kustomize":
        _kustomize_installed(routes)
    report, _ = run_preflight(routes, manifests=KUBERAY)      # the repository's params.yaml, untouched
    for check in ("operator", "operator version", "operator network"):
        assert result(report, check).status == PASS, problems(report)
    assert "in default" in result(report, "operator").detail
    assert "can reach the head's ports 8265 and 8000" in result(report, "operator network").detail
    if install == "kustomize":
        assert "app.kubernetes.io/name=kuberay)" in result(report, "operator network").detail


def test_operator_in_another_namespace_fails_naming_the_parameter(run_preflight) -> None:
    routes = ready_cluster()
    routes["/api/v1/namespaces"]["items"].append({
        "metadata": {"name": "kuberay-system", "uid": "4d5e6f7a-8b9c-4d0e-9f1a-2b3c4d5e6f7a",
                     "labels": {"kubernetes.io/metadata.name": "kuberay-system"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    item(routes, PODS, HELM_OPERATOR)["metadata"]["namespace"] = "kuberay-system"
    report, _ = run_preflight(routes)
    assert result(report, "operator").status == PASS            # it runs ...
    network = result(report, "operator network")               # ... but the NetworkPolicy keeps it out
    assert network.status == FAIL
    assert "the operator in namespace kuberay-system" in network.detail
    assert "ports 8265 (dashboard) and 8000 (serve)" in network.detail
    assert "kubernetes.io/metadata.name=default" in network.detail     # what the policy admits instead
    assert "operatorNamespace in kuberay/params.yaml to kuberay-system" in network.fix
    assert "kubectl apply --server-side -k kuberay/" in network.fix
    assert report.failed


def test_no_running_operator_fails(run_preflight) -> None:
    routes = ready_cluster()
    pod = item(routes, PODS, HELM_OPERATOR)
    pod["status"]["phase"] = "Pending"
    report, _ = run_preflight(routes)
    operator = result(report, "operator")
    assert operator.status == FAIL and "no Running KubeRay operator pod" in operator.detail
    assert f"default/{HELM_OPERATOR} Pending" in operator.detail
    assert "helm install kuberay-operator" in operator.fix


def test_operator_watching_other_namespaces_fails(run_preflight) -> None:
    routes = ready_cluster()
    item(routes, PODS, HELM_OPERATOR)["spec"]["containers"][0]["args"] += ["--watch-namespace", "ml-jobs,default"]
    report, _ = run_preflight(routes)
    operator = result(report, "operator")
    assert operator.status == FAIL and "watches only ml-jobs, default, not crypto-trading" in operator.detail


# --- the namespace and the Secrets ---------------------------------------------------------------------------
def test_missing_mysql_secret_fails(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, SECRETS, "signalgen-mysql")
    report, _ = run_preflight(routes)
    secret = result(report, "secret signalgen-mysql")
    assert secret.status == FAIL
    assert "Secret signalgen-mysql (key password) not found in crypto-trading" in secret.detail
    assert "cpu-workers" in secret.detail and "ml-workers" in secret.detail
    assert secret.fix == ("kubectl -n crypto-trading create secret generic signalgen-mysql "
                          f"--from-literal={MYSQL_KEY}=<value>")


def test_secret_without_its_key_fails(run_preflight) -> None:
    routes = ready_cluster()
    item(routes, SECRETS, "signalgen-mysql")["data"] = {"MYSQL_PASSWORD": "<redacted>"}
    report, _ = run_preflight(routes)
    secret = result(report, "secret signalgen-mysql")
    assert secret.status == FAIL
    assert "has no key password (its keys: MYSQL_PASSWORD" in secret.detail
    assert f"--from-literal={MYSQL_KEY}=<value>" in secret.fix


def test_missing_ray_token_secret_fails(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, SECRETS, "signalgen-ray-token")
    report, _ = run_preflight(routes)
    secret = result(report, "secret signalgen-ray-token")
    assert secret.status == FAIL
    assert "authOptions Secret signalgen-ray-token (key auth_token) not found" in secret.detail
    assert "--from-literal=auth_token=<value>" in secret.fix


def test_missing_migration_admin_secret_fails_naming_the_job(run_preflight) -> None:
    """The Secrets of the Jobs beside the RayService are found in their pod templates: the schema migration's
    admin credentials (a Job) and the collector's (a CronJob's job template)."""
    routes = ready_cluster()
    remove(routes, SECRETS, "signalgen-mysql-admin")
    item(routes, SECRETS, "signalgen-mysql-collector")["data"] = {"password": "<redacted>"}
    report, _ = run_preflight(routes)
    admin = result(report, "secret signalgen-mysql-admin")
    assert admin.status == FAIL
    assert ("Secret signalgen-mysql-admin (keys password, username) not found in crypto-trading "
            "(used by Job signalgen-migrate)") in admin.detail
    assert admin.fix == ("kubectl -n crypto-trading create secret generic signalgen-mysql-admin "
                         "--from-literal=password=<value> --from-literal=username=<value>")
    collector = result(report, "secret signalgen-mysql-collector")
    assert collector.status == FAIL
    assert "has no key username (its keys: password; used by CronJob signalgen-collect-1h)" in collector.detail
    # the runtime user's Secret is still the workers' alone
    assert result(report, "secret signalgen-mysql").detail.endswith("(used by cpu-workers, ml-workers)")
    checks = [r.check for r in report.results if r.check.startswith("secret ")]
    assert checks.index("secret signalgen-mysql") < checks.index("secret signalgen-mysql-admin"), "Ray pods first"


def test_optional_api_key_secret_may_be_missing(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, SECRETS, "signalgen-api-key")
    report, _ = run_preflight(routes)
    secret = result(report, "secret signalgen-api-key")
    assert secret.status == PASS and "optional Secret signalgen-api-key not present" in secret.detail


def test_namespace_not_created_yet_warns_with_the_setup_apply(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, "/api/v1/namespaces", NS)
    routes[SECRETS]["items"], routes[CLAIMS]["items"] = [], []
    report, _ = run_preflight(routes)
    namespace = result(report, "namespace")
    assert namespace.status == WARN and "namespace crypto-trading does not exist yet" in namespace.detail
    assert "kubectl apply --server-side -k kuberay/setup" in namespace.fix
    assert "signalgen-mysql (key password)" in namespace.fix
    assert "signalgen-ray-token (key auth_token)" in namespace.fix
    assert "signalgen-mysql-admin (keys password, username)" in namespace.fix
    assert not [r for r in report.results if r.check.startswith("secret ")]
    # the claims are judged by the class they will get
    assert "ReadWriteMany on class standard-rwx (filestore.csi.storage.gke.io)" in \
        result(report, "pvc signalgen-models").detail


# --- storage -------------------------------------------------------------------------------------------------
def test_no_default_storage_class_and_none_set_fails(run_preflight, tmp_path: Path) -> None:
    routes = ready_cluster()
    del item(routes, CLASSES, "standard-rwo")["metadata"]["annotations"]
    routes[CLAIMS]["items"] = []                                  # kuberay/setup not applied yet
    manifests = copy_manifests(tmp_path / "kuberay", storage_class=None)
    report, _ = run_preflight(routes, manifests=manifests)
    for claim in ("signalgen-models", "signalgen-spill"):
        pvc = result(report, f"pvc {claim}")
        assert pvc.status == FAIL
        assert "names no storageClassName and the cluster has no default StorageClass" in pvc.detail
        assert "premium-rwo, standard, standard-rwo, standard-rwx" in pvc.detail
        assert "storageClass in kuberay/setup/params.yaml" in pvc.fix
        assert "storage-class component" in pvc.fix


def test_default_block_storage_class_warns_for_read_write_many(run_preflight, tmp_path: Path) -> None:
    routes = ready_cluster()
    routes[CLAIMS]["items"] = []
    manifests = copy_manifests(tmp_path / "kuberay", storage_class=None)
    report, _ = run_preflight(routes, manifests=manifests)
    pvc = result(report, "pvc signalgen-models")
    assert pvc.status == WARN
    assert "ReadWriteMany on default class standard-rwo (pd.csi.storage.gke.io)" in pvc.detail
    assert "kuberay/setup/params.yaml" in pvc.fix


def test_storage_class_that_does_not_exist_fails(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, CLASSES, "standard-rwx")
    routes[CLAIMS]["items"] = []
    report, _ = run_preflight(routes)
    pvc = result(report, "pvc signalgen-spill")
    assert pvc.status == FAIL and "StorageClass standard-rwx does not exist" in pvc.detail


def test_existing_claim_with_another_class_fails(run_preflight) -> None:
    routes = ready_cluster()
    item(routes, CLAIMS, "signalgen-models")["spec"]["storageClassName"] = "standard-rwo"
    report, _ = run_preflight(routes)
    pvc = result(report, "pvc signalgen-models")
    assert pvc.status == FAIL and "storageClassName standard-rwo (manifests: standard-rwx)" in pvc.detail


# --- the image -----------------------------------------------------------------------------------------------
def test_placeholder_image_registry_fails(run_preflight, tmp_path: Path) -> None:
    manifests = copy_manifests(tmp_path / "kuberay", image=None)      # the repository's images: entry
    report, _ = run_preflight(ready_cluster(), manifests=manifests)
    image = result(report, "image")
    assert image.status == FAIL
    assert "registry.example.com/crypto-trading/signalgen:" in image.detail
    assert "placeholder registry registry.example.com" in image.detail
    assert "images: in kuberay/kustomization.yaml" in image.fix


def test_private_registry_without_pull_secret_warns(run_preflight, tmp_path: Path) -> None:
    manifests = copy_manifests(tmp_path / "kuberay", image="us-central1-docker.pkg.dev/signal-prod/images/signalgen")
    report, _ = run_preflight(ready_cluster(), manifests=manifests)
    image = result(report, "image")
    assert image.status == WARN and "registry us-central1-docker.pkg.dev, no imagePullSecrets" in image.detail


def test_pull_secret_on_the_ray_account_only_warns_for_the_jobs(run_preflight, tmp_path: Path) -> None:
    """The Jobs run as their own ServiceAccount: a pull secret given to the Ray pods' account only leaves the
    migration and the collector unable to pull the same image."""
    manifests = copy_manifests(tmp_path / "kuberay", image="us-central1-docker.pkg.dev/signal-prod/images/signalgen")
    accounts = manifests / "security" / "serviceaccount.yaml"
    docs = [d for d in yaml.safe_load_all(accounts.read_text(encoding="utf-8")) if d]
    for sa in docs:
        if sa["metadata"]["name"] == "signalgen-ray":
            sa["imagePullSecrets"] = [{"name": "artifact-registry"}]
    accounts.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    routes = ready_cluster()
    routes[SECRETS]["items"].append({"metadata": {"name": "artifact-registry", "namespace": NS},
                                     "data": {".dockerconfigjson": "<redacted>"}, "type": "kubernetes.io/dockerconfigjson"})
    report, _ = run_preflight(routes, manifests=manifests)
    image = result(report, "image")
    assert image.status == WARN
    assert "pull secrets artifact-registry for some pods, none for CronJob signalgen-collect-1h, Job signalgen-migrate" \
        in image.detail
    assert image.fix.startswith("add imagePullSecrets (artifact-registry) to the ServiceAccount signalgen-jobs too")

    for sa in docs:
        sa["imagePullSecrets"] = [{"name": "artifact-registry"}]
    accounts.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    report, _ = run_preflight(routes, manifests=manifests)
    image = result(report, "image")
    assert image.status == PASS and "(pull secrets artifact-registry)" in image.detail


# --- Prometheus ----------------------------------------------------------------------------------------------
def test_no_prometheus_operator_warns(run_preflight) -> None:
    routes = ready_cluster()
    remove(routes, CRD_LIST, "podmonitors.monitoring.coreos.com")
    remove(routes, CRD_LIST, "prometheusrules.monitoring.coreos.com")
    del routes[PROMETHEUSES]
    report, _ = run_preflight(routes)
    crds = result(report, "prometheus crds")
    assert crds.status == WARN
    assert "podmonitors.monitoring.coreos.com" in crds.detail and "prometheusrules.monitoring.coreos.com" in crds.detail
    assert "kube-prometheus-stack" in crds.fix
    assert not report.failed, problems(report)


def test_prometheus_of_another_release_warns(run_preflight) -> None:
    routes = ready_cluster()
    prom = item(routes, PROMETHEUSES, "prometheus-kube-prometheus-prometheus")
    for key in ("podMonitorSelector", "ruleSelector"):
        prom["spec"][key] = {"matchLabels": {"release": "kube-prometheus-stack"}}
    report, _ = run_preflight(routes)
    for check in ("prometheus podmonitors", "prometheus rules"):
        warning = result(report, check)
        assert warning.status == WARN and "wants release=kube-prometheus-stack" in warning.detail
    assert "prometheusRelease" in result(report, "prometheus rules").fix


def test_no_prometheus_object_warns(run_preflight) -> None:
    routes = ready_cluster()
    routes[PROMETHEUSES]["items"] = []
    report, _ = run_preflight(routes)
    warning = result(report, "prometheus")
    assert warning.status == WARN and "no Prometheus object in the cluster" in warning.detail
    assert not report.failed


def test_prometheus_in_another_namespace_warns_naming_the_parameter(run_preflight) -> None:
    routes = ready_cluster()
    routes["/api/v1/namespaces"]["items"].append({
        "metadata": {"name": "monitoring", "uid": "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
                     "labels": {"kubernetes.io/metadata.name": "monitoring"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
    item(routes, PROMETHEUSES, "prometheus-kube-prometheus-prometheus")["metadata"]["namespace"] = "monitoring"
    item(routes, PODS, "prometheus-prometheus-kube-prometheus-prometheus-0")["metadata"]["namespace"] = "monitoring"
    report, _ = run_preflight(routes)
    assert result(report, "prometheus podmonitors").status == PASS      # it selects them in every namespace ...
    network = result(report, "prometheus network")                      # ... but may not scrape them
    assert network.status == WARN
    assert "monitoring/prometheus-kube-prometheus-prometheus (namespace monitoring) is not admitted to the " \
           "metrics port 8080 of head, cpu-workers, ml-workers" in network.detail
    assert network.fix == "set prometheusNamespace in kuberay/params.yaml to monitoring"


def test_placeholder_runbook_url_warns(run_preflight, tmp_path: Path) -> None:
    manifests = copy_manifests(tmp_path / "kuberay", runbook=None)      # the repository's runbookBaseUrl
    report, _ = run_preflight(ready_cluster(), manifests=manifests)
    runbooks = result(report, "prometheus runbooks")
    assert runbooks.status == WARN
    assert "https://git.example.com/" in runbooks.detail
    assert "runbookBaseUrl in kuberay/params.yaml" in runbooks.fix
    assert not report.failed


# --- capacity ------------------------------------------------------------------------------------------------
def test_nodes_too_small_fail_capacity(run_preflight) -> None:
    routes = ready_cluster()
    for node in routes[NODES]["items"]:
        node["metadata"]["labels"]["node.kubernetes.io/instance-type"] = "e2-medium"
        node["status"]["capacity"].update(cpu="2", memory="4025880Ki")
        node["status"]["allocatable"].update(cpu="940m", memory="2888752Ki")
    gpu = item(routes, NODES, "gke-signal-default-pool-6f1e2a3b-t7wd")      # big enough, but tainted
    gpu["status"]["allocatable"].update(cpu="15890m", memory="57885372Ki")
    gpu["spec"]["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    report, _ = run_preflight(routes)
    capacity = result(report, "capacity")
    assert capacity.status == FAIL
    assert re.search(r"no schedulable node fits head \(1\.25 CPU / [\d.]+Gi\)", capacity.detail), capacity.detail
    assert "cpu-workers (2 CPU / 4Gi)" in capacity.detail and "ml-workers (1 CPU / 3Gi)" in capacity.detail
    assert "would stay Pending" in capacity.detail
    assert report.failed


AUTOSCALER_STATUS = "/api/v1/namespaces/kube-system/configmaps/cluster-autoscaler-status"


@pytest.mark.parametrize("provisioner", ["karpenter", "cluster-autoscaler", "unreadable"])
def test_nodes_too_small_only_warn_when_nodes_are_added_on_demand(run_preflight, provisioner: str) -> None:
    routes = ready_cluster()
    for node in routes[NODES]["items"]:
        node["status"]["allocatable"].update(cpu="940m", memory="2888752Ki")
        if provisioner == "karpenter":
            node["metadata"]["labels"]["karpenter.sh/nodepool"] = "default"
    if provisioner == "cluster-autoscaler":
        routes["/api/v1/configmaps"] = {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [{
            "metadata": {"name": "cluster-autoscaler-status", "namespace": "kube-system",
                         "uid": "6e7f8a9b-0c1d-4e2f-8a3b-4c5d6e7f8a9b",
                         "annotations": {"cluster-autoscaler.kubernetes.io/last-updated":
                                         "2025-11-03 09:40:12.345678901 +0000 UTC"}},
            "data": {"status": "time: 2025-11-03 09:40:12\nautoscalerStatus: Running\n"}}]}
    elif provisioner == "unreadable":       # not allowed to read kube-system: not seen, and no exit 2
        routes[AUTOSCALER_STATUS] = (403, _status(403, "Forbidden", 'configmaps "cluster-autoscaler-status" is '
                                                  'forbidden: User "ci-reader" cannot get resource "configmaps"'))
    report, api = run_preflight(routes)
    capacity = result(report, "capacity")
    if provisioner == "unreadable":
        assert capacity.status == FAIL and "no cluster autoscaler or Karpenter seen" in capacity.detail
    else:
        assert capacity.status == WARN
        assert ("unless Karpenter adds" if provisioner == "karpenter" else
                "unless the cluster autoscaler adds") in capacity.detail
    assert (provisioner == "karpenter") == all(path.split("?")[0] != AUTOSCALER_STATUS for _, path in api.requests)


# --- could not run: exit 2 with one line ---------------------------------------------------------------------
def _cli(kubeconfig: Path, manifests: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serve_app.cli", "k8s", "preflight", "--kubeconfig",
                           str(kubeconfig), "--manifests", str(manifests), "--timeout", "10", *extra],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("code,reason,message,expected", [
    (401, "Unauthorized", "Unauthorized", "unauthorized"),
    (403, "Forbidden", 'customresourcedefinitions.apiextensions.k8s.io "rayservices.ray.io" is forbidden: User '
                       '"ci-reader" cannot get resource "customresourcedefinitions" in API group '
                       '"apiextensions.k8s.io" at the cluster scope', "forbidden"),
])
def test_unauthorized_or_forbidden_exits_2_with_one_line(tmp_path: Path, ready_manifests: Path,
                                                         monkeypatch: pytest.MonkeyPatch, code: int, reason: str,
                                                         message: str, expected: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    spares = ("/version",) if code == 403 else ()              # every identity may read /version
    with FakeAPIServer(ready_cluster(), failure=(code, reason, message), failure_spares=spares) as api:
        run = _cli(api.kubeconfig(tmp_path), ready_manifests)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: GET ") and f": {expected} (" in lines[0], run.stderr
    if code == 403:
        assert "cannot get resource" in lines[0] and "needs read access" in lines[0]


def test_unreachable_cluster_exits_2_with_one_line(tmp_path: Path, ready_manifests: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with socket.socket() as s:                                   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = FakeAPIServer({})
    api.url = f"http://127.0.0.1:{port}"
    run = _cli(api.kubeconfig(tmp_path), ready_manifests)
    assert run.returncode == 2, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot read the cluster (GET /version)"), run.stderr
    assert f"127.0.0.1:{port}" in lines[0]


def test_manifests_without_a_rayservice_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from serve_app.cli import main

    (tmp_path / "kustomization.yaml").write_text("resources: []\n", encoding="utf-8")
    assert main(["k8s", "preflight", "--manifests", str(tmp_path), "--kubeconfig", str(tmp_path / "none")]) == 2
    assert "render no RayService" in capsys.readouterr().err


# --- the fake server itself ----------------------------------------------------------------------------------
def test_fake_api_server_answers_like_the_api_server() -> None:
    api = FakeAPIServer(ready_cluster())
    code, secret = api.answer(f"/api/v1/namespaces/{NS}/secrets/signalgen-mysql", {})
    assert code == 200 and secret["kind"] == "Secret" and secret["apiVersion"] == "v1"
    code, missing = api.answer(f"/api/v1/namespaces/{NS}/secrets/nope", {})
    assert code == 404 and missing["reason"] == "NotFound" and missing["message"] == 'secrets "nope" not found'
    code, pods = api.answer("/api/v1/pods", {"labelSelector": ["app.kubernetes.io/component=kuberay-operator"]})
    assert [p["metadata"]["name"] for p in pods["items"]] == [HELM_OPERATOR]
    code, crd = api.answer(f"{CRD_LIST}/rayservices.ray.io", {})
    assert code == 200 and crd["kind"] == "CustomResourceDefinition"
    code, gone = api.answer(f"{CRD_LIST}/rayjobs.ray.io", {})
    assert code == 404 and "customresourcedefinitions.apiextensions.k8s.io" in gone["message"]
    assert api.answer("/apis/nope/v1/things", {})[0] == 404


def test_fixtures_are_api_objects() -> None:
    """The recorded responses are what the API server sends: lists with kind/apiVersion/items."""
    routes = load_scenario("ready")
    assert routes["/version"]["gitVersion"].startswith("v1.")
    for path, body in routes.items():
        if path != "/version":
            assert body["kind"].endswith("List") and isinstance(body["items"], list), path
            for obj in body["items"]:
                assert obj["metadata"]["name"] and obj["metadata"]["uid"], path


def test_the_k8s_package_stands_apart() -> None:
    """serve_app/k8s imports nothing of the service (nor Ray, nor the HTTP layer), and nothing but the
    `signalgen k8s` command imports it: an operator tool, off the serving path."""
    import ast

    def imports(path: Path) -> list[str]:
        out = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                out.append(node.module)
        return out

    package = ROOT / "serve_app"
    inside = [f"{f.relative_to(ROOT)} imports {name}" for f in sorted((package / "k8s").rglob("*.py"))
              for name in imports(f) if name.split(".")[0] in ("serve_app", "ray", "fastapi", "starlette")]
    assert inside == []
    users = sorted(str(f.relative_to(ROOT)) for f in package.rglob("*.py")
                   if f.parent.name != "k8s" and any(n == "serve_app.k8s" or n.startswith("serve_app.k8s.")
                                                     for n in imports(f)))
    assert users == ["serve_app/cli/k8s.py"]


def test_json_output_of_a_failing_cluster(tmp_path: Path, ready_manifests: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from serve_app.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    routes = ready_cluster()
    remove(routes, SECRETS, "signalgen-mysql")
    with FakeAPIServer(routes) as api:
        code = main(["k8s", "preflight", "--kubeconfig", str(api.kubeconfig(tmp_path)), "--manifests",
                     str(ready_manifests), "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 1
    (failed,) = [r for r in listed if r["status"] == FAIL]
    assert failed["check"] == "secret signalgen-mysql"
    assert failed["fix"].startswith("kubectl -n crypto-trading create secret generic signalgen-mysql")
