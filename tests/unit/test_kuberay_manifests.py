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
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import k8s_helpers as h
from tests.conftest import skip_or_fail

KUBE_VERSION = "1.30.0"  # the oldest Kubernetes this is meant for; kubernetes-validate ships its schemas
CUSTOM_GROUPS = {"ray.io", "monitoring.coreos.com"}
CORE_KINDS = {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount", "NetworkPolicy",
              "PodDisruptionBudget", "Job", "CronJob"}
NOT_API_OBJECTS = {"Kustomization", "Component"}  # kustomize's own files
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080,
              "as-metrics": 44217, "dash-metrics": 44227}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}  # KubeRay v1.7 rayservice_types.go
SECRET_NAME, SECRET_KEY, CONFIGMAP = "signalgen-mysql", "password", "signalgen-config"
MODEL_SEED_DIR = "/opt/signalgen/default-models"

try:  # what `kubectl apply -k kuberay/` and `kubectl apply -k kuberay/setup/` send
    RENDERED, SETUP = h.render_kustomization(), h.render_kustomization(h.SETUP)
except h.KustomizeUnavailable:
    RENDERED, SETUP = [], []  # test_kustomize_is_installed fails (CI) or skips (locally)
# the optional components, enabled
COMPONENTS = {"components/gcs-ft": h.KUBERAY, "storage-class": h.SETUP}
FILE_DOCS = [(path, doc) for path in h.manifest_files() for doc in h.load_documents(path)]
GEN = h.load_generator()


def _id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _is_custom(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS


def _one(kind: str, name: str | None = None) -> dict:
    found = [o for o in RENDERED + SETUP if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
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


def test_kustomize_is_installed():
    if not RENDERED:
        skip_or_fail("neither kubectl nor kustomize is installed (`make test` installs kubectl)")
    assert SETUP


@pytest.mark.parametrize("obj", RENDERED + SETUP, ids=[_id(o) for o in RENDERED + SETUP])
def test_every_rendered_object_validates(obj):
    """What `kubectl apply -k` sends, after kustomize's transformations (namespace, labels, images)."""
    if _is_custom(obj):
        assert _custom_errors(obj) == []
    else:
        assert obj["kind"] in CORE_KINDS, f"{_id(obj)} would not be validated"
        _core_validate(obj)


def test_the_kustomization_renders_the_custom_resources_it_needs():
    kinds = {o["kind"] for o in RENDERED}
    assert kinds == {"RayService", "PodMonitor", "PrometheusRule", "ConfigMap", "ServiceAccount", "NetworkPolicy",
                     "Job", "CronJob"}
    assert "Secret" not in kinds, "the Secret is created by hand (kubectl create secret), never applied from git"
    assert all(o["metadata"].get("namespace") == "crypto-trading" for o in RENDERED + SETUP if o["kind"] != "Namespace")
    # the parameter files are read by kustomize and never applied; every placeholder was replaced
    assert not [o for o in RENDERED + SETUP if o["kind"] == "ConfigMap" and "params" in o["metadata"]["name"]]
    assert "set-from-params" not in yaml.safe_dump_all(RENDERED + SETUP)


def test_teardown_keeps_the_namespace_the_secrets_and_the_volumes():
    """`kubectl delete -k kuberay/` deletes what it applied: never the namespace (and with it the Secrets made by
    hand) nor the volumes (the model registry, the signal journal). Those are kuberay/setup/, applied once."""
    assert {o["kind"] for o in SETUP} == {"Namespace", "PersistentVolumeClaim"}
    assert not {"Namespace", "PersistentVolumeClaim", "Secret"} & {o["kind"] for o in RENDERED}
    assert {o["metadata"]["name"] for o in SETUP if o["kind"] == "PersistentVolumeClaim"} == {
        "signalgen-models", "signalgen-spill"}
    docs = (h.REPO / "docs" / "kubernetes.md").read_text()
    assert "kubectl delete -k kuberay/" in docs and "kubectl apply --server-side -k kuberay/setup/" in docs


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_optional_components_render_and_validate(component):
    if not RENDERED:
        skip_or_fail("kustomize unavailable")
    objs = h.render_kustomization(COMPONENTS[component], components=(component,))
    for obj in objs:
        if _is_custom(obj):
            assert _custom_errors(obj) == [], _id(obj)
        else:
            _core_validate(obj)
    assert "set-from-params" not in yaml.safe_dump_all(objs)
    if component == "components/gcs-ft":
        ft = next(o for o in objs if o["kind"] == "RayService")["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
        params = next(d for d in h.load_documents(h.KUBERAY / "params.yaml"))["data"]
        assert ft["redisAddress"] == params["gcsRedisAddress"] and set(ft) == {"redisAddress", "redisPassword"}
        assert ft["redisPassword"]["valueFrom"] == {"secretKeyRef": {"name": "signalgen-redis", "key": "password"}}
    else:
        params = next(d for d in h.load_documents(h.SETUP / "params.yaml"))["data"]
        assert {o["spec"].get("storageClassName") for o in objs if o["kind"] == "PersistentVolumeClaim"} == {
            params["storageClass"]}


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
    job = copy.deepcopy(_one("Job", "signalgen-migrate"))
    job["spec"]["ttlSecondAfterFinished"] = job["spec"].pop("ttlSecondsAfterFinished")
    with pytest.raises(kubernetes_validate.ValidationError):
        _core_validate(job)
    cronjob = copy.deepcopy(_one("CronJob", "signalgen-collect-1h"))
    cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"][
        "secretKeyRef"]["key"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        _core_validate(cronjob)


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
    k, setup = h.kustomization(), h.kustomization(h.SETUP)
    listed = set(k["resources"]) | {f"setup/{r}" for r in setup["resources"]}
    on_disk = {str(p.relative_to(h.KUBERAY)) for p in h.manifest_files()}
    kustomize_files = {str(p.relative_to(h.KUBERAY)) for p in h.KUBERAY.rglob("kustomization.yaml")}
    assert listed == on_disk - kustomize_files - {"secret.example.yaml"}
    generated = {f for g in k["configMapGenerator"] for f in g["files"]}
    assert generated == {str(p.relative_to(h.KUBERAY)) for p in h.KUBERAY.rglob("*.json")} - {"head-sizing.json"}


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
    # one token for every cluster the RayService creates: our Secret, not one generated per RayCluster
    assert cluster["authOptions"] == {"mode": "token", "secretName": "signalgen-ray-token"}
    example = {d["metadata"]["name"]: d for d in h.load_documents(h.KUBERAY / "secret.example.yaml")}
    assert set(example["signalgen-ray-token"]["stringData"]) == {"auth_token"}  # the key KubeRay reads
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["version"] == "v2"  # Ray 2.60's autoscaler; the operator sets restartPolicy Never itself
    for name, group in _groups(cluster):
        assert group["template"]["spec"].get("restartPolicy", "Never") == "Never", name
    assert options["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
    assert options["idleTimeoutSeconds"] > 0
    assert options["resources"]["requests"]["memory"] == options["resources"]["limits"]["memory"]


def test_no_probes_of_our_own(rayservice):
    for c in h.iter_containers(rayservice):
        assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(c), c["name"]


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(quantity))
    return float(m.group(1)) * units.get(m.group(2), 1)


def test_memory_requests_equal_limits(cluster):
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        for c in spec["containers"] + spec.get("initContainers", []):
            r = c["resources"]
            assert r["requests"]["memory"] == r["limits"]["memory"], (name, c["name"])
            assert r["requests"]["cpu"] == r["limits"]["cpu"], (name, c["name"])
            # Ray's logs and session files live on the node's disk: bounded, so a runaway log cannot fill it
            assert _bytes(r["requests"]["ephemeral-storage"]) <= _bytes(r["limits"]["ephemeral-storage"]), (
                name, c["name"])


def test_shared_memory_exceeds_the_object_store_and_fits_the_limit(cluster):
    """/dev/shm holds the object store and Ray's own shared files: larger than object-store-memory, and (tmpfs
    pages count against the container) well inside the memory limit."""
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")["emptyDir"]
        assert shm["medium"] == "Memory", name
        store = int(group["rayStartParams"]["object-store-memory"])
        assert _bytes(shm["sizeLimit"]) >= store * 1.2, (name, shm["sizeLimit"], store)
        assert _bytes(shm["sizeLimit"]) <= 0.25 * _bytes(_ray_container(group)["resources"]["limits"]["memory"]), name


def test_no_required_affinity_that_could_stall_an_upgrade(cluster):
    """A NewCluster upgrade starts a second cluster while the first runs: a required (anti-)affinity or node
    selector could leave its pods Pending forever (KubeRay has no timeout for a pending cluster)."""
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        assert "nodeSelector" not in spec, name
        for kind, rules in (spec.get("affinity") or {}).items():
            assert "requiredDuringSchedulingIgnoredDuringExecution" not in rules, (name, kind)
    ml = _worker(cluster, "ml-workers")["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert ml["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == \
        "kubernetes.io/hostname"


def _measured_head() -> dict:
    path = h.KUBERAY / "head-sizing.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_head_limits_cover_the_measured_need_with_headroom(cluster):
    """kuberay/head-sizing.json is written by `make measure-head` (bench/head_memory.py): the head's processes
    measured under load. The limit must cover that peak plus the object store's shared memory, with the headroom
    the file states."""
    m = _measured_head()
    head = _ray_container(cluster["headGroupSpec"])["resources"]["limits"]
    assert m["headroom"] >= 1.5 and m["limit_needed_bytes"] == int((m["peak_rss_bytes"] + m["shm_used_bytes"])
                                                                   * m["headroom"])
    # the object store may fill its whole /dev/shm allowance, which is charged to the pod: count all of it
    store = int(cluster["headGroupSpec"]["rayStartParams"]["object-store-memory"])
    need = (m["peak_rss_bytes"] + max(m["shm_used_bytes"], store)) * m["headroom"]
    assert _bytes(head["memory"]) >= need, (head["memory"], need / 2**30)
    requests = _ray_container(cluster["headGroupSpec"])["resources"]["requests"]
    assert requests["memory"] == head["memory"], "requests = limits: the head is never the pod evicted first"


# ============================================================ a. configuration, secrets, volume
def test_every_ray_container_gets_config_and_password_by_reference(cluster):
    config = _one("ConfigMap", CONFIGMAP)
    key_dir, key_name = config["data"]["SIGNAL_API_KEY_FILE"].rsplit("/", 1)
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        for c in spec["containers"]:
            assert {"configMapRef": {"name": CONFIGMAP}} in c["envFrom"], (name, c["name"])
            env = {e["name"]: e for e in c.get("env", [])}
            assert "SIGNAL_API_KEY" not in env, (name, "the key is a mounted file: it can rotate")
            if name == "head":  # runs no replica: nothing there opens the store
                assert "MYSQL_PASSWORD" not in env and not any("secret" in str(v) for v in c.get("envFrom", []))
                continue
            assert env["MYSQL_PASSWORD"] == {"name": "MYSQL_PASSWORD", "valueFrom": {
                "secretKeyRef": {"name": SECRET_NAME, "key": SECRET_KEY}}}, (name, c["name"])
            # the optional API key Secret, mounted where SIGNAL_API_KEY_FILE points
            volumes = {v["name"]: v for v in spec["volumes"]}
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == key_dir)
            assert volumes[mount["name"]]["secret"]["secretName"] == "signalgen-api-key", name
            assert volumes[mount["name"]]["secret"]["optional"] is True and mount["readOnly"] is True, name
    example = {d["metadata"]["name"]: d for d in h.load_documents(h.KUBERAY / "secret.example.yaml")}
    assert set(example["signalgen-api-key"]["stringData"]) == {key_name}
    assert {"MYSQL_HOST", "MYSQL_USER", "MYSQL_DATABASE", "LOG_LEVEL", "MODEL_DIR"} <= set(config["data"])
    assert config["data"]["MYSQL_DATABASE"] == "crypto_prices"
    assert not any("PASSWORD" in key.upper() for key in config["data"])


def test_no_password_in_what_is_applied():
    examples = h.load_documents(h.KUBERAY / "secret.example.yaml")
    assert {e["kind"] for e in examples} == {"Secret"} and examples[0]["metadata"]["name"] == SECRET_NAME
    rendered = yaml.safe_dump_all(RENDERED + SETUP)
    for example in examples:
        for key, placeholder in example["stringData"].items():
            if key == "username":  # a name, not a credential (the MySQL admin's and the collector's)
                continue
            assert placeholder.startswith("REPLACE-ME") and placeholder not in rendered, (key, placeholder)
    for obj in RENDERED:
        for c in h.iter_containers(obj):
            for e in c.get("env", []):
                if re.search(r"PASSWORD|TOKEN|SECRET", e["name"], re.I):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (c["name"], e["name"])
    assert "kubectl" in (h.KUBERAY / "secret.example.yaml").read_text()  # documents `kubectl create secret`


def test_ml_group_mounts_the_model_volume_and_seeds_it(cluster):
    """Every ML pod, on any node, mounts the one ReadWriteMany model registry; the init container seeds it."""
    model_dir = _one("ConfigMap", CONFIGMAP)["data"]["MODEL_DIR"]
    pvc = _one("PersistentVolumeClaim", "signalgen-models")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
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


def _run_seed(script: str, model_dir: Path, image_models: Path, hostname: str) -> subprocess.Popen:
    return subprocess.Popen(["/bin/sh", "-c", script.replace(MODEL_SEED_DIR, str(image_models))],
                            env={"MODEL_DIR": str(model_dir), "HOSTNAME": hostname, "PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_seed_is_safe_when_two_ml_pods_start_together(cluster, tmp_path):
    """The init container's script, run for real (sh, cp, mv) twice at once on one directory, as two ML pods on
    a shared volume would: the registry ends complete and consistent, and a later start changes nothing."""
    script = "\n".join(_worker(cluster, "ml-workers")["template"]["spec"]["initContainers"][0]["args"])
    image_models, model_dir = tmp_path / "image-models", tmp_path / "volume"
    model_dir.mkdir()
    for v in ("v20260101-000000-aaaaaaaa", "v20260102-000000-bbbbbbbb"):
        (image_models / v).mkdir(parents=True)
        for i in range(50):
            (image_models / v / f"part{i}.bin").write_bytes(bytes([i]) * 4096)
    (image_models / "CURRENT").write_text("v20260102-000000-bbbbbbbb\n")
    runs = [_run_seed(script, model_dir, image_models, f"ml-{i}") for i in range(2)]
    outputs = [r.communicate(timeout=60)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    assert sorted(p.name for p in model_dir.iterdir()) == ["CURRENT", "v20260101-000000-aaaaaaaa",
                                                           "v20260102-000000-bbbbbbbb"], outputs
    assert (model_dir / "CURRENT").read_text() == "v20260102-000000-bbbbbbbb\n"
    for v in ("v20260101-000000-aaaaaaaa", "v20260102-000000-bbbbbbbb"):
        assert sorted(p.name for p in (model_dir / v).iterdir()) == sorted(f"part{i}.bin" for i in range(50))
    (model_dir / "CURRENT").write_text("v20260301-000000-cccccccc\n")   # promoted since: kept
    again = _run_seed(script, model_dir, image_models, "ml-2")
    assert again.wait(timeout=60) == 0 and (model_dir / "CURRENT").read_text() == "v20260301-000000-cccccccc\n"


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
    """MLEngine reaches its max_replicas: the ML group's pods advertise enough `ml_engine` for them, and no CPU
    (num-cpus "0"), so no CPU stage - which Serve spreads over the nodes - takes an ML pod's room; the CPU
    stages fit the CPU group at their max."""
    ml = _worker(cluster, "ml-workers")
    advertised = json.loads(json.loads(ml["rayStartParams"]["resources"]))  # '"{\"ml_engine\": 1}"'
    assert advertised == {GEN.ML_RESOURCE: GEN.ML_ENGINE_PER_POD}
    assert ml["rayStartParams"]["num-cpus"] == "0"
    for name, group in _groups(cluster):
        if name != "ml-workers":
            assert "resources" not in group.get("rayStartParams", {}), name
    deployments = serve_config["applications"][0]["deployments"]
    dep = next(d for d in deployments if d["name"] == GEN.ML_DEPLOYMENT)
    per_replica = dep["ray_actor_options"]["resources"][GEN.ML_RESOURCE]
    assert dep["ray_actor_options"]["num_cpus"] == 0
    assert dep["autoscaling_config"]["max_replicas"] * per_replica <= ml["maxReplicas"] * GEN.ML_ENGINE_PER_POD
    cpu = _worker(cluster, "cpu-workers")
    cpu_per_pod = float(_ray_container(cpu)["resources"]["limits"]["cpu"])
    at_max = sum(d["ray_actor_options"]["num_cpus"] * d["autoscaling_config"]["max_replicas"]
                 for d in deployments if d["name"] != GEN.ML_DEPLOYMENT)
    assert all(d["ray_actor_options"]["num_cpus"] > 0 for d in deployments if d["name"] != GEN.ML_DEPLOYMENT)
    assert at_max <= cpu_per_pod * cpu["maxReplicas"], (at_max, cpu_per_pod, cpu["maxReplicas"])


# ============================================================ a. security
def test_only_the_autoscaler_holds_a_service_account_token(cluster):
    sa = _one("ServiceAccount", "signalgen-ray")
    assert sa.get("automountServiceAccountToken") is False
    for name, group in _groups(cluster):
        spec = group["template"]["spec"]
        assert spec["serviceAccountName"] == sa["metadata"]["name"], name
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert not any("serviceaccount" in m["mountPath"] for m in c.get("volumeMounts", [])), (name, c["name"])
    head = cluster["headGroupSpec"]["template"]["spec"]
    token = next(v for v in head["volumes"] if v["name"] == "kube-api-access")["projected"]["sources"]
    assert {"serviceAccountToken", "configMap", "downwardAPI"} == {k for src in token for k in src}
    assert cluster["autoscalerOptions"]["volumeMounts"] == [
        {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": True}]


def test_no_disruption_budget_on_ray_pods_their_controller_has_no_scale():
    """A PodDisruptionBudget with maxUnavailable (or a percentage) needs the pods' controller to implement /scale;
    KubeRay's RayCluster does not, so the disruption controller fails safe with disruptionsAllowed 0 and every
    eviction - drains, node upgrades, cluster-autoscaler scale-down - would be refused. So there is none (and an
    integer minAvailable on groups of one pod either blocks drains or does nothing). Should KubeRay add /scale,
    this test fails and the budgets can come back."""
    crd = next(d for d in h.load_documents(h.crds_dir() / "ray.io_rayclusters.yaml"))
    for version in crd["spec"]["versions"]:
        assert "scale" not in (version.get("subresources") or {}), version["name"]
    assert not [o for o in RENDERED if o["kind"] == "PodDisruptionBudget"]


def test_documented_day2_workflows_avoid_field_manager_conflicts():
    """Models are switched from inside the cluster (promote through the dashboard, CURRENT on the volume) while
    serveConfigV2 keeps `model_version: current`, so a later server-side apply meets no kubectl-patch/edit
    manager; the docs say how to take the field back when someone patched anyway."""
    docs = (h.REPO / "docs" / "kubernetes.md").read_text()
    assert not re.search(r"^\s*kubectl[^\n]*\b(patch|edit) rayservice", docs, re.M), "no patch/edit in a recipe"
    assert "--force-conflicts" in docs and "signalgen models promote" in docs
    config = _one("ConfigMap", CONFIGMAP)["data"]
    name = _one("RayService")["metadata"]["name"]
    assert config["RAY_DASHBOARD_ADDRESS"] == f"http://{name}-head-svc:8265"   # the operator's head Service
    serve = yaml.safe_load(_one("RayService")["spec"]["serveConfigV2"])
    ml = next(d for d in serve["applications"][0]["deployments"] if d["name"] == GEN.ML_DEPLOYMENT)
    assert ml["user_config"]["model_version"] == "current"


def test_no_role_of_our_own():
    """KubeRay creates the autoscaler's Role and RoleBinding for the head's service account (named after each
    RayCluster); a copy here would only drift from it."""
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & {o["kind"] for o in RENDERED + SETUP}


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
        params = _params()
        monitoring = [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": params["prometheusNamespace"]}}}]
        operator = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": params["operatorNamespace"]}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/component": params["operatorComponent"]}}}]
        clients = [{"podSelector": {"matchLabels": {"signal-client": "true"}}}]
        canonical = {port: sorted(peers, key=json.dumps) for port, peers in ingress.items()}
        assert canonical == {8000: sorted(clients + operator, key=json.dumps), 8265: operator, 8080: monitoring,
                             44217: monitoring, 44227: monitoring}, name
        allowed_egress = {53, 3306} | ({443, 6443} if name == "head" else set())
        assert egress_ports == allowed_egress, name
    # DNS only to the cluster DNS, MySQL only to private addresses
    egress = {port["port"]: rule["to"] for p in policies for rule in p["spec"].get("egress", [])
              for port in rule.get("ports", []) if rule.get("to")}
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}} in egress[53]
    # NodeLocal DNSCache, and GKE Cloud DNS (resolv.conf names the metadata server): nothing else on 53
    assert {peer["ipBlock"]["cidr"] for peer in egress[53] if "ipBlock" in peer} == {"169.254.20.10/32",
                                                                                     "169.254.169.254/32"}
    assert _mysql_peers(egress[3306])


def _mysql_peers(peers: list[dict]) -> bool:
    """MySQL: private addresses outside the cluster, or - since ipBlock does not match pod-to-pod traffic on
    Cilium - the pods labelled app.kubernetes.io/name=mysql in this namespace; nothing else."""
    assert {peer["ipBlock"]["cidr"] for peer in peers if "ipBlock" in peer} == {
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}
    assert [peer for peer in peers if "ipBlock" not in peer] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mysql"}}}]
    return True


# How KubeRay v1.7.0 installs its operator (ray-project/kuberay at v1.7.0): the Helm chart's pod template labels
# (helm-chart/kuberay-operator, values nameOverride/componentOverride "kuberay-operator", release namespace) and
# the kustomize install's (ray-operator/config/manager/manager.yaml, namespace `default` from config/default).
KUBERAY_OPERATOR_PODS = {
    "helm": ("default", {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/instance": "kuberay-operator",
                         "app.kubernetes.io/component": "kuberay-operator"}),
    "kustomize": ("default", {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/component": "kuberay-operator"}),
}


def _params() -> dict:
    return next(d for d in h.load_documents(h.KUBERAY / "params.yaml"))["data"]


@pytest.mark.parametrize("install", sorted(KUBERAY_OPERATOR_PODS))
def test_the_operator_installed_as_kuberay_documents_reaches_the_dashboard(install):
    """With the default parameters, the operator pod of either documented install is let in to 8265 (where it
    PUTs serveConfigV2) and 8000 (/-/healthz); a pod with the same labels in another namespace is not."""
    namespace, labels = KUBERAY_OPERATOR_PODS[install]
    assert {8265, 8000} <= _admitted_ports(namespace, labels)
    assert 8265 not in _admitted_ports("elsewhere", labels)


def _admitted_ports(namespace: str, labels: dict) -> set[int]:
    """The ports of the Ray pods that a pod with `labels` in another namespace `namespace` may reach."""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    admitted: set[int] = set()
    for pol in (o for o in RENDERED if o["kind"] == "NetworkPolicy"):
        for rule in pol["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer and _selects(peer["namespaceSelector"], ns_labels) and \
                        _selects(peer.get("podSelector", {}), labels):
                    admitted |= {port["port"] for port in rule.get("ports", [])}
    return admitted


def test_parameters_default_to_the_documented_installs():
    """params.yaml: the operator as KubeRay's Helm chart and kustomize install put it; Prometheus as KubeRay's
    own Prometheus guide installs kube-prometheus-stack (install/prometheus/install.sh: release `prometheus`
    in `prometheus-system`); every parameter is used by a replacement."""
    params = _params()
    assert params["operatorNamespace"] == "default" and params["operatorComponent"] == "kuberay-operator"
    assert params["prometheusRelease"] == "prometheus" and params["prometheusNamespace"] == "prometheus-system"
    text = (h.KUBERAY / "kustomization.yaml").read_text() + (h.KUBERAY / "components" / "gcs-ft" /
                                                             "kustomization.yaml").read_text()
    for key in params:
        assert f"fieldPath: data.{key}" in text, key
    for m in (o for o in RENDERED if o["kind"] in ("PodMonitor", "PrometheusRule")):
        assert m["metadata"]["labels"]["release"] == params["prometheusRelease"], _id(m)


# ============================================================ a. the Jobs outside Ray: schema migration, collector
MIGRATION_JOB, ADMIN_SECRET, COLLECTOR_SECRET = "signalgen-migrate", "signalgen-mysql-admin", "signalgen-mysql-collector"
DEPLOY_STEP = ("signalgen/deploy-step", "migrate")  # `kubectl apply -k kuberay/ -l signalgen/deploy-step=migrate`


def _job_template(obj: dict) -> dict:
    """The pod template of a Job or a CronJob."""
    return obj["spec"]["template"] if obj["kind"] == "Job" else obj["spec"]["jobTemplate"]["spec"]["template"]


def _job_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Job" else obj["spec"]["jobTemplate"]["spec"]


def _batch() -> list[dict]:
    return [o for o in RENDERED if o["kind"] in ("Job", "CronJob")]


def _secret_refs(container: dict) -> set[tuple[str, str]]:
    return {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}


def test_the_migration_job_runs_store_migrate_as_the_admin():
    job = _one("Job", MIGRATION_JOB)
    (c,) = _job_template(job)["spec"]["containers"]
    assert c["command"] == ["signalgen", "store", "migrate"] and "args" not in c
    assert c["image"] == _one("CronJob", "signalgen-collect-1h")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"]["containers"][0]["image"] == _ray_container(_one("RayService")["spec"]["rayClusterConfig"][
            "headGroupSpec"])["image"]   # the same image as the RayService (kustomize images: rewrites all)
    assert c["envFrom"] == [{"configMapRef": {"name": CONFIGMAP}}]  # MYSQL_HOST, MYSQL_PORT, MYSQL_DATABASE
    env = {e["name"]: e for e in c["env"]}
    assert env["MYSQL_USER"]["valueFrom"] == {"secretKeyRef": {"name": ADMIN_SECRET, "key": "username"}}
    assert env["MYSQL_PASSWORD"]["valueFrom"] == {"secretKeyRef": {"name": ADMIN_SECRET, "key": "password"}}
    # the admin's credentials only: never the runtime user's Secret, which stays the workers' alone
    assert _secret_refs(c) == {(ADMIN_SECRET, "username"), (ADMIN_SECRET, "password")}
    assert "volumes" not in _job_template(job)["spec"] and set(env) == {"MYSQL_USER", "MYSQL_PASSWORD"}
    assert {"MYSQL_HOST", "MYSQL_DATABASE", "MYSQL_USER"} <= set(_one("ConfigMap", CONFIGMAP)["data"])
    spec = _job_spec(job)
    assert _job_template(job)["spec"]["restartPolicy"] == "Never"
    assert spec["backoffLimit"] <= 2 and spec["activeDeadlineSeconds"] > 0
    # re-runnable: a fixed name, removed a day after it finished (a later apply runs it again, a no-op
    # when the schema is current); the documented step deletes the previous run before applying a new one
    assert job["metadata"]["name"] == MIGRATION_JOB and 3600 <= spec["ttlSecondsAfterFinished"] <= 7 * 86400
    example = {d["metadata"]["name"]: d for d in h.load_documents(h.KUBERAY / "secret.example.yaml")}
    assert set(example[ADMIN_SECRET]["stringData"]) == {"username", "password"}


def test_the_migration_step_applies_everything_the_job_needs_and_nothing_else():
    """`kubectl apply -k kuberay/ -l signalgen/deploy-step=migrate` applies the Job with the ConfigMap it reads,
    its ServiceAccount and every NetworkPolicy that selects its pod (without them its pod would have no DNS and
    no MySQL, or none of its restrictions); nothing of the RayService's."""
    job = _one("Job", MIGRATION_JOB)
    template = _job_template(job)
    needed = {("Job", MIGRATION_JOB), ("ServiceAccount", template["spec"]["serviceAccountName"])}
    needed |= {("ConfigMap", src["configMapRef"]["name"]) for c in template["spec"]["containers"]
               for src in c.get("envFrom", []) if "configMapRef" in src}
    needed |= {("NetworkPolicy", p["metadata"]["name"]) for p in RENDERED if p["kind"] == "NetworkPolicy"
               and _selects(p["spec"]["podSelector"], template["metadata"]["labels"])}
    key, value = DEPLOY_STEP
    step = {(o["kind"], o["metadata"]["name"]) for o in RENDERED if o["metadata"].get("labels", {}).get(key) == value}
    assert step == needed
    assert {"signalgen-egress-dns-mysql", "signalgen-jobs-default-deny"} <= {n for k, n in step if k == "NetworkPolicy"}


def test_network_policies_are_applied_before_any_workload():
    """kubectl applies in the rendered order: the policies exist before the first pod of any workload starts."""
    kinds = [o["kind"] for o in RENDERED]
    last_policy = max(i for i, k in enumerate(kinds) if k == "NetworkPolicy")
    first_workload = min(i for i, k in enumerate(kinds) if k in ("Job", "CronJob", "RayService"))
    assert last_policy < first_workload, kinds


def _cron_period_s(schedule: str) -> int:
    """The period of a `*/N * * * *` or `M * * * *` schedule, in seconds (what the collector uses)."""
    minute, *rest = schedule.split()
    assert rest == ["*", "*", "*", "*"], schedule
    return 60 * int(minute[2:]) if minute.startswith("*/") else 3600


def test_the_collector_cronjob_runs_one_timeframe_often_and_never_overlaps():
    cronjobs = [o for o in RENDERED if o["kind"] == "CronJob"]
    assert [c["metadata"]["name"] for c in cronjobs] == ["signalgen-collect-1h"]
    for cj in cronjobs:
        name, spec = cj["metadata"]["name"], cj["spec"]
        assert len(name) <= 52, name  # the controller names each Job <cronjob>-<minutes>
        assert spec["schedule"] == "*/5 * * * *" and spec["concurrencyPolicy"] == "Forbid"
        period = _cron_period_s(spec["schedule"])
        assert 0 < spec["startingDeadlineSeconds"] < period
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        job = _job_spec(cj)
        assert 0 < job["activeDeadlineSeconds"] < period, "a run must end before the next one is due"
        assert job["backoffLimit"] == 0, "the next scheduled run is the retry"
        template = _job_template(cj)
        (c,) = template["spec"]["containers"]
        timeframe = cj["metadata"]["labels"]["signalgen/timeframe"]
        assert c["command"] == ["signalgen", "collect"] and c["args"] == ["--timeframes", timeframe]
        assert name == f"signalgen-collect-{timeframe}" and template["metadata"]["labels"]["signalgen/timeframe"] == \
            timeframe
        assert c["envFrom"] == [{"configMapRef": {"name": CONFIGMAP}}]
        assert _secret_refs(c) == {(COLLECTOR_SECRET, "username"), (COLLECTOR_SECRET, "password")}
        assert {e["name"] for e in c["env"]} == {"MYSQL_USER", "MYSQL_PASSWORD"}
    config = _one("ConfigMap", CONFIGMAP)["data"]
    # the market, one place each, read by the CronJobs and the Ray pods alike (envFrom the same ConfigMap)
    assert config["SIGNAL_EXCHANGE"] and config["SIGNAL_QUOTE"] and config["SIGNAL_SYMBOLS"]
    assert all(re.fullmatch(r"[A-Z0-9]+", s) for s in config["SIGNAL_SYMBOLS"].split(","))
    assert config["SIGNAL_EXCHANGE_URL"] == "", "by default the exchange's own API (a proxy's base URL when set)"
    example = {d["metadata"]["name"]: d for d in h.load_documents(h.KUBERAY / "secret.example.yaml")}
    assert set(example[COLLECTOR_SECRET]["stringData"]) == {"username", "password"}


def test_the_jobs_pods_are_locked_down_like_the_ray_pods(cluster):
    ray = cluster["workerGroupSpecs"][0]["template"]["spec"]["securityContext"]
    for obj in _batch():
        spec, name = _job_template(obj)["spec"], obj["metadata"]["name"]
        assert spec["serviceAccountName"] == "signalgen-jobs" and spec["automountServiceAccountToken"] is False, name
        assert _one("ServiceAccount", "signalgen-jobs").get("automountServiceAccountToken") is False
        assert spec["restartPolicy"] == "Never", name
        assert {k: spec["securityContext"][k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")} \
            == {k: ray[k] for k in ("runAsNonRoot", "runAsUser", "runAsGroup", "seccompProfile")}, name
        for c in spec["containers"]:
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}, name
            r = c["resources"]
            assert r["requests"] == r["limits"], name  # Guaranteed: cpu, memory and ephemeral-storage
            assert set(r["limits"]) == {"cpu", "memory", "ephemeral-storage"}, name
            assert not {"readinessProbe", "livenessProbe"} & set(c), name
        assert "Role" not in {o["kind"] for o in RENDERED}  # the account has no rights of its own


def _job_pod_labels() -> dict[str, dict]:
    return {o["metadata"]["name"]: dict(_job_template(o)["metadata"]["labels"]) for o in _batch()}


def test_network_policies_of_the_jobs():
    """The migration and the collector take no connection; they reach DNS and MySQL the way the Ray pods do, and
    the collector also HTTPS (the exchange) on the parameter's addresses; no Ray port is open to them."""
    policies = [o for o in RENDERED if o["kind"] == "NetworkPolicy"]
    ray_dns = next(r["to"] for p in policies if p["metadata"]["name"] == "signalgen-egress-dns-mysql"
                   for r in p["spec"]["egress"] if {53} == {port["port"] for port in r["ports"]})
    expected = {MIGRATION_JOB: {53, 3306}, "signalgen-collect-1h": {53, 3306, 443}}
    for name, labels in _job_pod_labels().items():
        mine = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert not any(p["spec"]["podSelector"].get("matchExpressions", []) == [
            {"key": "ray.io/cluster", "operator": "Exists"}] for p in mine), f"{name}: selected as a Ray pod"
        assert any(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} and not p["spec"].get("ingress")
                   and not p["spec"].get("egress") for p in mine), f"{name}: no default deny"
        assert not [r for p in mine for r in p["spec"].get("ingress", [])], f"{name}: takes connections"
        egress = {}
        for p in mine:
            for rule in p["spec"].get("egress", []):
                assert rule.get("to") and rule.get("ports"), (name, p["metadata"]["name"])
                for port in rule["ports"]:
                    egress.setdefault(port["port"], []).extend(rule["to"])
        assert set(egress) == expected[name], name
        assert all(peer in egress[53] for peer in ray_dns), name
        assert _mysql_peers(egress[3306]), name
        if 443 in egress:
            assert egress[443] == [{"ipBlock": {"cidr": _params()["collectorEgressCidr"]}}], name
    # and no Ray pod admits them: Ray's intra-cluster peers select Ray pods only
    intra = _one("NetworkPolicy", "signalgen-ray-intra-cluster")["spec"]["ingress"][0]["from"]
    for name, labels in _job_pod_labels().items():
        assert not any(_selects(peer["podSelector"], labels) for peer in intra), name


def test_the_collector_alert_watches_the_rendered_cronjobs():
    rule = _one("PrometheusRule")
    alert = next(r for g in rule["spec"]["groups"] for r in g["rules"] if r["alert"] == "SignalgenCollectorFailing")
    assert h.kube_state_metric_names() == {"kube_cronjob_status_last_successful_time", "kube_cronjob_created"}
    assert h.kube_state_metric_names() <= h.KUBE_STATE_METRICS
    (pattern,) = set(re.findall(r'cronjob=~"([^"]+)"', alert["expr"]))
    assert set(re.findall(r'namespace="([^"]+)"', alert["expr"])) == {"crypto-trading"}
    threshold = int(re.search(r"\)\s*>\s*(\d+)", alert["expr"]).group(1))
    for cj in (o for o in RENDERED if o["kind"] == "CronJob"):
        assert re.fullmatch(pattern, cj["metadata"]["name"]) and cj["metadata"]["namespace"] == "crypto-trading"
        # several scheduled runs fail before it fires
        assert threshold >= 5 * _cron_period_s(cj["spec"]["schedule"]), (threshold, cj["spec"]["schedule"])


def _docs_section(heading: str) -> str:
    """The text of a section of docs/kubernetes.md, from its heading to the next heading (outside code)."""
    lines = (h.REPO / "docs" / "kubernetes.md").read_text(encoding="utf-8").splitlines()
    start = lines.index(heading)
    fenced, out = False, []
    for line in lines[start + 1:]:
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#{1,3} ", line):
            break
        out.append(line)
    return "\n".join(out)


def test_the_deploy_docs_follow_the_real_order():
    """docs/kubernetes.md's deploy block: setup, every Secret the pods need (the admin's included), preflight, the
    migration step (delete the last run, apply the step's label, wait), then the rest - with the names the
    manifests really use."""
    block = re.search(r"```bash\n(.*?)```", _docs_section("## Deploy: setup, Secrets, preflight, apply"), re.S)[1]
    lines = [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    lines = [line for line in lines if line]

    def at(fragment: str) -> int:
        (index,) = [i for i, line in enumerate(lines) if fragment in line]
        return index

    job = _one("Job", MIGRATION_JOB)["metadata"]["name"]
    secrets = {ref for o in _batch() + [_one("RayService")] for c in h.iter_containers(o) for ref, _ in _secret_refs(c)}
    secrets.add(_one("RayService")["spec"]["rayClusterConfig"]["authOptions"]["secretName"])
    assert {ADMIN_SECRET, COLLECTOR_SECRET, SECRET_NAME} <= secrets
    created = [at(f"create secret generic {name} ") for name in sorted(secrets)]
    order = [at("kubectl apply --server-side -k kuberay/setup/"), max(created), at("signalgen k8s preflight"),
             at(f"delete job {job} --ignore-not-found"),
             at(f"kubectl apply --server-side -k kuberay/ -l {DEPLOY_STEP[0]}={DEPLOY_STEP[1]}"),
             at("grep -qE 'Complete|Failed'"),                       # waits for either end, not only success
             at(f"get job {job} -o jsonpath='{{.status.succeeded}}'"),
             lines.index("kubectl apply --server-side -k kuberay/")]
    assert order == sorted(order) and min(created) > order[0], lines


BACKFILL_PATCHES = re.compile(r"kubectl patch --local -f - --type=json -o yaml -p '(\[.*?\])'", re.S)


def test_the_documented_backfill_jobs_are_valid_collector_jobs(tmp_path):
    """docs/kubernetes.md's backfill recipes, run for real: the job `kubectl create job --from=cronjob/...` makes
    of the rendered CronJob (kubectl's createJobFromCronJob: the job template's labels and spec), patched with
    `kubectl patch --local` and each documented patch, is a valid Job whose command line `signalgen` accepts."""
    import shutil

    from serve_app.cli import build_parser

    if shutil.which("kubectl") is None:
        skip_or_fail("kubectl is not installed")
    cronjob = _one("CronJob", "signalgen-collect-1h")
    template = cronjob["spec"]["jobTemplate"]
    made = {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "signalgen-backfill-1", "namespace": cronjob["metadata"]["namespace"],
                         "annotations": {"cronjob.kubernetes.io/instantiate": "manual",
                                         **template["metadata"].get("annotations", {})},
                         "labels": template["metadata"]["labels"],
                         # kubectl makes the CronJob the Job's controller (createJobFromCronJob)
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "controller": True,
                                              "blockOwnerDeletion": True, "name": cronjob["metadata"]["name"],
                                              "uid": "00000000-0000-0000-0000-000000000001"}]},
            "spec": copy.deepcopy(template["spec"])}
    section = _docs_section("### Backfill history")
    assert "kubectl create job" in section and "--from=cronjob/signalgen-collect-1h" in section
    patches = BACKFILL_PATCHES.findall(section)
    assert len(patches) == 2, patches
    commands = []
    for patch in patches:
        out = subprocess.run(["kubectl", "patch", "--local", "-f", "-", "--type=json", "-o", "yaml", "-p", patch],
                             input=yaml.safe_dump(made), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        job = yaml.safe_load(out.stdout)
        _core_validate(job)
        assert job["spec"]["activeDeadlineSeconds"] > template["spec"]["activeDeadlineSeconds"]
        # not the CronJob's: its successfulJobsHistoryLimit would delete the backfill (and its logs) within
        # minutes; it goes by its own TTL instead
        assert "ownerReferences" not in job["metadata"] and job["spec"]["ttlSecondsAfterFinished"] >= 3600
        pod = job["spec"]["template"]
        # still the collector's pod: its NetworkPolicies, its Secret, its security context
        assert pod["metadata"]["labels"] == template["spec"]["template"]["metadata"]["labels"]
        assert pod["spec"] == {**template["spec"]["template"]["spec"], "containers": pod["spec"]["containers"]}
        (c,) = pod["spec"]["containers"]
        assert _secret_refs(c) == {(COLLECTOR_SECRET, "username"), (COLLECTOR_SECRET, "password")}
        argv = c["command"] + c["args"]
        assert argv[0] == "signalgen"
        commands.append(build_parser().parse_args(argv[1:]))
    collect, ingest = commands
    assert collect.command == "collect" and collect.since is not None and collect.max_candles > 1000
    assert collect.timeframes == ["1h"]
    assert ingest.command == "ingest" and ingest.since is not None and ingest.timeframe == "1h"
    assert ingest.symbols == _one("ConfigMap", CONFIGMAP)["data"]["SIGNAL_SYMBOLS"].split(",")


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
    assert {"SignalgenSyntheticModel", "SignalgenReplicaUnplaced", "RayHeadMemoryHigh"} <= set(alerts)
    runbooks = (h.REPO / "docs" / "runbooks.md").read_text(encoding="utf-8")
    base = _params()["runbookBaseUrl"]
    for name, r in alerts.items():
        assert r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"], name
        assert re.fullmatch(r"\d+[smh]", r["for"]), name
        # runbook_url (what Alertmanager templates and Grafana link), to this alert's own section
        assert "runbook" not in r["annotations"], name
        assert r["annotations"]["runbook_url"] == f"{base}/docs/runbooks.md#{name.lower()}", name
        assert re.search(rf"^## `?{name}`?\s*$", runbooks, re.M), f"docs/runbooks.md has no section for {name}"


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
        f"applications[0].deployments[{ml_index}].ray_actor_options.resources",
        f"applications[0].deployments[{ml_index}].ray_actor_options.num_cpus"])
    ml = serve_config["applications"][0]["deployments"][ml_index]["ray_actor_options"]
    assert ml["num_cpus"] == 0 and ml["resources"] == {GEN.ML_RESOURCE: GEN.ML_RESOURCE_PER_REPLICA}, ml
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
    manifest, configmap = tmp_path / "rayservice.yaml", tmp_path / "configmap.yaml"
    manifest.write_text((h.KUBERAY / "rayservice.yaml").read_text())
    configmap.write_text((h.KUBERAY / "configmap.yaml").read_text())
    files = ["--manifest", str(manifest), "--configmap", str(configmap)]
    assert GEN.main(["--check", *files]) == 0
    manifest.write_text(manifest.read_text().replace("route_prefix: /", "route_prefix: /x"))
    assert GEN.main(["--check", *files]) == 1
    assert GEN.main(files) == 0
    assert manifest.read_text() == (h.KUBERAY / "rayservice.yaml").read_text()
    configmap.write_text(configmap.read_text().replace("SIGNAL_QUOTE: USDT", "SIGNAL_QUOTE: USD"))
    assert GEN.main(["--check", *files]) == 1
    assert GEN.main(files) == 0
    assert configmap.read_text() == (h.KUBERAY / "configmap.yaml").read_text()


def test_the_market_source_is_named_once_for_the_service_and_the_collector(serve_config):
    """configs/serve_config.yaml's market_source is what the replicas read; `make kuberay` copies it into the
    ConfigMap the collector and the migration read: the collector fills the market the service serves."""
    text = (h.KUBERAY / "configmap.yaml").read_text(encoding="utf-8")
    assert GEN.render_configmap(text, GEN.load_serve_config()) == text, "stale ConfigMap: run `make kuberay`"
    config = _one("ConfigMap", CONFIGMAP)["data"]
    (source,) = {json.dumps(app["args"]["market_source"], sort_keys=True) for app in serve_config["applications"]}
    assert {"exchange": config["SIGNAL_EXCHANGE"], "quote": config["SIGNAL_QUOTE"]} == json.loads(source)
    changed = GEN.load_serve_config()
    changed["applications"][0]["args"]["market_source"] = {"exchange": "kraken", "quote": "USD"}
    fresh = GEN.render_configmap(text, changed)
    assert "  SIGNAL_EXCHANGE: kraken\n  SIGNAL_QUOTE: USD\n" in fresh
    assert len(re.findall(r"^  SIGNAL_EXCHANGE:", fresh, re.M)) == 1
    del changed["applications"][0]["args"]["market_source"]
    with pytest.raises(ValueError, match="market_source"):
        GEN.render_configmap(text, changed)
    two = GEN.load_serve_config()
    two["applications"].append(copy.deepcopy(two["applications"][0]))
    two["applications"][1]["args"]["market_source"] = {"exchange": "kraken", "quote": "USD"}
    with pytest.raises(ValueError, match="one market_source"):
        GEN.render_configmap(text, two)


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
