"""The signal model: an XGBoost multi-class booster + its metadata, with temperature calibration.

No ray import. `SignalModel.load(version_dir)` refuses an artifact whose feature list differs from
this code's FEATURE_NAMES (names and order) - a model trained on other features must never be served.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import xgboost as xgb

from serve_app.core.features import FEATURE_NAMES, N_FEATURES
from serve_app.core.labels import CLASSES

METADATA_FILE = "metadata.json"
MODEL_FILES = ("model.ubj", "model.json")


class ModelLoadError(RuntimeError):
    """The artifact cannot be served: missing/corrupt file or metadata that does not match this code."""


def calibrate(p: np.ndarray, temperature: float, prior: np.ndarray | None = None) -> np.ndarray:
    """Temperature scaling towards a prior, row-wise: q ∝ p^(1/T) · prior^(1 - 1/T).

    T = 1 leaves p unchanged (up to renormalisation); T > 1 pulls every row towards the prior, which it
    reaches as T grows; T < 1 sharpens. With no prior (uniform) this is plain softmax(log p / T): a model
    with no skill is best calibrated to the class frequencies, which only the prior form can reach."""
    a = 1.0 / float(temperature)
    logits = a * np.log(np.clip(p, 1e-12, 1.0))
    if prior is not None:
        logits = logits + (1.0 - a) * np.log(np.clip(np.asarray(prior, dtype=np.float64), 1e-12, 1.0))
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _feature_mismatch(found: list[Any]) -> str:
    exp = list(FEATURE_NAMES)
    missing = [f for f in exp if f not in found]
    extra = [f for f in found if f not in exp]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"unexpected {extra}")
    if not parts:  # same set, different order
        i = next(i for i, (a, b) in enumerate(zip(found, exp)) if a != b)
        parts.append(f"order differs at position {i}: {found[i]!r} where the code has {exp[i]!r}")
    return f"{len(found)} features in metadata vs {len(exp)} in code: " + "; ".join(parts)


class SignalModel:
    """Loaded model. Attributes: version, metadata, classes, temperature, booster, path."""

    def __init__(self, booster: xgb.Booster, metadata: Mapping[str, Any], path: Path | None = None,
                 nthread: int = 1):
        self.booster = booster
        self.metadata = dict(metadata)
        self.path = path
        self.version: str = str(self.metadata.get("version", "unversioned"))
        self.classes: tuple[str, ...] = tuple(self.metadata.get("classes", CLASSES))
        self.temperature: float = float(self.metadata.get("temperature", 1.0) or 1.0)
        prior = self.metadata.get("calibration_prior")  # absent in models trained before it existed: uniform
        self.prior: np.ndarray | None = np.asarray(prior, dtype=np.float64) if prior else None
        self.feature_names: tuple[str, ...] = tuple(self.metadata.get("feature_names", FEATURE_NAMES))
        self.booster.set_param({"nthread": int(nthread)})

    @classmethod
    def load(cls, version_dir: str | Path, nthread: int = 1) -> "SignalModel":
        vdir = Path(version_dir)
        meta_path = vdir / METADATA_FILE
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise ModelLoadError(f"{meta_path}: metadata file not found") from None
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{meta_path}: cannot read metadata: {e}") from e
        if not isinstance(meta, dict):
            raise ModelLoadError(f"{meta_path}: metadata must be a JSON object")

        names = meta.get("feature_names")
        if not isinstance(names, list):
            raise ModelLoadError(f"{meta_path}: 'feature_names' missing or not a list")
        if names != list(FEATURE_NAMES):
            raise ModelLoadError(f"{meta_path}: feature names do not match the serving code: "
                                 f"{_feature_mismatch(names)}")
        classes = meta.get("classes", list(CLASSES))
        if list(classes) != list(CLASSES):
            raise ModelLoadError(f"{meta_path}: classes {classes} != {list(CLASSES)}")
        try:
            temperature = float(meta.get("temperature", 1.0))
        except (TypeError, ValueError):
            temperature = float("nan")
        if not np.isfinite(temperature) or temperature <= 0:
            raise ModelLoadError(f"{meta_path}: temperature must be a positive number, got "
                                 f"{meta.get('temperature')!r}")
        prior = meta.get("calibration_prior")
        if prior is not None:
            values = np.asarray(prior, dtype=np.float64) if isinstance(prior, list) else np.empty(0)
            if values.shape != (len(CLASSES),) or not np.all(values > 0) or abs(values.sum() - 1) > 1e-6:
                raise ModelLoadError(f"{meta_path}: calibration_prior must be {len(CLASSES)} positive class "
                                     f"frequencies summing to 1, got {prior!r}")

        if meta.get("model_file"):
            model_path = vdir / str(meta["model_file"])
        else:
            model_path = next((vdir / n for n in MODEL_FILES if (vdir / n).is_file()), vdir / MODEL_FILES[0])
        try:
            raw = model_path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(f"{model_path}: model file not found") from None
        except OSError as e:
            raise ModelLoadError(f"{model_path}: cannot read model file: {e}") from e
        want = meta.get("model_sha256")
        if want and hashlib.sha256(raw).hexdigest() != want:
            raise ModelLoadError(f"{model_path}: checksum mismatch (file corrupt or replaced; "
                                 f"metadata expects sha256 {want[:12]}...)")
        booster = xgb.Booster(params={"nthread": int(nthread)})
        try:
            booster.load_model(bytearray(raw))
        except Exception as e:  # xgboost raises XGBoostError (and sometimes others) on garbage
            raise ModelLoadError(f"{model_path}: corrupt XGBoost model: {str(e).splitlines()[0][:300]}") from e
        nf = booster.num_features()
        if nf != N_FEATURES:
            raise ModelLoadError(f"{model_path}: booster expects {nf} features, code produces {N_FEATURES}")
        try:
            probe = booster.inplace_predict(np.zeros((1, N_FEATURES)))
        except Exception as e:
            raise ModelLoadError(f"{model_path}: model cannot predict: {str(e).splitlines()[0][:300]}") from e
        if np.ndim(probe) != 2 or np.shape(probe)[1] != len(CLASSES):
            raise ModelLoadError(f"{model_path}: model outputs shape {np.shape(probe)}, expected (1, {len(CLASSES)})")
        return cls(booster, meta, path=vdir, nthread=nthread)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, F) features -> (n, 3) calibrated probabilities in CLASSES order; rows sum to 1.
        One inplace_predict call for the whole batch. A 1-D vector is treated as one row."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != N_FEATURES:
            raise ValueError(f"expected features of shape (n, {N_FEATURES}), got {X.shape}")
        if X.shape[0] == 0:
            return np.empty((0, len(self.classes)), dtype=np.float64)
        raw = np.asarray(self.booster.inplace_predict(X), dtype=np.float64).reshape(X.shape[0], -1)
        return calibrate(raw, self.temperature, self.prior)
