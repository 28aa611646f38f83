"""`signalgen k8s preflight`: what would stop the RayService in kuberay/ from ever serving on this cluster.

Read-only. The manifests are rendered with `kubectl kustomize <dir>` (and `<dir>/setup` when it exists) and
everything the checks need is derived from them: the namespace, the images and Secret references of every pod
template (the RayService's groups, and the Jobs and CronJobs beside it: the schema migration, the collector),
authOptions, PersistentVolumeClaims, NetworkPolicies, PodMonitors and PrometheusRules. The cluster is read
with `kubectl get --raw <API path>` (JSON), so every kubeconfig auth method (exec plugins, tokens,
certificates) works and no Kubernetes client library is needed.

Checks, in order (each result PASS / WARN / FAIL, with a fix for WARN and FAIL):
  1. crd          rayservices.ray.io serves v1 and its schema knows every field the RayService uses
  2. operator     a KubeRay operator pod is Running; its version; a NetworkPolicy admits it to the head
  3. namespace    the target namespace exists; every Secret (and key) the pods reference exists - the Ray
                  pods' and the Jobs' (e.g. the migration's admin Secret signalgen-mysql-admin)
  4. pvc          each claim binds: its StorageClass exists (or a default one), ReadWriteMany is possible
  5. image        no placeholder registry; a private registry has imagePullSecrets, for every pod using it
  6. prometheus   the prometheus-operator CRDs exist and a Prometheus selects our PodMonitors/rules and may
                  scrape the Ray pods; the alerts' runbook_url is not the placeholder (all WARN at worst:
                  without them the service serves, unobserved)
  7. capacity     a schedulable node fits each Ray pod (FAIL unless Karpenter or the cluster autoscaler may add
                  one); the nodes hold the cluster at min size

Where a fix is a parameter of the manifests (kuberay/params.yaml, kuberay/setup/params.yaml), it names it.

Errors that make the checks meaningless (no kubectl, an unreachable cluster, 401/403, manifests that do
not render) raise PreflightError: one line, exit code 2.
"""
from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import quote

import yaml

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"

# What the manifests are written for (kuberay/rayservice.yaml: "Needs the KubeRay operator v1.7").
KUBERAY_VERSION = "v1.7.0"
KUBERAY_MIN_VERSION = (1, 6)          # spec.rayClusterConfig.authOptions appeared in KubeRay 1.6
# --force-conflicts: on a Helm install Helm's field manager owns the CRDs' fields, and a server-side apply without
# it stops on the conflicts instead of upgrading them.
CRD_UPGRADE = (f'kubectl apply --server-side -k "github.com/ray-project/kuberay/ray-operator/config/crd?ref='
               f'{KUBERAY_VERSION}" --force-conflicts  (helm upgrade does not upgrade CRDs; --force-conflicts '
               "takes their fields over from Helm's field manager)")
OPERATOR_INSTALL = (f"helm install kuberay-operator kuberay/kuberay-operator --version {KUBERAY_VERSION[1:]} "
                    "(docs/kubernetes.md, Prerequisites)")
OPERATOR_LABEL_SELECTOR = "app.kubernetes.io/component=kuberay-operator"   # Helm chart and kustomize install
# The operator PUTs serveConfigV2 to the head's dashboard and polls it there (8265), and checks the Serve
# proxy's /-/healthz on the serve port (8000).
OPERATOR_PORTS = ((8265, "dashboard"), (8000, "serve"))
METRICS_PORT = (8080, "metrics")

PLACEHOLDER_REGISTRY = "registry.example.com"
PLACEHOLDER_IMAGE = "signalgen"       # the name every container says before kustomize's `images:` replaces it
PUBLIC_REGISTRIES = ("docker.io", "registry-1.docker.io", "ghcr.io", "quay.io", "public.ecr.aws", "gcr.io")
# Provisioners that can give ReadWriteMany volumes (substring match); longhorn only with its RWX support.
RWX_PROVISIONERS = ("nfs", "efs.csi.aws.com", "filestore.csi.storage.gke.io", "cephfs", "azurefile",
                    "file.csi.azure.com", "longhorn", "juicefs", "glusterfs", "csi-driver-smb")
DEFAULT_CLASS_ANNOTATIONS = ("storageclass.kubernetes.io/is-default-class",
                             "storageclass.beta.kubernetes.io/is-default-class")
# What KubeRay adds to the pods it builds from the templates (ray-operator/controllers/ray/common/pod.go)
AUTOSCALER_DEFAULT_REQUESTS = {"cpu": "500m", "memory": "512Mi"}   # the head's autoscaler sidecar
WAIT_GCS_INIT_REQUESTS = {"cpu": "200m", "memory": "256Mi"}        # every worker's wait-gcs-ready init container
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# kuberay/params.yaml `runbookBaseUrl` as the repository ships it: alerts linking there lead nowhere.
PLACEHOLDER_RUNBOOK_BASE = "https://git.example.com/"
# Signs that nodes are added on demand (then a pod no current node fits is not necessarily stuck): the
# cluster autoscaler's status ConfigMap (it writes one by default; GKE's managed one too), Karpenter's labels.
CLUSTER_AUTOSCALER_STATUS = "/api/v1/namespaces/kube-system/configmaps/cluster-autoscaler-status"
KARPENTER_NODE_LABELS = ("karpenter.sh/nodepool", "karpenter.sh/provisioner-name")


class PreflightError(Exception):
    """The checks cannot run (kubectl missing, cluster unreachable, 401/403, manifests unrenderable): exit 2."""


@dataclass
class Result:
    check: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    results: list[Result]
    context: str = ""
    server: str = ""
    kubernetes: str = ""
    manifests: list[str] = field(default_factory=list)
    namespace: str = ""
    rayservices: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.results)


# --- Kubernetes quantities and label selectors ---------------------------------------------------------
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:([eE][+-]?\d+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$")
_SUFFIX = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "E": 1e18, "Ki": 2.0 ** 10, "Mi": 2.0 ** 20, "Gi": 2.0 ** 30, "Ti": 2.0 ** 40, "Pi": 2.0 ** 50,
           "Ei": 2.0 ** 60}


def parse_quantity(value: Any) -> float:
    """A Kubernetes resource quantity as a number: "250m" -> 0.25, "2" -> 2, "4Gi" -> 4 * 2**30,
    "512Mi", "1G" -> 1e9, "1e3" -> 1000. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    m = _QUANTITY.match(str(value).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    number, exponent, suffix = m.groups()
    if exponent:
        return float(number + exponent)
    return float(number) * _SUFFIX[suffix or ""]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against labels: matchLabels and matchExpressions (In, NotIn, Exists,
    DoesNotExist) all must hold; an empty selector {} matches everything; None matches nothing (what a null
    selector means depends on where it is: callers decide before calling)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), [str(v) for v in expr.get("values") or []]
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            ok = False          # Gt/Lt exist only for node selectors; an unknown operator selects nothing
        if not ok:
            return False
    return True


def describe_selector(selector: Mapping[str, Any] | None) -> str:
    """A selector in kubectl's -l syntax; {} is "(all)", None "(none)"."""
    if selector is None:
        return "(none)"
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), ",".join(str(v) for v in e.get("values") or [])
        parts.append({"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": f"{key}",
                      "DoesNotExist": f"!{key}"}.get(op, f"{key} {op} ({values})"))
    return ",".join(parts) or "(all)"


def describe_labels(labels: Mapping[str, str], skip: Iterable[str] = ("pod-template-hash",)) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k not in skip) or "(no labels)"


def _fmt_cpu(cores: float) -> str:
    return f"{cores:g}" if cores >= 1 or cores == 0 else f"{cores * 1000:g}m"


def _fmt_mem(n: float) -> str:
    for unit, size in (("Gi", 2 ** 30), ("Mi", 2 ** 20), ("Ki", 2 ** 10)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


# --- kubectl ---------------------------------------------------------------------------------------------
class Kubectl:
    """`kubectl [--kubeconfig K] [--context C] get --raw PATH`, with a timeout; NotFound is None, everything
    else that is not JSON is a PreflightError (one line)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, timeout: float = 15.0,
                 binary: str = "kubectl") -> None:
        self.kubeconfig, self.context, self.timeout, self.binary = kubeconfig, context, timeout, binary
        self._cache: dict[str, Any] = {}

    def _global(self) -> list[str]:
        args = [self.binary]
        if self.kubeconfig:
            args += ["--kubeconfig", self.kubeconfig]
        if self.context:
            args += ["--context", self.context]
        return args

    def _run(self, args: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=self.timeout + 5)
        except FileNotFoundError:
            raise PreflightError(f"{self.binary} not found: install kubectl (the preflight reads the cluster "
                                 f"and renders the manifests with it)") from None
        except subprocess.TimeoutExpired:
            raise PreflightError(f"{what}: no answer within {self.timeout + 5:g} s (kubectl timed out; "
                                 f"--timeout sets the limit)") from None

    def get(self, path: str, optional: bool = False) -> Any | None:
        """The JSON at an API path, or None when the API server answers 404 (and, when `optional`, 403:
        for best-effort reads the checks can do without)."""
        if path in self._cache:
            return self._cache[path]
        what = f"GET {path}"
        run = self._run(self._global() + [f"--request-timeout={self.timeout:g}s", "get", "--raw", path], what)
        if run.returncode != 0:
            message = re.sub(r"^error:\s*", "", _last_line(run.stderr)) or f"kubectl exited with {run.returncode}"
            if "(NotFound)" in run.stderr:
                self._cache[path] = None
                return None
            if "(Forbidden)" in run.stderr:
                if optional:
                    self._cache[path] = None
                    return None
                raise PreflightError(f"{what}: forbidden ({message}); the preflight needs read access "
                                     "(get/list) to what it checks")
            if "Unauthorized" in run.stderr or "must be logged in" in run.stderr:
                raise PreflightError(f"{what}: unauthorized ({message}); check the kubeconfig's credentials")
            raise PreflightError(f"cannot read the cluster ({what}): {message}")
        try:
            value = json.loads(run.stdout)
        except json.JSONDecodeError:
            raise PreflightError(f"{what}: the answer is not JSON: {run.stdout[:120]!r}") from None
        self._cache[path] = value
        return value

    def config(self) -> dict[str, str]:
        """The context and API server the calls go to (empty when kubectl cannot tell)."""
        run = self._run(self._global() + ["config", "view", "--minify", "-o", "json"], "kubectl config view")
        if run.returncode != 0:
            return {}
        try:
            cfg = json.loads(run.stdout)
            clusters = cfg.get("clusters") or [{}]
            return {"context": cfg.get("current-context") or "",
                    "server": (clusters[0].get("cluster") or {}).get("server", "")}
        except (json.JSONDecodeError, AttributeError, IndexError):
            return {}

    def kustomize(self, directory: Path) -> list[dict]:
        run = self._run([self.binary, "kustomize", str(directory)], f"kubectl kustomize {directory}")
        if run.returncode != 0:
            raise PreflightError(f"kubectl kustomize {directory} failed: {_last_line(run.stderr)}")
        try:
            return [d for d in yaml.safe_load_all(run.stdout) if isinstance(d, dict)]
        except yaml.YAMLError as e:
            raise PreflightError(f"kubectl kustomize {directory}: not YAML: {e}") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- what the manifests need ------------------------------------------------------------------------------
@dataclass
class PodTemplate:
    """One kind of pod the manifests make: a Ray group, or the template of a Job/CronJob/Deployment/..."""
    owner: str                   # "RayService signalgen", "CronJob retrain"
    group: str                   # "head", "cpu-workers", or the workload's name
    labels: dict[str, str]       # the labels the pod will carry (for Ray pods: with KubeRay's own)
    spec: dict                   # the pod spec as written
    ray: bool = False
    replicas: int = 1            # pods of this template at the minimum size (Ray groups)
    injected: list[dict] = field(default_factory=list)        # containers KubeRay adds (autoscaler sidecar)
    injected_init: list[dict] = field(default_factory=list)   # init containers KubeRay adds (wait-gcs-ready)

    @property
    def who(self) -> str:
        """How a finding names these pods: a Ray group by its name, any other workload by kind and name."""
        return self.group if self.ray else self.owner

    def containers(self, init: bool = False) -> list[dict]:
        key = "initContainers" if init else "containers"
        return [c for c in self.spec.get(key) or [] if isinstance(c, dict)]

    def requests(self) -> dict[str, float]:
        """The pod's effective requests (what the scheduler needs free on a node): per resource the larger
        of the sum over its containers and the largest init container; a request defaults to its limit."""
        def req(c: dict, r: str) -> float:
            res = c.get("resources") or {}
            v = (res.get("requests") or {}).get(r, (res.get("limits") or {}).get(r))
            return parse_quantity(v) if v is not None else 0.0
        out = {}
        for r in ("cpu", "memory"):
            main = sum(req(c, r) for c in self.containers() + self.injected)
            init = max([req(c, r) for c in self.containers(init=True) + self.injected_init] or [0.0])
            out[r] = max(main, init)
        return out


@dataclass
class SecretNeed:
    name: str
    required: bool = False                                    # some reference is not optional
    keys: dict[str, bool] = field(default_factory=dict)       # key -> required
    env: set[str] = field(default_factory=set)                # env vars it feeds
    users: list[str] = field(default_factory=list)            # which pods (group names)
    purpose: str = ""                                         # "", "imagePullSecret", "authOptions"

    def use(self, user: str, required: bool, key: str | None = None, env: str | None = None) -> None:
        self.required |= required
        if key is not None:
            self.keys[key] = self.keys.get(key, False) or required
        if env:
            self.env.add(env)
        if user not in self.users:
            self.users.append(user)


@dataclass
class Manifests:
    directories: list[Path]
    objects: list[dict]
    namespace: str                  # the target: --namespace, else the RayService's
    rendered_namespace: str = ""    # the RayService's namespace in the manifests

    def of_kind(self, *kinds: str) -> list[dict]:
        return [o for o in self.objects if o.get("kind") in kinds]

    @property
    def rayservices(self) -> list[dict]:
        return self.of_kind("RayService")

    @property
    def namespace_labels(self) -> dict[str, str]:
        """The labels the target namespace will have after the apply: the rendered Namespace's plus the one
        Kubernetes sets on every namespace."""
        labels: dict[str, str] = {}
        for ns in self.of_kind("Namespace"):
            if (ns.get("metadata") or {}).get("name") == self.namespace:
                labels.update((ns["metadata"].get("labels") or {}))
        labels[NAMESPACE_NAME_LABEL] = self.namespace
        return labels

    def has_namespace_object(self, directory: Path | None = None) -> bool:
        return any((o.get("metadata") or {}).get("name") == self.namespace and
                   (directory is None or o.get("_source") == str(directory))
                   for o in self.of_kind("Namespace"))

    def pod_templates(self) -> list[PodTemplate]:
        out: list[PodTemplate] = []
        for obj in self.objects:
            kind, name = obj.get("kind"), (obj.get("metadata") or {}).get("name", "?")
            if kind == "RayService":
                out += ray_pod_templates((obj.get("spec") or {}).get("rayClusterConfig") or {}, kind, name)
            elif kind == "RayCluster":
                out += ray_pod_templates(obj.get("spec") or {}, kind, name)
            else:
                for labels, spec in _embedded_pod_specs(obj):
                    out.append(PodTemplate(f"{kind} {name}", name, labels, spec))
        return out

    def service_account(self, name: str) -> dict | None:
        for sa in self.of_kind("ServiceAccount"):
            if (sa.get("metadata") or {}).get("name") == name:
                return sa
        return None


def _embedded_pod_specs(node: Any, labels: dict | None = None) -> Iterator[tuple[dict, dict]]:
    """Every pod spec inside an object (Job/CronJob/Deployment templates, a Pod itself, a RayJob's
    submitter), with the labels of the template around it."""
    if isinstance(node, dict):
        spec = node.get("spec")
        if isinstance(spec, dict) and isinstance(spec.get("containers"), list):
            yield dict(((node.get("metadata") or {}).get("labels") or {})), spec
            return
        for key, value in node.items():
            if key != "metadata":
                yield from _embedded_pod_specs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _embedded_pod_specs(item)


def ray_pod_templates(cluster: Mapping[str, Any], kind: str, name: str) -> list[PodTemplate]:
    """The head and worker pods KubeRay builds from a RayCluster spec, with the labels and containers the
    operator adds (pod.go: labelPod, the autoscaler sidecar, the wait-gcs-ready init container)."""
    cluster_name = f"{name}-xxxxx" if kind == "RayService" else name   # a RayService's clusters: <name>-<random>
    out = []
    groups = [("head", cluster.get("headGroupSpec") or {}, True)]
    groups += [(g.get("groupName", "workers"), g, False) for g in cluster.get("workerGroupSpecs") or []]
    for group_name, group, is_head in groups:
        template = group.get("template") or {}
        labels = {"app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
        labels.update((template.get("metadata") or {}).get("labels") or {})
        labels.update(group.get("labels") or {})
        labels.update({"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster_name,
                       "ray.io/node-type": "head" if is_head else "worker",
                       "ray.io/group": "headgroup" if is_head else group_name,
                       "ray.io/identifier": f"{cluster_name}-{'head' if is_head else 'worker'}"})
        if kind == "RayService":
            labels["ray.io/serve"] = "false" if is_head else "true"
        injected, injected_init = [], []
        if is_head and cluster.get("enableInTreeAutoscaling"):
            res = ((cluster.get("autoscalerOptions") or {}).get("resources") or
                   {"requests": AUTOSCALER_DEFAULT_REQUESTS, "limits": AUTOSCALER_DEFAULT_REQUESTS})
            injected.append({"name": "autoscaler", "resources": res})
        if not is_head:
            injected_init.append({"name": "wait-gcs-ready", "resources": {"requests": WAIT_GCS_INIT_REQUESTS}})
        if is_head:
            replicas = 1
        else:
            replicas = max(int(group.get("replicas") or 0), int(group.get("minReplicas") or 0))
            if group.get("suspend"):
                replicas = 0
            replicas *= int(group.get("numOfHosts") or 1)
        out.append(PodTemplate(f"{kind} {name}", group_name, labels, template.get("spec") or {}, ray=True,
                               replicas=replicas, injected=injected, injected_init=injected_init))
    return out


def secret_needs(manifests: Manifests) -> dict[str, SecretNeed]:
    """Every Secret the pods need: env secretKeyRef, envFrom secretRef, secret volumes (and projected ones),
    imagePullSecrets (the pod's and its ServiceAccount's), and the RayService's authOptions.secretName. The Ray
    pods' come first, then those of the other workloads (the schema migration Job, the collector CronJob, ...),
    each pod named by PodTemplate.who."""
    needs: dict[str, SecretNeed] = {}

    def need(name: str, purpose: str = "") -> SecretNeed:
        key = f"{purpose}/{name}"
        if key not in needs:
            needs[key] = SecretNeed(name, purpose=purpose)
        return needs[key]

    for pod in sorted(manifests.pod_templates(), key=lambda p: not p.ray):
        for c in pod.containers() + pod.containers(init=True):
            for env in c.get("env") or []:
                ref = ((env or {}).get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref.get("name"):
                    need(ref["name"]).use(pod.who, not ref.get("optional", False), ref.get("key"), env.get("name"))
            for src in c.get("envFrom") or []:
                ref = (src or {}).get("secretRef")
                if ref and ref.get("name"):
                    need(ref["name"]).use(pod.who, not ref.get("optional", False))
        for vol in pod.spec.get("volumes") or []:
            sources = [vol.get("secret")] + [s.get("secret") for s in (vol.get("projected") or {}).get("sources") or []]
            for s in filter(None, sources):
                secret_name = s.get("secretName") or s.get("name")
                if secret_name:
                    n = need(secret_name)
                    n.use(pod.who, not s.get("optional", False))
                    for item in s.get("items") or []:
                        n.use(pod.who, not s.get("optional", False), item.get("key"))
        pull = list(pod.spec.get("imagePullSecrets") or [])
        sa = manifests.service_account(pod.spec.get("serviceAccountName") or "")
        pull += (sa or {}).get("imagePullSecrets") or []
        for ref in pull:
            if ref.get("name"):
                need(ref["name"], "imagePullSecret").use(pod.who, True)
    for rs in manifests.rayservices:
        auth = ((rs.get("spec") or {}).get("rayClusterConfig") or {}).get("authOptions") or {}
        # KubeRay (raycluster_controller.go, reconcileAuthSecret): token mode with a secretName uses that Secret
        # (key auth_token) and creates none; Kubernetes-token auth (enableK8sTokenAuth) uses no Secret at all.
        if auth.get("mode") == "token" and auth.get("secretName") and not auth.get("enableK8sTokenAuth"):
            need(auth["secretName"], "authOptions").use("authOptions", True, "auth_token")
    return needs


def load_manifests(kubectl: Kubectl, directory: Path, namespace: str | None = None) -> Manifests:
    """Render `directory` and, when present, `directory/setup`; objects of both, de-duplicated."""
    if not (directory / "kustomization.yaml").is_file() and not (directory / "kustomization.yml").is_file():
        raise PreflightError(f"no kustomization.yaml in {directory} (pass --manifests DIR)")
    dirs = [directory]
    setup = directory / "setup"
    if (setup / "kustomization.yaml").is_file() or (setup / "kustomization.yml").is_file():
        dirs.insert(0, setup)
    objects: dict[tuple, dict] = {}
    for d in dirs:
        for obj in kubectl.kustomize(d):
            meta = obj.get("metadata") or {}
            obj["_source"] = str(d)
            objects.setdefault((obj.get("kind"), meta.get("namespace"), meta.get("name")), obj)
    found = list(objects.values())
    rayservices = [o for o in found if o.get("kind") == "RayService"]
    if not rayservices:
        raise PreflightError(f"the manifests in {directory} render no RayService")
    rendered = ((rayservices[0].get("metadata") or {}).get("namespace") or
                next(((o.get("metadata") or {}).get("name") for o in found if o.get("kind") == "Namespace"), None)
                or "default")
    return Manifests(dirs, found, namespace or rendered, rendered)


# --- NetworkPolicies ----------------------------------------------------------------------------------------
@dataclass
class Peer:
    """A pod that wants to reach ours: its namespace (and that namespace's labels), its labels, its IP."""
    namespace: str
    namespace_labels: dict[str, str]
    labels: dict[str, str]
    ip: str | None = None


def _policy_types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy.get("spec") or {}
    if spec.get("policyTypes"):
        return list(spec["policyTypes"])
    return ["Ingress"] + (["Egress"] if spec.get("egress") else [])


def _port_covered(rule_ports: list | None, port: int, port_names: Mapping[str, int]) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if (p.get("protocol") or "TCP") != "TCP":
            continue
        value = p.get("port")
        if value is None:
            return True
        if isinstance(value, str) and not value.isdigit():
            if port_names.get(value) == port:
                return True
            continue
        start = int(value)
        end = int(p.get("endPort") or start)
        if start <= port <= end:
            return True
    return False


def peer_admits(peer: Mapping[str, Any], policy_namespace: str, src: Peer) -> bool:
    """One `from` entry of a NetworkPolicy ingress rule against a source pod."""
    if peer.get("ipBlock"):
        if not src.ip:
            return False
        try:
            ip = ipaddress.ip_address(src.ip)
            block = peer["ipBlock"]
            return ip in ipaddress.ip_network(block["cidr"], strict=False) and not any(
                ip in ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
        except (ValueError, KeyError):
            return False
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_sel is None and pod_sel is None:
        return False
    if ns_sel is None:          # only a podSelector: pods of the policy's own namespace
        ns_ok = src.namespace == policy_namespace
    else:
        ns_ok = selector_matches(ns_sel, src.namespace_labels)
    pod_ok = True if pod_sel is None else selector_matches(pod_sel, src.labels)
    return ns_ok and pod_ok


def describe_peer(peer: Mapping[str, Any], policy_namespace: str) -> str:
    if peer.get("ipBlock"):
        return f"ipBlock {peer['ipBlock'].get('cidr')}"
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns = f"namespace {policy_namespace}" if ns_sel is None else f"namespaces {describe_selector(ns_sel)}"
    return ns + ("" if pod_sel is None else f" + pods {describe_selector(pod_sel)}")


@dataclass
class IngressVerdict:
    allowed: bool
    isolated: bool                                   # some policy selects the target for ingress
    peers: list[tuple[str, dict]] = field(default_factory=list)   # (policy name, peer) of rules for the port


def ingress_allowed(policies: list[dict], namespace: str, target_labels: Mapping[str, str], port: int,
                    port_names: Mapping[str, int], src: Peer) -> IngressVerdict:
    """Whether NetworkPolicies let `src` reach `port` on a pod with `target_labels` in `namespace`: allowed
    when no policy isolates the pod for ingress, or some rule of an isolating policy covers the port and
    admits the source (no `from` = every source)."""
    isolating = [p for p in policies if "Ingress" in _policy_types(p)
                 and selector_matches((p.get("spec") or {}).get("podSelector") or {}, target_labels)]
    verdict = IngressVerdict(allowed=not isolating, isolated=bool(isolating))
    for policy in isolating:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            if not _port_covered(rule.get("ports"), port, port_names):
                continue
            peers = rule.get("from") or []
            if not peers:
                verdict.allowed = True
            for peer in peers:
                verdict.peers.append(((policy.get("metadata") or {}).get("name", "?"), peer))
                if peer_admits(peer, namespace, src):
                    verdict.allowed = True
    return verdict


def _container_ports(pod: PodTemplate) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for c in pod.containers() for p in c.get("ports") or []
            if p.get("name") and p.get("containerPort")}


# --- the CRD schema walk --------------------------------------------------------------------------------------
def unknown_fields(value: Any, schema: Mapping[str, Any] | None, path: str) -> list[str]:
    """Field paths in `value` that a structural openAPIV3Schema does not know (the API server would reject
    them with strict field validation, or prune them silently)."""
    if not isinstance(schema, Mapping):
        return []
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        for key, sub in value.items():
            if key in props:
                out += unknown_fields(sub, props[key], f"{path}.{key}")
            elif isinstance(additional, Mapping):
                out += unknown_fields(sub, additional, f"{path}.{key}")
            elif additional is True or preserve or (embedded and key in ("apiVersion", "kind", "metadata")):
                continue
            else:
                out.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            out += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


def _schema_at(schema: Mapping[str, Any] | None, *path: str) -> Mapping[str, Any] | None:
    for key in path:
        if not isinstance(schema, Mapping):
            return None
        schema = (schema.get("properties") or {}).get(key)
    return schema if isinstance(schema, Mapping) else None


def parse_version(tag: str) -> tuple[int, int, int] | None:
    m = re.search(r"v?(\d+)\.(\d+)(?:\.(\d+))?", tag or "")
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def image_tag(image: str) -> str:
    """The tag of an image reference ("" for none; a digest counts as no tag)."""
    last = image.rsplit("/", 1)[-1].split("@", 1)[0]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def image_registry(image: str) -> str:
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


# --- the checks ------------------------------------------------------------------------------------------------
class Preflight:
    def __init__(self, kubectl: Kubectl, manifests: Manifests, display_dir: str = "kuberay/") -> None:
        self.k, self.m, self.dir = kubectl, manifests, display_dir.rstrip("/")
        self.ns = manifests.namespace
        self.results: list[Result] = []
        self._namespace_obj: Any = ...

    def add(self, check: str, status: str, detail: str, fix: str = "") -> None:
        self.results.append(Result(check, status, detail, fix if status != PASS else ""))

    # helpers
    def namespace_obj(self) -> dict | None:
        if self._namespace_obj is ...:
            self._namespace_obj = self.k.get(f"/api/v1/namespaces/{self.ns}")
        return self._namespace_obj

    def target_namespace_labels(self) -> dict[str, str]:
        labels = dict(self.m.namespace_labels)
        labels.update(((self.namespace_obj() or {}).get("metadata") or {}).get("labels") or {})
        return labels

    def namespace_labels_of(self, name: str) -> dict[str, str]:
        if name == self.ns:
            return self.target_namespace_labels()
        obj = self.k.get(f"/api/v1/namespaces/{name}")
        labels = dict(((obj or {}).get("metadata") or {}).get("labels") or {})
        labels.setdefault(NAMESPACE_NAME_LABEL, name)
        return labels

    def policies(self) -> list[dict]:
        """The rendered NetworkPolicies of the RayService's namespace (they go where it goes, also when
        --namespace names another one)."""
        return [p for p in self.m.of_kind("NetworkPolicy")
                if (p.get("metadata") or {}).get("namespace") in (None, self.m.rendered_namespace)]

    def ray_pods(self) -> list[PodTemplate]:
        return [p for p in self.m.pod_templates() if p.ray]

    def pods_mounting(self, claim: str) -> list[str]:
        return [p.group for p in self.m.pod_templates() for v in p.spec.get("volumes") or []
                if ((v or {}).get("persistentVolumeClaim") or {}).get("claimName") == claim]

    def param(self, name: str, setup: bool = False) -> str | None:
        """"NAME in kuberay/params.yaml" (or setup/params.yaml) when the manifests have that parameter."""
        rel = "setup/params.yaml" if setup else "params.yaml"
        try:
            doc = yaml.safe_load((self.m.directories[-1] / rel).read_text(encoding="utf-8"))
            data = doc.get("data") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            return None
        return f"{name} in {self.dir}/{rel}" if name in data else None

    def apply_command(self) -> str:
        """The apply that brings a change of the application's manifests to the cluster (setup/ is not needed:
        the fixes that name this are about what kuberay/ itself renders)."""
        return f"kubectl apply --server-side -k {self.dir}/"

    def run(self) -> list[Result]:
        self.check_crd()
        self.check_operator()
        namespace_exists = self.check_namespace_and_secrets()
        self.check_storage(namespace_exists)
        self.check_images()
        self.check_prometheus()
        self.check_capacity()
        return self.results

    # 1. CRDs ---------------------------------------------------------------------------------------------
    def check_crd(self) -> None:
        name = "rayservices.ray.io"
        crd = self.k.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        if crd is None:
            self.add("crd", FAIL, f"CRD {name} is not installed: no KubeRay (or it was installed without CRDs)",
                     f"install the KubeRay operator {KUBERAY_VERSION}: {OPERATOR_INSTALL}; CRDs alone: "
                     + CRD_UPGRADE)
            return
        versions = {v.get("name"): v for v in (crd.get("spec") or {}).get("versions") or []}
        v1 = versions.get("v1")
        if not v1 or not v1.get("served"):
            self.add("crd", FAIL, f"{name} does not serve v1 (versions: {', '.join(sorted(map(str, versions))) or 'none'})",
                     "upgrade the CRDs: " + CRD_UPGRADE)
            return
        established = [c for c in (crd.get("status") or {}).get("conditions") or [] if c.get("type") == "Established"]
        if established and established[0].get("status") != "True":
            self.add("crd", FAIL, f"{name} is not Established: {established[0].get('message', '')}",
                     f"kubectl describe crd {name}")
            return
        schema = ((v1.get("schema") or {}).get("openAPIV3Schema")) or {}
        spec_schema = _schema_at(schema, "spec")
        has_auth = _schema_at(schema, "spec", "rayClusterConfig", "authOptions") is not None
        unknown: list[str] = []
        for rs in self.m.rayservices:
            unknown += unknown_fields(rs.get("spec") or {}, spec_schema, "spec")
        if spec_schema is None:
            self.add("crd", FAIL, f"{name} v1 has no schema for spec", "upgrade the CRDs: " + CRD_UPGRADE)
        elif not has_auth or unknown:
            shown = ", ".join(unknown[:4]) + (f" (+{len(unknown) - 4} more)" if len(unknown) > 4 else "")
            why = ("its v1 schema has no spec.rayClusterConfig.authOptions (KubeRay < 1.6)" if not has_auth else
                   "its v1 schema is older than the manifests")
            self.add("crd", FAIL, f"{name}: {why}; fields of the RayService it does not know: {shown or 'none'}",
                     "upgrade the CRDs explicitly: " + CRD_UPGRADE)
        else:
            self.add("crd", PASS, f"{name} serves v1 and its schema knows every field the RayService uses "
                                  "(incl. spec.rayClusterConfig.authOptions, KubeRay >= 1.6)")

    # 2. the operator ---------------------------------------------------------------------------------------
    def check_operator(self) -> None:
        sel = quote(OPERATOR_LABEL_SELECTOR, safe="/")
        pods = (self.k.get(f"/api/v1/pods?labelSelector={sel}") or {}).get("items") or []
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if not running:
            seen = ", ".join(f"{p['metadata'].get('namespace')}/{p['metadata'].get('name')} "
                             f"{(p.get('status') or {}).get('phase', '?')}" for p in pods)
            self.add("operator", FAIL, f"no Running KubeRay operator pod (label {OPERATOR_LABEL_SELECTOR}"
                                       f"{'; found: ' + seen if seen else ''}): nothing would reconcile the RayService",
                     OPERATOR_INSTALL)
            return
        # one line per installation (namespace + labels), not per replica
        installs: dict[tuple, list[dict]] = {}
        for p in running:
            meta = p.get("metadata") or {}
            labels = {k: v for k, v in (meta.get("labels") or {}).items() if k != "pod-template-hash"}
            installs.setdefault((meta.get("namespace", ""), tuple(sorted(labels.items()))), []).append(p)
        for (op_ns, label_items), group in installs.items():
            pod = group[0]
            labels = dict(label_items)
            containers = (pod.get("spec") or {}).get("containers") or [{}]
            main = next((c for c in containers if "kuberay" in (c.get("image") or "") or
                         c.get("name") == "kuberay-operator"), containers[0])
            image = main.get("image", "?")
            self._operator_running(op_ns, pod, group, image, main)
            self._operator_version(op_ns, image)
            self._operator_network(op_ns, labels, pod)

    def _operator_running(self, op_ns: str, pod: dict, group: list[dict], image: str, container: dict) -> None:
        names = ", ".join(p["metadata"]["name"] for p in group)
        args = [str(a) for a in (container.get("args") or []) + (container.get("command") or [])]
        watched: list[str] | None = None
        for i, a in enumerate(args):
            if a.startswith("--watch-namespace="):
                watched = a.split("=", 1)[1].split(",")
            elif a == "--watch-namespace" and i + 1 < len(args):
                watched = args[i + 1].split(",")
        watched = [w.strip() for w in watched or [] if w.strip()] or None
        if watched is not None and self.ns not in watched:
            self.add("operator", FAIL, f"{names} in {op_ns} watches only {', '.join(watched)}, not {self.ns}: "
                                       "it would never reconcile the RayService",
                     f"add {self.ns} to the operator's watchNamespace (Helm value) or install it cluster-wide")
            return
        self.add("operator", PASS, f"{names} Running in {op_ns} ({image})"
                                   + (f", watching {', '.join(watched)}" if watched else ""))

    def _operator_version(self, op_ns: str, image: str) -> None:
        tag = image_tag(image)
        version = parse_version(tag)
        if version is None:
            self.add("operator version", WARN, f"operator image {image} in {op_ns}: version not readable from "
                                               f"the tag {tag or '(none)'}",
                     f"make sure it is KubeRay >= {KUBERAY_MIN_VERSION[0]}.{KUBERAY_MIN_VERSION[1]} "
                     f"({KUBERAY_VERSION} is what the manifests are written for)")
        elif version[:2] < KUBERAY_MIN_VERSION:
            self.add("operator version", WARN, f"operator {tag} in {op_ns} is older than KubeRay "
                                               f"{KUBERAY_MIN_VERSION[0]}.{KUBERAY_MIN_VERSION[1]}: it ignores "
                                               "authOptions (token auth) and other fields the manifests use",
                     f"helm upgrade kuberay-operator kuberay/kuberay-operator --version {KUBERAY_VERSION[1:]} "
                     f"-n {op_ns}, and the CRDs: {CRD_UPGRADE}")
        else:
            self.add("operator version", PASS, f"KubeRay {tag} (>= {KUBERAY_MIN_VERSION[0]}.{KUBERAY_MIN_VERSION[1]})")

    def _operator_network(self, op_ns: str, labels: dict[str, str], pod: dict) -> None:
        heads = [p for p in self.ray_pods() if p.labels.get("ray.io/node-type") == "head"]
        if not heads:
            return
        head = heads[0]
        src = Peer(op_ns, self.namespace_labels_of(op_ns), labels, (pod.get("status") or {}).get("podIP"))
        names = _container_ports(head)
        blocked, peers, isolated = [], [], False
        for port, port_name in OPERATOR_PORTS:
            verdict = ingress_allowed(self.policies(), self.ns, head.labels, port, names, src)
            isolated |= verdict.isolated
            if not verdict.allowed:
                blocked.append(f"{port} ({port_name})")
                peers += [p for p in verdict.peers if p not in peers]
        who = f"the operator in namespace {op_ns} (labels {describe_labels(labels)})"
        if not blocked:
            how = "admitted by the NetworkPolicies" if isolated else "no NetworkPolicy restricts the head's ingress"
            self.add("operator network", PASS, f"{who} can reach the head's ports 8265 and 8000: {how}")
            return
        admitted = "; ".join(f"{pol}: {describe_peer(peer, self.ns)}" for pol, peer in peers) or \
            "no rule covers the port"
        ns_bad = not any(op_ns == self.ns if peer.get("namespaceSelector") is None else
                         selector_matches(peer["namespaceSelector"], src.namespace_labels) for _, peer in peers)
        pod_bad = not any(peer.get("podSelector") is None or selector_matches(peer["podSelector"], labels)
                          for _, peer in peers)
        fixes = []
        if ns_bad:
            where = self.param("operatorNamespace") or \
                f"the operator's namespace in {self.dir}/security/networkpolicies.yaml"
            fixes.append(f"set {where} to {op_ns}")
        if pod_bad:
            component = labels.get("app.kubernetes.io/component")
            where = self.param("operatorComponent")
            fixes.append(f"set {where} to {component}" if where and component else
                         f"make the peer's podSelector select the operator's labels ({describe_labels(labels)})")
        if not fixes:
            fixes.append(f"add an ingress rule for ports 8265/8000 from namespace {op_ns}")
        self.add("operator network", FAIL,
                 f"{who} is not admitted to the head's port{'s' if len(blocked) > 1 else ''} {' and '.join(blocked)}; "
                 f"the policies admit: {admitted}"
                 " - the operator could not PUT serveConfigV2, the RayService would never serve",
                 "; ".join(fixes) + f" (then {self.apply_command()})")

    # 3. namespace and Secrets --------------------------------------------------------------------------------
    def check_namespace_and_secrets(self) -> bool:
        needs = secret_needs(self.m)
        ns_obj = self.namespace_obj()
        if ns_obj is None:
            setup = next((d for d in self.m.directories if d.name == "setup" and self.m.has_namespace_object(d)), None)
            how = (f"it is created by kubectl apply --server-side -k {self.dir}/setup" if setup else
                   f"kubectl create namespace {self.ns}")
            required = [n for n in needs.values() if n.required]
            then = ("; then create the Secrets: " + ", ".join(
                f"{n.name}" + (f" ({_keys(sorted(k for k, r in n.keys.items() if r))})" if n.keys else "")
                for n in required)) if required else ""
            self.add("namespace", WARN, f"namespace {self.ns} does not exist yet; Secrets not checked", how + then)
            return False
        phase = (ns_obj.get("status") or {}).get("phase")
        if phase == "Terminating":
            self.add("namespace", FAIL, f"namespace {self.ns} is Terminating", "wait until it is gone, then recreate it")
            return True
        self.add("namespace", PASS, f"namespace {self.ns} exists")
        for need in needs.values():
            self._secret(need)
        return True

    def _secret(self, need: SecretNeed) -> None:
        what = {"imagePullSecret": "imagePullSecret", "authOptions": "authOptions Secret"}.get(need.purpose, "Secret")
        check = f"secret {need.name}"
        used = ("authOptions.secretName: the operator puts it in every Ray container and makes none itself"
                if need.purpose == "authOptions" else f"used by {', '.join(need.users)}")
        secret = self.k.get(f"/api/v1/namespaces/{self.ns}/secrets/{need.name}")
        required_keys = sorted(k for k, r in need.keys.items() if r)
        literal = " ".join(f"--from-literal={k}=<value>" for k in required_keys) or "--from-literal=<key>=<value>"
        create = f"kubectl -n {self.ns} create secret generic {need.name} {literal}"
        if need.purpose == "imagePullSecret":
            create = (f"kubectl -n {self.ns} create secret docker-registry {need.name} --docker-server=<registry> "
                      "--docker-password=<password> --docker-username=<user>")
        if secret is None:
            if not need.required:
                env = f": {', '.join(sorted(need.env))} stays unset" if need.env else ""
                self.add(check, PASS, f"optional Secret {need.name} not present{env} ({used})")
                return
            keys = f" ({_keys(required_keys)})" if required_keys else ""
            consequence = ("the image pull fails unless the registry is public" if need.purpose == "imagePullSecret"
                           else "the pods would stay in CreateContainerConfigError")
            self.add(check, FAIL, f"{what} {need.name}{keys} not found in {self.ns} ({used}): {consequence}",
                     create)
            return
        data = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
        missing = [k for k in required_keys if k not in data]
        if missing:
            have = ", ".join(sorted(data)) or "none"
            add = " ".join(f"--from-literal={k}=<value>" for k in missing)
            self.add(check, FAIL, f"{what} {need.name} has no key {', '.join(missing)} (its keys: {have}; "
                                  f"{used}): the pods would stay in CreateContainerConfigError",
                     f"add it (the other keys stay): kubectl -n {self.ns} create secret generic {need.name} {add} "
                     "--dry-run=client -o yaml | kubectl apply -f -")
            return
        optional_missing = sorted(k for k, r in need.keys.items() if not r and k not in data)
        keys = _keys(required_keys) if required_keys else "present"
        note = f"; optional key {', '.join(optional_missing)} absent" if optional_missing else ""
        self.add(check, PASS, f"{what} {need.name}: {keys} ({used}){note}")

    # 4. storage ------------------------------------------------------------------------------------------
    def check_storage(self, namespace_exists: bool) -> None:
        claims = [c for c in self.m.of_kind("PersistentVolumeClaim")]
        if not claims:
            return
        classes = {(c.get("metadata") or {}).get("name"): c
                   for c in (self.k.get("/apis/storage.k8s.io/v1/storageclasses") or {}).get("items") or []}
        defaults = sorted((c for c in classes.values()
                           if any(((c.get("metadata") or {}).get("annotations") or {}).get(a) == "true"
                                  for a in DEFAULT_CLASS_ANNOTATIONS)),
                          key=lambda c: (c.get("metadata") or {}).get("creationTimestamp") or "", reverse=True)
        for claim in claims:
            self._claim(claim, classes, defaults, namespace_exists)

    def _claim(self, claim: dict, classes: dict, defaults: list[dict], namespace_exists: bool) -> None:
        name = (claim.get("metadata") or {}).get("name", "?")
        spec = claim.get("spec") or {}
        check = f"pvc {name}"
        modes = list(spec.get("accessModes") or [])
        mounts = self.pods_mounting(name)
        pods = f"the pods that mount it ({', '.join(mounts)})" if mounts else "the pods that mount it"
        existing = self.k.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{name}") if namespace_exists else None
        if existing is not None:
            e_spec, status = existing.get("spec") or {}, existing.get("status") or {}
            e_class, phase = e_spec.get("storageClassName"), status.get("phase", "?")
            conflicts = []
            if modes and sorted(modes) != sorted(e_spec.get("accessModes") or []):
                conflicts.append(f"accessModes {','.join(e_spec.get('accessModes') or [])} (manifests: {','.join(modes)})")
            if "storageClassName" in spec and spec["storageClassName"] != e_class:
                conflicts.append(f"storageClassName {e_class} (manifests: {spec['storageClassName']})")
            if conflicts:
                self.add(check, FAIL, f"exists with {' and '.join(conflicts)}: a claim's spec is immutable, "
                                      "the apply would be rejected",
                         f"make the manifests match the existing claim, or move its data and delete it "
                         f"(kubectl -n {self.ns} delete pvc {name}: its volume may be deleted with it)")
            elif phase == "Bound":
                self.add(check, PASS, f"exists, Bound (class {e_class}, {','.join(status.get('accessModes') or modes)})")
            elif phase == "Pending":
                mode = (classes.get(e_class) or {}).get("volumeBindingMode")
                if mode == "WaitForFirstConsumer":
                    self.add(check, PASS, f"exists, Pending until a pod uses it (class {e_class}: WaitForFirstConsumer)")
                else:
                    self.add(check, WARN, f"exists, Pending (storageClassName {e_class}): {pods} stay Pending "
                                          "until it binds",
                             f"kubectl -n {self.ns} describe pvc {name} (events say why it does not bind)")
            else:
                self.add(check, FAIL, f"exists, {phase} (storageClassName {e_class}): {pods} cannot start",
                         f"kubectl -n {self.ns} describe pvc {name}")
            return
        named = spec.get("storageClassName")
        listing = ", ".join(sorted(map(str, classes))) or "none"

        def set_class(choice: str) -> str:
            return self._set_class_hint(name, choice, enabled=named is not None)
        if named == "":
            self.add(check, WARN, "storageClassName \"\" (no class): it binds only to a pre-created "
                                  "PersistentVolume", f"create a matching PersistentVolume, or name a class ({listing})")
            return
        if named is None:
            if not defaults:
                self.add(check, FAIL, f"names no storageClassName and the cluster has no default StorageClass "
                                      f"(classes: {listing}): it would stay Pending, and so would {pods}",
                         set_class(f"a class that can do {','.join(modes) or 'its access modes'}") +
                         ", or mark a class default: kubectl patch storageclass <name> -p "
                         "'{\"metadata\":{\"annotations\":{\"storageclass.kubernetes.io/is-default-class\":\"true\"}}}'")
                return
            sc = defaults[0]
            how = f"default class {(sc.get('metadata') or {}).get('name')}"
        else:
            sc = classes.get(named)
            if sc is None:
                self.add(check, FAIL, f"StorageClass {named} does not exist (classes: {listing}): the claim would "
                                      f"stay Pending, and so would {pods}",
                         set_class(f"one of {listing}"))
                return
            how = f"class {named}"
        provisioner = sc.get("provisioner") or "?"
        if "ReadWriteMany" in modes:
            known = next((p for p in RWX_PROVISIONERS if p in provisioner), None)
            if known is None:
                self.add(check, WARN, f"ReadWriteMany on {how} ({provisioner}), which is not known to provide "
                                      f"ReadWriteMany: if it cannot, the claim and {pods} stay Pending",
                         set_class(f"a class that can do ReadWriteMany (NFS, EFS, Filestore, CephFS, Azure "
                                   f"Files; classes here: {listing})"))
                return
            if known == "longhorn":
                self.add(check, WARN, f"ReadWriteMany on {how} ({provisioner}): Longhorn gives ReadWriteMany only "
                                      f"with its RWX support (share manager, NFS client on the nodes); else {pods} "
                                      "stay Pending",
                         "enable Longhorn's RWX support (nfs-common on every node) or use another RWX class")
                return
        self.add(check, PASS, f"{','.join(modes) or 'no access modes'} on {how} ({provisioner})")

    def _set_class_hint(self, claim: str, choice: str, enabled: bool) -> str:
        """How to give a claim its class: kuberay/setup's parameter (and its component, unless a class is set
        already), else the claim's storageClassName."""
        where = self.param("storageClass", setup=True)
        if where is None:
            return f"set storageClassName on {claim} to {choice}"
        component = "" if enabled else \
            f" and enable the storage-class component in {self.dir}/setup/kustomization.yaml"
        return f"set {where} to {choice}{component} (then kubectl apply --server-side -k {self.dir}/setup)"

    # 5. images ---------------------------------------------------------------------------------------------
    def check_images(self) -> None:
        images: dict[str, list[PodTemplate]] = {}
        for pod in self.m.pod_templates():
            for c in pod.containers() + pod.containers(init=True):
                if c.get("image"):
                    images.setdefault(c["image"], [])
                    if pod not in images[c["image"]]:
                        images[c["image"]].append(pod)
        where = f"images: in {self.dir}/kustomization.yaml (newName/newTag)"
        for image, pods in images.items():
            registry = image_registry(image)
            name = image.split("@", 1)[0].rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image.split("@", 1)[0]
            if registry == PLACEHOLDER_REGISTRY or registry.endswith("." + PLACEHOLDER_REGISTRY):
                self.add("image", FAIL, f"{image} still has the placeholder registry {PLACEHOLDER_REGISTRY}",
                         f"push the image (docs/kubernetes.md, Build and push the image) and set {where}")
                continue
            if name == PLACEHOLDER_IMAGE:
                self.add("image", FAIL, f"{image} is the unreplaced placeholder name (kustomize's images: did not "
                                        "apply)", f"set {where}")
                continue
            pulls = {id(p): self._pull_secrets(p) for p in pods}
            pull = sorted(set().union(*pulls.values()))
            without = [p for p in pods if not pulls[id(p)]]
            if pull and without and registry not in PUBLIC_REGISTRIES:
                accounts = sorted({p.spec.get("serviceAccountName") or "default" for p in without})
                self.add("image", WARN, f"{image}: pull secrets {', '.join(pull)} for some pods, none for "
                                        f"{', '.join(p.who for p in without)}: their image pull fails unless the "
                                        "registry lets the nodes pull",
                         f"add imagePullSecrets ({', '.join(pull)}) to the ServiceAccount "
                         f"{', '.join(accounts)} too ({self.dir}/security/serviceaccount.yaml)")
            elif pull:
                self.add("image", PASS, f"{image} (pull secrets {', '.join(pull)})")
            elif registry in PUBLIC_REGISTRIES:
                self.add("image", PASS, f"{image} (public registry {registry})")
            else:
                self.add("image", WARN, f"{image}: registry {registry}, no imagePullSecrets",
                         "if the registry is private, add imagePullSecrets to the pod templates (or to their "
                         "ServiceAccount), unless the nodes can pull from it themselves (e.g. an ECR node role)")

    def _pull_secrets(self, pod: PodTemplate) -> set[str]:
        """The imagePullSecrets a pod gets: its own and its ServiceAccount's."""
        account = self.m.service_account(pod.spec.get("serviceAccountName") or "") or {}
        return {s.get("name") for s in (pod.spec.get("imagePullSecrets") or []) +
                (account.get("imagePullSecrets") or []) if s.get("name")}

    # 6. Prometheus --------------------------------------------------------------------------------------------
    def check_prometheus(self) -> None:
        monitors, rules = self.m.of_kind("PodMonitor"), self.m.of_kind("PrometheusRule")
        if monitors or rules:
            self._prometheus(monitors, rules)
            self._runbooks(rules)

    def _prometheus(self, monitors: list[dict], rules: list[dict]) -> None:
        """The CRDs, a Prometheus that selects our objects, its way through the NetworkPolicies."""
        missing = []
        for crd, objs, kind in (("podmonitors.monitoring.coreos.com", monitors, "PodMonitor"),
                                ("prometheusrules.monitoring.coreos.com", rules, "PrometheusRule")):
            if objs and self.k.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}") is None:
                missing.append((crd, len(objs), kind))
        if missing:
            # kubectl apply applies everything else and reports these at the end (exit code 1): the service
            # serves, unobserved.
            self.add("prometheus crds", WARN, "missing " + ", ".join(
                f"{crd} (kubectl apply would reject the {n} {kind} object{'s' if n > 1 else ''})"
                for crd, n, kind in missing) + ": the rest is applied (kubectl exits 1), but nothing scrapes the "
                "Ray pods and no alert exists",
                "install kube-prometheus-stack (docs/kubernetes.md, Prerequisites) or prometheus-operator's CRDs, "
                f"or take monitoring/ out of the resources in {self.dir}/kustomization.yaml")
            return
        self.add("prometheus crds", PASS, "podmonitors and prometheusrules.monitoring.coreos.com exist")
        proms = (self.k.get("/apis/monitoring.coreos.com/v1/prometheuses") or {}).get("items") or []
        if not proms:
            self.add("prometheus", WARN, "no Prometheus object in the cluster: nothing would scrape the Ray pods "
                                         "or evaluate the alerts",
                     "install kube-prometheus-stack (docs/kubernetes.md, Prerequisites)")
            return
        ns_labels = self.target_namespace_labels()
        selecting = []
        for kind, objs, sel_key, ns_key, helm in (
                ("PodMonitor", monitors, "podMonitorSelector", "podMonitorNamespaceSelector",
                 "podMonitorSelectorNilUsesHelmValues"),
                ("PrometheusRule", rules, "ruleSelector", "ruleNamespaceSelector", "ruleSelectorNilUsesHelmValues")):
            if not objs:
                continue
            check = "prometheus podmonitors" if kind == "PodMonitor" else "prometheus rules"
            names = [(o.get("metadata") or {}).get("name") for o in objs]
            reasons, chosen = [], []
            for prom in proms:
                meta, pspec = prom.get("metadata") or {}, prom.get("spec") or {}
                pname = _name(prom)
                sel, ns_sel = pspec.get(sel_key), pspec.get(ns_key)
                if ns_sel is None:
                    ns_ok = meta.get("namespace") == self.ns
                    ns_why = f"{ns_key} is not set: only its own namespace {meta.get('namespace')}"
                else:
                    ns_ok = selector_matches(ns_sel, ns_labels)
                    ns_why = f"{ns_key} wants namespaces {describe_selector(ns_sel)}"
                unmatched = [o for o in objs if not selector_matches(sel, (o.get("metadata") or {}).get("labels") or {})]
                if ns_ok and not unmatched:
                    chosen.append(prom)
                    continue
                why = []
                if sel is None:
                    why.append(f"{sel_key} is not set (selects no {kind})")
                elif unmatched:
                    ours = describe_labels((unmatched[0].get("metadata") or {}).get("labels") or {})
                    why.append(f"{sel_key} wants {describe_selector(sel)} (ours: {ours})")
                if not ns_ok:
                    why.append(ns_why)
                reasons.append(f"{pname}: {'; '.join(why)}")
            if chosen:
                who = ", ".join(_name(p) for p in chosen)
                self.add(check, PASS, f"Prometheus {who} selects {', '.join(names)}")
                selecting += [p for p in chosen if p not in selecting]
            else:
                wanted = sorted({str(rel) for p in proms if (rel := ((((p.get("spec") or {}).get(sel_key) or {})
                                                                      .get("matchLabels") or {}).get("release")))})
                release = self.param("prometheusRelease")
                how = (f"set {release} to {' or '.join(wanted)}" if release and wanted else
                       f"label the {kind}s in {self.dir}/monitoring/ with the labels wanted above")
                self.add(check, WARN, f"no Prometheus selects {', '.join(names)}: {' | '.join(reasons)}",
                         f"{how}, or widen the Prometheus' selectors (kube-prometheus-stack: --set "
                         f"prometheus.prometheusSpec.{helm}=false)")
        self._prometheus_network(selecting)

    def _runbooks(self, rules: list[dict]) -> None:
        """The alerts' runbook_url annotations: still the placeholder base of kuberay/params.yaml?"""
        urls = {}
        for obj in rules:
            for group in (obj.get("spec") or {}).get("groups") or []:
                for rule in group.get("rules") or []:
                    url = ((rule or {}).get("annotations") or {}).get("runbook_url")
                    if url:
                        urls[rule.get("alert") or rule.get("record") or "?"] = str(url)
        if not urls:
            return
        placeholder = sorted(a for a, u in urls.items() if u.startswith(PLACEHOLDER_RUNBOOK_BASE))
        if placeholder:
            shown = ", ".join(placeholder[:3]) + (f" (+{len(placeholder) - 3} more)" if len(placeholder) > 3 else "")
            where = self.param("runbookBaseUrl") or f"the runbook_url annotations in {self.dir}/monitoring/"
            self.add("prometheus runbooks", WARN,
                     f"{len(placeholder)} of {len(urls)} alerts link their runbook_url to the placeholder "
                     f"{PLACEHOLDER_RUNBOOK_BASE} ({shown}): whoever is paged follows a dead link",
                     f"set {where} to where your team reads this repository (the alerts append "
                     f"/docs/runbooks.md#<alert>), then {self.apply_command()}")
        else:
            bases = sorted({u.split("#", 1)[0] for u in urls.values()})
            self.add("prometheus runbooks", PASS, f"{len(urls)} alerts link their runbooks at {', '.join(bases[:2])}"
                     + (f" (+{len(bases) - 2} more)" if len(bases) > 2 else ""))

    def _prometheus_network(self, proms: list[dict]) -> None:
        """Whether the NetworkPolicies let the selecting Prometheus' pods reach the metrics port."""
        targets = [p for p in self.ray_pods()]
        for prom in proms:
            meta = prom.get("metadata") or {}
            p_ns, p_name = meta.get("namespace", ""), meta.get("name", "")
            sel = quote(f"operator.prometheus.io/name={p_name}", safe="/")
            pods = (self.k.get(f"/api/v1/namespaces/{p_ns}/pods?labelSelector={sel}") or {}).get("items") or []
            if not pods:
                self.add("prometheus network", WARN, f"no pod of Prometheus {p_ns}/{p_name} found: scraping not checked",
                         f"kubectl -n {p_ns} get pods -l operator.prometheus.io/name={p_name}")
                continue
            pod = pods[0]
            labels = (pod.get("metadata") or {}).get("labels") or {}
            src = Peer(p_ns, self.namespace_labels_of(p_ns), labels, (pod.get("status") or {}).get("podIP"))
            blocked = [t.group for t in targets
                       if not ingress_allowed(self.policies(), self.ns, t.labels, METRICS_PORT[0],
                                              _container_ports(t), src).allowed]
            if blocked:
                where = self.param("prometheusNamespace")
                self.add("prometheus network", WARN, f"Prometheus {p_ns}/{p_name} (namespace {p_ns}) is not admitted "
                                                     f"to the metrics port {METRICS_PORT[0]} of {', '.join(blocked)}",
                         f"set {where} to {p_ns}" if where else f"admit namespace {p_ns} in the metrics "
                         f"NetworkPolicy ({self.dir}/security/networkpolicies.yaml)")
            else:
                self.add("prometheus network", PASS, f"Prometheus {p_ns}/{p_name} may scrape port {METRICS_PORT[0]} "
                                                     "of every Ray pod")

    # 7. capacity ------------------------------------------------------------------------------------------------
    def check_capacity(self) -> None:
        pods = [p for p in self.ray_pods()]
        if not pods:
            return
        nodes = (self.k.get("/api/v1/nodes") or {}).get("items") or []
        usable = []
        for node in nodes:
            alloc = (node.get("status") or {}).get("allocatable") or {}
            try:
                usable.append((node, parse_quantity(alloc.get("cpu", 0)), parse_quantity(alloc.get("memory", 0))))
            except ValueError:
                continue
        fits_nowhere, largest, needed_now = [], None, False
        for pod in pods:
            req = pod.requests()
            if largest is None or (req["cpu"], req["memory"]) > (largest[1]["cpu"], largest[1]["memory"]):
                largest = (pod, req)
            if not any(_schedulable(node, pod) and cpu >= req["cpu"] and mem >= req["memory"]
                       for node, cpu, mem in usable):
                fits_nowhere.append(f"{pod.group} ({_fmt_cpu(req['cpu'])} CPU / {_fmt_mem(req['memory'])})")
                needed_now |= pod.replicas > 0
        sched = [(n, c, m) for n, c, m in usable if not (n.get("spec") or {}).get("unschedulable")]
        total_cpu = sum(p.requests()["cpu"] * p.replicas for p in pods)
        total_mem = sum(p.requests()["memory"] * p.replicas for p in pods)
        have_cpu, have_mem = sum(c for _, c, _ in sched), sum(m for _, _, m in sched)
        biggest = max(sched, key=lambda t: (t[1], t[2]), default=None)
        node_info = (f"{len(sched)} schedulable node{'s' if len(sched) != 1 else ''}, largest allocatable "
                     f"{_fmt_cpu(biggest[1])} CPU / {_fmt_mem(biggest[2])}" if biggest else "no schedulable node")
        if fits_nowhere:
            provisioner = self._node_provisioner(nodes)
            fix = ("add larger nodes (or a node group the cluster autoscaler can grow), or lower the requests in "
                   f"{self.dir}/rayservice.yaml")
            if provisioner or not needed_now:
                why = (f"unless {provisioner} adds a node that fits" if provisioner else
                       "when the autoscaler asks for them (none at the minimum size)")
                self.add("capacity", WARN, f"no schedulable node fits {', '.join(fits_nowhere)} ({node_info}): "
                                           f"those pods would stay Pending {why}",
                         f"make sure {provisioner} can make such nodes, or {fix}" if provisioner else fix)
            else:
                self.add("capacity", FAIL, f"no schedulable node fits {', '.join(fits_nowhere)} ({node_info}; no "
                                           "cluster autoscaler or Karpenter seen): those pods would stay Pending",
                         fix)
        elif have_cpu < total_cpu or have_mem < total_mem:
            self.add("capacity", WARN, f"the Ray cluster at min size needs {_fmt_cpu(total_cpu)} CPU / "
                                       f"{_fmt_mem(total_mem)}; the schedulable nodes have {_fmt_cpu(have_cpu)} CPU / "
                                       f"{_fmt_mem(have_mem)} allocatable in all",
                     "add nodes (a NewCluster upgrade needs room for two clusters at once)")
        else:
            pod, req = largest
            self.add("capacity", PASS, f"largest Ray pod {pod.group} ({_fmt_cpu(req['cpu'])} CPU / "
                                       f"{_fmt_mem(req['memory'])}) fits; {node_info}; min size {_fmt_cpu(total_cpu)} "
                                       f"CPU / {_fmt_mem(total_mem)} of {_fmt_cpu(have_cpu)} / {_fmt_mem(have_mem)} "
                                       "allocatable (not counting running pods)")

    def _node_provisioner(self, nodes: list[dict]) -> str:
        """What adds nodes on demand here ("" when nothing is seen): Karpenter (its node labels) or the
        cluster autoscaler (its status ConfigMap; unreadable counts as not seen)."""
        if any(key in ((n.get("metadata") or {}).get("labels") or {}) for n in nodes for key in KARPENTER_NODE_LABELS):
            return "Karpenter"
        if self.k.get(CLUSTER_AUTOSCALER_STATUS, optional=True) is not None:
            return "the cluster autoscaler"
        return ""


def _keys(keys: list[str]) -> str:
    """'key a' or 'keys a, b'."""
    return f"key{'s' if len(keys) > 1 else ''} {', '.join(keys)}"


def _name(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def _tolerates(tolerations: list[dict], taint: dict) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def _schedulable(node: dict, pod: PodTemplate) -> bool:
    """Not cordoned, no NoSchedule/NoExecute taint the pod does not tolerate, its nodeSelector holds."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    tolerations = pod.spec.get("tolerations") or []
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(tolerations, taint):
            return False
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == str(v) for k, v in (pod.spec.get("nodeSelector") or {}).items())


# --- entry points -----------------------------------------------------------------------------------------------
def run(manifests_dir: Path, kubeconfig: str | None = None, context: str | None = None,
        namespace: str | None = None, timeout: float = 15.0, display_dir: str | None = None,
        kubectl_binary: str = "kubectl") -> Report:
    """Render the manifests, then run every check against the cluster kubectl points at."""
    k = Kubectl(kubeconfig, context, timeout, kubectl_binary)
    manifests = load_manifests(k, manifests_dir, namespace)
    version = k.get("/version") or {}          # also the connectivity check: an unreachable cluster stops here
    cfg = k.config()
    checks = Preflight(k, manifests, display_dir or str(manifests_dir))
    results = checks.run()
    return Report(results, context=cfg.get("context", ""), server=cfg.get("server", ""),
                  kubernetes=str(version.get("gitVersion", "")), manifests=[str(d) for d in manifests.directories],
                  namespace=manifests.namespace,
                  rayservices=[(o.get("metadata") or {}).get("name", "?") for o in manifests.rayservices])


def format_report(report: Report) -> str:
    lines = [f"preflight: context {report.context or '?'} ({report.server or '?'}, Kubernetes "
             f"{report.kubernetes or '?'}); manifests {' + '.join(report.manifests)}; RayService "
             f"{', '.join(report.rayservices)} in namespace {report.namespace}", ""]
    width = max((len(r.check) for r in report.results), default=0)
    for r in report.results:
        lines.append(f"{r.status}  {r.check.ljust(width)}  {r.detail}")
        if r.status != PASS and r.fix:
            lines.append(f"      fix: {r.fix}")
    counts = {s: sum(r.status == s for r in report.results) for s in (PASS, WARN, FAIL)}
    verdict = ("fix the FAILs before applying: nothing would serve" if counts[FAIL] else
               "nothing blocks the apply; read the WARNs" if counts[WARN] else "ready to apply")
    warnings = f"{counts[WARN]} warning{'' if counts[WARN] == 1 else 's'}"
    lines += ["", f"{counts[PASS]} passed, {warnings}, {counts[FAIL]} failed: {verdict}"]
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps([asdict(r) for r in report.results], indent=2)
