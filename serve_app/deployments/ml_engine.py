"""MLEngine deployment: @serve.batch → one XGBoost inplace_predict per batch → class probabilities.

The model version comes from `user_config` (`model_version`, default the registry's CURRENT), so a new
version is loaded by `reconfigure` without restarting the application.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from serve_app.training.registry import resolve
from serve_app.config import MLUserConfig
from serve_app.core.model import ModelLoadError, SignalModel
from serve_app.core.pipeline import predict_batch
from serve_app.core.records import Work
from serve_app.settings import model_dir
from serve_app.deployments.base import StageBase

_BATCH_DEFAULTS = MLUserConfig()


def synthetic_symbols(model: SignalModel) -> list[str]:
    """The symbols of the model's training data that were the synthetic sample (metadata of `signalgen
    train`; a model trained before that was recorded counts as synthetic only if it says so)."""
    return list(model.metadata.get("synthetic_symbols") or [])


@serve.deployment
class MLEngine(StageBase):
    stage = "ml"

    def __init__(self, *, model_root: str | None):
        self._init_stage()
        self.model_root = Path(model_root) if model_root else model_dir()
        self.model: SignalModel | None = None
        self.load_error: str | None = None
        try:
            self._load("current")
        except (ModelLoadError, OSError) as e:
            # fail start-up (Serve reports it as the deployment's status message, and /health shows it)
            # with the file at fault named, not a bare traceback
            raise ModelLoadError(f"MLEngine cannot start: {e}") from e

    def _load(self, version: str) -> None:
        path = resolve(version, self.model_root)
        previous = self.model
        self.model = SignalModel.load(path)  # raises ModelLoadError naming the file
        self.load_error = None
        if previous is not None and previous.version != self.model.version:
            self.metrics.set("signalgen_model_synthetic", 0, model_version=previous.version)
        self.metrics.set("signalgen_model_synthetic", 1 if synthetic_symbols(self.model) else 0,
                         model_version=self.model.version)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        given = set(user_config)
        cfg = MLUserConfig.model_validate(user_config)
        version = cfg.model_version
        if self.model is None or version not in ("current", self.model.version):
            self._load(version)
        elif version == "current":
            current = resolve("current", self.model_root)
            if current.name != self.model.version:
                self._load("current")
        if "max_batch_size" in given:
            self.predict_rows.set_max_batch_size(cfg.max_batch_size)
        if "batch_wait_timeout_s" in given:
            self.predict_rows.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)

    async def predict(self, items: list[Work]) -> list[Work]:
        """One pipeline batch of FeatureEngine results, each with its prediction added."""
        return await self.predict_rows(items)

    # until user_config says otherwise (reconfigure): MLUserConfig's defaults
    @serve.batch(max_batch_size=_BATCH_DEFAULTS.max_batch_size,
                 batch_wait_timeout_s=_BATCH_DEFAULTS.batch_wait_timeout_s)
    async def predict_rows(self, groups: list[list[Work]]) -> list[list[Work]]:
        """Several pipeline batches (from every ingress replica) in one inplace_predict."""
        with self.timed():
            model = self.model
            predicted, rows = predict_batch(model, [w for g in groups for w in g])
            if rows:
                self.metrics.observe("signalgen_ml_batch_size", rows)
                self.metrics.inc("signalgen_ml_batches_total")
                self.metrics.inc("signalgen_predictions_total", rows, model_version=model.version)
        out, start = [], 0
        for g in groups:
            out.append(predicted[start:start + len(g)])
            start += len(g)
        return out

    def health(self) -> dict[str, Any]:
        m = self.model
        synthetic = synthetic_symbols(m) if m else []
        out = {"ok": m is not None, "reasons": [] if m else [self.load_error or "no model loaded"],
               "model_loaded": m is not None, "model_version": m.version if m else None,
               "trained_at": m.metadata.get("created_at") if m else None,
               "model_synthetic": bool(synthetic)}
        if synthetic:
            out["warnings"] = [f"model {m.version} was trained on the SYNTHETIC sample data "
                               f"({', '.join(synthetic)}): its signals say nothing about real markets - train "
                               f"on real candles, evaluate and promote (docs/training.md)"]
        return out

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError(f"ML engine has no model loaded: {self.load_error}")
