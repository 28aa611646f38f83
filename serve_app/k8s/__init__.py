"""Kubernetes tooling for operators (`signalgen k8s ...`): read-only checks of a cluster against kuberay/.

Talks to the cluster only through the `kubectl` binary, so every kubeconfig auth method works. Nothing but
the `signalgen k8s` command imports this package, and it imports nothing of the service, Ray or the HTTP
layer (tests/unit/test_k8s_preflight.py checks).
"""
