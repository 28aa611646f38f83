"""No credential in git: every tracked file is scanned for the original manifests' example password, private keys and
password assignments with a literal value. A finding names file:line."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]

# The original manifests' example password, built from pieces so that this file does not contain it.
SEED_PASSWORD = "99" + "Ru" + "les"
PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# `password: value`, `password = "value"`, `PASSWORD=value`, `MYSQL_PASSWORD: value` (YAML, env, Python, shell)
ASSIGNMENT = re.compile(r"""(?ix)
    (?P<key>\b[\w.-]*(?:password|passwd|pwd|secret|token)\b) ["']?
    (?:\s*:\s*[A-Za-z_][\w\[\]|., ]*?(?=\s*=))?        # a Python annotation: `password: str = ...`
    \s* (?::|=|:=) \s*
    (?P<value>"[^"\n]*"|'[^'\n]*'|[^\s#,;)}\]]+)""")
# Values that are not credentials: empty, references to the environment / a Secret / a variable, or the
# documented placeholder in kuberay/secret.example.yaml.
ALLOWED_FILES_VALUES = {("kuberay/secret.example.yaml", v) for v in (
    "REPLACE-ME-not-a-real-password", "REPLACE-ME-not-a-real-token", "REPLACE-ME-not-a-real-key",
    "REPLACE-ME-not-a-real-admin-password", "REPLACE-ME-not-a-real-collector-password")}
REFERENCE = re.compile(r"""(?x)^(
      \$.* | .*\$\{.*                          # $VAR, ${VAR}
    | <[^>]*> | \*+ | x+ | \.\.\.               # <placeholder>, ***, xxx, ...
    | None | null | ~ | true | false | \{\} | \[\] | \|
    )$""")
# In Python an unquoted right-hand side is code: a name, attribute, subscript, call or type annotation.
PYTHON_CODE = re.compile(r"^[A-Za-z_][\w.]*(?:[\[(].*)?$")


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as e:
        skip_or_fail(f"not a git checkout: {e}")
    return [p for p in out.stdout.decode().split("\0") if p]


def text_lines(path: str) -> list[str]:
    full = ROOT / path
    if not full.is_file():
        return []  # deleted in the working tree
    data = full.read_bytes()
    if b"\0" in data[:8192]:
        return []  # binary (a model file, an image)
    return data.decode("utf-8", "replace").splitlines()


def literal_password(path: str, line: str) -> str | None:
    for m in ASSIGNMENT.finditer(line):
        key = m.group("key").lower()
        if not any(w in key for w in ("password", "passwd", "pwd")):
            continue  # `secret`/`token` keys are matched only to step over them
        value = m.group("value").strip()
        quoted = value[:1] in "\"'" and value[-1:] == value[:1] and len(value) >= 2
        bare = value[1:-1] if quoted else value
        if not bare or REFERENCE.match(bare):
            continue
        if not quoted and path.endswith(".py") and PYTHON_CODE.match(bare):
            continue
        if (path, bare) in ALLOWED_FILES_VALUES:
            continue
        return f"{m.group('key')} = {bare[:3]}..."
    return None


def scan(path: str, lines: list[str]) -> list[str]:
    found = []
    for no, line in enumerate(lines, 1):
        if SEED_PASSWORD.lower() in line.lower():
            found.append(f"{path}:{no}: the original manifests' example password")
        if PRIVATE_KEY.search(line):
            found.append(f"{path}:{no}: a private key")
        hit = literal_password(path, line)
        if hit:
            found.append(f"{path}:{no}: a literal password ({hit})")
    return found


SELF = str(Path(__file__).resolve().relative_to(ROOT))  # its fake credentials exercise the scanner


def test_no_credentials_in_tracked_files():
    files = [p for p in tracked_files() if p != SELF]
    assert len(files) > 20
    findings = [f for p in files for f in scan(p, text_lines(p))]
    assert not findings, "credentials in git:\n" + "\n".join(findings)


@pytest.mark.parametrize("line, bad", [
    ("  MYSQL_PASSWORD: " + SEED_PASSWORD, True),
    ("password: hunter2", True),
    ('PASSWORD="s3cr3t!"', True),
    ("mysql_password = 'letmein'", True),
    ("-----BEGIN RSA " + "PRIVATE KEY-----", True),
    ("-----BEGIN " + "PRIVATE KEY-----", True),
    ("MYSQL_PASSWORD: ''", False),
    ('MYSQL_PASSWORD=""', False),
    ("password: ${MYSQL_PASSWORD}", False),
    ('password="$MYSQL_PASSWORD"', False),
    ("read -s MYSQL_PASSWORD && export MYSQL_PASSWORD", False),
    ("| `MYSQL_PASSWORD` | empty | from the environment |", False),
])
def test_the_scanner_itself(line, bad):
    assert bool(scan("x.yaml", [line])) is bad, line


@pytest.mark.parametrize("line, bad", [
    ("        password=settings.mysql_password,", False),
    ("password=os.environ.get('MYSQL_PASSWORD', '')", False),
    ("mysql_password = os.getenv('MYSQL_PASSWORD') or ''", False),
    ("    mysql_password: str = ''", False),
    ("    mysql_password: str = 'hunter2'", True),
    ("conn = connect(password='hunter2')", True),
])
def test_the_scanner_on_python(line, bad):
    assert bool(scan("x.py", [line])) is bad, line


def test_placeholder_allowed_only_in_the_example_secret():
    line = "  password: REPLACE-ME-not-a-real-password"
    assert not scan("kuberay/secret.example.yaml", [line])
    assert scan("kuberay/other.yaml", [line])
