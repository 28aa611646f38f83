"""MLEngine deployment: @serve.batch → one XGBoost inplace_predict per batch → class probabilities.

The model version comes from `user_config` (`model_version`, default the registry's CURRENT), so a new
version is loaded by `reconfigure` without restarting the application.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import serve

from models.registry import resolve
from serve_app.core.model import ModelLoadError, SignalModel
from serve_app.core.pipeline import predict_batch
from serve_app.settings import model_dir
from serve_app.stage import StageBase

USER_CONFIG_KEYS = frozenset({"model_version", "max_batch_size", "batch_wait_timeout_s"})


@serve.deployment
class MLEngine(StageBase):
    stage = "ml"

    def __init__(self, model_root: str | None = None):
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
        self.model = SignalModel.load(path)  # raises ModelLoadError naming the file
        self.load_error = None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        version = str(user_config.get("model_version", "current"))
        if self.model is None or version not in ("current", self.model.version):
            self._load(version)
        elif version == "current":
            current = resolve("current", self.model_root)
            if current.name != self.model.version:
                self._load("current")
        if "max_batch_size" in user_config:
            self.predict_rows.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.predict_rows.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    async def predict(self, items: list[dict]) -> list[dict]:
        """items: FeatureEngine results (one pipeline batch). Adds probabilities, action, confidence."""
        return await self.predict_rows(items)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def predict_rows(self, groups: list[list[dict]]) -> list[list[dict]]:
        with self.timed():
            model = self.model
            rows = predict_batch(model, [it for g in groups for it in g])
            if rows:
                self.metrics.observe("signalgen_ml_batch_size", rows)
                self.metrics.inc("signalgen_ml_batches_total")
                self.metrics.inc("signalgen_predictions_total", rows, model_version=model.version)
        return groups

    def health(self) -> dict[str, Any]:
        m = self.model
        return {"ok": m is not None, "reasons": [] if m else [self.load_error or "no model loaded"],
                "model_loaded": m is not None, "model_version": m.version if m else None,
                "trained_at": m.metadata.get("created_at") if m else None}

    def check_health(self) -> None:
        if self.model is None:
            raise RuntimeError(f"ML engine has no model loaded: {self.load_error}")
