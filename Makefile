# Two commands do everything on a fresh clone:  make run   |   make test
SHELL := /bin/bash
# Python 3.10-3.14 (Ray 2.60's range; tested on 3.11): scripts/find_python.sh picks an installed one, or
# make run PY_SYS=/path/to/python3.x
PY_SYS ?=
VENV   := .venv
PY     := $(VENV)/bin/python
SIGNALGEN := $(VENV)/bin/signalgen
STAMP  := $(VENV)/.installed
RAY_PORT ?= 6380
DASHBOARD_PORT ?= 8265
METRICS_PORT ?= 8080
SERVE_CONFIG ?= configs/serve_config.yaml
PYTEST_ARGS ?=

BENCH_ARGS ?=

.PHONY: docs-plots hey tools run test setup venv seed-db train model stop clean help bench bench-evaluate measure-head loadtest kuberay kuberay-check

help:
	@echo "make run      set up (venv, sample data, default model) and serve on http://127.0.0.1:8000"
	@echo "make test     set up and run the whole test suite (needs MariaDB on 127.0.0.1:3306)"
	@echo "make seed-db  (re)load the synthetic sample data into the configured store"
	@echo "make train    train a new model on the configured store (CURRENT only if the registry has none;"
	@echo "              otherwise: signalgen evaluate --model-version V, then signalgen models promote V)"
	@echo "make stop     stop the local Ray cluster started by make run"
	@echo "make bench    benchmark the graph against its floors (writes bench/results/latest.json)"
	@echo "make bench-evaluate  time signalgen evaluate on 45,000 one-minute candles, by phase"
	@echo "make measure-head    measure the Ray head's memory as the RayService runs it (kuberay/head-sizing.json)"
	@echo "make loadtest hey -n 1000 -c 10 plus a 5-minute soak with memory growth (LOADTEST_ARGS=--soak-seconds 60)"
	@echo "make kuberay  regenerate serveConfigV2 in kuberay/rayservice.yaml (and the market source in kuberay/configmap.yaml) from configs/serve_config.yaml"

$(STAMP): pyproject.toml
	@test -x $(PY) || { py=$$(scripts/find_python.sh $(PY_SYS)) \
		&& echo "Creating $(VENV) with $$py ($$($$py --version 2>&1))" && $$py -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[toolkit,test]"
	@touch $(STAMP)

venv: $(STAMP)

# The embedded default: SQLite + synthetic sample data (re-anchored to now when stale), a trained model.
setup: venv
	$(SIGNALGEN) store seed --if-missing-or-stale
	$(SIGNALGEN) train --if-missing

seed-db: venv
	$(SIGNALGEN) store seed

train: venv
	$(SIGNALGEN) train

model: train

run: setup
	@RAY_PORT=$(RAY_PORT) DASHBOARD_PORT=$(DASHBOARD_PORT) METRICS_PORT=$(METRICS_PORT) \
		SERVE_CONFIG=$(SERVE_CONFIG) VENV=$(VENV) bash scripts/run_local.sh

stop:
	-$(PY) scripts/ray_procs.py stop /tmp/ray-signalgen-$(RAY_PORT)

# kuberay/rayservice.yaml's serveConfigV2 is generated from the serve config (plus a small cluster overlay,
# documented in kuberay/generate.py), and kuberay/configmap.yaml's SIGNAL_EXCHANGE/SIGNAL_QUOTE from its
# market_source; a unit test fails when a committed manifest is stale.
kuberay: venv
	$(PY) kuberay/generate.py

# The docs' example plots (docs/img/, shown in docs/training.md) regenerated from the synthetic sample in a throw-away store.
docs-plots: venv
	$(PY) scripts/docs_plots.py

kuberay-check: venv
	$(PY) kuberay/generate.py --check

# Benchmark (not part of the tests): graph vs no-op Serve ingress vs one uvicorn process vs in-process.
# Debian tools the tests and benchmarks use, installed with apt-get when missing (so `make test` needs root,
# or these installed): hey (HTTP load: benchmark, load test, replica-fault test), kubectl (kustomize renders
# kuberay/ for the manifest tests).
TOOLS := hey:hey kubectl:kubectl
tools:
	@missing=""; for t in $(TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
		(apt-get update -qq && apt-get install -y -qq $$missing) >/dev/null || \
		{ echo "could not install$$missing: run as root, or install them first" >&2; exit 1; }; fi

hey: tools

bench: setup hey
	$(PY) -m bench.run $(BENCH_ARGS)

# The Ray head's memory, measured the way the RayService runs it (bench/head_memory.py): writes
# kuberay/head-sizing.json, which the manifest test checks the head's limit against.
measure-head: setup hey
	$(PY) -m bench.head_memory

# How long `signalgen evaluate` takes on a month of one-minute candles (a random walk), by phase; writes
# bench/results/evaluate.json.
bench-evaluate: venv
	$(PY) -m bench.evaluate_speed

# Load test (not part of the tests): a burst test, hey -n 1000 -c 10, with zero errors, then a 5-minute soak at a
# steady rate with Ray's memory sampled (growth <= 10%); writes bench/results/loadtest.json, exit 1 on a miss.
LOADTEST_ARGS ?=
loadtest: setup hey
	$(PY) -m bench.loadtest $(LOADTEST_ARGS)

test: venv tools
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) data/*.sqlite* data/spill models/artifacts .pytest_cache
