"""A file-system model registry (no ray import).

Layout under a root directory (default: serve_app.settings.model_dir(), env MODEL_DIR):

    <root>/<version>/model.ubj        XGBoost artifact (UBJSON; .json also accepted when loading)
    <root>/<version>/metadata.json    feature names, classes, label spec, temperature, metrics, sha256
    <root>/<version>/report.json|txt  optional training report
    <root>/<version>/evaluation.json  optional evaluation summary (`signalgen evaluate`, attach_file)
    <root>/CURRENT                    one line: the version served as "current"
    <root>/HISTORY.jsonl              one JSON object a line per promotion/rollback (`signalgen models`)

Versions are `v<YYYYmmdd>-<HHMMSS>-<8 hex of the artifact's sha256>` (UTC): they sort by creation time
and name their content. A version directory is written under a temporary name and renamed into place,
and CURRENT is replaced atomically, so a reader (a serving replica reloading) never sees a half-written
version.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from serve_app import settings
from serve_app.core.model import METADATA_FILE, MODEL_FILES

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "HISTORY.jsonl"
EVALUATION_FILE = "evaluation.json"
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _root(root: str | os.PathLike | None) -> Path:
    return Path(root) if root is not None else settings.model_dir()


def _check_version_name(version: str) -> str:
    if not isinstance(version, str) or not _VERSION_RE.match(version) or version in (".", ".."):
        raise ValueError(f"invalid model version name {version!r}")
    return version


def new_version(model_bytes: bytes, now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"v{now.strftime('%Y%m%d-%H%M%S')}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"


def unique_version(model_bytes: bytes, root: str | os.PathLike | None = None,
                   now: _dt.datetime | None = None) -> str:
    """new_version(), with a -2, -3... suffix if that directory already exists (the same artifact
    saved twice within one second)."""
    root_dir = _root(root)
    base = version = new_version(model_bytes, now)
    i = 2
    while (root_dir / version).exists():
        version, i = f"{base}-{i}", i + 1
    return version


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; serving may run as another user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_version(booster: Any, metadata: Mapping[str, Any], root: str | os.PathLike | None = None,
                 extra_files: Mapping[str, str | bytes] | None = None) -> Path:
    """Write booster + metadata (+ extra files, e.g. reports) as a new version; return its directory.

    `metadata["version"]` is used when given (must not exist yet), else a new one is generated.
    The registry adds: version, created_at (if missing), model_file, model_sha256."""
    root_dir = _root(root)
    root_dir.mkdir(parents=True, exist_ok=True)
    raw = bytes(booster.save_raw("ubj"))
    meta = dict(metadata)
    now = _dt.datetime.now(_dt.timezone.utc)
    version = meta.get("version") or unique_version(raw, root_dir, now)
    _check_version_name(version)
    final = root_dir / version
    if final.exists():
        raise FileExistsError(f"model version already exists: {final}")
    meta["version"] = version
    meta.setdefault("created_at", now.isoformat(timespec="seconds"))
    meta["model_file"] = MODEL_FILES[0]
    meta["model_sha256"] = hashlib.sha256(raw).hexdigest()

    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=root_dir))
    try:
        (tmp / MODEL_FILES[0]).write_bytes(raw)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False, default=_json_default) + "\n",
                                         encoding="utf-8")
        for name, content in (extra_files or {}).items():
            if "/" in name or name in (METADATA_FILE, *MODEL_FILES) or name.startswith("."):
                raise ValueError(f"invalid extra file name {name!r}")
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content, encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700; serving may run as another user
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def attach_file(version: str, name: str, content: str | bytes, root: str | os.PathLike | None = None) -> Path:
    """Add or replace one extra file (e.g. an evaluation summary) in an existing version directory,
    atomically. The model artifact and metadata.json cannot be replaced this way."""
    vdir = resolve(version, root)
    if "/" in name or name in (METADATA_FILE, *MODEL_FILES) or name.startswith(".") or not name:
        raise ValueError(f"invalid extra file name {name!r}")
    path = vdir / name
    if isinstance(content, bytes):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=vdir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    else:
        _atomic_write_text(path, content)
    return path


def _json_default(o: Any) -> Any:
    # numpy scalars / arrays in metrics
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_metadata(version_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(version_dir) / METADATA_FILE
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_evaluation(version_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The version's evaluation.json, or None when it has none. Raises ValueError naming the file when
    it is not a JSON object."""
    path = Path(version_dir) / EVALUATION_FILE
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object")
    return data


def current_version(root: str | os.PathLike | None = None) -> str | None:
    """The version named in <root>/CURRENT, or None when there is no CURRENT file (or it is empty)."""
    path = _root(root) / CURRENT_FILE
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return text or None


def set_current(version: str, root: str | os.PathLike | None = None) -> None:
    """Point CURRENT at an existing version (atomic replace)."""
    root_dir = _root(root)
    _check_version_name(version)
    vdir = root_dir / version
    if not (vdir / METADATA_FILE).is_file():
        raise FileNotFoundError(f"model version {version!r} not found: {vdir / METADATA_FILE} does not exist")
    _atomic_write_text(root_dir / CURRENT_FILE, version + "\n")


def _created(version_dir: Path) -> float:
    """When a version was saved (metadata created_at; the names only resolve to the second)."""
    try:
        return _dt.datetime.fromisoformat(read_metadata(version_dir)["created_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return (version_dir / METADATA_FILE).stat().st_mtime


def _version_dirs(root_dir: Path) -> list[Path]:
    """The version directories, oldest first (by creation time, then name)."""
    if not root_dir.is_dir():
        return []
    dirs = [p for p in root_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).is_file()]
    return sorted(dirs, key=lambda p: (_created(p), p.name))


def list_versions(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One summary dict per version, oldest first: version, path, created_at, current, timeframe,
    training_span_ms ([first, last] open time trained on), verdict (of the last evaluation, or None), symbols,
    label, n_train/n_test, temperature, test accuracy/log_loss, baseline accuracies and log-losses,
    evaluation (the evaluation.json document or None).
    A version whose metadata cannot be read is listed with an `error` (an unreadable evaluation.json
    with an `evaluation_error`)."""
    root_dir = _root(root)
    cur = current_version(root_dir)
    out: list[dict[str, Any]] = []
    for d in _version_dirs(root_dir):
        item: dict[str, Any] = {"version": d.name, "path": str(d), "current": d.name == cur}
        try:
            m = read_metadata(d)
        except (OSError, ValueError) as e:
            item["error"] = f"{d / METADATA_FILE}: {e}"
            out.append(item)
            continue
        metrics = m.get("metrics") or {}
        baselines = m.get("baselines") or {}
        try:
            evaluation = read_evaluation(d)
        except (OSError, ValueError) as e:
            evaluation, item["evaluation_error"] = None, str(e)
        spans = [w for w in (m.get("training_window") or {}).values() if isinstance(w, list) and len(w) == 2]
        verdict = ((evaluation or {}).get("verdict") or {}).get("verdict") if isinstance(evaluation, dict) else None
        item.update({
            "created_at": m.get("created_at"),
            "timeframe": m.get("timeframe"),
            "training_span_ms": [min(w[0] for w in spans), max(w[1] for w in spans)] if spans else None,
            "verdict": verdict,
            "symbols": m.get("symbols"),
            "label": m.get("label"),
            "n_train": m.get("n_train"),
            "n_test": m.get("n_test"),
            "temperature": m.get("temperature"),
            "accuracy": metrics.get("accuracy"),
            "log_loss": metrics.get("log_loss"),
            "baseline_accuracy": {k: (v.get("accuracy") if isinstance(v, dict) else v)
                                  for k, v in baselines.items()},
            "baseline_log_loss": {k: v.get("log_loss", v.get("log_loss_train_prior")) for k, v in baselines.items()
                                  if isinstance(v, dict) and ("log_loss" in v or "log_loss_train_prior" in v)},
            "evaluation": evaluation,
        })
        out.append(item)
    return out


def resolve(version: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Directory of a version. None / "current" -> the version named in CURRENT; "latest" -> the
    newest version directory. Raises FileNotFoundError naming the missing path."""
    root_dir = _root(root)
    if version is None or version == "current":
        cur = current_version(root_dir)
        if cur is None:
            raise FileNotFoundError(
                f"no current model: {root_dir / CURRENT_FILE} is missing or empty "
                f"(train one with `signalgen train`)")
        version = cur
    elif version == "latest":
        dirs = _version_dirs(root_dir)
        if not dirs:
            raise FileNotFoundError(f"no model versions under {root_dir}")
        return dirs[-1]
    _check_version_name(version)
    vdir = root_dir / version
    if not vdir.is_dir():
        raise FileNotFoundError(f"model version {version!r} not found: {vdir} does not exist")
    return vdir


# --- promotion history -----------------------------------------------------------------------------
def read_history(root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The promotions and rollbacks recorded in <root>/HISTORY.jsonl, oldest first ([] when none).
    Raises ValueError naming the file and line of an entry that is not a JSON object."""
    path = _root(root) / HISTORY_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}:{n}: not valid JSON: {e}") from e
        if not isinstance(entry, dict) or not entry.get("version"):
            raise ValueError(f"{path}:{n}: expected an object with a 'version'")
        out.append(entry)
    return out


def promote(version: str, action: str = "promote", by: str | None = None,
            root: str | os.PathLike | None = None, **extra: Any) -> dict[str, Any]:
    """Point CURRENT at `version` and append {version, previous, action, at, by, **extra} to HISTORY.jsonl
    (extra: e.g. forced, reason, gate for a promotion past the gate); returns that entry. Checks nothing
    about the artifact: the caller decides it is servable."""
    root_dir = _root(root)
    previous = current_version(root_dir)
    set_current(version, root_dir)
    entry = {"version": version, "previous": previous, "action": action,
             "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "by": by, **extra}
    with open(root_dir / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return entry


def promotion_stack(history: list[Mapping[str, Any]], current: str | None = None) -> list[str]:
    """Versions served one after another, the one served now last: a promotion pushes its version (on
    top of the one it replaced), a rollback pops back down to its version. `current` (CURRENT, when it
    was switched outside the history, e.g. by training) goes on top."""
    stack: list[str] = []
    for e in history:
        version, previous = e["version"], e.get("previous")
        if e.get("action") == "rollback":
            while stack and stack[-1] != version:
                stack.pop()
            if not stack:
                stack.append(version)
            continue
        if previous and (not stack or stack[-1] != previous):
            stack.append(previous)
        stack.append(version)
    if current and (not stack or stack[-1] != current):
        stack.append(current)
    return stack


def rollback_target(root: str | os.PathLike | None = None) -> str | None:
    """The version a rollback returns to: the one served before the current one, or None."""
    root_dir = _root(root)
    stack = promotion_stack(read_history(root_dir), current_version(root_dir))
    return stack[-2] if len(stack) >= 2 else None
