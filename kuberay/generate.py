"""Generate the RayService's `serveConfigV2` from configs/serve_config.yaml (`make kuberay`).

configs/serve_config.yaml stays the single source of truth for the application (args, deployments,
autoscaling, health checks). kuberay/rayservice.yaml carries a copy of it between two marker comments;
this script rewrites that block and nothing else, so the hand-written rest of the manifest (and its
comments) is left alone. tests/unit/test_kuberay_manifests.py fails when the committed block differs from
a fresh generation, so the two can never drift.

The copy differs from the local config by a small overlay, and only by it (see `cluster_serve_config`):

  http_options.host   127.0.0.1 -> 0.0.0.0   the proxy must listen on the pod IP: the serve Service, the
                                             operator's /-/healthz check and other pods reach it there
  proxy_location      HeadOnly  -> EveryNode  a proxy on every node that runs replicas, so the serve
                                             Service (which selects every pod with a healthy proxy)
                                             spreads traffic instead of funnelling it through the head
  MLEngine            + ray_actor_options.resources: {ml_engine: 1}, num_cpus -> 0
                                             each ML replica needs one unit of the custom resource that
                                             only the `ml-workers` group advertises, so it lands there;
                                             the group advertises ML_ENGINE_PER_POD unit per pod and no
                                             logical CPU (num-cpus "0"), so no CPU stage — which Serve
                                             would otherwise spread onto it — can take an ML pod's room,
                                             and each ML replica has its pod's CPU to itself (XGBoost
                                             runs with nthread=1)

    python kuberay/generate.py           # rewrite the block in kuberay/rayservice.yaml
    python kuberay/generate.py --check   # exit 1 (and say so) when the manifest is stale
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "configs" / "serve_config.yaml"
MANIFEST = ROOT / "kuberay" / "rayservice.yaml"

# --- the overlay -----------------------------------------------------------------------------------
HTTP_HOST = "0.0.0.0"
PROXY_LOCATION = "EveryNode"
ML_DEPLOYMENT = "MLEngine"
ML_RESOURCE = "ml_engine"
ML_RESOURCE_PER_REPLICA = 1
ML_NUM_CPUS = 0
# What one pod of the ml-workers group advertises (rayStartParams.resources in rayservice.yaml; a test
# checks that the group's capacity, maxReplicas x this, covers MLEngine's max_replicas).
ML_ENGINE_PER_POD = 1

BEGIN = "# BEGIN GENERATED serveConfigV2"
END = "# END GENERATED serveConfigV2"
INDENT = "  "  # serveConfigV2 is a key of `spec`


def cluster_serve_config(config: dict[str, Any]) -> dict[str, Any]:
    """The serve config as the cluster runs it: `config` plus the overlay above, nothing else changed."""
    out = copy.deepcopy(config)
    out["proxy_location"] = PROXY_LOCATION
    out.setdefault("http_options", {})["host"] = HTTP_HOST
    found = 0
    for app in out.get("applications", []):
        for dep in app.get("deployments", []):
            if dep.get("name") == ML_DEPLOYMENT:
                options = dep.setdefault("ray_actor_options", {})
                resources = dict(options.get("resources") or {})
                resources[ML_RESOURCE] = ML_RESOURCE_PER_REPLICA
                options["resources"] = resources
                options["num_cpus"] = ML_NUM_CPUS
                found += 1
    if not found:
        raise ValueError(f"no deployment named {ML_DEPLOYMENT} in the serve config: nothing to pin to the ML group")
    return out


def render_serve_config(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True)


def generated_block(config: dict[str, Any]) -> str:
    """The lines between (and including) the markers, indented as keys of `spec`."""
    body = render_serve_config(cluster_serve_config(config))
    lines = [f"{INDENT}{BEGIN} by `make kuberay` (kuberay/generate.py) from configs/serve_config.yaml: do not edit",
             f"{INDENT}serveConfigV2: |"]
    lines += [f"{INDENT}  {line}" if line else "" for line in body.splitlines()]
    lines.append(f"{INDENT}{END}")
    return "\n".join(lines) + "\n"


def render_manifest(manifest_text: str, config: dict[str, Any]) -> str:
    """`manifest_text` with the generated block replaced by a fresh one."""
    lines = manifest_text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip().startswith(END)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{MANIFEST.name}: expected one '{BEGIN}' line followed by one '{END}' line")
    return "".join(lines[:starts[0]]) + generated_block(config) + "".join(lines[ends[0] + 1:])


def load_serve_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python kuberay/generate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when the manifest is stale")
    ap.add_argument("--config", type=Path, default=SERVE_CONFIG)
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    a = ap.parse_args(argv)

    current = a.manifest.read_text(encoding="utf-8")
    fresh = render_manifest(current, load_serve_config(a.config))
    if a.check:
        if fresh != current:
            print(f"{a.manifest} is stale: run `make kuberay`", file=sys.stderr)
            return 1
        print(f"{a.manifest} is up to date")
        return 0
    if fresh != current:
        a.manifest.write_text(fresh, encoding="utf-8")
        print(f"wrote serveConfigV2 of {a.manifest} from {a.config}")
    else:
        print(f"{a.manifest} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
