"""kuberay/ checked as strictly as the API server and the KubeRay operator would, without a cluster.

a. every object validates: custom resources against the published CRDs' openAPIV3Schema (unknown fields are
   errors), core kinds against Kubernetes' own schemas (kubernetes-validate, strict); plus the operator's
   rules (names, replicas, rayStartParams, ports, versions) and this service's own (secrets, env, volumes,
   network policies, RBAC, monitoring);
b. serveConfigV2 is Ray-valid, has no unknown key, and is exactly the generator's output;
d. (static part) the dashboard and alert queries name real metrics; the lead's live test compares them with
   a scrape (tests.k8s_helpers.dashboard_and_alert_metric_names / missing_from_scrape).
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import k8s_helpers as h
from tests.conftest import skip_or_fail

KUBE_VERSION = "1.30.0"  # the oldest Kubernetes this is meant for; kubernetes-validate ships its schemas
CUSTOM_GROUPS = {"ray.io", "monitoring.coreos.com"}
CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount", "Role",
              "RoleBinding", "NetworkPolicy"}
NOT_API_OBJECTS = {"Kustomization"}  # kustomize's own file
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080,
              "as-metrics": 44217, "dash-metrics": 44227}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}  # KubeRay v1.7 rayservice_types.go
SECRET_NAME, SECRET_KEY, CONFIGMAP = "signalgen-mysql", "password", "signalgen-config"
MODEL_SEED_DIR = "/opt/signalgen/default-models"

RENDERED = h.render_kustomization()
FILE_DOCS = [(path, doc) for path in h.manifest_files() for doc in h.load_documents(path)]
GEN = h.load_generator()


def _id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _is_custom(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def _one(kind: str, name: str | None = None) -> dict:
    found = [o for o in RENDERED if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _crds_or_skip() -> Path:
    d = h.crds_dir()
    if not d.is_dir() or not any(d.glob("*.yaml")):
        skip_or_fail(f"CRD schemas not found in {d} (set KUBERAY_CRDS_DIR)")
    return d


def _custom_errors(obj: dict) -> list[str]:
    d = _crds_or_skip()
    try:
        return h.custom_resource_errors(obj, d)
    except h.CRDNotFound as e:
        skip_or_fail(str(e))


def _core_validate(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return _one("RayService")


@pytest.fixture(scope="module")
def cluster(rayservice) -> dict:
    return rayservice["spec"]["rayClusterConfig"]


@pytest.fixture(scope="module")
def serve_config(rayservice) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _groups(cluster: dict) -> list[tuple[str, dict]]:
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


def _ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first one


def _worker(cluster: dict, name: str) -> dict:
    return next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == name)


# ============================================================ a. schemas: every object, strictly
@pytest.mark.parametrize("path, doc", FILE_DOCS, ids=[f"{p.relative_to(h.KUBERAY)}:{d.get('kind')}/"
                                                      f"{d.get('metadata', {}).get('name')}" for p, d in FILE_DOCS])
def test_every_yaml_document_under_kuberay_validates(path, doc):
    assert {"apiVersion", "kind"} <= set(doc), f"{path}: not a Kubernetes object"
    if doc["kind"] in NOT_API_OBJECTS:
        return
    if _is_custom(doc):
        assert _custom_errors(doc) == []
    else:
        assert doc["kind"] in CORE_KINDS, f"{path}: {doc['kind']} is neither a known core kind nor a CRD kind"
        _core_validate(doc)


@pytest.mark.parametrize("obj", RENDERED, ids=[_id(o) for o in RENDERED])
def test_every_rendered_object_validates(obj):
    """What `kubectl apply -k` sends, after kustomize's transformations (namespace, labels, images)."""
    if _is_custom(obj):
        assert _custom_errors(obj) == []
    else:
        assert obj["kind"] in CORE_KINDS, f"{_id(obj)} would not be validated"
        _core_validate(obj)


def test_the_kustomization_renders_the_custom_resources_it_needs():
    kinds = {o["kind"] for o in RENDERED}
    assert {"RayService", "PodMonitor", "PrometheusRule", "Namespace", "ConfigMap", "PersistentVolumeClaim",
            "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"} <= kinds
    assert "Secret" not in kinds, "the Secret is created by hand (kubectl create secret), never applied from git"
    assert all(o["metadata"].get("namespace") == "crypto-trading" for o in RENDERED if o["kind"] != "Namespace")


# --- the structural-schema walker catches what the API server would drop or reject
def _rayservice_copy() -> dict:
    return copy.deepcopy(_one("RayService"))


def test_walker_accepts_the_manifest_and_catches_a_misspelled_field():
    bad = _rayservice_copy()
    head = bad["spec"]["rayClusterConfig"]["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    errors = _custom_errors(bad)
    assert errors and any("rayStartParam" in e and "unexpected" in e for e in errors), errors


@pytest.mark.parametrize("mutate, expect", [
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
     "is not of type 'string'"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(minReplicas="1"),
     "is not of type 'integer'"),
    (lambda rs: rs["spec"].update(serveConfigv2="x"), "serveConfigv2"),
    (lambda rs: rs["metadata"].update(lables={"a": "b"}), "lables"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"].update(
        labels={"ok": True}), "is not of type 'string'"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        imagePullPolicy=None), "None is not of type 'string'"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "ports"].append({"name": "again", "containerPort": 8000}), "duplicate entry for map keys"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["authOptions"].update(mode="tokens"), "is not one of"),
    (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "resources"]["limits"].update(cpu=[1]), "is not valid under any of the given schemas"),
], ids=["int-rayStartParam", "string-replicas", "misspelled-serveConfigV2", "metadata-typo", "bool-label",
        "null-field", "duplicate-port", "enum", "int-or-string"])
def test_walker_catches_wrong_types_and_unknown_fields(mutate, expect):
    bad = _rayservice_copy()
    mutate(bad)
    errors = _custom_errors(bad)
    assert any(expect in e for e in errors), errors


def test_walker_catches_typos_in_the_monitoring_resources():
    monitor = copy.deepcopy(_one("PodMonitor", "signalgen-ray-head"))
    monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["sourceLabel"] = ["x"]
    rule = copy.deepcopy(_one("PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["expression"] = "up"
    for bad, typo in ((monitor, "sourceLabel"), (rule, "expression")):
        errors = _custom_errors(bad)
        assert any(typo in e and "unexpected" in e for e in errors), errors


def test_walker_honours_int_or_string_and_preserve_unknown_fields_and_embedded_resources():
    schema = {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"known": {"type": "string"}}},
        "embedded": {"type": "object", "x-kubernetes-embedded-resource": True,
                     "properties": {"spec": {"type": "object", "properties": {"a": {"type": "integer"}}}}},
        "maybe": {"type": "string", "nullable": True}}}
    v = h._Validator(h.structural_schema(schema))
    ok = {"metadata": {"name": "x"}, "port": "http", "free": {"known": "k", "anything": [1]}, "maybe": None,
          "embedded": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
                       "spec": {"a": 1}}}
    assert list(v.iter_errors(ok)) == []
    assert list(v.iter_errors({**ok, "port": 8080})) == []
    for bad in ({**ok, "port": 1.5}, {**ok, "free": {"known": 1}}, {**ok, "other": 1},
                {**ok, "embedded": {**ok["embedded"], "spec": {"b": 1}}},
                {**ok, "embedded": {**ok["embedded"], "metadata": {"nmae": "p"}}},
                {**ok, "metadata": {"name": "Not_A_Name"}}):
        assert list(v.iter_errors(bad)), bad


def test_core_validation_is_strict():
    import kubernetes_validate

    policy = copy.deepcopy(_one("NetworkPolicy", "signalgen-serve-from-clients"))
    policy["spec"]["podSelectr"] = policy["spec"].pop("podSelector")
    with pytest.raises(kubernetes_validate.ValidationError):
        _core_validate(policy)
    config = copy.deepcopy(_one("ConfigMap", CONFIGMAP))
    config["data"]["MYSQL_PORT"] = 3306
    with pytest.raises(kubernetes_validate.ValidationError):
        _core_validate(config)


def test_crds_missing_fail_in_ci_and_skip_locally(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBERAY_CRDS_DIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        _crds_or_skip()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _crds_or_skip()


# ============================================================ a. kustomization and files
def test_kustomization_lists_every_manifest_that_should_be_applied():
    k = h.kustomization()
    listed = set(k["resources"])
    on_disk = {str(p.relative_to(h.KUBERAY)) for p in h.manifest_files()}
    assert listed == on_disk - {"kustomization.yaml", "secret.example.yaml"}
    generated = {f for g in k["configMapGenerator"] for f in g["files"]}
    assert generated == {str(p.relative_to(h.KUBERAY)) for p in h.KUBERAY.rglob("*.json")}


def test_python_rendering_equals_kustomize():
    if not shutil.which("kubectl") and not shutil.which("kustomize"):
        skip_or_fail("neither kubectl nor kustomize is installed (`make test` installs kubectl)")
    cmd = ["kustomize", "build"] if shutil.which("kustomize") else ["kubectl", "kustomize"]
    out = subprocess.run(cmd + [str(h.KUBERAY)], capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = {_id(o): o for o in yaml.safe_load_all(out) if o}
    ours = {_id(o): o for o in RENDERED}
    assert ours == theirs


def test_image_is_named_in_one_place():
    k = h.kustomization()
    assert len(k["images"]) == 1
    placeholder = k["images"][0]["name"]
    for path, doc in FILE_DOCS:
        for c in h.iter_containers(doc):
            assert c["image"] == placeholder, f"{path}: container {c['name']} names its own image"
    expected = f"{k['images'][0]['newName']}:{k['images'][0]['newTag']}"
    images = {c["image"] for o in RENDERED for c in h.iter_containers(o)}
    assert images == {expected}


# ============================================================ a. the operator's rules
def test_rayservice_name_is_a_short_dns1035_label(rayservice):
    name = rayservice["metadata"]["name"]
    assert DNS1035_LABEL.match(name) and len(name) <= 47, name


def test_replicas_within_min_max(cluster):
    for g in cluster["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["maxReplicas"], g["groupName"]
        assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
    assert {g["groupName"] for g in cluster["workerGroupSpecs"]} == {"cpu-workers", "ml-workers"}


def test_ray_start_params_are_strings(cluster):
    for name, group in _groups(cluster):
        for key, value in group.get("rayStartParams", {}).items():
            assert isinstance(value, str), f"{name}: rayStartParams.{key} = {value!r} must be a string"


def test_head_ray_start_params(cluster):
    params = cluster["headGroupSpec"]["rayStartParams"]
    assert params["num-cpus"] == "0" and params["dashboard-host"] == "0.0.0.0"
    assert params["metrics-export-port"] == str(HEAD_PORTS["metrics"])


def test_head_ports(cluster, serve_config):
    head = _ray_container(cluster["headGroupSpec"])
    assert head["name"] == "ray-head"
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports == HEAD_PORTS
    assert serve_config["http_options"]["port"] == ports["serve"]
    for name, group in _groups(cluster)[1:]:
        worker_ports = {p["name"]: p["containerPort"] for p in _ray_container(group).get("ports", [])}
        assert worker_ports.get("metrics") == HEAD_PORTS["metrics"], name
        assert group["rayStartParams"].get("metrics-export-port", "8080") == str(HEAD_PORTS["metrics"]), name


def test_ray_versions_agree(cluster):
    import ray

    version = cluster["rayVersion"]
    assert version == ray.__version__
    k = h.kustomization()
    assert k["images"][0]["newTag"].endswith(f"-ray{version}")
    froms = re.findall(r"^FROM\s+(\S+)", (h.REPO / "Dockerfile").read_text(), re.M)
    assert froms == [f"rayproject/ray:{version}-py311"], froms
    pyproject = (h.REPO / "pyproject.toml").read_text()
    pin = re.search(r'"ray\[serve\]==([\d.*]+)"', pyproject).group(1)
    assert re.fullmatch(pin.replace(".", r"\.").replace("*", r"\d+"), version), (pin, version)


def test_upgrade_auth_and_autoscaling(rayservice, cluster):
    strategy = rayservice["spec"]["upgradeStrategy"]["type"]
    assert strategy in UPGRADE_TYPES and strategy == "NewCluster"
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
    assert options["idleTimeoutSeconds"] > 0
    assert options["resources"]["requests"]["memory"] == options["resources"]["limits"]["memory"]


def test_no_probes_of_our_own(rayservice):
    for c in h.iter_containers(rayservice):
        assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(c), c["name"]


def test_memory_requests_equal_limits(cluster):
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            r = c["resources"]
            assert r["requests"]["memory"] == r["limits"]["memory"], (name, c["name"])
            assert r["requests"]["cpu"] == r["limits"]["cpu"], (name, c["name"])


# ============================================================ a. configuration, secrets, volume
def test_every_ray_container_gets_config_and_password_by_reference(cluster):
    config = _one("ConfigMap", CONFIGMAP)
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        for c in spec["containers"]:
            assert {"configMapRef": {"name": CONFIGMAP}} in c["envFrom"], (name, c["name"])
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["MYSQL_PASSWORD"] == {"name": "MYSQL_PASSWORD", "valueFrom": {
                "secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY}}}, (name, c["name"])
            assert env["SIGNAL_API_KEY"] == {"name": "SIGNAL_API_KEY", "valueFrom": {
                "secretKeyRef": {"name": "signalgen-api-key", "key": "api-key", "optional": True}}}, (name, c["name"])
    assert {"MYSQL_HOST", "MYSQL_USER", "MYSQL_DATABASE", "LOG_LEVEL", "MODEL_DIR"} <= set(config["data"])
    assert config["data"]["MYSQL_DATABASE"] == "crypto_prices"
    assert not any("PASSWORD" in key.upper() for key in config["data"])


def test_no_password_in_what_is_applied():
    example = h.load_documents(h.KUBERAY / "secret.example.yaml")[0]
    assert example["kind"] == "Secret" and example["metadata"]["name"] == SECRET_NAME
    placeholder = example["stringData"][SECRET_KEY]
    rendered = yaml.safe_dump_all(RENDERED)
    assert placeholder not in rendered
    for obj in RENDERED:
        for c in h.iter_containers(obj):
            for e in c.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET", e["name"], re.I):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (c["name"], e["name"])
    assert "kubectl" in (h.KUBERAY / "secret.example.yaml").read_text()  # documents `kubectl create secret`


def test_ml_group_mounts_the_model_volume_and_seeds_it(cluster):
    model_dir = _one("ConfigMap", CONFIGMAP)["data"]["MODEL_DIR"]
    pvc = _one("PersistentVolumeClaim", "signalgen-models")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    ml = _worker(cluster, "ml-workers")["template"]["spec"]
    volumes = {v["name"]: v for v in ml["volumes"]}
    claim_volumes = [n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName")
                     == pvc["metadata"]["name"]]
    assert len(claim_volumes) == 1
    for c in [_ray_container(_worker(cluster, "ml-workers"))] + ml["initContainers"]:
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts.get(claim_volumes[0]) == model_dir, c["name"]
    script = "\n".join(ml["initContainers"][0]["args"])
    assert "CURRENT" in script and MODEL_SEED_DIR in script and "$MODEL_DIR" in script
    assert MODEL_SEED_DIR in (h.REPO / "Dockerfile").read_text()
    cpu = _worker(cluster, "cpu-workers")["template"]["spec"]
    assert not any(v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]
                   for v in cpu.get("volumes", []))


def test_every_worker_journals_to_a_shared_volume_that_outlives_the_pod(cluster):
    """Analytics may run on any worker and journals there what the database cannot take: SIGNAL_SPILL_DIR
    must be, in every group that can host replicas, a mount of the one ReadWriteMany claim."""
    spill_dir = _one("ConfigMap", CONFIGMAP)["data"]["SIGNAL_SPILL_DIR"]
    pvc = _one("PersistentVolumeClaim", "signalgen-spill")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, group in _groups(cluster):
        if group.get("rayStartParams", {}).get("num-cpus") == "0":
            continue  # the head hosts no replica
        spec = group["template"]["spec"]
        claims = {v["name"] for v in spec["volumes"]
                  if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]}
        mounts = {m["name"]: m["mountPath"] for m in _ray_container(group)["volumeMounts"]}
        assert [mounts.get(v) for v in claims] == [spill_dir], name


def test_pods_outlast_the_replicas_graceful_shutdown(cluster, serve_config):
    """A worker pod being deleted gives its replicas the graceful shutdown their deployment asks for."""
    longest = max(d.get("graceful_shutdown_timeout_s", 20) + d.get("graceful_shutdown_wait_loop_s", 2)
                  for app in serve_config["applications"] for d in app["deployments"])
    for name, group in _groups(cluster):
        if group.get("rayStartParams", {}).get("num-cpus") == "0":
            continue
        grace = group["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        assert grace >= longest + 10, (name, grace, longest)


def test_ml_group_capacity_covers_the_ml_engine(cluster, serve_config):
    ml = _worker(cluster, "ml-workers")
    advertised = json.loads(json.loads(ml["rayStartParams"]["resources"]))  # '"{\"ml_engine\": 2}"'
    assert advertised == {GEN.ML_RESOURCE: GEN.ML_ENGINE_PER_POD}
    for name, group in _groups(cluster):
        if name != "ml-workers":
            assert "resources" not in group.get("rayStartParams", {}), name
    dep = next(d for d in serve_config["applications"][0]["deployments"] if d["name"] == GEN.ML_DEPLOYMENT)
    per_replica = dep["ray_actor_options"]["resources"][GEN.ML_RESOURCE]
    assert dep["autoscaling_config"]["max_replicas"] * per_replica <= ml["maxReplicas"] * GEN.ML_ENGINE_PER_POD
    # ReadWriteOnce volume: a single ML pod (pvc.yaml explains)
    if "ReadWriteOnce" in _one("PersistentVolumeClaim", "signalgen-models")["spec"]["accessModes"]:
        assert ml["maxReplicas"] == 1


# ============================================================ a. security
def test_pods_run_as_our_service_account_with_a_token_only_on_the_head(cluster):
    sa = _one("ServiceAccount")
    assert sa.get("automountServiceAccountToken") is False
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        assert spec["serviceAccountName"] == sa["metadata"]["name"], name
        assert spec["automountServiceAccountToken"] is (name == "head"), name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (name, c["name"])


def test_role_is_least_privilege():
    role, binding = _one("Role"), _one("RoleBinding")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {(("",), ("pods",)): {"get", "list", "watch"}, (("ray.io",), ("rayclusters",)): {"get", "patch"}}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": _one("ServiceAccount")["metadata"]["name"],
                                    "namespace": "crypto-trading"}]


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        present = e["key"] in labels
        if e["operator"] == "Exists" and not present or e["operator"] == "DoesNotExist" and present:
            return False
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "NotIn" and labels.get(e["key"]) in e["values"]:
            return False
    return True


def _pod_labels(cluster: dict) -> dict[str, dict]:
    """The labels KubeRay gives each group's pods: the template's plus its own."""
    out = {}
    for name, group in _groups(cluster):
        labels = dict(group["template"]["metadata"]["labels"])
        labels.update({"ray.io/cluster": "signalgen-abcde", "ray.io/is-ray-node": "yes",
                       "ray.io/node-type": "head" if name == "head" else "worker", "ray.io/group": name})
        out[name] = labels
    return out


def test_network_policies(cluster):
    pods = _pod_labels(cluster)
    policies = [o for o in RENDERED if o["kind"] == "NetworkPolicy"]
    ray_peer_ok = lambda peer: "podSelector" in peer and "namespaceSelector" not in peer and all(
        _selects(peer["podSelector"], labels) for labels in pods.values())
    for name, labels in pods.items():
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
                   and not p["spec"].get("egress") for p in mine), f"{name}: no default deny"
        ingress: dict[int, list] = {}
        egress_ports: set[int] = set()
        for p in mine:
            for rule in p["spec"].get("ingress", []):
                assert rule.get("from"), f"{p['metadata']['name']}: ingress from anywhere"
                if all(ray_peer_ok(peer) for peer in rule["from"]):
                    continue  # Ray's own traffic inside the cluster
                assert rule.get("ports"), f"{p['metadata']['name']}: all ports opened to outsiders"
                for port in rule["ports"]:
                    ingress.setdefault(port["port"], []).extend(rule["from"])
            for rule in p["spec"].get("egress", []):
                if rule.get("to") and all(ray_peer_ok(peer) for peer in rule["to"]):
                    continue
                assert rule.get("ports"), f"{p['metadata']['name']}: egress to everything"
                egress_ports |= {port["port"] for port in rule["ports"]}
        monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        operator = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kuberay-system"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
        clients = [{"podSelector": {"matchLabels": {"signal-client": "true"}}}]
        assert ingress == {8000: clients + operator, 8265: operator, 8080: monitoring, 44217: monitoring,
                           44227: monitoring}, name
        allowed_egress = {53, 3306} | ({443, 6443} if name == "head" else set())
        assert egress_ports == allowed_egress, name


# ============================================================ a. monitoring objects
def test_pod_monitors_scrape_the_named_ports_and_relabel_the_cluster(cluster):
    pods = _pod_labels(cluster)
    ports_of = {name: {p["name"] for p in _ray_container(g).get("ports", [])} for name, g in _groups(cluster)}
    monitors = {o["metadata"]["name"]: o for o in RENDERED if o["kind"] == "PodMonitor"}
    scraped: dict[str, set[str]] = {name: set() for name in pods}
    for m in monitors.values():
        for endpoint in m["spec"]["podMetricsEndpoints"]:
            assert {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                    "targetLabel": "ray_io_cluster"} in endpoint["relabelings"], m["metadata"]["name"]
        for name, labels in pods.items():
            if _selects(m["spec"]["selector"], labels):
                for endpoint in m["spec"]["podMetricsEndpoints"]:
                    assert endpoint["port"] in ports_of[name], (m["metadata"]["name"], name, endpoint["port"])
                    scraped[name].add(endpoint["port"])
    assert scraped == {"head": {"metrics", "as-metrics", "dash-metrics"}, "cpu-workers": {"metrics"},
                       "ml-workers": {"metrics"}}


def test_grafana_dashboard_configmap():
    cm = _one("ConfigMap", "signalgen-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["grafana-dashboard.json"] == h.DASHBOARD.read_text(encoding="utf-8")
    dash = json.loads(h.DASHBOARD.read_text(encoding="utf-8"))
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("request rate", "p50 / p95 / p99", "4xx / 5xx", "cpu per deployment", "memory per deployment",
                  "success rate", "db operations", "predictions", "batch size"):
        assert topic in titles, topic
    for p in dash["panels"]:
        for t in p.get("targets", []):
            assert t["expr"] and t["datasource"] == p["datasource"], p["title"]


def test_alerts_cover_the_required_conditions():
    rule = _one("PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"SignalgenHighErrorRate", "SignalgenHighLatencyP99", "SignalgenSignalFailureRate",
            "SignalgenReplicaUnhealthy", "RayGcsMissing"} <= set(alerts)
    assert "histogram_quantile(0.99" in alerts["SignalgenHighLatencyP99"]["expr"]
    assert "absent(" in alerts["RayGcsMissing"]["expr"]
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"], name
        assert re.fullmatch(r"\d+[smh]", r["for"]), name


# ============================================================ a. the image
def test_dockerfile_and_dockerignore():
    text = (h.REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] == "ray", "the image must run as Ray's `ray` user"
    assert re.search(r"pip install [^\n]*\.", text)
    assert "signalgen store seed" in text and "signalgen train" in text
    ignored = (h.REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", "models"} <= set(ignored)  # models/ holds only the local registry


# ============================================================ b. serveConfigV2
def test_committed_manifest_equals_a_fresh_generation():
    text = (h.KUBERAY / "rayservice.yaml").read_text(encoding="utf-8")
    assert GEN.render_manifest(text, GEN.load_serve_config()) == text, "stale serveConfigV2: run `make kuberay`"


def test_serve_config_v2_is_ray_valid_with_no_unknown_key(serve_config):
    from ray.serve.schema import ServeDeploySchema

    from tests.serve_config_check import serve_config_problems

    ServeDeploySchema.model_validate(serve_config)
    assert serve_config_problems(serve_config) == []


def _diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def test_serve_config_v2_is_the_source_plus_the_overlay_only(serve_config):
    source = GEN.load_serve_config()
    assert serve_config == GEN.cluster_serve_config(source)
    ml_index = [d["name"] for d in source["applications"][0]["deployments"]].index(GEN.ML_DEPLOYMENT)
    assert sorted(_diff(source, serve_config)) == sorted([
        "proxy_location", "http_options.host",
        f"applications[0].deployments[{ml_index}].ray_actor_options.resources"])
    assert serve_config["proxy_location"] == "EveryNode" and serve_config["http_options"]["host"] == "0.0.0.0"


def test_generator_refuses_what_it_cannot_do():
    source = GEN.load_serve_config()
    no_ml = copy.deepcopy(source)
    no_ml["applications"][0]["deployments"] = [d for d in no_ml["applications"][0]["deployments"]
                                               if d["name"] != GEN.ML_DEPLOYMENT]
    with pytest.raises(ValueError, match=GEN.ML_DEPLOYMENT):
        GEN.cluster_serve_config(no_ml)
    with pytest.raises(ValueError, match="BEGIN GENERATED"):
        GEN.render_manifest("spec: {}\n", source)
    stale = (h.KUBERAY / "rayservice.yaml").read_text().replace("max_ongoing_requests: 64", "max_ongoing_requests: 65")
    assert GEN.render_manifest(stale, source) != stale


def test_generator_check_mode(tmp_path):
    manifest = tmp_path / "rayservice.yaml"
    manifest.write_text((h.KUBERAY / "rayservice.yaml").read_text())
    assert GEN.main(["--check", "--manifest", str(manifest)]) == 0
    manifest.write_text(manifest.read_text().replace("route_prefix: /", "route_prefix: /x"))
    assert GEN.main(["--check", "--manifest", str(manifest)]) == 1
    assert GEN.main(["--manifest", str(manifest)]) == 0
    assert manifest.read_text() == (h.KUBERAY / "rayservice.yaml").read_text()


# ============================================================ d. metric names (static part)
@pytest.mark.parametrize("expr, names", [
    ('sum by (route) (rate(ray_serve_num_http_requests_total{application="signals", route=~"/g.*"}[$__rate_interval]))',
     {"ray_serve_num_http_requests_total"}),
    ('histogram_quantile(0.99, sum by (ray_io_cluster, le) (rate(x_seconds_bucket{a="b"}[5m]))) > 1',
     {"x_seconds_bucket"}),
    ('sum(rate(a_total[5m] offset 1h)) / ignoring(le) group_left sum without (pod) (b:recorded:rate5m) > bool 0.5e3',
     {"a_total", "b:recorded:rate5m"}),
    ('absent(ray_gcs_actors_count{Component="gcs_server", x="sum(y)"})', {"ray_gcs_actors_count"}),
    ('label_replace(m{Component=~"ray::ServeReplica:signals:.*"}, "deployment", "$1", "Component", "(.*)")',
     {"m"}),
    ('max by (deployment) (up) and on (deployment) topk(3, q[1h:5m]) unless vector(1) or inf', {"up", "q"}),
    ('${metric_var} + 2 * $var', set()),
])
def test_metric_names_in_promql(expr, names):
    assert h.metric_names_in_promql(expr) == names


def test_dashboard_and_alert_metric_names():
    names = h.dashboard_and_alert_metric_names()
    assert names and all(h.METRIC_NAME.match(n) for n in names), names
    assert {"ray_serve_num_http_requests_total", "ray_signalgen_request_latency_seconds_bucket",
            "ray_serve_deployment_replica_healthy", "ray_gcs_actors_count"} <= names
    assert all(n.startswith("ray_") for n in names), "only Ray's and the app's own metrics"
    # template variables count too
    assert any("label_values" in str(v.get("query")) for v in
               json.loads(h.DASHBOARD.read_text())["templating"]["list"])


def test_app_metric_names_match_their_definitions():
    """Every ray_signalgen_* name is one serve_app/deployments/metrics.py defines, with the suffix its type exports."""
    from serve_app.deployments.metrics import DEFINITIONS, RAY_PREFIX

    exported = set()
    for name, (kind, *_rest) in DEFINITIONS.items():
        full = RAY_PREFIX + name
        exported |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"} if kind == "histogram" else {full}
    used = {n for n in h.dashboard_and_alert_metric_names() if n.startswith("ray_signalgen_")}
    assert used and used <= exported, used - exported


def test_missing_from_scrape_normalises_suffixes():
    scrape = "\n".join([
        "# TYPE ray_h histogram", 'ray_h_bucket{le="1"} 1', "ray_h_sum 1", "ray_h_count 1",
        "# TYPE ray_c counter", "ray_c_total 3", "ray_g 1"])
    assert h.missing_from_scrape({"ray_h_bucket", "ray_h_sum", "ray_c_total", "ray_g"}, scrape) == set()
    assert h.missing_from_scrape({"ray_h_bucket", "ray_nope", "ray_g_count"}, scrape) == {"ray_nope", "ray_g_count"}
