"""First use on a machine that never ran this project: the Ray token, the interpreter the Makefile picks,
and the dependency markers that choose xgboost-cpu or xgboost."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from scripts.ray_procs import TokenError, ensure_token

try:
    import tomllib
except ModuleNotFoundError:      # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = str(Path(sys.executable).parent / "ray")


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_token_created_the_ray_way_owner_only(empty_home: Path, capfd: pytest.CaptureFixture) -> None:
    where = ensure_token(RAY_BIN)
    token_file = empty_home / ".ray" / "auth_token"
    assert where == f"{token_file} (created)"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    token = token_file.read_text().strip()
    assert len(token) >= 16
    out, err = capfd.readouterr()
    assert token not in out + err + where
    # Ray itself reads it: the CLI that `ray start` uses finds the same token
    got = subprocess.run([RAY_BIN, "get-auth-token"], capture_output=True, text=True, env=dict(os.environ))
    assert got.stdout.strip() == token
    # a second call keeps it
    assert ensure_token(RAY_BIN) == str(token_file)
    assert token_file.read_text().strip() == token


def test_existing_token_readable_by_others_is_tightened(empty_home: Path) -> None:
    token_file = empty_home / ".ray" / "auth_token"
    token_file.parent.mkdir()
    token_file.write_text("0123456789abcdef0123456789abcdef")
    token_file.chmod(0o644)
    where = ensure_token(RAY_BIN)
    assert "0o644 -> 0o600" in where
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text() == "0123456789abcdef0123456789abcdef"


def test_token_from_environment_is_left_alone(empty_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "x" * 32)
    assert ensure_token(RAY_BIN) == "the RAY_AUTH_TOKEN environment variable"
    assert not (empty_home / ".ray").exists()


def test_missing_token_path_is_an_error_not_a_new_file(empty_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = empty_home / "elsewhere" / "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(missing))
    with pytest.raises(TokenError, match="RAY_AUTH_TOKEN_PATH names .* which does not exist"):
        ensure_token(RAY_BIN)
    assert not missing.exists() and not (empty_home / ".ray").exists()


# ---------------------------------------------------------------------------------- interpreter choice
FIND_PYTHON = ROOT / "scripts" / "find_python.sh"


def _fake_python(bin_dir: Path, name: str, version: str | None) -> None:
    """A stand-in interpreter that reports `version` (None: a pyenv shim for a version not selected)."""
    script = bin_dir / name
    if version is None:
        script.write_text("#!/bin/sh\necho 'pyenv: version not installed' >&2\nexit 127\n")
    else:
        major, minor = version.split(".")
        script.write_text(f"#!/bin/sh\necho '{major}.{minor}'\n")
    script.chmod(0o755)


def _find(bin_dir: Path, *candidates: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(FIND_PYTHON), *candidates], capture_output=True, text=True,
                          env={"PATH": str(bin_dir)})


def test_find_python_takes_the_first_supported_that_runs(tmp_path: Path) -> None:
    _fake_python(tmp_path, "python3.11", None)       # a shim that does not run
    _fake_python(tmp_path, "python3.12", "3.12")
    _fake_python(tmp_path, "python3.10", "3.10")
    found = _find(tmp_path, "python3.11", "python3.12", "python3.10")
    assert found.returncode == 0 and found.stdout.strip() == str(tmp_path / "python3.12")


def test_find_python_explains_when_none_fits(tmp_path: Path) -> None:
    _fake_python(tmp_path, "python3.9", "3.9")
    _fake_python(tmp_path, "python3.15", "3.15")
    found = _find(tmp_path, "python3.9", "python3.15", "python3.11")
    assert found.returncode == 1 and found.stdout == ""
    assert "needs Python 3.10 to 3.14" in found.stderr
    for line in ("python3.9: Python 3.9", "python3.15: Python 3.15", "python3.11: not found", "PY_SYS="):
        assert line in found.stderr


def test_find_python_range_matches_pyproject() -> None:
    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    script = FIND_PYTHON.read_text()
    assert "MIN=10 MAX=14" in script
    assert [f"3.{m}" for m in range(8, 17) if f"3.{m}" in spec] == [f"3.{m}" for m in range(10, 15)]
    assert sys.version_info[:2] >= (3, 10)


# ---------------------------------------------------------------------------------- xgboost markers
def _xgboost_requirements() -> list[Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if r.name in ("xgboost", "xgboost-cpu")]


@pytest.mark.parametrize("platform,machine,expected", [
    ("linux", "x86_64", "xgboost-cpu"), ("linux", "aarch64", "xgboost-cpu"), ("win32", "AMD64", "xgboost-cpu"),
    ("linux", "ppc64le", "xgboost"), ("linux", "s390x", "xgboost"), ("darwin", "arm64", "xgboost"),
    ("darwin", "x86_64", "xgboost"), ("win32", "ARM64", "xgboost"),
])
def test_exactly_one_xgboost_per_platform(platform: str, machine: str, expected: str) -> None:
    """xgboost-cpu where PyPI has its wheels (manylinux x86_64/aarch64, win_amd64), plain xgboost elsewhere."""
    chosen = [r.name for r in _xgboost_requirements()
              if r.marker.evaluate({"sys_platform": platform, "platform_machine": machine})]
    assert chosen == [expected]
    # one minor release for both, the same on every Python: 3.3+ wheels need Python >= 3.12, and another
    # xgboost trains other trees from the same data (the docs' walkthrough numbers would differ)
    assert {str(r.specifier) for r in _xgboost_requirements()} == {"<3.3,>=3.2"}
