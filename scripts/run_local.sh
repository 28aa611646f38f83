#!/usr/bin/env bash
# Start a local Ray head (dashboard on 127.0.0.1, metrics on a fixed port), run the Serve config in the
# foreground, and on exit (Ctrl-C included) stop exactly the Ray processes this script started: they
# all carry this run's --temp-dir, so another Ray cluster on the machine is left alone.
set -euo pipefail
: "${RAY_PORT:=6380}" "${DASHBOARD_PORT:=8265}" "${METRICS_PORT:=8080}"
: "${SERVE_CONFIG:=configs/serve_config.yaml}" "${VENV:=.venv}"
BIN="$VENV/bin"
export RAY_AUTH_MODE=token   # Ray clusters have token auth on; the serve CLI must send the token
export RAY_ADDRESS="127.0.0.1:$RAY_PORT"
# Serve's throughput-optimized mode (gRPC between replicas, user code on the replica's event loop) roughly
# doubles what the graph sustains here; its direct ingress measured slower for this graph, so the HTTP
# proxy stays (bench/results, docs/performance.md). Set before `ray start`: the replicas inherit it.
export RAY_SERVE_THROUGHPUT_OPTIMIZED="${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}"
export RAY_SERVE_ENABLE_DIRECT_INGRESS="${RAY_SERVE_ENABLE_DIRECT_INGRESS:-0}"
TEMP_DIR="/tmp/ray-signalgen-$RAY_PORT"   # short: Ray's socket paths must stay under 108 characters
# every process of this cluster inherits it: `make stop` (scripts/ray_procs.py) finds them all by it
export SIGNALGEN_RAY_TEMP_DIR="$TEMP_DIR"

if "$BIN/ray" status --address "$RAY_ADDRESS" >/dev/null 2>&1; then
  echo "A Ray cluster already answers on $RAY_ADDRESS: run 'make stop' first." >&2
  exit 1
fi

cleanup() {
  trap - EXIT INT TERM
  echo "Stopping the local Ray cluster ($TEMP_DIR)..."
  "$BIN/python" scripts/ray_procs.py stop "$TEMP_DIR" || true
}
trap cleanup EXIT INT TERM

# `ray start` with token auth needs a token; created once (owner-only, never printed) where Ray looks for it
"$BIN/python" scripts/ray_procs.py token
"$BIN/ray" start --head --port="$RAY_PORT" --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --metrics-export-port="$METRICS_PORT" --num-cpus=2 --temp-dir="$TEMP_DIR" --disable-usage-stats >/dev/null
echo "Ray dashboard: http://127.0.0.1:$DASHBOARD_PORT   Ray metrics: http://127.0.0.1:$METRICS_PORT/metrics   Ray temp dir: $TEMP_DIR"
echo "Serving $SERVE_CONFIG on http://127.0.0.1:8000 (Ctrl-C to stop)"
# serve run blocks; on Ctrl-C it shuts the application down itself, then cleanup stops the cluster.
"$BIN/serve" run "$SERVE_CONFIG" || true
