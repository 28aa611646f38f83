"""Generate the RayService's `serveConfigV2` from configs/serve_config.yaml (`make kuberay`), and the market
source of the ConfigMap the collector and the migration read (SIGNAL_EXCHANGE, SIGNAL_QUOTE) from its
`market_source`.

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

The exchange and quote currency the service trades on are named once, in the serve config's
`market_source`: the replicas read that (it wins over their environment), and this script copies it into
kuberay/configmap.yaml's SIGNAL_EXCHANGE and SIGNAL_QUOTE (between two marker comments too), which the collector
CronJobs write candles under and the schema migration labels existing rows with. So the collector can never
fill one market while the service reads another.

    python kuberay/generate.py           # rewrite the blocks in kuberay/rayservice.yaml and kuberay/configmap.yaml
    python kuberay/generate.py --check   # exit 1 (and say so) when a manifest is stale
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
CONFIGMAP = ROOT / "kuberay" / "configmap.yaml"

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
SOURCE_BEGIN = "# BEGIN GENERATED market source"
SOURCE_END = "# END GENERATED market source"


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


def _replace_block(text: str, begin: str, end: str, block: str, name: str) -> str:
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip().startswith(begin)]
    ends = [i for i, line in enumerate(lines) if line.strip().startswith(end)]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(f"{name}: expected one '{begin}' line followed by one '{end}' line")
    return "".join(lines[:starts[0]]) + block + "".join(lines[ends[0] + 1:])


def render_manifest(manifest_text: str, config: dict[str, Any]) -> str:
    """`manifest_text` with the generated block replaced by a fresh one."""
    return _replace_block(manifest_text, BEGIN, END, generated_block(config), MANIFEST.name)


def market_source_env(config: dict[str, Any]) -> dict[str, str]:
    """SIGNAL_EXCHANGE and SIGNAL_QUOTE of the serve config's `market_source` (every application's must agree:
    the collector fills one market)."""
    sources = {(s.get("exchange"), s.get("quote")) for s in
               ((app.get("args") or {}).get("market_source") for app in config.get("applications", [])) if s}
    if len(sources) != 1 or None in next(iter(sources), (None,)):
        raise ValueError("the serve config must name one market_source (exchange and quote) in its applications' "
                         f"args: the collector's SIGNAL_EXCHANGE/SIGNAL_QUOTE are generated from it; found {sources}")
    exchange, quote = sources.pop()
    return {"SIGNAL_EXCHANGE": str(exchange), "SIGNAL_QUOTE": str(quote)}


def render_configmap(configmap_text: str, config: dict[str, Any]) -> str:
    """`configmap_text` (kuberay/configmap.yaml) with the market source block replaced by a fresh one."""
    lines = [f"{INDENT}{SOURCE_BEGIN} by `make kuberay` (kuberay/generate.py) from configs/serve_config.yaml "
             "market_source: do not edit"]
    lines += [f"{INDENT}{key}: {value}" for key, value in market_source_env(config).items()]
    lines.append(f"{INDENT}{SOURCE_END}")
    return _replace_block(configmap_text, SOURCE_BEGIN, SOURCE_END, "\n".join(lines) + "\n", CONFIGMAP.name)


def load_serve_config(path: Path = SERVE_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python kuberay/generate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when the manifest is stale")
    ap.add_argument("--config", type=Path, default=SERVE_CONFIG)
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--configmap", type=Path, default=CONFIGMAP)
    a = ap.parse_args(argv)

    config = load_serve_config(a.config)
    stale = 0
    for path, render, what in ((a.manifest, render_manifest, "serveConfigV2"),
                               (a.configmap, render_configmap, "SIGNAL_EXCHANGE/SIGNAL_QUOTE")):
        current = path.read_text(encoding="utf-8")
        fresh = render(current, config)
        if a.check:
            if fresh != current:
                print(f"{path} is stale: run `make kuberay`", file=sys.stderr)
                stale = 1
            else:
                print(f"{path} is up to date")
        elif fresh != current:
            path.write_text(fresh, encoding="utf-8")
            print(f"wrote {what} of {path} from {a.config}")
        else:
            print(f"{path} already up to date")
    return stale


if __name__ == "__main__":
    sys.exit(main())
