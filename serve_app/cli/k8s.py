"""`signalgen k8s preflight`: before `kubectl apply --server-side -k kuberay/`, what on this cluster would
stop the RayService from ever serving (KubeRay CRDs and operator, its network path to the head, the
namespace and Secrets, storage, the image, Prometheus, node capacity).

Read-only: the cluster is read with `kubectl get --raw` (any kubeconfig auth works), the manifests are
rendered with `kubectl kustomize`. The checks are serve_app/k8s/preflight.py; this module parses and prints.
Exit 0: no FAIL; 1: some FAIL; 2: the checks could not run (no kubectl, cluster unreachable, 401/403).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("k8s", help="Kubernetes: preflight checks of a cluster before applying kuberay/",
                       description=__doc__.split("\n\n")[0])
    ksub = p.add_subparsers(dest="k8s_command", metavar="ACTION", required=True)
    pf = ksub.add_parser("preflight", help="read-only: what would stop the RayService from serving on this cluster",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pf.add_argument("--kubeconfig", help="kubeconfig file (default: kubectl's: $KUBECONFIG or ~/.kube/config)")
    pf.add_argument("--context", help="kubeconfig context (default: the current one)")
    pf.add_argument("--namespace", help="target namespace (default: the RayService's in the manifests)")
    pf.add_argument("--manifests", type=Path, metavar="DIR",
                    help="kustomization directory (default: kuberay/ of the checkout or $SIGNALGEN_HOME); its "
                         "setup/ kustomization is read too when present")
    pf.add_argument("--json", action="store_true", help="print the results as a JSON list")
    pf.add_argument("--timeout", type=float, default=15.0, help="seconds per API request (default %(default)s)")
    pf.set_defaults(func=cmd_preflight)


def _display(path: Path) -> str:
    """The manifests directory as the operator would type it (relative to the working directory if inside)."""
    try:
        rel = os.path.relpath(path.resolve(), Path.cwd())
    except ValueError:          # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel.rstrip("/") + "/"


def cmd_preflight(args: argparse.Namespace) -> int:
    from serve_app.k8s import preflight
    from serve_app.settings import project_home

    if args.timeout <= 0:
        print("error: --timeout must be positive", file=sys.stderr)
        return 2
    directory = args.manifests or project_home() / "kuberay"
    try:
        report = preflight.run(directory, kubeconfig=args.kubeconfig, context=args.context,
                               namespace=args.namespace, timeout=args.timeout, display_dir=_display(directory))
    except preflight.PreflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(preflight.report_json(report) if args.json else preflight.format_report(report))
    return 1 if report.failed else 0
