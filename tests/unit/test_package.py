"""The installed package: one wheel with one top-level package, defaults that never point into
site-packages, and a serving path that imports no toolkit-only library."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.checkout import copy_checkout

ROOT = Path(__file__).resolve().parents[2]
TOOLKIT_ONLY = ("ccxt", "matplotlib", "pandas")   # the `toolkit` extra
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith(("MYSQL_", "SIGNAL_", "MODEL_DIR", "SIGNALGEN_", "PYTHONPATH", "VIRTUAL_ENV"))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = copy_checkout(tmp_path_factory.mktemp("source"))   # setuptools builds in the source tree
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                           capture_output=True, text=True, timeout=600, env=CLEAN_ENV)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("signalgen-*.whl")
    return path


def test_wheel_holds_only_this_projects_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    dist_info = {t for t in top if t.endswith(".dist-info")}
    assert top - dist_info == {"serve_app"}, sorted(top)
    assert not any(n.startswith(("models/", "tests/", "bench/", "scripts/")) for n in names)
    # the deployments, the core, the training and the commands are all inside the one package
    for module in ("serve_app/app.py", "serve_app/deployments/orchestrator.py", "serve_app/core/records.py",
                   "serve_app/training/registry.py", "serve_app/cli/__init__.py", "serve_app/api/schemas.py"):
        assert module in names, module
    entry_points = zipfile.ZipFile(wheel).read(f"{sorted(dist_info)[0]}/entry_points.txt").decode()
    assert "signalgen = serve_app.cli:main" in entry_points


def test_installed_defaults_never_point_into_site_packages(wheel: Path, tmp_path: Path) -> None:
    target, work = tmp_path / "site-packages", tmp_path / "somewhere"
    work.mkdir()
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                                str(wheel)], capture_output=True, text=True, timeout=300, env=CLEAN_ENV)
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = ("import json, serve_app.settings as s; print(json.dumps({'package': s.__file__, "
             "'paths': [str(p) for p in (s.PROJECT_ROOT, s.DEFAULT_SQLITE_PATH, s.DEFAULT_MODEL_DIR, "
             "s.DEFAULT_SPILL_DIR, s.SERVE_CONFIG, s.model_dir(), s.spill_dir(), "
             "s.StoreSettings.from_env().sqlite_path)]}))")

    def defaults(**env: str) -> dict:
        run = subprocess.run([sys.executable, "-c", probe], cwd=work, capture_output=True, text=True, timeout=60,
                             env={**CLEAN_ENV, "PYTHONPATH": str(target), **env})
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    plain = defaults()
    assert plain["package"].startswith(str(target))          # the installed copy, not the checkout
    for path in plain["paths"]:
        assert not path.startswith(str(target)), f"{path} points into site-packages"
        assert path.startswith(str(work)), path                # the working directory, when nothing is set
    home = tmp_path / "home"
    assert all(p.startswith(str(home)) for p in defaults(SIGNALGEN_HOME=str(home))["paths"])


def test_serving_path_imports_no_toolkit_library(tmp_path: Path) -> None:
    """Every deployment module imported, and signals computed through the stages' own code in one process:
    neither ccxt nor matplotlib gets imported. (pandas is not checked here: Ray Serve itself imports it when
    it is installed - ray/serve/_private/utils.py - so it is not ours to keep out; our own modules import it
    only inside toolkit commands, which test_toolkit_libraries_are_imported_lazily checks.)"""
    script = f"""
import sys
import serve_app.app, serve_app.deployments.orchestrator, serve_app.deployments.analytics
from serve_app.core.model import SignalModel
from serve_app.core.pipeline import LocalPipeline
from serve_app.core.records import Signal, SignalInput
from serve_app.data.sample import seed_store
from serve_app.store.sqlite_store import SQLiteStore
from serve_app.training.train import train

store = SQLiteStore({str(tmp_path / 's.sqlite')!r}); store.migrate()
seed_store(store, ["BTC", "SOL"], n=400)
vdir = train(store, n_estimators=5, root={str(tmp_path / 'models')!r}, min_candles=300)
pipe = LocalPipeline(lambda: store, SignalModel.load(vdir))
pipe.refresh()
out = pipe.run([SignalInput("SOL", float(pipe.cache.data["SOL"].close[-1]), int(pipe.cache.data["SOL"].open_time[-1]))])
assert isinstance(out[0], Signal), out
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("ccxt", "matplotlib"))))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=CLEAN_ENV,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "", f"the serving path imported {run.stdout.strip()}"


def test_toolkit_libraries_are_imported_lazily() -> None:
    """No module of the package imports a toolkit-only library at module level: only inside the functions of
    the commands that need it, so a serving image without the extra still imports every module."""
    import ast

    offenders = []
    for path in (ROOT / "serve_app").rglob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in TOOLKIT_ONLY for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


LAYERS = {
    # package: what it must never import (the core is Ray-free and knows nothing of HTTP; nothing below the
    # deployments imports them; only the ingress imports the HTTP layer)
    "serve_app/core": ("ray", "fastapi", "starlette", "serve_app.api", "serve_app.deployments", "serve_app.cli",
                       "serve_app.training", "serve_app.app"),
    "serve_app/store": ("ray", "fastapi", "serve_app.api", "serve_app.deployments", "serve_app.cli"),
    "serve_app/data": ("ray", "fastapi", "serve_app.api", "serve_app.deployments", "serve_app.cli"),
    "serve_app/training": ("ray", "fastapi", "serve_app.api", "serve_app.deployments", "serve_app.cli"),
    "serve_app/config.py": ("ray", "fastapi", "serve_app.api", "serve_app.deployments"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_downwards(layer: str) -> None:
    target = ROOT / layer
    files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    bad = [f"{f.relative_to(ROOT)}:{line} imports {name}" for f in files for line, name in _imports(f)
           if any(name == banned or name.startswith(banned + ".") for banned in LAYERS[layer])]
    assert bad == []


def test_only_the_ingress_imports_the_http_layer() -> None:
    users = sorted(str(f.relative_to(ROOT)) for f in (ROOT / "serve_app").rglob("*.py")
                   if f.parent.name != "api" and any(n.startswith("serve_app.api") for _, n in _imports(f)))
    assert users == ["serve_app/deployments/orchestrator.py"]
