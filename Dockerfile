# The signal service's image for KubeRay: Ray's own image + this project, plus a default model baked in.
#
#   docker build -t registry.example.com/crypto-trading/signalgen:0.1.0-ray2.60.0 .
#
# The base tag's Ray version must equal rayVersion in kuberay/rayservice.yaml and the ray[serve] pin in
# pyproject.toml (tests/unit/test_kuberay_manifests.py checks all three); the tag in
# kuberay/kustomization.yaml (`images:`) repeats it after `-ray`.
FROM rayproject/ray:2.60.0-py311

# xgboost-cpu is xgboost without NVIDIA's NCCL. For GPU workers build with
#   --build-arg XGBOOST_PACKAGE="xgboost>=3.2,<3.3"   (and a CUDA base such as rayproject/ray:2.60.0-py311-gpu):
# same import name, same model files.
ARG XGBOOST_PACKAGE=xgboost-cpu

# The image's user is `ray` (uid 1000, gid 100 `users`), which also owns its Python environment.
WORKDIR /home/ray/signalgen
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users configs ./configs
# The service and its toolkit extra (ccxt, pandas, matplotlib): the serving path imports none of the extra,
# but the jobs that run this same image (collector, evaluate, retrain) do. SIGNALGEN_HOME is where the
# installed package's defaults (configs/, data/, models/artifacts/) resolve.
ENV SIGNALGEN_HOME=/home/ray/signalgen
RUN pip install --no-cache-dir ".[toolkit]" \
 && if [ "$XGBOOST_PACKAGE" != "xgboost-cpu" ]; then \
      pip uninstall -y xgboost-cpu && pip install --no-cache-dir "$XGBOOST_PACKAGE"; \
    fi \
 && python -c "import ray, serve_app.app; assert ray.__version__ == '2.60.0', ray.__version__"

# A default model trained at build time on the deterministic SYNTHETIC sample (SQLite, thrown away after):
# the ML group's init container copies it into the model volume when that holds no CURRENT yet, so a fresh
# cluster serves before anyone trains on real data.
USER root
RUN mkdir -p /opt/signalgen/default-models && chown -R ray:users /opt/signalgen
USER ray
RUN export MYSQL_HOST= SIGNAL_DB_PATH=/tmp/signalgen-build.sqlite \
 && signalgen store seed \
 && MODEL_DIR=/opt/signalgen/default-models signalgen train --if-missing --quiet \
 && test -s /opt/signalgen/default-models/CURRENT \
 && rm -f /tmp/signalgen-build.sqlite*

# Without a volume (e.g. `docker run` for a smoke test) the baked model is the registry; on Kubernetes the
# ConfigMap's MODEL_DIR (the volume) overrides this.
ENV MODEL_DIR=/opt/signalgen/default-models
