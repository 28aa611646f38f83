"""Training pipeline + model loading + registry, on a small SQLite store seeded with the sample data."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from serve_app.training import registry
from serve_app.cli import main as cli_main
from serve_app.training.train import T_PRIOR, calibration, fit_temperature, time_split, train
from serve_app.core.features import FEATURE_NAMES, WARMUP, compute_features
from serve_app.core.labels import CLASSES
from serve_app.core.model import ModelLoadError, SignalModel, calibrate
from serve_app.settings import StoreSettings
from serve_app.store import open_store
from serve_app.data.sample import seed_store

SYMBOLS = ["BTC", "ETH", "SOL"]
HORIZON = 4
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("db") / "candles.sqlite"


@pytest.fixture(scope="module")
def store(db_path):
    s = open_store(StoreSettings.from_env({"SIGNAL_DB_PATH": str(db_path)}))
    s.migrate()
    seed_store(s, symbols=SYMBOLS, n=1200)
    yield s
    s.close()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def trained(store, model_root) -> Path:
    return train(store, symbols=SYMBOLS, timeframe="1h", horizon=HORIZON, n_estimators=25,
                 early_stopping_rounds=10, root=model_root, progress=False)


@pytest.fixture
def version_copy(trained, tmp_path) -> Path:
    """A private copy of the trained version to tamper with."""
    dst = tmp_path / trained.name
    shutil.copytree(trained, dst)
    return dst


# --- the trained artifact ---------------------------------------------------------------------------
def test_artifact_layout_and_metadata(trained, model_root):
    assert trained.parent == model_root
    for f in ("model.ubj", "metadata.json", "report.json", "report.txt"):
        assert (trained / f).is_file(), f
    m = json.loads((trained / "metadata.json").read_text())
    assert m["version"] == trained.name
    assert m["feature_names"] == list(FEATURE_NAMES)
    assert m["classes"] == list(CLASSES)
    assert m["label"] == {"horizon": HORIZON, "k": 0.5, "vol_period": 48}
    assert m["timeframe"] == "1h" and m["symbols"] == SYMBOLS
    assert m["synthetic_symbols"] == SYMBOLS   # the store holds the synthetic sample: flagged when served
    assert m["temperature"] > 0
    assert m["n_train"] > m["n_test"] > 0 and m["n_val"] > 0
    for key in ("accuracy", "log_loss", "per_class"):
        assert key in m["metrics"]
    assert set(m["baselines"]) == {"majority", "momentum"}
    assert 0.0 <= m["baselines"]["momentum"]["accuracy"] <= 1.0
    assert set(m["training_window"]) == set(m["test_window"]) == set(SYMBOLS)
    assert "accuracy" in (trained / "report.txt").read_text()
    assert json.loads((trained / "report.json").read_text())["version"] == trained.name


def test_time_split_windows_in_metadata(trained):
    """Per symbol: train < val < test in time, with at least `purge` (>= horizon) candles between."""
    m = json.loads((trained / "metadata.json").read_text())
    purge = m["split"]["purge_candles"]
    assert purge >= HORIZON
    for sym in SYMBOLS:
        tr, va, te = m["training_window"][sym], m["validation_window"][sym], m["test_window"][sym]
        assert tr[0] <= tr[1] < va[0] <= va[1] < te[0] <= te[1]
        assert va[0] - tr[1] > purge * HOUR_MS
        assert te[0] - va[1] > purge * HOUR_MS


def test_load_and_predict(trained, store):
    model = SignalModel.load(trained)
    assert model.version == trained.name
    assert model.classes == CLASSES
    assert model.metadata["feature_names"] == list(FEATURE_NAMES)
    c = store.load_candles("BTC", "1h")
    X = compute_features(c.open, c.high, c.low, c.close, c.volume)[WARMUP:]
    p = model.predict_proba(X)
    assert p.shape == (X.shape[0], 3)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-9)
    assert (p >= 0).all()
    # a single vector, an empty batch, a wrong width
    assert model.predict_proba(X[0]).shape == (1, 3)
    assert model.predict_proba(np.empty((0, len(FEATURE_NAMES)))).shape == (0, 3)
    with pytest.raises(ValueError):
        model.predict_proba(np.zeros((2, 5)))


def test_one_inplace_predict_per_batch_and_temperature(trained):
    model = SignalModel.load(trained)
    calls = []
    real = model.booster.inplace_predict

    def spy(X, *a, **kw):
        calls.append(np.shape(X))
        return real(X, *a, **kw)

    model.booster.inplace_predict = spy
    X = np.random.default_rng(0).normal(0, 0.01, (64, len(FEATURE_NAMES)))
    p = model.predict_proba(X)
    assert calls == [(64, len(FEATURE_NAMES))]
    np.testing.assert_allclose(p, calibrate(np.asarray(real(X), dtype=np.float64), model.temperature), rtol=1e-12)
    # temperature > 1 flattens, < 1 sharpens; T = 1 is the identity
    raw = real(X)
    np.testing.assert_allclose(calibrate(raw, 1.0), raw / raw.sum(1, keepdims=True), rtol=1e-6)
    assert calibrate(raw, 3.0).max() <= calibrate(raw, 1.0).max() + 1e-12


def test_tampered_feature_names_rejected(version_copy):
    meta_path = version_copy / "metadata.json"
    m = json.loads(meta_path.read_text())
    m["feature_names"] = m["feature_names"][:-1] + ["mystery_feature"]
    meta_path.write_text(json.dumps(m))
    with pytest.raises(ModelLoadError) as ei:
        SignalModel.load(version_copy)
    msg = str(ei.value)
    assert str(meta_path) in msg and "mystery_feature" in msg and FEATURE_NAMES[-1] in msg


def test_reordered_feature_names_rejected(version_copy):
    meta_path = version_copy / "metadata.json"
    m = json.loads(meta_path.read_text())
    m["feature_names"][0], m["feature_names"][1] = m["feature_names"][1], m["feature_names"][0]
    meta_path.write_text(json.dumps(m))
    with pytest.raises(ModelLoadError, match="order"):
        SignalModel.load(version_copy)


@pytest.mark.parametrize("keep_checksum", [True, False])
def test_corrupt_model_file_rejected(version_copy, keep_checksum):
    model_path = version_copy / "model.ubj"
    model_path.write_bytes(b"\x00garbage, not a model" * 10)
    if not keep_checksum:  # no checksum to catch it: xgboost itself must fail, and we name the file
        meta_path = version_copy / "metadata.json"
        m = json.loads(meta_path.read_text())
        del m["model_sha256"]
        meta_path.write_text(json.dumps(m))
    with pytest.raises(ModelLoadError) as ei:
        SignalModel.load(version_copy)
    assert str(model_path) in str(ei.value)


def test_missing_or_corrupt_metadata_rejected(version_copy, tmp_path):
    (version_copy / "model.ubj").unlink()
    with pytest.raises(ModelLoadError, match="model.ubj"):
        SignalModel.load(version_copy)
    (version_copy / "metadata.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as ei:
        SignalModel.load(version_copy)
    assert str(version_copy / "metadata.json") in str(ei.value)
    with pytest.raises(ModelLoadError, match="metadata.json"):
        SignalModel.load(tmp_path / "nowhere")


# --- time split -------------------------------------------------------------------------------------
@pytest.mark.parametrize("purge", [4, 10, 48])
def test_time_split_no_overlap_and_purge(purge):
    valid = np.arange(WARMUP, 2160 - HORIZON)
    s = time_split(valid, test_fraction=0.2, val_fraction=0.15, purge=purge)
    for part in (s.train, s.val, s.test):
        assert part.size > 0 and (np.diff(part) > 0).all()  # ordered, never shuffled
    assert s.train.max() + purge < s.val.min()
    assert s.val.max() + purge < s.test.min()
    assert s.test.max() == valid.max()  # test is the most recent data
    assert len(set(s.train) | set(s.val) | set(s.test)) == s.train.size + s.val.size + s.test.size
    # the purged rows are exactly the gaps
    assert s.train.size + s.val.size + s.test.size == valid.size - 2 * purge
    assert abs(s.test.size - 0.2 * valid.size) <= 1


def test_a_horizon_given_without_a_volatility_window_gets_twelve_of_its_own(store, tmp_path):
    """--horizon N alone: the volatility window follows N (12 horizons, at least 48), not the derived horizon."""
    v = train(store, symbols=["BTC"], timeframe="1h", horizon=8, n_estimators=2, root=tmp_path, min_candles=300)
    assert json.loads((v / "metadata.json").read_text())["label"] == {"horizon": 8, "k": 0.5, "vol_period": 96}


def test_train_on_a_missing_timeframe_lists_the_ones_the_store_holds(store, tmp_path):
    with pytest.raises(ValueError) as e:
        train(store, timeframe="1m", n_estimators=2, root=tmp_path)
    assert str(e.value) == "no 1m candles to train on; the store holds: 1h (use --timeframe)"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_purge_must_cover_horizon(store, tmp_path):
    with pytest.raises(ValueError, match="purge"):
        train(store, symbols=["BTC"], horizon=8, purge=4, n_estimators=2, root=tmp_path)


# --- registry ---------------------------------------------------------------------------------------
def test_registry_current_resolve_list(trained, model_root):
    assert registry.current_version(model_root) == trained.name
    assert registry.resolve(None, model_root) == trained
    assert registry.resolve("current", model_root) == trained
    assert registry.resolve(trained.name, model_root) == trained
    listed = registry.list_versions(model_root)
    item = next(v for v in listed if v["version"] == trained.name)
    assert item["current"] is True and item["symbols"] == SYMBOLS and item["accuracy"] is not None
    with pytest.raises(FileNotFoundError, match="v19990101-000000-deadbeef"):
        registry.resolve("v19990101-000000-deadbeef", model_root)


def test_registry_versions_sort_and_switch(trained, tmp_path):
    root = tmp_path / "reg"
    with pytest.raises(FileNotFoundError) as ei:
        registry.resolve(None, root)
    assert str(root / "CURRENT") in str(ei.value)
    assert registry.current_version(root) is None and registry.list_versions(root) == []
    booster = SignalModel.load(trained).booster
    meta = json.loads((trained / "metadata.json").read_text())
    for k in ("version", "created_at", "model_sha256", "model_file"):
        meta.pop(k)
    v1 = registry.save_version(booster, meta, root=root)
    v2 = registry.save_version(booster, meta, root=root)  # same content, same second: still unique
    assert v1 != v2 and v1.name.startswith("v") and v1.name < v2.name
    assert [v["version"] for v in registry.list_versions(root)] == [v1.name, v2.name]
    assert registry.current_version(root) is None  # saving does not switch
    registry.set_current(v1.name, root)
    assert registry.resolve(None, root) == v1
    assert registry.resolve("latest", root) == v2
    registry.set_current(v2.name, root)
    assert registry.resolve("current", root) == v2
    with pytest.raises(FileNotFoundError):
        registry.set_current("v00000000-000000-00000000", root)
    with pytest.raises(ValueError):
        registry.resolve("../etc", root)
    assert SignalModel.load(v1).version == v1.name  # a registry round trip loads


def test_no_set_current(store, tmp_path, trained):
    root = tmp_path / "reg"
    v = train(store, symbols=["ETH"], n_estimators=3, early_stopping_rounds=2, root=root, set_current=False)
    assert registry.current_version(root) is None
    assert [x["version"] for x in registry.list_versions(root)] == [v.name]


def test_cli_if_missing_skips_when_current_exists(trained, model_root, capsys):
    assert cli_main(["train", "--if-missing", "--model-dir", str(model_root), "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert [v["version"] for v in registry.list_versions(model_root)] == [trained.name]


def test_cli_trains_from_configured_store(store, db_path, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SIGNAL_DB_PATH", str(db_path))
    monkeypatch.delenv("MYSQL_HOST", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "cli"))
    rc = cli_main(["train", "--symbols", "BTC,SOL", "--n-estimators", "5", "--quiet", "--if-missing"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "momentum" in out
    v = registry.resolve(None, tmp_path / "cli")
    assert json.loads((v / "metadata.json").read_text())["symbols"] == ["BTC", "SOL"]
    assert registry.current_version(tmp_path / "cli") == v.name and "CURRENT: the registry had none" in out

    # a later `train` registers a version but never moves CURRENT: that is the promotion gate's job
    assert cli_main(["train", "--symbols", "BTC", "--n-estimators", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert registry.current_version(tmp_path / "cli") == v.name
    new = registry.resolve("latest", tmp_path / "cli").name
    assert new != v.name and f"CURRENT stays {v.name}" in out and f"signalgen models promote {new}" in out


# --- the pipeline learns a planted signal and finds none in noise (a look-ahead / leakage guard) ------
class _ArrayStore:
    backend = "memory"

    def __init__(self, candles):
        self._c = {c.symbol: c for c in candles}

    def list_symbols(self, timeframe):
        return sorted(self._c)

    def load_candles(self, symbol, timeframe, **kw):
        return self._c[symbol]


def _synthetic(symbol: str, seed: int, drift: float, n: int = 1500):
    """Hourly random walk; with drift > 0 the drift flips sign in persistent regimes (~25 candles)."""
    from serve_app.store.base import Candles

    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.random(n) < 0.04) % 2 * 2 - 1
    r = rng.normal(0, 0.01, n) + drift * state
    c = 100 * np.exp(np.cumsum(r))
    o = np.r_[100.0, c[:-1]]
    h = np.maximum(o, c) * (1 + np.abs(rng.normal(0, 0.003, n)))
    lo = np.minimum(o, c) * (1 - np.abs(rng.normal(0, 0.003, n)))
    t = 1_700_000_000_000 + HOUR_MS * np.arange(n, dtype=np.int64)
    return Candles(symbol, "1h", t, o, h, lo, c, rng.lognormal(5, 0.5, n))


@pytest.mark.parametrize("drift", [0.0, 0.004])
def test_learns_planted_signal_not_noise(drift, tmp_path):
    s = _ArrayStore([_synthetic(f"S{i}", i, drift) for i in range(3)])
    v = train(s, n_estimators=60, early_stopping_rounds=15, root=tmp_path)
    m = json.loads((v / "metadata.json").read_text())
    acc, majority = m["metrics"]["accuracy"], m["baselines"]["majority"]["accuracy"]
    if drift:  # persistent regimes are visible in the trailing-return features
        assert acc > majority + 0.1, (acc, majority)
    else:  # a pure random walk: out-of-sample skill would mean leakage
        assert acc < majority + 0.05, (acc, majority)
        assert m["metrics"]["log_loss"] > 1.05


def test_same_model_twice_gets_distinct_versions(tmp_path):
    s = _ArrayStore([_synthetic("S0", 0, 0.004, n=800)])
    a = train(s, n_estimators=3, early_stopping_rounds=2, root=tmp_path)
    b = train(s, n_estimators=3, early_stopping_rounds=2, root=tmp_path)
    assert a != b and registry.current_version(tmp_path) == b.name
    assert json.loads((b / "metadata.json").read_text())["version"] == b.name


def test_registry_files_are_world_readable(trained, model_root):
    # temp files/dirs are created private (0600/0700); the registry must publish them readable
    assert (trained.stat().st_mode & 0o755) == 0o755
    assert ((model_root / "CURRENT").stat().st_mode & 0o644) == 0o644


# --- calibration against hand-computed values -------------------------------------------------------
def test_calibrate_matches_hand_computed_values():
    """softmax(log p / T) = p^(1/T) renormalised: T=2 takes square roots, T=0.5 squares."""
    p = np.array([[0.5, 0.3, 0.2]])
    # T=2: sqrt(.5)=.707107, sqrt(.3)=.547723, sqrt(.2)=.447214; sum 1.702044
    np.testing.assert_allclose(calibrate(p, 2.0), [[0.415446, 0.321803, 0.262751]], atol=2e-6)
    # T=0.5: .25, .09, .04; sum .38
    np.testing.assert_allclose(calibrate(p, 0.5), [[0.25 / 0.38, 0.09 / 0.38, 0.04 / 0.38]], rtol=1e-12)
    np.testing.assert_allclose(calibrate(p, 1.0), p, rtol=1e-12)


@pytest.mark.parametrize("hits, expected_t", [
    (2, math.log(3) / math.log(2)),    # class 0 right 2 times in 4: 3^(1/T) = 2*0.5/0.5 = 2
    (1, T_PRIOR),                      # 1 in 3, as often as the others: 3^(1/T) = 1, T -> infinity (the cap)
    (3, 1.0),                          # 3 in 5: the model is already calibrated
])
def test_fit_temperature_finds_the_hand_computed_optimum(hits, expected_t):
    """Every row predicts [0.6, 0.2, 0.2]; class 0 is right `hits` times, and one row each is class 1 and
    class 2. Calibrated, class 0 gets 3^a / (3^a + 2) with a = 1/T, and log-loss is lowest when that equals
    the hit frequency f: 3^a = 2f / (1 - f)."""
    y = np.array([0] * hits + [1, 2])
    p = np.tile([0.6, 0.2, 0.2], (y.size, 1))
    t = fit_temperature(y, p)
    assert t == pytest.approx(expected_t, rel=1e-3)
    f = hits / y.size
    assert calibrate(p[:1], t)[0, 0] == pytest.approx(f, rel=1e-3)


@pytest.mark.parametrize("hits", [6, 9, 18])
def test_fit_temperature_never_sharpens(hits):
    """Class 0 right more often than the 0.6 predicted (the optimum would be T < 1): calibration only pulls
    towards the prior, so the probabilities are left alone."""
    y = np.array([0] * hits + [1, 2])
    assert fit_temperature(y, np.tile([0.6, 0.2, 0.2], (y.size, 1))) == 1.0


def test_fit_temperature_with_nothing_to_fit_is_one():
    assert fit_temperature(np.array([], dtype=np.int64), np.empty((0, 3))) == 1.0


# --- what the model serves: raw, calibrated or prior probabilities -----------------------------------
def _rows(top: np.ndarray, confidence: float) -> np.ndarray:
    """Each row puts `confidence` on its class `top`, the rest shared by the other two."""
    p = np.full((top.size, 3), (1 - confidence) / 2)
    p[np.arange(top.size), top] = confidence
    return p


def test_calibration_keeps_the_raw_probabilities_of_a_calibrated_model():
    rng = np.random.default_rng(1)
    top = rng.integers(0, 3, 600)
    y = np.where(rng.random(600) < 0.8, top, (top + rng.integers(1, 3, 600)) % 3)  # right 80 % of the time
    cal = calibration(y, _rows(top, 0.8), np.full(3, 1 / 3))
    assert cal["choice"] == "raw" and cal["temperature"] == 1.0 and not cal["kept"]
    assert cal["log_loss"]["raw"] < cal["log_loss"]["prior"]


def test_calibration_softens_an_overconfident_model():
    rng = np.random.default_rng(2)
    top = rng.integers(0, 3, 600)
    y = np.where(rng.random(600) < 0.6, top, (top + rng.integers(1, 3, 600)) % 3)  # says 0.95, right 60 %
    cal = calibration(y, _rows(top, 0.95), np.full(3, 1 / 3))
    assert cal["choice"] == "calibrated" and cal["kept"]
    assert cal["temperature"] == cal["fitted_temperature"] > 1.0
    assert cal["log_loss"]["calibrated"] < min(cal["log_loss"]["raw"], cal["log_loss"]["prior"])
    # the temperature it serves brings the confidence close to the 60 % it earns
    assert calibrate(_rows(np.array([0]), 0.95), cal["temperature"], np.full(3, 1 / 3))[0, 0] == \
        pytest.approx(0.6, abs=0.05)


def test_calibration_serves_the_prior_when_the_trees_know_nothing():
    rng = np.random.default_rng(3)
    prior = np.array([0.3, 0.4, 0.3])
    y = rng.choice(3, size=600, p=prior)                      # labels independent of the predictions
    cal = calibration(y, _rows(rng.integers(0, 3, 600), 0.7), prior)
    # the prior, or a temperature so high it is all but the prior (whichever scored lower on the slice)
    assert cal["choice"] in ("prior", "calibrated") and cal["temperature"] > 10
    assert cal["log_loss"][cal["choice"]] <= cal["log_loss"]["prior"] < cal["log_loss"]["raw"]
    served = calibrate(_rows(np.array([0, 1, 2]), 0.7), cal["temperature"], prior)
    np.testing.assert_allclose(served, np.tile(prior, (3, 1)), atol=0.03)
    # labels that are exactly as frequent as the prior says, predictions that know nothing: the prior wins
    y = np.repeat([0, 1, 1, 2], 150)
    cal = calibration(y, _rows(np.tile([0, 1, 2], 200), 0.7), np.array([0.25, 0.5, 0.25]))
    assert cal["choice"] == "prior" and cal["temperature"] == T_PRIOR


def test_calibration_on_too_few_rows_has_no_calibrated_candidate():
    cal = calibration(np.array([0, 1, 2]), _rows(np.array([0, 1, 2]), 0.9), np.full(3, 1 / 3))
    assert set(cal["log_loss"]) == {"raw", "prior"} and cal["choice"] == "raw"


def test_size_warnings_name_the_thresholds_and_group_the_folds():
    from serve_app.training.train import MIN_CALIB_ROWS, MIN_TRAIN_ROWS, size_warnings

    assert size_warnings(MIN_TRAIN_ROWS, MIN_CALIB_ROWS) == []
    assert size_warnings(78, 15) == [f"trains on 78 rows (< {MIN_TRAIN_ROWS}): too few for the metrics to mean much",
                                     f"calibrates on 15 rows (< {MIN_CALIB_ROWS}): the calibration is noisy"]
    assert size_warnings([294] * 5, [500] * 5) == [
        f"every fold (5) trains on 294 rows (< {MIN_TRAIN_ROWS}): too few for the metrics to mean much"]
    assert size_warnings([900, 400, 300], [250, 250, 100]) == [
        f"folds 1, 2 of 3 train on 300-400 rows (< {MIN_TRAIN_ROWS}): too few for the metrics to mean much",
        f"fold 2 of 3 calibrates on 100 rows (< {MIN_CALIB_ROWS}): the calibration is noisy"]
